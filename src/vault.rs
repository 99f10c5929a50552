//! [`Vault`]: the API services call. It composes a [`Store`], a [`MasterKeyRing`] and the
//! in-process key caches; it is cheap to clone and safe to share between tasks and with
//! other processes that use the same store.

mod active;
mod builder;
mod janitor;
mod jobs;
mod lifecycle;
mod ops;
mod rotation;
mod sweep;

use std::sync::{Arc, PoisonError, RwLock};

pub use builder::{
    DEFAULT_MAX_ENCRYPTIONS_AES, DEFAULT_MAX_ENCRYPTIONS_XCHACHA, DEFAULT_MAX_SECRET_SIZE,
    MAX_SECRET_SIZE_LIMIT, VaultBuilder,
};
pub use jobs::{DeletionReceipt, JobFailure, JobOptions, Progress, ReencryptReport, RewrapReport};
pub use lifecycle::DekStatus;

use crate::error::Error;
use crate::ids::RowVersion;
use crate::keys::{DekCache, MasterKeyRing};
use crate::storage::{DekRecord, KeyCondition, MemoryStore, PutMode, SecretRecord, Store};

/// A secret write as the vault makes it: the record re-sealed or sealed anew, its mode, and
/// the key it was sealed under.
pub(crate) type SealedWrite = (SecretRecord, PutMode, KeyCondition);
use active::ActiveKeys;
use builder::Config;

/// An envelope-encrypted, multi-tenant secret store.
///
/// Each tenant has its own data keys (see [`Vault::create_tenant`]); every secret is sealed
/// under its tenant's current data key and bound to its tenant, name and kind. Clones share
/// one set of caches.
///
/// Several `Vault`s — in one process or in many — may share one store: every write that can
/// race is a conditional write in the store, never an in-process lock.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The same store when it is a [`MemoryStore`] handed to [`Vault::builder`] or
    /// [`Vault::new`]: `put` and `get` then call it synchronously (no boxed future, no copy
    /// of the row). Every other operation, and every other store, goes through `store`.
    memory: Option<Arc<MemoryStore>>,
    keys: RwLock<Arc<MasterKeyRing>>,
    config: Config,
    deks: DekCache,
    active: ActiveKeys,
    /// Ends the cache janitor's thread when the vault is dropped.
    _janitor: janitor::Janitor,
}

/// What [`Vault::create_tenant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantCreation {
    /// This call created the tenant's first data key.
    Created,
    /// The tenant already had an active data key (perhaps created concurrently by another
    /// instance a moment ago); nothing was written.
    AlreadyExisted,
}

impl Vault {
    /// Starts configuring a vault over `store`, with master keys `keys`.
    pub fn builder(store: impl Store, keys: MasterKeyRing) -> VaultBuilder {
        VaultBuilder::from_store(Arc::new(store), keys)
    }

    /// [`Self::builder`] for a store that is already shared (for example with another
    /// vault instance).
    pub fn builder_with_store(store: Arc<dyn Store>, keys: MasterKeyRing) -> VaultBuilder {
        VaultBuilder::new(store, keys)
    }

    /// A vault with default settings.
    pub fn new(store: impl Store, keys: MasterKeyRing) -> Self {
        VaultBuilder::from_store(Arc::new(store), keys).build_unchecked()
    }

    /// The store this vault writes to.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Shuts the vault down deliberately: forgets the data keys it holds unwrapped in
    /// memory and closes its store ([`Store::close`]): the operations under way finish,
    /// every connection is closed, and a SQLite store's write-ahead log is checkpointed into
    /// its file, all before this returns. Afterwards every operation of this vault, of its
    /// clones and of other vaults over the same store fails with [`Error::Unavailable`].
    ///
    /// Call it before a program exits or hands the database files on; dropping the last
    /// handle instead loses nothing acknowledged, but closes the connections in the
    /// background, at a moment the program does not see. A vault built over a shared
    /// store ([`Vault::builder_with_store`]) closes that store for everyone who shares it.
    ///
    /// # Errors
    /// The vault is closed whatever is returned; see [`Store::close`] for what an error
    /// reports.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.deks.clear();
        self.inner.active.clear();
        self.inner.store.close().await
    }

    /// The master keys this vault uses.
    #[must_use]
    pub fn master_keys(&self) -> Arc<MasterKeyRing> {
        self.inner.ring()
    }

    /// Replaces the master keys, for example to add a new active master key before
    /// [`Self::rewrap_all`]. Keys already unwrapped stay cached until their TTL; a key
    /// that wraps data keys must stay in the ring until [`Self::master_key_usage`] shows it
    /// wraps none (see [`Self::retire_master_key`]).
    pub fn set_master_keys(&self, keys: MasterKeyRing) {
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

impl Inner {
    /// Writes a data-key record under a fresh row version (the one path for the vault's
    /// key writes: a write that kept the version it read would let a concurrent writer's
    /// expectation pass).
    pub(crate) async fn put_dek(
        &self,
        mut record: DekRecord,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        record.row_version = crate::crypto::fresh_row_version();
        self.store.put_dek(record, mode).await
    }

    /// [`Self::put_dek`] for a batch.
    pub(crate) async fn put_deks(
        &self,
        mut batch: Vec<(DekRecord, PutMode)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        for (record, _) in &mut batch {
            record.row_version = crate::crypto::fresh_row_version();
        }
        self.store.put_deks(batch).await
    }

    /// Writes a secret record under a fresh row version, conditional on the key it was
    /// sealed under (the one path for the vault's secret writes through the [`Store`]
    /// trait).
    pub(crate) async fn put_secret(
        &self,
        mut record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        record.metadata.row_version = crate::crypto::fresh_row_version();
        self.store.put_secret(record, mode, key).await
    }

    /// Writes a secret re-sealed under a newer key: the same value, conditional on the row
    /// version it was read with and keeping it (a re-seal changes no value, so a
    /// concurrent read-modify-write of the secret, holding that version, still succeeds
    /// after it). The one path for the vault's re-encryption writes.
    pub(crate) async fn reseal_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        debug_assert!(matches!(mode, PutMode::Update(v) if v == record.metadata.row_version));
        self.store.put_secret(record, mode, key).await
    }

    /// [`Self::reseal_secret`] for a batch.
    pub(crate) async fn reseal_secrets(
        &self,
        batch: Vec<SealedWrite>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        debug_assert!(batch.iter().all(
            |(r, mode, _)| matches!(mode, PutMode::Update(v) if *v == r.metadata.row_version)
        ));
        self.store.put_secrets(batch).await
    }

    /// The current master key ring.
    pub(crate) fn ring(&self) -> Arc<MasterKeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("store", &self.inner.store.backend_name())
            .field("keys", &self.inner.ring())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
