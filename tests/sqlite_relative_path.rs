//! A SQLite store opened at a relative path keeps using that file when the process changes
//! its working directory: the path is made absolute when the store is opened, for sqlx's
//! connections and for the scans' own reader, which opens its connections later.
//!
//! Its own test binary: it changes the process's working directory.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, reason = "test code: failing loudly is the point")]

use credvault::storage::conformance::{dek_record, secret_record, unique_tenant};
use credvault::storage::{PutMode, SqliteOptions, Store};
use credvault::{SecretName, SqliteStore};

#[tokio::test]
async fn a_store_opened_at_a_relative_path_reads_its_file_after_the_directory_changes() {
    let home = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let elsewhere = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::env::set_current_dir(home.path()).unwrap();
    let store =
        SqliteStore::with_options(SqliteOptions::file("vault.db").with_durable_commits(false))
            .await
            .unwrap();
    let t = unique_tenant("relative");
    store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    let name = SecretName::new("api").unwrap();
    store
        .put_secret(
            secret_record(&t, &name, vec![7; 40]),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();

    std::env::set_current_dir(elsewhere.path()).unwrap();
    // The scans' reader opens its first connection now, after the move.
    let secrets = store.scan_secrets(None, 10).await.unwrap();
    assert_eq!(secrets.len(), 1, "the scan reads the store's own file");
    assert_eq!(store.scan_deks(None, 10).await.unwrap().len(), 1);
    assert!(
        !elsewhere.path().join("vault.db").exists(),
        "nothing is opened or created in the new working directory"
    );
}
