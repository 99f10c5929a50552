//! [`MemoryStore`]: records in process memory, for tests, examples and caches of nothing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{DekRecord, PutMode, SecretMetadata, SecretRecord, Store};
use crate::error::Error;
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};

/// A [`Store`] in process memory. Everything is lost when it is dropped; two processes
/// cannot share it. Cheap and exact, it is the reference backend of the conformance suite.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.read();
        f.debug_struct("MemoryStore")
            .field("tenants", &inner.deks.len())
            .field(
                "secrets",
                &inner.secrets.values().map(BTreeMap::len).sum::<usize>(),
            )
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    deks: BTreeMap<TenantId, BTreeMap<DekVersion, DekRecord>>,
    secrets: BTreeMap<TenantId, BTreeMap<SecretName, SecretRecord>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every mutation below is a single map operation: a panic cannot leave it half-done.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies `mode` to `slot`, returning the row version and `created_at` to store.
fn check_mode<T>(
    existing: Option<&T>,
    mode: PutMode,
    version_of: impl Fn(&T) -> RowVersion,
    what: &'static str,
) -> Result<RowVersion, Error> {
    let overflow = || Error::Conflict { what };
    match (mode, existing) {
        (PutMode::Create | PutMode::Upsert, None) => Ok(RowVersion::INITIAL),
        (PutMode::Create, Some(_)) => Err(Error::AlreadyExists { what }),
        (PutMode::Update(expected), Some(old)) if version_of(old) == expected => {
            expected.next().ok_or_else(overflow)
        }
        (PutMode::Update(_), _) => Err(Error::Conflict { what }),
        (PutMode::Upsert, Some(old)) => version_of(old).next().ok_or_else(overflow),
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        Ok(self
            .read()
            .deks
            .get(tenant)
            .and_then(|m| m.get(&version))
            .cloned())
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        Ok(self
            .read()
            .deks
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn put_dek(&self, mut record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        let mut inner = self.write();
        let versions = inner.deks.entry(record.tenant.clone()).or_default();
        let existing = versions.get(&record.version);
        let row_version = check_mode(existing, mode, |r| r.row_version, "data key")?;
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
        Ok(self
            .read()
            .secrets
            .get(tenant)
            .and_then(|m| m.get(name))
            .cloned())
    }

    async fn put_secret(
        &self,
        mut record: SecretRecord,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        let mut inner = self.write();
        let names = match inner.secrets.get_mut(record.metadata.tenant.as_str()) {
            Some(names) => names,
            None => inner
                .secrets
                .entry(record.metadata.tenant.clone())
                .or_default(),
        };
        // One lookup, and no key clone when a row is replaced in place.
        if let Some(existing) = names.get_mut(record.metadata.name.as_str()) {
            let row_version =
                check_mode(Some(&*existing), mode, |r| r.metadata.row_version, "secret")?;
            record.metadata.created_at = existing.metadata.created_at;
            record.metadata.row_version = row_version;
            *existing = record;
            return Ok(row_version);
        }
        let row_version = check_mode(
            None,
            mode,
            |r: &SecretRecord| r.metadata.row_version,
            "secret",
        )?;
        record.metadata.row_version = row_version;
        names.insert(record.metadata.name.clone(), record);
        Ok(row_version)
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let mut inner = self.write();
        let Some(names) = inner.secrets.get_mut(tenant) else {
            return Ok(false);
        };
        let Some(existing) = names.get(name) else {
            return Ok(false);
        };
        if expected.is_some_and(|v| v != existing.metadata.row_version) {
            return Err(Error::Conflict { what: "secret" });
        }
        names.remove(name);
        if names.is_empty() {
            inner.secrets.remove(tenant);
        }
        Ok(true)
    }

    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        let inner = self.read();
        let Some(names) = inner.secrets.get(tenant) else {
            return Ok(Vec::new());
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(names
            .range::<SecretName, _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.metadata.clone())
            .collect())
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        let inner = self.read();
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
        let inner = self.read();
        let mut out = Vec::new();
        let lower = after.map_or(Bound::Unbounded, |(t, _)| Bound::Included(t));
        for (tenant, names) in inner
            .secrets
            .range::<TenantId, _>((lower, Bound::Unbounded))
        {
            let start = match after {
                Some((t, n)) if t == tenant => Bound::Excluded(n),
                _ => Bound::Unbounded,
            };
            for (_, record) in names.range::<SecretName, _>((start, Bound::Unbounded)) {
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
        let inner = self.read();
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
        let mut inner = self.write();
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
        let inner = self.read();
        let Some(names) = inner.secrets.get(tenant) else {
            return Ok(Vec::new());
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(names
            .range::<SecretName, _>((lower, Bound::Unbounded))
            .filter(|(_, r)| r.metadata.dek_version != version)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }
}
