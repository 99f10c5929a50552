//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::sync::Arc;

use credvault::storage::{DekRecord, PutMode, SecretRecord, Store};
use credvault::{LocalMasterKey, MasterKeyRing, MemoryStore, SecretName, TenantId, Vault};

pub(crate) fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub(crate) fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

pub(crate) fn master() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[7u8; 32]).unwrap()
}

pub(crate) fn ring() -> MasterKeyRing {
    MasterKeyRing::new(master())
}

/// One vault per backend, each over a fresh store.
pub(crate) async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut out = vec![("memory", Arc::new(MemoryStore::new()) as Arc<dyn Store>)];
    #[cfg(feature = "sqlite")]
    out.push((
        "sqlite",
        Arc::new(credvault::SqliteStore::open_in_memory().await.unwrap()) as Arc<dyn Store>,
    ));
    out
}

pub(crate) fn vault_over(store: &Arc<dyn Store>) -> Vault {
    Vault::builder_with_store(Arc::clone(store), ring())
        .build()
        .unwrap()
}

pub(crate) async fn raw_secret(
    store: &Arc<dyn Store>,
    t: &TenantId,
    n: &SecretName,
) -> SecretRecord {
    store.get_secret(t, n).await.unwrap().unwrap()
}

pub(crate) async fn overwrite_secret(store: &Arc<dyn Store>, record: SecretRecord) {
    store.put_secret(record, PutMode::Upsert).await.unwrap();
}

pub(crate) async fn overwrite_dek(store: &Arc<dyn Store>, record: DekRecord) {
    store.put_dek(record, PutMode::Upsert).await.unwrap();
}
