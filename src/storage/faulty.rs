//! [`FaultyStore`]: a wrapper that simulates a process crash at the k-th write, for
//! proving that every multi-write job (rotation, re-encryption, tenant deletion) can be
//! interrupted at any point and resumed (feature `conformance`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::{DekRecord, Erasure, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store};
use crate::error::Error;
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};

/// When the injected crash happens relative to the k-th write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The k-th write is not applied (the process died before the store saw it).
    BeforeWrite,
    /// The k-th write is applied but its acknowledgement is lost (the process died after
    /// the store committed it).
    AfterWrite,
}

/// Wraps a store and "crashes" at the k-th write: that write fails (applied or not, per
/// [`CrashPoint`]) and every later call fails too, as if the process had died. A fresh
/// vault over the inner store then plays the restarted process.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    crash_at: u64,
    point: CrashPoint,
    writes: AtomicU64,
    crashed: AtomicBool,
}

impl FaultyStore {
    /// Crashes at write number `crash_at` (1-based); 0 never crashes.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, crash_at: u64, point: CrashPoint) -> Self {
        Self {
            inner,
            crash_at,
            point,
            writes: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        }
    }

    /// Writes attempted so far (including the one that crashed).
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the crash has happened.
    #[must_use]
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn dead() -> Error {
        Error::unavailable("faulty", "injected crash")
    }

    fn check_alive(&self) -> Result<(), Error> {
        if self.crashed() {
            Err(Self::dead())
        } else {
            Ok(())
        }
    }

    /// Runs one write through the crash schedule.
    async fn write<T, F>(&self, op: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        self.check_alive()?;
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.crash_at {
            return op.await;
        }
        self.crashed.store(true, Ordering::SeqCst);
        if self.point == CrashPoint::AfterWrite {
            let _applied = op.await;
        }
        Err(Self::dead())
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("crash_at", &self.crash_at)
            .field("point", &self.point)
            .field("writes", &self.writes())
            .field("crashed", &self.crashed())
            .finish()
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend_name(&self) -> &'static str {
        "faulty"
    }

    async fn close(&self) -> Result<(), Error> {
        self.inner.close().await
    }

    async fn erase_deleted(&self) -> Result<Erasure, Error> {
        self.check_alive()?;
        self.inner.erase_deleted().await
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        self.check_alive()?;
        self.inner.get_dek(tenant, version).await
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        self.check_alive()?;
        self.inner.list_deks(tenant).await
    }

    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        self.write(self.inner.put_dek(record, mode)).await
    }

    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        self.check_alive()?;
        self.inner.get_secret(tenant, name).await
    }

    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        self.write(self.inner.put_secret(record, mode, key)).await
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        self.write(self.inner.delete_secret(tenant, name, expected))
            .await
    }

    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        self.check_alive()?;
        self.inner.list_secrets(tenant, after, limit).await
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        self.check_alive()?;
        self.inner.list_tenants(after, limit).await
    }

    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        self.check_alive()?;
        self.inner.scan_secrets(after, limit).await
    }

    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        self.check_alive()?;
        self.inner.scan_deks(after, limit).await
    }

    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        self.write(self.inner.delete_dek(tenant, version, expected))
            .await
    }

    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        self.check_alive()?;
        self.inner
            .list_secrets_not_under(tenant, version, after, limit)
            .await
    }

    // Batches go through the default one-at-a-time implementation, so a crash can land
    // between any two rows of a batch.
}
