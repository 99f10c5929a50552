//! A canary secret never shows: not in the `Debug` output of any public type, not in any
//! error's `Display` or source chain, and not in TRACE-level logs of a full
//! put / get / list / update / delete cycle on SQLite.
#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::error::Error as _;
use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use credvault::storage::{SqliteOptions, Store};
use credvault::{
    ApiKey, DekVersion, ExposeSecret, LocalMasterKey, MasterKeyRing, OAuthToken, SecretBytes,
    SecretName, SqliteStore, TenantId, Vault,
};

const CANARY: &str = "CANARY-sk_live_51H8xQ9";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} leaks a secret: {text}");
    }
}

fn error_chain(e: &credvault::Error) -> String {
    let mut out = format!("{e} | {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        {
            use std::fmt::Write as _;
            let _ = write!(out, " | {s} | {s:?}");
        }
        source = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_never_appears_in_debug_errors_or_trace_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let master = LocalMasterKey::generate().unwrap();
    let master_b64 = master.export_base64().expose_secret().to_owned();
    let secrets = [CANARY, master_b64.as_str()];

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let store = SqliteStore::with_options(SqliteOptions::file(&path))
        .await
        .unwrap();
    let vault = Vault::builder(store.clone(), MasterKeyRing::new(master))
        .build()
        .unwrap();
    let t = tenant("acme");
    let n = name("stripe");
    vault.create_tenant(&t).await.unwrap();
    vault.put(&t, &n, &ApiKey::new(CANARY)).await.unwrap();
    let token = OAuthToken::new(CANARY)
        .with_refresh_token(CANARY)
        .with_scopes(["repo"]);
    vault.put(&t, &name("oauth"), &token).await.unwrap();
    vault
        .put(
            &t,
            &name("blob"),
            &SecretBytes::from_slice(CANARY.as_bytes()),
        )
        .await
        .unwrap();
    let key: ApiKey = vault.get(&t, &n).await.unwrap();
    let got_token: OAuthToken = vault.get(&t, &name("oauth")).await.unwrap();
    let blob: SecretBytes = vault.get(&t, &name("blob")).await.unwrap();
    let (_, meta) = vault.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
    vault
        .update(&t, &n, &ApiKey::new(CANARY), meta.row_version)
        .await
        .unwrap();
    let listed = vault.list(&t, None, 10).await.unwrap();
    let dek = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
    let record = store.get_secret(&t, &n).await.unwrap().unwrap();

    // Debug of every public type that was near the canary.
    let debug = [
        format!("{key:?}"),
        format!("{got_token:?}"),
        format!("{token:?}"),
        format!("{blob:?}"),
        format!("{vault:?}"),
        format!("{:?}", vault.master_keys()),
        format!("{store:?}"),
        format!("{listed:?}"),
        format!("{meta:?}"),
        format!("{dek:?}"),
        format!("{record:?}"),
        format!(
            "{:?}",
            credvault::envelope::EnvelopeRef::parse(&record.envelope).unwrap()
        ),
        format!(
            "{:?}",
            credvault::keys::DataKey::from_slice(&[1; 32]).unwrap()
        ),
        format!("{:?}", credvault::MemoryStore::new()),
        format!("{:?}", SqliteOptions::file(&path)),
    ];
    for d in &debug {
        assert_clean("Debug", d, &secrets);
    }
    assert!(debug[0].contains("[REDACTED]"));

    // Errors, with their source chains, from every path that can fail near a secret.
    let mut errors = vec![
        vault.get::<OAuthToken>(&t, &n).await.unwrap_err(),
        Vault::builder(
            credvault::MemoryStore::new(),
            MasterKeyRing::new(LocalMasterKey::generate().unwrap()),
        )
        .with_max_secret_size(8)
        .build()
        .unwrap()
        .put(&t, &n, &ApiKey::new(CANARY))
        .await
        .unwrap_err(),
        TenantId::new(format!("{CANARY} bad")).unwrap_err(),
        SecretName::new(format!("{CANARY}*")).unwrap_err(),
        LocalMasterKey::from_base64(CANARY).unwrap_err(),
        vault
            .update(&t, &n, &ApiKey::new(CANARY), meta.row_version)
            .await
            .unwrap_err(),
        vault
            .create(&t, &n, &ApiKey::new(CANARY))
            .await
            .unwrap_err(),
    ];
    // A row copied to another name: the decryption error.
    let mut moved = record.clone();
    moved.metadata.name = name("moved");
    store
        .put_secret(
            moved,
            credvault::storage::PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    errors.push(vault.get::<ApiKey>(&t, &name("moved")).await.unwrap_err());
    // A database error, with the driver's text as the source.
    sqlx::query("DROP TABLE credvault_secrets")
        .execute(store.pool())
        .await
        .unwrap();
    errors.push(vault.get::<ApiKey>(&t, &n).await.unwrap_err());
    assert!(
        errors.last().unwrap().source().is_some(),
        "driver text is kept as a source"
    );
    for e in &errors {
        assert_clean("error", &error_chain(e), &secrets);
    }

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("secret stored") && logs.contains("secret read"),
        "logs were captured: {logs}"
    );
    assert_clean("TRACE logs", &logs, &secrets);
}
