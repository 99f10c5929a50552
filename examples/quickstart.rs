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

/// Runs the demo against the vault file at `path`; returns the files SQLite wrote.
///
/// # Errors
/// Any vault error.
pub async fn run(path: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
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

    drop(vault);
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            files.push(p);
        }
    }
    let mut found = 0;
    for file in &files {
        let bytes = std::fs::read(file)?;
        found += PLAINTEXTS
            .iter()
            .filter(|s| contains(&bytes, s.as_bytes()))
            .count();
    }
    println!(
        "searched {} file(s) for the {} plaintexts: {found} found",
        files.len(),
        PLAINTEXTS.len()
    );
    if found > 0 {
        return Err("plaintext found in the vault file".into());
    }
    Ok(files)
}

/// Whether `needle` occurs in `haystack`.
#[must_use]
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("quickstart-vault.db"), PathBuf::from);
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    run(&path).await?;
    println!("vault file: {}", path.display());
    Ok(())
}
