//! `SqliteStore` reads its paged scans through two drivers: sqlx for a database in memory,
//! and its own rusqlite connections for a file (`src/storage/sqlite/bulk.rs`). Both return
//! the same pages, refuse the same edited rows with the same error, and the file's reader
//! holds no snapshot once a page is read, recovers from a refused page, and reports a file
//! that is gone as unavailable.
#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    reason = "test code: failing loudly is the point"
)]

use std::time::Duration;

use credvault::storage::conformance::{dek_record, secret_record, unique_tenant};
use credvault::storage::{DekRecord, DekState, PutMode, SecretRecord, SqliteOptions, Store};
use credvault::{DekVersion, ErrorKind, RowVersion, SecretName, SqliteStore, TenantId};

/// A store on a new file; the directory lives as long as the returned guard.
async fn on_file() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = SqliteStore::with_options(
        SqliteOptions::file(dir.path().join("scans.db")).with_durable_commits(false),
    )
    .await
    .unwrap();
    (dir, store)
}

/// The two stores every test runs on: in memory (sqlx) and on a file (the store's reader).
async fn both() -> Vec<(&'static str, Option<tempfile::TempDir>, SqliteStore)> {
    let (dir, file) = on_file().await;
    vec![
        (
            "in memory",
            None,
            SqliteStore::open_in_memory().await.unwrap(),
        ),
        ("on a file", Some(dir), file),
    ]
}

fn secret_name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

/// Three tenants (one with two data keys, one of them destroyed), and secrets under each,
/// every record under row version 1 (the same in every store filled).
async fn fill(store: &SqliteStore, tenants: &[TenantId]) {
    for (i, t) in (0u8..).zip(tenants) {
        let mut first = dek_record(t, 1, 1);
        first.row_version = RowVersion(1);
        store.put_dek(first, PutMode::Create).await.unwrap();
        if i == 1 {
            let mut destroyed = dek_record(t, 2, 2);
            destroyed.state = DekState::Destroyed;
            destroyed.row_version = RowVersion(1);
            store.put_dek(destroyed, PutMode::Create).await.unwrap();
        }
        for s in 0..(3 + i) {
            let mut record = secret_record(t, &secret_name(&format!("s{s}")), vec![s; 40]);
            record.metadata.row_version = RowVersion(1);
            if s % 2 == 1 {
                record.metadata.dek_version = DekVersion::new(2).unwrap();
            }
            store
                .put_secret(
                    record,
                    PutMode::Create,
                    credvault::storage::KeyCondition::Unchecked,
                )
                .await
                .unwrap();
        }
    }
}

/// Every page of every scan, for one page size: secret pages (of `scan_secrets`, then of
/// `list_secrets_not_under` per tenant) and data-key pages (of `scan_deks`, then of
/// `scan_live_deks`).
async fn all_pages(
    store: &SqliteStore,
    tenants: &[TenantId],
    n: usize,
) -> (Vec<Vec<SecretRecord>>, Vec<Vec<DekRecord>>) {
    let (mut secrets, mut deks) = (Vec::new(), Vec::new());
    let mut after: Option<(TenantId, SecretName)> = None;
    loop {
        let page = store
            .scan_secrets(after.as_ref().map(|(t, s)| (t, s)), n)
            .await
            .unwrap();
        after = page
            .last()
            .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone()));
        let last = page.len() < n || n == 0;
        secrets.push(page);
        if last {
            break;
        }
    }
    for t in tenants {
        let mut after: Option<SecretName> = None;
        loop {
            let page = store
                .list_secrets_not_under(t, DekVersion::new(1).unwrap(), after.as_ref(), n)
                .await
                .unwrap();
            after = page.last().map(|r| r.metadata.name.clone());
            let last = page.len() < n || n == 0;
            secrets.push(page);
            if last {
                break;
            }
        }
    }
    for live in [false, true] {
        let mut after: Option<(TenantId, DekVersion)> = None;
        loop {
            let at = after.as_ref().map(|(t, v)| (t, *v));
            let page = if live {
                store.scan_live_deks(at, n).await.unwrap()
            } else {
                store.scan_deks(at, n).await.unwrap()
            };
            after = page.last().map(|r| (r.tenant.clone(), r.version));
            let last = page.len() < n || n == 0;
            deks.push(page);
            if last {
                break;
            }
        }
    }
    (secrets, deks)
}

#[tokio::test]
async fn both_drivers_return_the_same_pages_of_every_scan() {
    let tenants: Vec<TenantId> = (0..3).map(|i| unique_tenant(&format!("same{i}"))).collect();
    let stores = both().await;
    for (_, _, store) in &stores {
        fill(store, &tenants).await;
    }
    for n in [0, 1, 3, 500] {
        let memory = all_pages(&stores[0].2, &tenants, n).await;
        let file = all_pages(&stores[1].2, &tenants, n).await;
        assert_eq!(memory, file, "page size {n}");
        let records = memory.0.iter().map(Vec::len).sum::<usize>();
        let keys = memory.1.iter().map(Vec::len).sum::<usize>();
        if n > 0 {
            // 12 secrets, then the 5 not under version 1; 4 data keys, then the 3 live.
            assert_eq!((records, keys), (12 + 5, 4 + 3), "page size {n}");
        }
    }
}

/// The scans a row edit must show up in.
#[derive(Clone, Copy)]
enum Scans {
    /// `scan_secrets`, and the per-tenant `list_secrets_not_under`.
    Secrets,
    /// `scan_secrets` only: the edit moves the row out of its tenant, or before the first
    /// name a tenant's page starts after.
    SecretsMoved,
    /// `scan_deks` and `scan_live_deks`.
    Deks,
}

/// A statement that changes stored rows, and how the scans that meet them must fail.
struct Edit {
    what: &'static str,
    sql: &'static str,
    scans: Scans,
    expect: ErrorKind,
}

const fn edit(what: &'static str, sql: &'static str, scans: Scans) -> Edit {
    Edit {
        what,
        sql,
        scans,
        expect: ErrorKind::Malformed,
    }
}

/// Rows edited in the database to values credvault never writes.
const EDITS: &[Edit] = &[
    edit(
        "tenant",
        "UPDATE credvault_secrets SET tenant = '.hidden' WHERE name = 'b'",
        Scans::SecretsMoved,
    ),
    edit(
        "name",
        "UPDATE credvault_secrets SET name = '' WHERE name = 'b'",
        Scans::SecretsMoved,
    ),
    edit(
        "kind",
        "UPDATE credvault_secrets SET kind = 99 WHERE name = 'b'",
        Scans::Secrets,
    ),
    edit(
        "DEK version",
        "UPDATE credvault_secrets SET dek_version = 0 WHERE name = 'b'",
        Scans::Secrets,
    ),
    edit(
        "row version",
        "UPDATE credvault_secrets SET row_version = -1 WHERE name = 'b'",
        Scans::Secrets,
    ),
    edit(
        "envelope size",
        "UPDATE credvault_secrets SET envelope = zeroblob(16777281) WHERE name = 'b'",
        Scans::Secrets,
    ),
    // `length()` would count the characters of this text up to its first NUL: none.
    edit(
        "envelope size, as text",
        "UPDATE credvault_secrets SET envelope = CAST(zeroblob(16777281) AS TEXT) WHERE name = 'b'",
        Scans::Secrets,
    ),
    edit(
        "DEK version",
        "UPDATE credvault_deks SET version = 0",
        Scans::Deks,
    ),
    edit("state", "UPDATE credvault_deks SET state = 99", Scans::Deks),
    Edit {
        what: "suite",
        sql: "UPDATE credvault_deks SET suite = 77",
        scans: Scans::Deks,
        expect: ErrorKind::UnsupportedSuite,
    },
    edit(
        "master key id",
        "UPDATE credvault_deks SET master_key_id = ''",
        Scans::Deks,
    ),
    edit(
        "encryptions reserved",
        "UPDATE credvault_deks SET encryptions_reserved = -1",
        Scans::Deks,
    ),
    edit(
        "wrapped key size",
        "UPDATE credvault_deks SET wrapped = zeroblob(65537)",
        Scans::Deks,
    ),
    // Values of a SQL type the column never holds.
    edit(
        "tenant as a blob",
        "UPDATE credvault_secrets SET tenant = CAST(tenant AS BLOB)",
        Scans::SecretsMoved,
    ),
    edit(
        "name as a blob",
        "UPDATE credvault_secrets SET name = CAST(name AS BLOB)",
        Scans::Secrets,
    ),
    edit(
        "name not UTF-8",
        "UPDATE credvault_secrets SET name = CAST(x'ff' AS TEXT) WHERE name = 'b'",
        Scans::Secrets,
    ),
    edit(
        "kind as text",
        "UPDATE credvault_secrets SET kind = 'api key'",
        Scans::Secrets,
    ),
    edit(
        "DEK version as a real",
        "UPDATE credvault_secrets SET dek_version = 1.5",
        Scans::Secrets,
    ),
    edit(
        "created at as text",
        "UPDATE credvault_secrets SET created_at = 'yesterday'",
        Scans::Secrets,
    ),
    edit(
        "row version as a real",
        "UPDATE credvault_secrets SET row_version = 0.5",
        Scans::Secrets,
    ),
    edit(
        "tenant as a blob",
        "UPDATE credvault_deks SET tenant = CAST(tenant AS BLOB)",
        Scans::Deks,
    ),
    edit(
        "version as text",
        "UPDATE credvault_deks SET version = 'one'",
        Scans::Deks,
    ),
    edit(
        "master key id as a blob",
        "UPDATE credvault_deks SET master_key_id = x'00'",
        Scans::Deks,
    ),
    edit(
        "row version as a real",
        "UPDATE credvault_deks SET row_version = 1.5",
        Scans::Deks,
    ),
];

/// What each scan that `scans` names returns over `store`: the error's kind, or `None`.
async fn scan_errors(store: &SqliteStore, t: &TenantId, scans: Scans) -> Vec<Option<ErrorKind>> {
    fn kind<T>(r: Result<Vec<T>, credvault::Error>) -> Option<ErrorKind> {
        r.err().map(|e| e.kind())
    }
    let not_under = || store.list_secrets_not_under(t, DekVersion::new(9).unwrap(), None, 10);
    match scans {
        Scans::Secrets => vec![
            kind(store.scan_secrets(None, 10).await),
            kind(not_under().await),
        ],
        Scans::SecretsMoved => vec![kind(store.scan_secrets(None, 10).await)],
        Scans::Deks => vec![
            kind(store.scan_deks(None, 10).await),
            kind(store.scan_live_deks(None, 10).await),
        ],
    }
}

/// Each scan decodes its rows with the strings read in place (and one tenant id shared by a
/// tenant's rows); every column a row edited in the database could break is still checked,
/// whatever the row's place in the page, and the row refused with the same error by both
/// drivers.
#[tokio::test]
async fn both_drivers_refuse_a_row_edited_in_any_column() {
    for edit in EDITS {
        for (label, _dir, store) in both().await {
            let t = unique_tenant("edited");
            let u = unique_tenant("other");
            store
                .put_dek(dek_record(&t, 1, 1), PutMode::Create)
                .await
                .unwrap();
            for (tenant, name) in [(&t, "a"), (&t, "b"), (&t, "c"), (&u, "d")] {
                store
                    .put_secret(
                        secret_record(tenant, &secret_name(name), vec![1, 2, 3]),
                        PutMode::Create,
                        credvault::storage::KeyCondition::Unchecked,
                    )
                    .await
                    .unwrap();
            }
            let clean = scan_errors(&store, &t, edit.scans).await;
            assert!(clean.iter().all(Option::is_none), "{label}: {clean:?}");
            let rows: Vec<_> = store
                .scan_secrets(None, 10)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.metadata.tenant.clone(),
                        r.metadata.name.as_str().to_owned(),
                    )
                })
                .collect();
            let mut written = vec![
                (t.clone(), "a".to_owned()),
                (t.clone(), "b".to_owned()),
                (t.clone(), "c".to_owned()),
                (u.clone(), "d".to_owned()),
            ];
            written.sort();
            assert_eq!(
                rows, written,
                "{label}: each row keeps its own tenant and name"
            );
            sqlx::query(edit.sql).execute(store.pool()).await.unwrap();
            let edited = scan_errors(&store, &t, edit.scans).await;
            assert!(
                edited.iter().all(|k| *k == Some(edit.expect)),
                "{label}: an edited {} must be refused as {:?}: {edited:?}",
                edit.what,
                edit.expect
            );
        }
    }
}

/// Text in a blob column is read as its bytes by both drivers (sqlx reads it so, and the
/// envelope's authentication, not its SQL type, decides whether it opens).
#[tokio::test]
async fn both_drivers_read_text_in_a_blob_column_as_its_bytes() {
    for (label, _dir, store) in both().await {
        let t = unique_tenant("text");
        store
            .put_dek(dek_record(&t, 1, 1), PutMode::Create)
            .await
            .unwrap();
        store
            .put_secret(
                secret_record(&t, &secret_name("a"), vec![1]),
                PutMode::Create,
                credvault::storage::KeyCondition::Unchecked,
            )
            .await
            .unwrap();
        sqlx::query("UPDATE credvault_secrets SET envelope = 'some text'")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE credvault_deks SET wrapped = 'wrapped text'")
            .execute(store.pool())
            .await
            .unwrap();
        let secrets = store.scan_secrets(None, 10).await.unwrap();
        assert_eq!(secrets[0].envelope, b"some text", "{label}");
        let deks = store.scan_deks(None, 10).await.unwrap();
        assert_eq!(deks[0].wrapped.as_bytes(), b"wrapped text", "{label}");
    }
}

/// Whether a `TRUNCATE` checkpoint completes within 20 s. It waits for every reader to
/// leave the WAL, and reports itself busy (1) when one holds an older snapshot.
async fn settled(store: &SqliteStore) -> bool {
    let attempt = async {
        loop {
            // (busy, frames in the WAL, frames checkpointed).
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(store.pool())
                .await
                .unwrap();
            if busy == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .is_ok()
}

/// Once a page is read (or refused, or its future dropped), no connection holds a read
/// snapshot: a `TRUNCATE` checkpoint, which must wait for every reader, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_scan_leaves_no_snapshot_open() {
    let (_dir, store) = on_file().await;
    let t = unique_tenant("snapshot");
    fill(&store, std::slice::from_ref(&t)).await;
    // A page read to its end, a page cut short by its limit.
    assert_eq!(store.scan_secrets(None, 500).await.unwrap().len(), 3);
    assert_eq!(store.scan_secrets(None, 1).await.unwrap().len(), 1);
    assert!(settled(&store).await, "after whole pages");
    // A page whose future is dropped while it is read.
    let dropped = tokio::time::timeout(Duration::ZERO, store.scan_secrets(None, 500)).await;
    drop(dropped);
    assert!(settled(&store).await, "after a dropped page");
    // A page refused half way (its second row is edited).
    sqlx::query("UPDATE credvault_secrets SET kind = 99 WHERE name = 's1'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store.scan_secrets(None, 500).await.unwrap_err().kind(),
        ErrorKind::Malformed
    );
    assert!(settled(&store).await, "after a refused page");
}

/// A connection whose page was refused serves the next page: once the row is repaired, the
/// scan reads it as stored.
#[tokio::test]
async fn a_file_scan_reads_the_repaired_row_after_a_refused_page() {
    let (_dir, store) = on_file().await;
    let t = unique_tenant("repaired");
    fill(&store, std::slice::from_ref(&t)).await;
    let before = store.scan_secrets(None, 10).await.unwrap();
    sqlx::query("UPDATE credvault_secrets SET name = '' WHERE name = 's1'")
        .execute(store.pool())
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            store.scan_secrets(None, 10).await.unwrap_err().kind(),
            ErrorKind::Malformed
        );
    }
    sqlx::query("UPDATE credvault_secrets SET name = 's1' WHERE name = ''")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.scan_secrets(None, 10).await.unwrap(), before);
}

/// A file store's scans read beside a write in progress (WAL): a transaction that holds
/// the write lock neither blocks a scan nor shows it uncommitted rows.
#[tokio::test]
async fn a_file_scan_reads_beside_an_open_write_transaction() {
    let (_dir, store) = on_file().await;
    let t = unique_tenant("beside");
    fill(&store, std::slice::from_ref(&t)).await;
    let mut writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("DELETE FROM credvault_secrets WHERE name = 's0'")
        .execute(&mut *writer)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), store.scan_secrets(None, 10))
        .await
        .expect("the scan must not wait for the writer")
        .unwrap();
    assert_eq!(seen.len(), 3, "the uncommitted delete is not visible");
    writer.commit().await.unwrap();
    assert_eq!(store.scan_secrets(None, 10).await.unwrap().len(), 2);
}

/// A file that is gone when a scan needs a new connection is reported as unavailable, and
/// no empty database is created in its place.
#[tokio::test]
async fn a_file_scan_of_a_deleted_database_is_unavailable() {
    let (dir, store) = on_file().await;
    let path = dir.path().join("scans.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let err = store.scan_secrets(None, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!path.exists(), "the scan must not create the file");
}

/// A store whose pool was closed reads nothing, whichever driver its scans go through: the
/// file's own reader does not outlive the store's pool.
#[tokio::test]
async fn a_store_whose_pool_is_closed_scans_nothing() {
    for (label, _dir, store) in both().await {
        let t = unique_tenant("closed");
        fill(&store, std::slice::from_ref(&t)).await;
        store.pool().close().await;
        for scans in [Scans::Secrets, Scans::Deks] {
            let errors = scan_errors(&store, &t, scans).await;
            assert!(
                errors.iter().all(Option::is_some),
                "{label}: every scan of a closed store fails, got {errors:?}"
            );
        }
    }
}
