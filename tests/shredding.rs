//! Crypto-shredding is physical on SQLite: after `delete_tenant`, no byte string of any
//! wrapped data key the tenant ever had (before and after a master-key rewrap) remains in
//! the database file or its write-ahead log, while the store is open and after it is closed;
//! another tenant's keys stay and open.
#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{name, tenant};
use credvault::storage::{SqliteOptions, Store};
use credvault::{ApiKey, LocalMasterKey, MasterKeyRing, SqliteStore, TenantId, Vault};

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

#[tokio::test]
async fn after_delete_tenant_no_wrapped_key_byte_remains_in_the_sqlite_files() {
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

    vault.delete_tenant(&acme).await.unwrap();
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
