//! Pluggable storage: the [`Store`] trait, its records, and the backends.
//!
//! A store keeps two kinds of records, both already encrypted by the vault:
//! - [`DekRecord`]: a tenant's data key, wrapped by a master key, with its state and its
//!   durable encryption count;
//! - [`SecretRecord`]: a secret's envelope plus non-secret [`SecretMetadata`].
//!
//! A store never sees a plaintext secret or an unwrapped key.
//!
//! Backends: [`MemoryStore`] (always available) and `SqliteStore` (feature `sqlite`, on
//! by default). A backend of your own is correct if it passes the conformance suite in
//! `storage::conformance` (feature `conformance`).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
mod faulty;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "fuzzing"
))]
pub(crate) mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

#[cfg(any(test, feature = "conformance"))]
pub use faulty::{CrashPoint, FaultyStore};
pub use memory::MemoryStore;
pub(crate) use memory::SecretWrite;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
pub use redis::{EvictionPolicyCheck, RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore};

use crate::crypto::Suite;
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use crate::keys::WrappedDek;
use crate::secret::SecretKind;

/// Milliseconds since the Unix epoch (UTC), as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    #[must_use]
    pub fn now() -> Self {
        Self(crate::clock::realtime_millis())
    }

    /// A timestamp from milliseconds since the epoch.
    #[must_use]
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// As a [`SystemTime`], or `None` if the platform cannot represent it (a stored value is
    /// untrusted, so this never panics).
    #[must_use]
    pub fn to_system_time(self) -> Option<SystemTime> {
        let magnitude = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
        })
    }
}

/// The life-cycle state of a data-key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DekState {
    /// Encrypts new secrets. A tenant's highest `Active` version is the one in use.
    Active,
    /// Decrypts what it sealed but encrypts nothing new.
    DecryptOnly,
    /// Crypto-shredded: the wrapped key bytes are erased; nothing it sealed can be opened.
    Destroyed,
    /// Suspected compromised: decrypts (so that re-encryption can move its secrets to a new
    /// key) but never encrypts; destroyed once nothing references it.
    Compromised,
    /// Below the tenant's minimum decryption version: its key material is kept until it is
    /// destroyed, but reads under it fail with [`Error::KeyRetired`].
    Retired,
}

impl DekState {
    /// The stored byte for this state.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Active => 1,
            Self::DecryptOnly => 2,
            Self::Destroyed => 3,
            Self::Compromised => 4,
            Self::Retired => 5,
        }
    }

    /// The state a stored byte names.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Active),
            2 => Some(Self::DecryptOnly),
            3 => Some(Self::Destroyed),
            4 => Some(Self::Compromised),
            5 => Some(Self::Retired),
            _ => None,
        }
    }
}

/// A tenant's data key, as stored: wrapped, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekRecord {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The data key's version.
    pub version: DekVersion,
    /// Its life-cycle state.
    pub state: DekState,
    /// The suite it encrypts secrets with (fixed for the key's lifetime).
    pub suite: Suite,
    /// The key, wrapped by a master key, with that master key's id.
    pub wrapped: WrappedDek,
    /// Encryptions reserved so far under this key (an upper bound on encryptions
    /// performed), reserved in blocks so that counting costs one write per block.
    pub encryptions_reserved: u64,
    /// When the key was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// The row version: the token of the write that stored this state of the record.
    pub row_version: RowVersion,
}

/// The non-secret description of a stored secret. Listing returns these without touching
/// any ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMetadata {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The secret's name.
    pub name: SecretName,
    /// What kind of secret it is.
    pub kind: SecretKind,
    /// The data-key version that sealed it.
    pub dek_version: DekVersion,
    /// When the secret was first stored.
    pub created_at: Timestamp,
    /// When it was last written.
    pub updated_at: Timestamp,
    /// The row version: the token of the write that stored this state of the record.
    pub row_version: RowVersion,
}

/// A stored secret: metadata plus the envelope (see `docs/format.md`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// The non-secret columns.
    pub metadata: SecretMetadata,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("metadata", &self.metadata)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

/// How a write treats an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Write only if no record exists; otherwise [`Error::AlreadyExists`].
    Create,
    /// Write only if the stored record has this row version; otherwise (including when no
    /// record exists) [`Error::Conflict`].
    Update(RowVersion),
    /// Create, or replace whatever is stored, atomically (the row version still changes,
    /// so concurrent conditional writers notice).
    Upsert,
}

/// How completely a store's own files are rid of the records deleted from it (what
/// [`Store::erase_deleted`] reports, and a [`crate::DeletionReceipt`] carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Erasure {
    /// No byte of a deleted or erased record remains in the store's files (backups and
    /// copies made before are another matter; see `SECURITY.md`).
    Complete,
    /// Bytes of deleted records remain until the operator or the server does what the
    /// sentence says.
    Pending(&'static str),
}

impl fmt::Display for Erasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Complete => f.write_str("erased from the store's files"),
            Self::Pending(what) => f.write_str(what),
        }
    }
}

/// What a secret write requires of the data key it was sealed under.
///
/// The vault seals a secret under the tenant's current data key as this process knows it,
/// then writes it with [`KeyCondition::SealedUnder`] that key's wrapped bytes: the store
/// checks, in the same atomic step as the write, that the key is still the current one. A
/// process whose view is stale (another instance rotated or destroyed the key, or deleted
/// and re-created the tenant) is told so ([`Error::KeyNotCurrent`]) instead of storing a
/// secret that no reader could open, and seals again under the current key.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyCondition {
    /// The write succeeds only if the data-key record of the secret's tenant and
    /// `dek_version` exists, is [`DekState::Active`] and holds exactly these wrapped bytes.
    SealedUnder(Arc<[u8]>),
    /// The write does not look at the data-key records (for tools and tests that write
    /// stored rows as they are; the vault never writes a secret this way).
    Unchecked,
}

impl fmt::Debug for KeyCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SealedUnder(wrapped) => f
                .debug_struct("SealedUnder")
                .field("wrapped_len", &wrapped.len())
                .finish(),
            Self::Unchecked => f.write_str("Unchecked"),
        }
    }
}

impl KeyCondition {
    /// The sealing key's wrapped bytes, or `None` for [`KeyCondition::Unchecked`] (what SQL
    /// backends bind, `NULL` meaning no condition).
    #[must_use]
    pub fn sealed_under(&self) -> Option<&[u8]> {
        match self {
            Self::SealedUnder(wrapped) => Some(wrapped),
            Self::Unchecked => None,
        }
    }

    /// Whether `dek`, the record of the written secret's tenant and data-key version (or
    /// `None` when there is none), satisfies the condition. For backends that check it in
    /// code; SQL backends state it in the write's `WHERE` clause.
    #[must_use]
    pub fn holds(&self, dek: Option<&DekRecord>) -> bool {
        match self {
            Self::Unchecked => true,
            Self::SealedUnder(wrapped) => dek
                .is_some_and(|d| d.state == DekState::Active && d.wrapped.as_bytes() == &**wrapped),
        }
    }
}

/// A storage backend.
///
/// # Contract
/// Every backend, ours or yours, must behave as follows; `storage::conformance` checks it.
/// - **Atomic conditional writes.** `put_*` with [`PutMode::Create`] fails with
///   [`Error::AlreadyExists`] if the record exists; with [`PutMode::Update`] it fails with
///   [`Error::Conflict`] unless the stored row version equals the expected one. The check
///   and the write are one atomic step, also against other processes sharing the backend.
/// - **Row versions.** Every successful write stores and returns the `row_version` of the
///   record passed in, which the caller draws afresh for each write (the vault draws 63
///   random bits; see [`RowVersion`]), so that a record deleted and created again never
///   takes up a version it had before. The store compares versions for equality only and
///   keeps every value from 1 to [`RowVersion::MAX`].
/// - **Key conditions.** A secret write with [`KeyCondition::SealedUnder`] checks the data-key
///   record it names in the same atomic step as its own condition; when the key condition
///   fails it writes nothing and fails with [`Error::KeyNotCurrent`] (which a batch reports
///   as that row's outcome). When both fail, either error may be reported.
/// - **Creation time is kept.** An update or upsert of an existing record keeps its stored
///   `created_at`.
/// - **Faithful storage.** Reads return exactly the bytes and values written; identifiers
///   are compared byte for byte (no case folding, no pattern matching).
/// - **Paged listing.** `list_secrets` returns the tenant's secrets with names strictly
///   greater than `after`, in ascending byte order, at most `limit` of them;
///   `list_tenants` does the same for tenants that have at least one data-key record.
///   Paging through a stable data set yields every record exactly once.
/// - **Errors.** A backend that cannot be reached returns [`Error::Unavailable`]; other
///   failures [`Error::Storage`]. Server text goes in `source()` only.
/// - **No secrets.** A store only ever receives ciphertext and wrapped keys; it must not
///   log record contents.
/// - **Closing.** After [`Store::close`] every operation fails with
///   [`Error::Unavailable`], promptly (never a hang).
#[async_trait]
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// A short name for errors and logs (`memory`, `sqlite`, ...).
    fn backend_name(&self) -> &'static str;

    /// Shuts the store down deliberately: waits for the operations under way to finish,
    /// then closes every connection the store holds, and returns once they are closed.
    /// Every clone of the store shares the closing. Afterwards every operation fails at
    /// once with [`Error::Unavailable`]; calling `close` again does nothing and succeeds.
    ///
    /// A program calls it (usually through [`crate::Vault::close`]) before it exits or
    /// hands the database to something else, so that it knows what the store wrote is
    /// settled: SQLite checkpoints its write-ahead log into the database file first.
    /// Dropping a store without closing it loses nothing that was acknowledged, but its
    /// connections then close in the background, at a moment the program does not see.
    ///
    /// A wrapper around another store forwards `close` to it.
    ///
    /// # Errors
    /// The store is closed whatever is returned. An error reports that it could not settle
    /// its files first ([`Error::Unavailable`]: SQLite could not checkpoint its log within
    /// the busy timeout because another process kept reading an older snapshot; the log
    /// stays beside the database, and every acknowledged write is in it).
    async fn close(&self) -> Result<(), Error>;

    /// Makes the records deleted or erased so far (a deleted tenant's destroyed data keys
    /// above all) unrecoverable from the store's own files as far as the backend can, and
    /// says what remains: [`Erasure::Complete`], or what the operator or the server still
    /// has to do. The vault calls it at the end of [`crate::Vault::delete_tenant`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn erase_deleted(&self) -> Result<Erasure, Error>;

    /// One data-key record.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error>;

    /// Every data-key record of `tenant`, in ascending version order.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error>;

    /// Writes a data-key record under `mode`; returns its new row version.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::Conflict`], [`Error::Unavailable`] or
    /// [`Error::Storage`].
    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error>;

    /// One secret record.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error>;

    /// Writes a secret record under `mode`, if `key` holds; returns its new row version.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::Conflict`], [`Error::KeyNotCurrent`],
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error>;

    /// Deletes a secret; with `expected`, only if its row version matches. Returns whether
    /// a record was deleted.
    ///
    /// # Errors
    /// [`Error::Conflict`] if `expected` does not match an existing record;
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error>;

    /// Up to `limit` secrets of `tenant` named after `after`, in ascending name order.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error>;

    /// Up to `limit` tenants that have data-key records, after `after`, ascending.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error>;

    /// Up to `limit` data-key records of all tenants, ordered by (tenant, version), strictly
    /// after `after`: the work list of a master-key rewrap sweep.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error>;

    /// [`Store::scan_deks`] without the destroyed records (tombstones): up to `limit` live
    /// data-key records of all tenants, ordered by (tenant, version), strictly after
    /// `after` (which may name a tombstone). The work list of a master-key rewrap, which
    /// has nothing to do for a destroyed key; a page shorter than `limit` is the last.
    ///
    /// The default implementation filters [`Store::scan_deks`] (it still reads the
    /// tombstones); SQL backends leave them out in the query.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn scan_live_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let mut out = Vec::new();
        let mut cursor = after.map(|(t, v)| (t.clone(), v));
        while out.len() < limit {
            let page = self
                .scan_deks(cursor.as_ref().map(|(t, v)| (t, *v)), limit)
                .await?;
            let last = page.len() < limit;
            cursor = page.last().map(|r| (r.tenant.clone(), r.version));
            // Records past the ones taken are read again by the next call, which starts
            // after the last record returned.
            let room = limit - out.len();
            out.extend(
                page.into_iter()
                    .filter(|r| r.state != DekState::Destroyed)
                    .take(room),
            );
            if last {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` whole secret records of all tenants (envelopes included), ordered by
    /// (tenant, name), strictly after `after`: the work list of a re-encryption sweep over
    /// every tenant.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error>;

    /// Deletes a data-key record; with `expected`, only if its row version matches.
    /// Returns whether a record was deleted. Used to remove a deleted tenant's tombstones.
    ///
    /// # Errors
    /// [`Error::Conflict`] if `expected` does not match an existing record;
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error>;

    /// Up to `limit` whole secret records of `tenant` (envelopes included) named after
    /// `after`, in ascending name order, whose data-key version is **not** `version`: the
    /// work list of a re-encryption sweep.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error>;

    /// How many of `tenant`'s secrets are sealed under each data-key version.
    ///
    /// The default implementation pages through [`Store::list_secrets`]; SQL backends
    /// answer with one grouped query.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn count_secrets_by_version(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<DekVersion, u64>, Error> {
        const PAGE: usize = 1000;
        let mut counts = BTreeMap::new();
        let mut after: Option<SecretName> = None;
        loop {
            let page = self.list_secrets(tenant, after.as_ref(), PAGE).await?;
            for m in &page {
                *counts.entry(m.dek_version).or_insert(0) += 1;
            }
            if page.len() < PAGE {
                return Ok(counts);
            }
            after = page.last().map(|m| m.name.clone());
        }
    }

    /// Secret counts per (tenant, data-key version) over all tenants, ordered by (tenant,
    /// version), strictly after `after`, at most `limit` groups: how a sweep sizes its work
    /// without reading any envelope.
    ///
    /// Tenants without data-key records may be left out. The default implementation
    /// combines [`Store::list_tenants`] and [`Store::count_secrets_by_version`]; SQL
    /// backends answer with one grouped query per page.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn count_secrets_by_tenant_version(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<(TenantId, DekVersion, u64)>, Error> {
        let mut out = Vec::new();
        if let Some((tenant, version)) = after {
            for (v, n) in self.count_secrets_by_version(tenant).await? {
                if v > version && out.len() < limit {
                    out.push((tenant.clone(), v, n));
                }
            }
        }
        let mut cursor = after.map(|(t, _)| t.clone());
        while out.len() < limit {
            let tenants = self.list_tenants(cursor.as_ref(), 100).await?;
            for tenant in &tenants {
                for (v, n) in self.count_secrets_by_version(tenant).await? {
                    if out.len() < limit {
                        out.push((tenant.clone(), v, n));
                    }
                }
            }
            if tenants.len() < 100 {
                break;
            }
            cursor = tenants.last().cloned();
        }
        Ok(out)
    }

    /// How many secrets are sealed under another data-key version than their tenant's
    /// newest active one: what [`crate::Vault::reencrypt_all`] has left to move, and its
    /// progress total. Tenants without an active key count nothing. A snapshot, which
    /// concurrent writes may change while it is taken.
    ///
    /// The default implementation merges [`Store::count_secrets_by_tenant_version`] with
    /// [`Store::scan_live_deks`], page by page; SQL backends answer with one aggregate
    /// query.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn count_secrets_to_reencrypt(&self) -> Result<u64, Error> {
        const PAGE: usize = 1000;
        let mut total = 0;
        let mut groups_after: Option<(TenantId, DekVersion)> = None;
        let mut keys = VecDeque::new();
        let mut keys_after: Option<(TenantId, DekVersion)> = None;
        let mut keys_done = false;
        // The tenant last looked up, and its newest active version.
        let mut target: Option<(TenantId, Option<DekVersion>)> = None;
        loop {
            let groups = self
                .count_secrets_by_tenant_version(groups_after.as_ref().map(|(t, v)| (t, *v)), PAGE)
                .await?;
            for (tenant, version, count) in &groups {
                if target.as_ref().is_none_or(|(t, _)| t != tenant) {
                    let mut newest = None;
                    loop {
                        if keys.is_empty() && !keys_done {
                            let page: Vec<DekRecord> = self
                                .scan_live_deks(keys_after.as_ref().map(|(t, v)| (t, *v)), PAGE)
                                .await?;
                            keys_done = page.len() < PAGE;
                            keys_after = page.last().map(|r| (r.tenant.clone(), r.version));
                            keys.extend(page);
                        }
                        match keys.front() {
                            Some(r) if r.tenant <= *tenant => {
                                if r.tenant == *tenant && r.state == DekState::Active {
                                    newest = newest.max(Some(r.version));
                                }
                                keys.pop_front();
                            }
                            _ => break,
                        }
                    }
                    target = Some((tenant.clone(), newest));
                }
                if let Some((_, Some(newest))) = &target
                    && newest != version
                {
                    total += count;
                }
            }
            if groups.len() < PAGE {
                return Ok(total);
            }
            groups_after = groups.last().map(|(t, v, _)| (t.clone(), *v));
        }
    }

    /// How many live (not destroyed) data keys each master key wraps, over all tenants.
    ///
    /// The default implementation pages through [`Store::scan_deks`]; SQL backends answer
    /// with one grouped query.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`].
    async fn count_deks_by_master_key(&self) -> Result<BTreeMap<MasterKeyId, u64>, Error> {
        const PAGE: usize = 1000;
        let mut usage = BTreeMap::new();
        let mut after: Option<(TenantId, DekVersion)> = None;
        loop {
            let page = self
                .scan_deks(after.as_ref().map(|(t, v)| (t, *v)), PAGE)
                .await?;
            for record in page.iter().filter(|r| r.state != DekState::Destroyed) {
                *usage
                    .entry(record.wrapped.master_key_id().clone())
                    .or_insert(0) += 1;
            }
            if page.len() < PAGE {
                return Ok(usage);
            }
            after = page.last().map(|r| (r.tenant.clone(), r.version));
        }
    }

    /// Several conditional secret writes, each with its key condition, in one round trip
    /// (one transaction, where the backend has them). Each write succeeds or fails on its
    /// own conditions, reported in the inner results in order; the outer error means the
    /// batch as a whole failed, after which any subset of it may have been applied (every
    /// write is conditional, so re-running it is safe).
    ///
    /// The default implementation writes one record at a time.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`] for the batch.
    async fn put_secrets(
        &self,
        batch: Vec<(SecretRecord, PutMode, KeyCondition)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let mut out = Vec::with_capacity(batch.len());
        for (record, mode, key) in batch {
            out.push(keep_conditional(self.put_secret(record, mode, key).await)?);
        }
        Ok(out)
    }

    /// [`Store::put_secrets`] for data-key records.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::Storage`] for the batch.
    async fn put_deks(
        &self,
        batch: Vec<(DekRecord, PutMode)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let mut out = Vec::with_capacity(batch.len());
        for (record, mode) in batch {
            out.push(keep_conditional(self.put_dek(record, mode).await)?);
        }
        Ok(out)
    }
}

/// Splits a write's result into a per-row outcome (a lost condition) and a batch failure
/// (anything else).
pub(crate) fn keep_conditional(
    result: Result<RowVersion, Error>,
) -> Result<Result<RowVersion, Error>, Error> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(
            e
            @ (Error::Conflict { .. } | Error::AlreadyExists { .. } | Error::KeyNotCurrent { .. }),
        ) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}
