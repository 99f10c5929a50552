//! The README's quick start, end to end: a SQLite vault file, an API key and an OAuth token
//! for each of two tenants, read back, listed, and a look at the raw file to show that it
//! holds no plaintext.
//!
//! ```text
//! cargo run --example quickstart [-- PATH]
//! ```
//!
//! The master key is generated for the demo and printed nowhere; a real service loads it
//! with `LocalMasterKey::from_env("CREDVAULT_MASTER_KEY")` or uses a KMS-backed provider.
#![allow(clippy::print_stdout, reason = "an example talks to its user")]
#![allow(unreachable_pub, reason = "shared with tests/quickstart_file.rs")]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use credvault::{
    ApiKey, LocalMasterKey, MasterKeyRing, OAuthToken, SecretName, SqliteStore, TenantId, Vault,
};

/// Each tenant's API key, OAuth access token and refresh token.
const TENANTS: [(&str, [&str; 3]); 2] = [
    (
        "acme",
        [
            "ghp_acme_0123456789abcdef",
            "ya29.acme-access-token",
            "1//acme-refresh-token",
        ],
    ),
    (
        "globex",
        [
            "ghp_globex_fedcba9876543210",
            "ya29.globex-access-token",
            "1//globex-refresh-token",
        ],
    ),
];

/// Every plaintext the demo stores, for searching the vault file.
pub const PLAINTEXTS: [&str; 6] = [
    TENANTS[0].1[0],
    TENANTS[0].1[1],
    TENANTS[0].1[2],
    TENANTS[1].1[0],
    TENANTS[1].1[1],
    TENANTS[1].1[2],
];

/// Files read from disk, with their contents.
pub type Files = Vec<(PathBuf, Vec<u8>)>;

/// Runs the demo against the vault file at `path`, closes the vault, and searches the files
/// left on disk for the plaintexts; returns those files with their contents.
///
/// # Errors
/// Any vault error; a file that cannot be read; a plaintext found.
pub async fn run(path: &Path) -> Result<Files, Box<dyn std::error::Error>> {
    let store = SqliteStore::open(path).await?;
    let vault = Vault::builder(store, MasterKeyRing::new(LocalMasterKey::generate()?)).build()?;

    for (tenant, [api_key, access, refresh]) in TENANTS {
        let tenant = TenantId::new(tenant)?;
        vault.create_tenant(&tenant).await?;
        vault
            .put(&tenant, &SecretName::new("github")?, &ApiKey::new(api_key))
            .await?;
        let token = OAuthToken::new(access)
            .with_refresh_token(refresh)
            .with_expires_at(SystemTime::now() + Duration::from_hours(1))
            .with_scopes(["openid", "email"]);
        vault
            .put(&tenant, &SecretName::new("google")?, &token)
            .await?;
    }

    for (tenant, _) in TENANTS {
        let tenant = TenantId::new(tenant)?;
        let key: ApiKey = vault.get(&tenant, &SecretName::new("github")?).await?;
        let token: OAuthToken = vault.get(&tenant, &SecretName::new("google")?).await?;
        println!(
            "{tenant}: github key of {} chars; google token {:?}",
            key.expose_secret().len(),
            token
        );
        for meta in vault.list(&tenant, None, 100).await? {
            println!(
                "  {:<8} {:<16} dek v{} row v{}",
                meta.name,
                meta.kind.to_string(),
                meta.dek_version,
                meta.row_version
            );
        }
    }
    // The kind is part of what is authenticated: an OAuth token cannot be read as an API key.
    let wrong_kind = vault
        .get::<ApiKey>(&TenantId::new("globex")?, &SecretName::new("google")?)
        .await;
    if let Err(err) = wrong_kind {
        println!("reading an OAuth token as an API key: {err}");
    }

    // Close deliberately: the connections are closed and SQLite's write-ahead log is
    // checkpointed into the database file before this returns, so the files are settled.
    vault.close().await?;

    let files = scan(path)?;
    let found: usize = files
        .iter()
        .map(|(_, bytes)| {
            PLAINTEXTS
                .iter()
                .filter(|s| contains(bytes, s.as_bytes()))
                .count()
        })
        .sum();
    println!(
        "searched {} ({} file(s)) for the {} plaintexts: {found} found",
        path.display(),
        files.len(),
        PLAINTEXTS.len()
    );
    if found > 0 {
        return Err("a plaintext was found in the vault's files".into());
    }
    Ok(files)
}

/// The contents of the vault file and of whichever of SQLite's `-wal` and `-shm` files
/// exist beside it. A file that vanishes before it is read (SQLite removes them when the
/// last connection closes) is left out.
///
/// # Errors
/// A file that exists but cannot be read, in a sentence naming it.
pub fn scan(path: &Path) -> Result<Files, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::read(&file) {
            Ok(bytes) => files.push((file, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("could not read {}: {e}", file.display()).into()),
        }
    }
    Ok(files)
}

/// Whether `needle` occurs in `haystack`.
#[must_use]
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn main() -> ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("quickstart-vault.db"), PathBuf::from);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return report(&e),
    };
    match runtime.block_on(fresh_run(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&*e),
    }
}

/// The demo on a new vault file at `path` (an earlier run's files are removed first).
async fn fresh_run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(
                    format!("could not remove {} of an earlier run: {e}", file.display()).into(),
                );
            }
        }
    }
    run(path).await.map(drop)
}

/// Tells the person what went wrong: the error and its causes, each a sentence, and a hint
/// where one helps; never a `Debug` dump.
fn report(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("error: {error}");
    let mut cause = error.source();
    while let Some(e) = cause {
        eprintln!("  caused by: {e}");
        cause = e.source();
    }
    let store_unavailable = error
        .downcast_ref::<credvault::Error>()
        .is_some_and(|e| e.kind() == credvault::ErrorKind::Unavailable);
    if store_unavailable {
        eprintln!(
            "hint: the demo writes its vault file in the current directory, or at the path \
             given as its first argument (cargo run --example quickstart -- /tmp/demo.db); \
             check that the directory exists and that you can write to it"
        );
    }
    ExitCode::FAILURE
}
