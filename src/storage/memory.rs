//! [`MemoryStore`]: records in process memory, for tests, examples and caches of nothing.
//!
//! Secrets sit in hash maps (tenant, then name) for the point reads and writes of `get` and
//! `put`, beside ordered sets of the same keys for paged listing and scans. The vault calls
//! the synchronous [`MemoryStore::read_secret`] and [`MemoryStore::write_secret`] directly
//! when its store is a `MemoryStore` (no boxed future, no copy of the row); the [`Store`]
//! methods go through the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{
    DekRecord, Erasure, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store, Timestamp,
};
use crate::error::Error;
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};
use crate::secret::SecretKind;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A [`Store`] in process memory. Everything is lost when it is dropped; two processes
/// cannot share it. Cheap and exact, it is the reference backend of the conformance suite.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryStore")
            .field("tenants", &inner.deks.len())
            .field(
                "secrets",
                &inner.secrets.values().map(|t| t.rows.len()).sum::<usize>(),
            )
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    deks: BTreeMap<TenantId, BTreeMap<DekVersion, DekRecord>>,
    /// Secrets by tenant, then by name. A tenant is present only while it has a secret.
    secrets: FastMap<TenantId, TenantSecrets>,
    /// The keys of `secrets`, in order.
    secret_tenants: BTreeSet<TenantId>,
    /// Set by [`Store::close`], which also drops every record.
    closed: bool,
}

/// What every operation of a closed store returns.
fn closed() -> Error {
    Error::unavailable("memory", "the store was closed")
}

/// One tenant's secrets: the rows, and their names in order (the same set of keys).
#[derive(Default)]
struct TenantSecrets {
    rows: FastMap<SecretName, SecretRecord>,
    names: BTreeSet<SecretName>,
}

impl TenantSecrets {
    /// The rows named after `after`, in name order.
    fn rows_after<'a>(
        &'a self,
        after: Option<&SecretName>,
    ) -> impl Iterator<Item = &'a SecretRecord> + 'a {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.names
            .range::<SecretName, _>((lower, Bound::Unbounded))
            .filter_map(|name| self.rows.get(name))
    }
}

/// A secret row to write, borrowing its identifiers (see [`MemoryStore::write_secret`]).
pub(crate) struct SecretWrite<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) name: &'a SecretName,
    pub(crate) kind: SecretKind,
    pub(crate) dek_version: DekVersion,
    /// `created_at` of a new row; an existing row keeps its own.
    pub(crate) created_at: Timestamp,
    pub(crate) updated_at: Timestamp,
    /// The version to store (see [`RowVersion`]).
    pub(crate) row_version: RowVersion,
    pub(crate) envelope: Vec<u8>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The records, for reading; [`Error::Unavailable`] once the store is closed.
    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>, Error> {
        // Every mutation below is a single map operation: a panic cannot leave it half-done.
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if inner.closed {
            return Err(closed());
        }
        Ok(inner)
    }

    /// The records, for writing; [`Error::Unavailable`] once the store is closed.
    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>, Error> {
        let inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.closed {
            return Err(closed());
        }
        Ok(inner)
    }

    /// Calls `f` on the stored row of `tenant` / `name`, under the read lock, without
    /// copying it: [`Store::get_secret`] without the clone, for the vault's `get`.
    pub(crate) fn read_secret<T>(
        &self,
        tenant: &str,
        name: &str,
        f: impl FnOnce(&SecretRecord) -> T,
    ) -> Result<Option<T>, Error> {
        let inner = self.read()?;
        let row = inner.secrets.get(tenant).and_then(|t| t.rows.get(name));
        Ok(row.map(f))
    }

    /// [`Store::put_secret`] without a future and, when a row is replaced, without touching
    /// its identifiers: the row's fields and envelope are overwritten in place.
    pub(crate) fn write_secret(
        &self,
        row: SecretWrite<'_>,
        mode: PutMode,
        key: &KeyCondition,
    ) -> Result<RowVersion, Error> {
        let SecretWrite {
            tenant,
            name,
            kind,
            dek_version,
            created_at,
            updated_at,
            row_version,
            envelope,
        } = row;
        let mut inner = self.write()?;
        let dek = inner
            .deks
            .get(tenant.as_str())
            .and_then(|versions| versions.get(&dek_version));
        if !key.holds(dek) {
            return Err(Error::KeyNotCurrent {
                version: dek_version,
            });
        }
        if let Some(existing) = inner
            .secrets
            .get_mut(tenant.as_str())
            .and_then(|t| t.rows.get_mut(name.as_str()))
        {
            let row_version = check_mode(
                Some(&*existing),
                mode,
                |r| r.metadata.row_version,
                row_version,
                "secret",
            )?;
            let m = &mut existing.metadata;
            m.kind = kind;
            m.dek_version = dek_version;
            m.updated_at = updated_at;
            m.row_version = row_version;
            let old = std::mem::replace(&mut existing.envelope, envelope);
            drop(inner);
            // The old envelope is freed after the lock is released.
            drop(old);
            return Ok(row_version);
        }
        let row_version = check_mode(
            None,
            mode,
            |r: &SecretRecord| r.metadata.row_version,
            row_version,
            "secret",
        )?;
        let record = SecretRecord {
            metadata: SecretMetadata {
                tenant: tenant.clone(),
                name: name.clone(),
                kind,
                dek_version,
                created_at,
                updated_at,
                row_version,
            },
            envelope,
        };
        let Inner {
            secrets,
            secret_tenants,
            ..
        } = &mut *inner;
        let names = if let Some(names) = secrets.get_mut(tenant.as_str()) {
            names
        } else {
            secret_tenants.insert(tenant.clone());
            secrets.entry(tenant.clone()).or_default()
        };
        names.names.insert(name.clone());
        names.rows.insert(name.clone(), record);
        Ok(row_version)
    }
}

/// Applies `mode` to `existing`: `Ok(new)`, the version to store, when the write may
/// proceed.
fn check_mode<T>(
    existing: Option<&T>,
    mode: PutMode,
    version_of: impl Fn(&T) -> RowVersion,
    new: RowVersion,
    what: &'static str,
) -> Result<RowVersion, Error> {
    if new.0 == 0 || new.0 > RowVersion::MAX.0 {
        return Err(Error::invalid(
            "row version",
            "exceeds the range of a stored integer",
        ));
    }
    match (mode, existing) {
        (PutMode::Create | PutMode::Upsert, None) | (PutMode::Upsert, Some(_)) => Ok(new),
        (PutMode::Create, Some(_)) => Err(Error::AlreadyExists { what }),
        (PutMode::Update(expected), Some(old)) if version_of(old) == expected => Ok(new),
        (PutMode::Update(_), _) => Err(Error::Conflict { what }),
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    /// Nothing is kept anywhere but in this process's memory, whose freed blocks hold only
    /// ciphertext and wrapped keys.
    async fn erase_deleted(&self) -> Result<Erasure, Error> {
        drop(self.read()?);
        Ok(Erasure::Complete)
    }

    /// Drops every record (nothing else would ever read them) and refuses what follows.
    async fn close(&self) -> Result<(), Error> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let records = std::mem::take(&mut *inner);
        inner.closed = true;
        drop(inner);
        // The records are freed after the lock is released.
        drop(records);
        Ok(())
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        Ok(self
            .read()?
            .deks
            .get(tenant)
            .and_then(|m| m.get(&version))
            .cloned())
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        Ok(self
            .read()?
            .deks
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn put_dek(&self, mut record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        let mut inner = self.write()?;
        let versions = inner.deks.entry(record.tenant.clone()).or_default();
        let existing = versions.get(&record.version);
        let row_version = check_mode(
            existing,
            mode,
            |r| r.row_version,
            record.row_version,
            "data key",
        )?;
        if let Some(old) = existing {
            record.created_at = old.created_at;
        }
        record.row_version = row_version;
        versions.insert(record.version, record);
        Ok(row_version)
    }

    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        self.read_secret(tenant.as_str(), name.as_str(), SecretRecord::clone)
    }

    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        let SecretRecord { metadata, envelope } = record;
        self.write_secret(
            SecretWrite {
                tenant: &metadata.tenant,
                name: &metadata.name,
                kind: metadata.kind,
                dek_version: metadata.dek_version,
                created_at: metadata.created_at,
                updated_at: metadata.updated_at,
                row_version: metadata.row_version,
                envelope,
            },
            mode,
            &key,
        )
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let mut inner = self.write()?;
        let Some(names) = inner.secrets.get_mut(tenant) else {
            return Ok(false);
        };
        let Some(existing) = names.rows.get(name) else {
            return Ok(false);
        };
        if expected.is_some_and(|v| v != existing.metadata.row_version) {
            return Err(Error::Conflict { what: "secret" });
        }
        let removed = names.rows.remove(name);
        names.names.remove(name);
        if names.rows.is_empty() {
            inner.secrets.remove(tenant);
            inner.secret_tenants.remove(tenant);
        }
        drop(inner);
        drop(removed);
        Ok(true)
    }

    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        let inner = self.read()?;
        let Some(names) = inner.secrets.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(names
            .rows_after(after)
            .take(limit)
            .map(|r| r.metadata.clone())
            .collect())
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        let inner = self.read()?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .deks
            .range::<TenantId, _>((lower, Bound::Unbounded))
            .filter(|(_, versions)| !versions.is_empty())
            .take(limit)
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let inner = self.read()?;
        let mut out = Vec::new();
        let lower = after.map_or(Bound::Unbounded, |(t, _)| Bound::Included(t));
        for tenant in inner
            .secret_tenants
            .range::<TenantId, _>((lower, Bound::Unbounded))
        {
            let Some(names) = inner.secrets.get(tenant) else {
                continue;
            };
            let start = match after {
                Some((t, n)) if t == tenant => Some(n),
                _ => None,
            };
            for record in names.rows_after(start) {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(record.clone());
            }
        }
        Ok(out)
    }

    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let inner = self.read()?;
        let mut out = Vec::new();
        let lower = after.map_or(Bound::Unbounded, |(t, _)| Bound::Included(t));
        for (tenant, versions) in inner.deks.range::<TenantId, _>((lower, Bound::Unbounded)) {
            for (version, record) in versions {
                if out.len() >= limit {
                    return Ok(out);
                }
                if after.is_some_and(|(t, v)| tenant == t && *version <= v) {
                    continue;
                }
                out.push(record.clone());
            }
        }
        Ok(out)
    }

    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let mut inner = self.write()?;
        let Some(versions) = inner.deks.get_mut(tenant) else {
            return Ok(false);
        };
        let Some(existing) = versions.get(&version) else {
            return Ok(false);
        };
        if expected.is_some_and(|v| v != existing.row_version) {
            return Err(Error::Conflict { what: "data key" });
        }
        versions.remove(&version);
        if versions.is_empty() {
            inner.deks.remove(tenant);
        }
        Ok(true)
    }

    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let inner = self.read()?;
        let Some(names) = inner.secrets.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(names
            .rows_after(after)
            .filter(|r| r.metadata.dek_version != version)
            .take(limit)
            .cloned()
            .collect())
    }
}
