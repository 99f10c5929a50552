//! A ciphertext or wrapped key copied to any other context fails to open: rows moved
//! across tenants, names, kinds and data-key versions; wrapped keys moved across tenants,
//! versions and master keys. A missing key is an error, never a reason to mint one.
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

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use credvault::keys::WrappedDek;
use credvault::storage::{DekRecord, MemoryStore, PutMode, SecretMetadata, SecretRecord, Store};
use credvault::{
    ApiKey, DekVersion, Error, ErrorKind, LocalMasterKey, MasterKeyRing, RowVersion, SecretBytes,
    SecretName, TenantId, Vault,
};

/// Every backend through the `Store` trait, plus a vault that owns its `MemoryStore`
/// (`Vault::builder`), whose `put` and `get` take the synchronous fast path: its checks
/// must refuse a moved row exactly as the general path does.
async fn setup() -> Vec<(Arc<dyn Store>, Vault)> {
    let mut vaults: Vec<(Arc<dyn Store>, Vault)> = stores()
        .await
        .into_iter()
        .map(|(_, store)| {
            let vault = vault_over(&store);
            (store, vault)
        })
        .collect();
    let owned = Vault::builder(MemoryStore::new(), ring()).build().unwrap();
    vaults.push((Arc::clone(owned.store()), owned));
    let mut out = Vec::new();
    for (store, vault) in vaults {
        for t in ["acme", "globex"] {
            vault.create_tenant(&tenant(t)).await.unwrap();
            vault
                .put(
                    &tenant(t),
                    &name("github"),
                    &ApiKey::new(format!("{t}-github")),
                )
                .await
                .unwrap();
            vault
                .put(
                    &tenant(t),
                    &name("gitlab"),
                    &ApiKey::new(format!("{t}-gitlab")),
                )
                .await
                .unwrap();
        }
        out.push((store, vault));
    }
    out
}

/// Gives `to` the same data key as `from` (properly wrapped for `to`'s context), so that a
/// copied row can only be refused by its associated data, not by a different key.
async fn share_data_key(store: &Arc<dyn Store>, from: &TenantId, to: &TenantId) {
    use credvault::keys::WrapContext;
    let key = master();
    let mut record = store
        .get_dek(from, DekVersion::FIRST)
        .await
        .unwrap()
        .unwrap();
    let id = credvault::MasterKeyProvider::id(&key).clone();
    let ctx = |tenant| WrapContext {
        tenant,
        dek_version: DekVersion::FIRST,
        suite: record.suite,
        master_key_id: &id,
    };
    let dek = credvault::MasterKeyProvider::unwrap(&key, &record.wrapped, &ctx(from))
        .await
        .unwrap();
    let wrapped = credvault::MasterKeyProvider::wrap(&key, &dek, &ctx(to))
        .await
        .unwrap();
    record.tenant = to.clone();
    record.wrapped = wrapped;
    overwrite_dek(store, record).await;
}

#[tokio::test]
async fn row_copied_to_other_tenant_with_the_same_data_key_fails_to_open() {
    for (store, _) in setup().await {
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        share_data_key(&store, &acme, &globex).await;
        let vault = vault_over(&store);
        // The shared key works for globex's own rows once they are sealed under it...
        vault
            .put(&globex, &name("own"), &ApiKey::new("globex-own"))
            .await
            .unwrap();
        assert_eq!(
            vault
                .get::<ApiKey>(&globex, &name("own"))
                .await
                .unwrap()
                .expose_secret(),
            "globex-own"
        );
        // ...but acme's row, copied under globex, is refused by the tenant in its AAD.
        let mut row = raw_secret(&store, &acme, &name("github")).await;
        row.metadata.tenant = globex.clone();
        overwrite_secret(&store, row).await;
        let err = vault
            .get::<ApiKey>(&globex, &name("github"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
    }
}

#[tokio::test]
async fn row_copied_to_other_tenant_fails_to_open() {
    for (store, vault) in setup().await {
        let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
        row.metadata.tenant = tenant("globex");
        overwrite_secret(&store, row).await;
        let err = vault
            .get::<ApiKey>(&tenant("globex"), &name("github"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
    }
}

#[tokio::test]
async fn row_copied_to_other_name_fails_to_open() {
    for (store, vault) in setup().await {
        let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
        row.metadata.name = name("gitlab");
        overwrite_secret(&store, row).await;
        let err = vault
            .get::<ApiKey>(&tenant("acme"), &name("gitlab"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
    }
}

#[tokio::test]
async fn reading_as_another_kind_is_a_kind_mismatch_and_relabelling_the_kind_fails_to_open() {
    for (store, vault) in setup().await {
        let (t, n) = (tenant("acme"), name("github"));
        let err = vault.get::<SecretBytes>(&t, &n).await.unwrap_err();
        assert!(matches!(err, Error::KindMismatch { .. }), "{err:?}");
        let mut row = raw_secret(&store, &t, &n).await;
        row.envelope[6] = credvault::SecretKind::Bytes.as_u8();
        overwrite_secret(&store, row).await;
        assert_eq!(
            vault.get::<SecretBytes>(&t, &n).await.unwrap_err().kind(),
            ErrorKind::Decryption
        );
    }
}

#[tokio::test]
async fn row_relabelled_to_another_dek_version_fails_to_open() {
    for (_, store) in stores().await {
        // Roll the tenant to version 2 by exhausting version 1 (limit 3, blocks of 1).
        let vault = Vault::builder_with_store(store.clone(), ring())
            .with_max_encryptions_per_key(3)
            .with_reservation_block(1)
            .build()
            .unwrap();
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        for i in 0..4 {
            vault
                .put(&t, &name(&format!("s{i}")), &ApiKey::new("x"))
                .await
                .unwrap();
        }
        let row = raw_secret(&store, &t, &name("s0")).await;
        assert_eq!(row.metadata.dek_version.get(), 1);
        assert_eq!(
            raw_secret(&store, &t, &name("s3"))
                .await
                .metadata
                .dek_version
                .get(),
            2
        );
        let mut relabelled = row.clone();
        relabelled.envelope[7..11].copy_from_slice(&2u32.to_be_bytes());
        overwrite_secret(&store, relabelled).await;
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("s0"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Decryption
        );
    }
}

#[tokio::test]
async fn wrapped_dek_copied_to_other_tenant_fails_to_unwrap() {
    for (store, _) in setup().await {
        let acme = store
            .get_dek(&tenant("acme"), DekVersion::FIRST)
            .await
            .unwrap()
            .unwrap();
        let mut globex = store
            .get_dek(&tenant("globex"), DekVersion::FIRST)
            .await
            .unwrap()
            .unwrap();
        globex.wrapped = acme.wrapped.clone();
        overwrite_dek(&store, globex).await;
        let fresh = vault_over(&store);
        assert_eq!(
            fresh
                .get::<ApiKey>(&tenant("globex"), &name("github"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Decryption
        );
        assert!(
            fresh
                .get::<ApiKey>(&tenant("acme"), &name("github"))
                .await
                .is_ok(),
            "other tenants are untouched"
        );
    }
}

#[tokio::test]
async fn wrapped_dek_relabelled_to_another_version_fails_to_unwrap() {
    for (store, _) in setup().await {
        let t = tenant("acme");
        let mut v1 = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        let wrapped = v1.wrapped.clone();
        v1.version = DekVersion::new(2).unwrap();
        store.put_dek(v1, PutMode::Create).await.unwrap();
        // Point a secret at version 2, whose record holds version 1's wrapped key.
        let mut row = raw_secret(&store, &t, &name("github")).await;
        row.envelope[7..11].copy_from_slice(&2u32.to_be_bytes());
        overwrite_secret(&store, row).await;
        assert_eq!(
            store
                .get_dek(&t, DekVersion::new(2).unwrap())
                .await
                .unwrap()
                .unwrap()
                .wrapped,
            wrapped
        );
        let err = vault_over(&store)
            .get::<ApiKey>(&t, &name("github"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
    }
}

#[tokio::test]
async fn wrapped_dek_attributed_to_another_master_key_fails_to_unwrap() {
    for (store, _) in setup().await {
        let other = LocalMasterKey::from_bytes(&[9u8; 32]).unwrap();
        let other_id = credvault::MasterKeyProvider::id(&other).clone();
        let ring = MasterKeyRing::new(master())
            .with_decrypt_only(other)
            .unwrap();
        let t = tenant("acme");
        let mut record = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        record.wrapped = WrappedDek::new(other_id, record.wrapped.as_bytes().to_vec());
        overwrite_dek(&store, record).await;
        let vault = Vault::builder_with_store(store.clone(), ring)
            .build()
            .unwrap();
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("github"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Decryption
        );
    }
}

#[tokio::test]
async fn unknown_master_key_is_an_error_naming_its_id() {
    for (store, _) in setup().await {
        let vault = Vault::builder_with_store(
            store.clone(),
            MasterKeyRing::new(LocalMasterKey::from_bytes(&[1u8; 32]).unwrap()),
        )
        .build()
        .unwrap();
        let err = vault
            .get::<ApiKey>(&tenant("acme"), &name("github"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownMasterKey);
        let expected_id = credvault::MasterKeyProvider::id(&master()).clone();
        assert!(err.to_string().contains(expected_id.as_str()), "{err}");
    }
}

/// A store that lost one tenant's data-key rows (an eviction, a manual delete).
#[derive(Debug)]
struct LostKeys {
    inner: Arc<dyn Store>,
    lost: TenantId,
}

#[async_trait]
impl Store for LostKeys {
    fn backend_name(&self) -> &'static str {
        "lost-keys"
    }
    async fn close(&self) -> Result<(), Error> {
        self.inner.close().await
    }
    async fn erase_deleted(&self) -> Result<credvault::storage::Erasure, Error> {
        self.inner.erase_deleted().await
    }
    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        if *tenant == self.lost {
            Ok(None)
        } else {
            self.inner.get_dek(tenant, version).await
        }
    }
    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        if *tenant == self.lost {
            Ok(Vec::new())
        } else {
            self.inner.list_deks(tenant).await
        }
    }
    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        self.inner.put_dek(record, mode).await
    }
    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        self.inner.get_secret(tenant, name).await
    }
    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: credvault::storage::KeyCondition,
    ) -> Result<RowVersion, Error> {
        self.inner.put_secret(record, mode, key).await
    }
    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        self.inner.delete_secret(tenant, name, expected).await
    }
    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        self.inner.list_secrets(tenant, after, limit).await
    }
    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        self.inner.list_tenants(after, limit).await
    }
    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        self.inner.scan_secrets(after, limit).await
    }
    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        self.inner.scan_deks(after, limit).await
    }
    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        self.inner.delete_dek(tenant, version, expected).await
    }
    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        self.inner
            .list_secrets_not_under(tenant, version, after, limit)
            .await
    }
}

#[tokio::test]
async fn missing_dek_row_is_an_error_and_no_key_is_minted() {
    for (store, _) in setup().await {
        let t = tenant("acme");
        let before = store.list_deks(&t).await.unwrap();
        let lossy: Arc<dyn Store> = Arc::new(LostKeys {
            inner: store.clone(),
            lost: t.clone(),
        });
        let vault = vault_over(&lossy);
        let err = vault.get::<ApiKey>(&t, &name("github")).await.unwrap_err();
        assert!(
            matches!(err, Error::KeyMissing { version } if version == DekVersion::FIRST),
            "{err:?}"
        );
        let err = vault
            .put(&t, &name("new"), &ApiKey::new("x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TenantNotFound);
        assert_eq!(
            store.list_deks(&t).await.unwrap(),
            before,
            "no data key was minted"
        );
        assert!(store.get_secret(&t, &name("new")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn metadata_columns_that_disagree_with_the_envelope_are_rejected() {
    for (store, vault) in setup().await {
        let (t, n) = (tenant("acme"), name("github"));
        let mut row = raw_secret(&store, &t, &n).await;
        row.metadata.dek_version = DekVersion::new(9).unwrap();
        overwrite_secret(&store, row).await;
        let err = vault.get::<ApiKey>(&t, &n).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    }
}
