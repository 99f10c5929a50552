//! `SqliteStore` passes the storage conformance suite, in memory and on a file shared by
//! two independently opened stores (as two processes would open it).
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

use std::sync::Arc;

use credvault::SqliteStore;

mod in_memory {
    use super::*;
    credvault::store_conformance_tests!(async {
        Some(Arc::new(SqliteStore::open_in_memory().await.unwrap()))
    });
}

mod file {
    use super::*;
    credvault::store_conformance_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.keep().join("conformance.db");
        let store = SqliteStore::with_options(
            credvault::storage::SqliteOptions::file(&path).with_durable_commits(false),
        )
        .await
        .unwrap();
        Some(Arc::new(store))
    });
}

/// A row edited in the database to hold an envelope larger than any credvault writes is
/// refused without being loaded.
#[tokio::test]
async fn oversize_stored_envelope_is_rejected_as_malformed() {
    use credvault::storage::{PutMode, Store, conformance};
    let store = SqliteStore::open_in_memory().await.unwrap();
    let t = conformance::unique_tenant("oversize");
    let n = credvault::SecretName::new("big").unwrap();
    let limit = credvault::limits::MAX_SECRET_SIZE_LIMIT + 64;
    store
        .put_secret(
            conformance::secret_record(&t, &n, vec![0; limit]),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_secret(&t, &n)
            .await
            .unwrap()
            .unwrap()
            .envelope
            .len(),
        limit
    );
    store
        .put_secret(
            conformance::secret_record(&t, &n, vec![0; limit + 1]),
            PutMode::Upsert,
        )
        .await
        .unwrap();
    let err = store.get_secret(&t, &n).await.unwrap_err();
    assert_eq!(err.kind(), credvault::ErrorKind::Malformed);
}

/// A scan page decodes its strings in place and shares one tenant id among a tenant's
/// rows; every column a row edited in the database could break is still checked, and the
/// row refused as malformed, whatever its place in the page.
#[tokio::test]
async fn a_scan_refuses_a_row_edited_in_the_database_in_any_column() {
    use credvault::storage::{PutMode, Store, conformance};
    let edits: &[(&str, &'static str)] = &[
        (
            "tenant",
            "UPDATE credvault_secrets SET tenant = '.hidden' WHERE name = 'b'",
        ),
        (
            "name",
            "UPDATE credvault_secrets SET name = '' WHERE name = 'b'",
        ),
        (
            "kind",
            "UPDATE credvault_secrets SET kind = 99 WHERE name = 'b'",
        ),
        (
            "DEK version",
            "UPDATE credvault_secrets SET dek_version = 0 WHERE name = 'b'",
        ),
        (
            "row version",
            "UPDATE credvault_secrets SET row_version = -1 WHERE name = 'b'",
        ),
        (
            "envelope size",
            "UPDATE credvault_secrets SET envelope = zeroblob(16777281) WHERE name = 'b'",
        ),
    ];
    for ((what, edit), on_file) in edits.iter().flat_map(|edit| [(edit, false), (edit, true)]) {
        // In memory the scan reads through sqlx; on a file, through the store's own
        // reader (`sqlite/bulk.rs`): both decoders must refuse every edit.
        let (_dir, store) = if on_file {
            let (dir, store) = file_store().await;
            (Some(dir), store)
        } else {
            (None, SqliteStore::open_in_memory().await.unwrap())
        };
        let t = conformance::unique_tenant("edited");
        let u = conformance::unique_tenant("other");
        for (tenant, name) in [(&t, "a"), (&t, "b"), (&t, "c"), (&u, "d")] {
            let name = credvault::SecretName::new(name).unwrap();
            store
                .put_secret(
                    conformance::secret_record(tenant, &name, vec![1, 2, 3]),
                    PutMode::Create,
                )
                .await
                .unwrap();
        }
        let clean: Vec<(String, String)> = store
            .scan_secrets(None, 10)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.metadata.tenant.as_str().to_owned(),
                    r.metadata.name.as_str().to_owned(),
                )
            })
            .collect();
        let mut written: Vec<(String, String)> = [(&t, "a"), (&t, "b"), (&t, "c"), (&u, "d")]
            .iter()
            .map(|(tenant, name)| (tenant.as_str().to_owned(), (*name).to_owned()))
            .collect();
        written.sort();
        assert_eq!(clean, written, "each row keeps its own tenant and name");
        sqlx::query(*edit).execute(store.pool()).await.unwrap();
        let err = store.scan_secrets(None, 10).await.unwrap_err();
        assert_eq!(
            err.kind(),
            credvault::ErrorKind::Malformed,
            "an edited {what} must be refused (on a file: {on_file})"
        );
    }
}

async fn file_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::with_options(
        credvault::storage::SqliteOptions::file(dir.path().join("edited.db"))
            .with_durable_commits(false),
    )
    .await
    .unwrap();
    (dir, store)
}

/// On a file, the scans read each value as SQLite stored it: a column holding a value of
/// another SQL type than the one credvault writes (a blob for a name, text for a version,
/// a real for a row version) is refused as malformed, in secret and data-key scans alike.
#[tokio::test]
async fn a_file_scan_refuses_a_column_of_another_sql_type() {
    use credvault::storage::{PutMode, Store, conformance};
    let secret_edits = [
        "UPDATE credvault_secrets SET tenant = CAST(tenant AS BLOB)",
        "UPDATE credvault_secrets SET name = CAST(name AS BLOB)",
        "UPDATE credvault_secrets SET kind = CAST(kind AS TEXT) || 'x'",
        "UPDATE credvault_secrets SET dek_version = 1.5",
        "UPDATE credvault_secrets SET created_at = 'yesterday'",
        "UPDATE credvault_secrets SET row_version = 0.5",
        "UPDATE credvault_secrets SET envelope = 'text, not bytes'",
    ];
    let dek_edits = [
        "UPDATE credvault_deks SET tenant = CAST(tenant AS BLOB)",
        "UPDATE credvault_deks SET version = 'one'",
        "UPDATE credvault_deks SET state = 99",
        "UPDATE credvault_deks SET master_key_id = x'00'",
        "UPDATE credvault_deks SET wrapped = 'text, not bytes'",
        "UPDATE credvault_deks SET encryptions_reserved = -1",
        "UPDATE credvault_deks SET row_version = 1.5",
    ];
    for (edit, deks) in secret_edits
        .iter()
        .map(|e| (e, false))
        .chain(dek_edits.iter().map(|e| (e, true)))
    {
        let (_dir, store) = file_store().await;
        let t = conformance::unique_tenant("typed");
        let name = credvault::SecretName::new("a").unwrap();
        store
            .put_secret(
                conformance::secret_record(&t, &name, vec![1, 2, 3]),
                PutMode::Create,
            )
            .await
            .unwrap();
        store
            .put_dek(conformance::dek_record(&t, 1, 7), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(store.scan_secrets(None, 10).await.unwrap().len(), 1);
        assert_eq!(store.scan_deks(None, 10).await.unwrap().len(), 1);
        sqlx::query(*edit).execute(store.pool()).await.unwrap();
        let err = if deks {
            store.scan_deks(None, 10).await.unwrap_err()
        } else {
            store.scan_secrets(None, 10).await.unwrap_err()
        };
        assert_eq!(
            err.kind(),
            credvault::ErrorKind::Malformed,
            "`{edit}` must be refused"
        );
    }
}

/// A file store's scans read beside a write in progress (WAL): a transaction that holds
/// the write lock neither blocks a scan nor shows it uncommitted rows.
#[tokio::test]
async fn a_file_scan_reads_beside_an_open_write_transaction() {
    use credvault::storage::{PutMode, Store, conformance};
    let (_dir, store) = file_store().await;
    let t = conformance::unique_tenant("beside");
    for name in ["a", "b"] {
        let name = credvault::SecretName::new(name).unwrap();
        store
            .put_secret(
                conformance::secret_record(&t, &name, vec![1]),
                PutMode::Create,
            )
            .await
            .unwrap();
    }
    let mut writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("DELETE FROM credvault_secrets WHERE name = 'a'")
        .execute(&mut *writer)
        .await
        .unwrap();
    let seen = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.scan_secrets(None, 10),
    )
    .await
    .expect("the scan must not wait for the writer")
    .unwrap();
    assert_eq!(seen.len(), 2, "the uncommitted delete is not visible");
    writer.commit().await.unwrap();
    assert_eq!(store.scan_secrets(None, 10).await.unwrap().len(), 1);
}
