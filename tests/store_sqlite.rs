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
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
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
            credvault::storage::KeyCondition::Unchecked,
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
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let err = store.get_secret(&t, &n).await.unwrap_err();
    assert_eq!(err.kind(), credvault::ErrorKind::Malformed);
}

/// Closing a store and its clones, as a program does before it exits.
mod close {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use credvault::storage::{PutMode, SqliteOptions, Store, conformance};
    use credvault::{
        ApiKey, ErrorKind, LocalMasterKey, MasterKeyRing, SecretName, SqliteStore, TenantId, Vault,
    };

    /// The file descriptors of this process open on the database or its `-wal` / `-shm`.
    #[cfg(target_os = "linux")]
    fn open_handles(db: &Path) -> Vec<PathBuf> {
        let db = db.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| {
                target
                    .as_os_str()
                    .to_string_lossy()
                    .starts_with(&*db.to_string_lossy())
            })
            .collect()
    }

    fn sibling(db: &Path, suffix: &str) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// A store on a new file that has written, read and scanned from several tasks at
    /// once, so that many pool connections and the scans' own are open.
    async fn busy_store(dir: &Path) -> (SqliteStore, PathBuf) {
        let path = dir.join("close.db");
        let store = SqliteStore::with_options(SqliteOptions::file(&path).with_max_connections(8))
            .await
            .unwrap();
        let t = conformance::unique_tenant("close");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (store, t) = (store.clone(), t.clone());
            tasks.spawn(async move {
                let n = SecretName::new(format!("s{i}")).unwrap();
                store
                    .put_secret(
                        conformance::secret_record(&t, &n, vec![7; 64]),
                        PutMode::Create,
                        credvault::storage::KeyCondition::Unchecked,
                    )
                    .await
                    .unwrap();
                store.get_secret(&t, &n).await.unwrap().unwrap();
                store.scan_secrets(None, 100).await.unwrap();
            });
        }
        tasks.join_all().await;
        (store, path)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn close_releases_every_file_handle_and_removes_the_log() {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (store, path) = busy_store(dir.path()).await;
        let clone = store.clone();
        assert!(
            open_handles(&path).len() > 3,
            "the busy store holds several connections: {:?}",
            open_handles(&path)
        );
        store.close().await.unwrap();
        assert_eq!(
            open_handles(&path),
            Vec::<PathBuf>::new(),
            "close leaves no file open, the scans' own connections included"
        );
        assert!(
            !sibling(&path, "-wal").exists() && !sibling(&path, "-shm").exists(),
            "the last connection's close checkpointed and removed the log"
        );
        assert_eq!(
            clone
                .get_dek(&TenantId::new("any").unwrap(), credvault::DekVersion::FIRST)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Unavailable,
            "a clone of a closed store is closed too"
        );
        // Everything acknowledged is in the database file itself.
        let reopened = SqliteStore::open(&path).await.unwrap();
        assert_eq!(reopened.scan_secrets(None, 100).await.unwrap().len(), 16);
        reopened.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn close_checkpoints_the_log_while_another_process_keeps_the_file_open() {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (store, path) = busy_store(dir.path()).await;
        // Another process's store on the same file, with a connection open.
        let other = SqliteStore::open(&path).await.unwrap();
        assert_eq!(other.scan_secrets(None, 100).await.unwrap().len(), 16);
        assert!(
            std::fs::metadata(sibling(&path, "-wal")).unwrap().len() > 0,
            "the writes sit in the log before the close"
        );
        store.close().await.unwrap();
        assert_eq!(
            std::fs::metadata(sibling(&path, "-wal")).unwrap().len(),
            0,
            "close copied the log into the database file and emptied it"
        );
        assert_eq!(other.scan_secrets(None, 100).await.unwrap().len(), 16);
        other.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_vault_over_a_shared_store_closes_that_store() {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("vault.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let vault = Vault::builder_with_store(
            Arc::clone(&store),
            MasterKeyRing::new(LocalMasterKey::generate().unwrap()),
        )
        .build()
        .unwrap();
        let (t, n) = (
            TenantId::new("acme").unwrap(),
            SecretName::new("k").unwrap(),
        );
        vault.create_tenant(&t).await.unwrap();
        vault.put(&t, &n, &ApiKey::new("k-1")).await.unwrap();
        vault.close().await.unwrap();
        let err = vault.get::<ApiKey>(&t, &n).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        let err = vault.put(&t, &n, &ApiKey::new("k-2")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert_eq!(
            store.list_tenants(None, 1).await.unwrap_err().kind(),
            ErrorKind::Unavailable,
            "the shared store itself is closed"
        );
        vault.close().await.unwrap();
    }
}

/// A database file that cannot be opened (its directory does not exist) is `Unavailable`,
/// as `SqliteStore::open` documents, not a generic storage failure.
#[tokio::test]
async fn a_file_that_cannot_be_opened_is_unavailable() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let err = SqliteStore::open(dir.path().join("missing").join("x.db"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), credvault::ErrorKind::Unavailable, "{err}");
}

/// A store over a caller's pool cannot know whether its connections zero deleted content
/// (`secure_delete`), so it never reports erasure as complete; a store it opened itself does.
#[tokio::test]
async fn erasure_over_a_callers_pool_is_reported_as_pending() {
    use credvault::storage::{Erasure, Store};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("pool.db");
    let own = SqliteStore::open(&path).await.unwrap();
    assert_eq!(own.erase_deleted().await.unwrap(), Erasure::Complete);
    own.close().await.unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let pool = sqlx::sqlite::SqlitePool::connect_with(options)
        .await
        .unwrap();
    let theirs = SqliteStore::from_pool(pool).await.unwrap();
    assert!(
        matches!(theirs.erase_deleted().await.unwrap(), Erasure::Pending(what) if what.contains("secure_delete"))
    );
    theirs.close().await.unwrap();
}
