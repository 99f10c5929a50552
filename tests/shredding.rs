//! Crypto-shredding is physical on SQLite: after `delete_tenant`, no byte string of any
//! wrapped data key the tenant ever had (before and after a master-key rewrap) remains in
//! the database file or its write-ahead log, while the store is open and after it is closed;
//! another tenant's keys stay and open. On Redis with AOF, the rewrite that deletion starts
//! leaves them out of the append-only file. Every deletion receipt says what erasure
//! remains.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{name, stores, tenant, vault_over};
use credvault::storage::{Erasure, Store};
use credvault::{ApiKey, TenantId};

/// The database file and whichever of its `-wal` and `-shm` files exist, with their bytes.
fn files(db: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            std::fs::read(&p).ok().map(|bytes| (p, bytes))
        })
        .collect()
}

fn count_in(files: &[(PathBuf, Vec<u8>)], needles: &[Vec<u8>]) -> usize {
    needles
        .iter()
        .filter(|n| {
            files
                .iter()
                .any(|(_, bytes)| bytes.windows(n.len()).any(|w| w == &n[..]))
        })
        .count()
}

/// Every wrapped key of `t` stored now.
async fn wrapped_keys(store: &Arc<dyn Store>, t: &TenantId) -> Vec<Vec<u8>> {
    store
        .list_deks(t)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.wrapped.as_bytes().to_vec())
        .filter(|w| !w.is_empty())
        .collect()
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn after_delete_tenant_no_wrapped_key_byte_remains_in_the_sqlite_files() {
    use credvault::storage::SqliteOptions;
    use credvault::{LocalMasterKey, MasterKeyRing, SqliteStore, Vault};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("shred.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::with_options(SqliteOptions::file(&path))
            .await
            .unwrap(),
    );
    let old_master = LocalMasterKey::from_bytes(&[1; 32]).unwrap();
    let vault = Vault::builder_with_store(Arc::clone(&store), MasterKeyRing::new(old_master))
        .with_reservation_block(1)
        .build()
        .unwrap();
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    for t in [&acme, &globex] {
        vault.create_tenant(t).await.unwrap();
        for i in 0..20 {
            vault
                .put(t, &name(&format!("s{i}")), &ApiKey::new(format!("{t}-{i}")))
                .await
                .unwrap();
        }
    }
    // Several versions, each key row written many times (one reservation per write), and a
    // master-key rewrap: every wrapped form the tenant's keys ever had.
    let mut shredded = wrapped_keys(&store, &acme).await;
    for _ in 0..2 {
        vault.rotate_tenant_key(&acme).await.unwrap();
        vault
            .reencrypt_tenant(&acme, &credvault::JobOptions::default())
            .await
            .unwrap();
        shredded.extend(wrapped_keys(&store, &acme).await);
    }
    vault.set_master_keys(
        MasterKeyRing::new(LocalMasterKey::from_bytes(&[2; 32]).unwrap())
            .with_decrypt_only(LocalMasterKey::from_bytes(&[1; 32]).unwrap())
            .unwrap(),
    );
    vault.rewrap_tenant(&acme).await.unwrap();
    shredded.extend(wrapped_keys(&store, &acme).await);
    shredded.sort();
    shredded.dedup();
    assert!(shredded.len() >= 6, "{} wrapped forms", shredded.len());
    let kept = wrapped_keys(&store, &globex).await;
    assert_eq!(
        count_in(&files(&path), &shredded),
        shredded.len(),
        "before the deletion the files hold every wrapped form (the scan finds them)"
    );

    let receipt = vault.delete_tenant(&acme).await.unwrap();
    assert_eq!(receipt.erasure, Erasure::Complete);
    assert_eq!(
        count_in(&files(&path), &shredded),
        0,
        "a destroyed key's bytes remain in the open store's files"
    );
    assert_eq!(
        count_in(&files(&path), &kept),
        kept.len(),
        "globex's keys are kept"
    );
    let read: ApiKey = vault.get(&globex, &name("s3")).await.unwrap();
    assert_eq!(read.expose_secret(), "globex-3");
    vault.close().await.unwrap();
    assert_eq!(
        count_in(&files(&path), &shredded),
        0,
        "a destroyed key's bytes remain in the closed store's files"
    );
}

/// Every backend's deletion receipt says whether erasure from the store's files is complete,
/// and if not, what remains to be done.
#[tokio::test]
async fn the_deletion_receipt_says_what_erasure_remains() {
    for (backend, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        vault.put(&t, &name("k"), &ApiKey::new("v")).await.unwrap();
        let erasure = vault.delete_tenant(&t).await.unwrap().erasure;
        match backend {
            "memory" | "sqlite" | "sqlite-in-memory" => {
                assert_eq!(erasure, Erasure::Complete, "{backend}");
            }
            "postgres" => assert!(
                matches!(erasure, Erasure::Pending(what) if what.contains("VACUUM FULL")),
                "{backend}: {erasure}"
            ),
            "redis" => assert!(
                matches!(erasure, Erasure::Pending(_)),
                "{backend}: {erasure}"
            ),
            other => panic!("no expectation for {other}"),
        }
    }
}

/// Redis with AOF persistence (a server of the test's own): the deleted tenant's wrapped keys
/// are in the append-only file after `delete_tenant`, and gone once the rewrite it started
/// has finished; another tenant's stay.
#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_with_aof_the_rewrite_leaves_the_destroyed_keys_out() {
    let Some(server) = common::PrivateRedis::start() else {
        return;
    };
    let url = server.url();
    let store: Arc<dyn Store> = Arc::new(credvault::RedisStore::connect(&url).await.unwrap());
    let vault = vault_over(&store);
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    for t in [&acme, &globex] {
        vault.create_tenant(t).await.unwrap();
        vault.put(t, &name("k"), &ApiKey::new("v")).await.unwrap();
    }
    vault.rotate_tenant_key(&acme).await.unwrap();
    let shredded = wrapped_keys(&store, &acme).await;
    let kept = wrapped_keys(&store, &globex).await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dir = PathBuf::from(dir.get(1).expect("CONFIG GET dir names the directory"));
    assert_eq!(
        count_in(&tree(&dir), &shredded),
        shredded.len(),
        "in the AOF before"
    );
    let erasure = vault.delete_tenant(&acme).await.unwrap().erasure;
    assert!(matches!(erasure, Erasure::Pending(what) if what.contains("BGREWRITEAOF")));
    let mut done = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            done = true;
            break;
        }
    }
    assert!(done, "the AOF rewrite did not finish within 10 s");
    assert_eq!(
        count_in(&tree(&dir), &shredded),
        0,
        "in the AOF after the rewrite"
    );
    assert_eq!(
        count_in(&tree(&dir), &kept),
        kept.len(),
        "globex's keys are kept"
    );
}

/// The contents of every file under `dir`.
#[cfg(feature = "redis")]
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(tree(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}
