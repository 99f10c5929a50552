//! Key rotation: master-key rewrap and tenant-key rotation with re-encryption.
//!
//! Every job here is a sequence of conditional writes, each of which leaves every
//! committed secret readable:
//! - a rewrap replaces one wrapped data key by the same key wrapped under the active
//!   master key (the old master key stays in the ring until nothing needs it);
//! - a tenant rotation creates the new data-key version before demoting the old one;
//! - a re-encryption replaces one secret row by the same plaintext sealed under the active
//!   version, only if the row is unchanged since it was read, and never destroys a key.
//!
//! So a job interrupted at any point is finished by running it again, and two copies of a
//! job (or a job and ordinary writers) can run at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::jobs::{
    JobFailure, JobOptions, Progress, ReencryptReport, RewrapReport, beside, stops_the_job,
};
use super::sweep::Move;
use super::{Inner, Vault};
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, SecretName, TenantId};
use crate::keys::{MasterKeyRing, WrapContext};
use crate::storage::{DekRecord, DekState, PutMode, SecretRecord, Timestamp};

/// Conditional-write retries before a single item is reported as failed.
const MAX_CAS_ATTEMPTS: usize = 32;
/// Passes of a re-encryption sweep: later passes pick up rows that writers with a stale
/// view of the active key wrote under an old version while the sweep ran.
const MAX_PASSES: usize = 3;

impl Vault {
    /// How many live (not destroyed) data keys each master key wraps. A master key whose
    /// count is zero can be retired ([`Self::retire_master_key`]).
    ///
    /// # Errors
    /// A storage error.
    pub async fn master_key_usage(&self) -> Result<BTreeMap<MasterKeyId, u64>, Error> {
        self.inner.store.count_deks_by_master_key().await
    }

    /// Removes a master key from this vault's ring, after checking that no live data key
    /// is still wrapped under it.
    ///
    /// # Errors
    /// [`Error::InUse`] if it is the active key or still wraps a data key;
    /// [`Error::UnknownMasterKey`] if the ring does not hold it; a storage error.
    pub async fn retire_master_key(&self, id: &MasterKeyId) -> Result<(), Error> {
        let ring = self.inner.ring();
        if ring.active().id() == id {
            return Err(Error::InUse {
                what: "the active master key cannot be retired",
            });
        }
        ring.get(id)?;
        if self.master_key_usage().await?.get(id).copied().unwrap_or(0) > 0 {
            return Err(Error::InUse {
                what: "the master key still wraps data keys; run rewrap_all first",
            });
        }
        let mut retired = MasterKeyRing::from_arc(Arc::clone(ring.active()));
        for other in ring
            .ids()
            .filter(|other| *other != id && *other != ring.active().id())
        {
            retired = retired.with_decrypt_only_arc(Arc::clone(ring.get(other)?))?;
        }
        self.set_master_keys(retired);
        tracing::info!(master_key_id = %id, "master key retired from the ring");
        Ok(())
    }

    /// Rewraps every live data key of every tenant under the active master key. No secret
    /// is re-encrypted and no plaintext data key leaves the crate. Safe while other
    /// instances read and write, and while another rewrap runs; resumable and idempotent.
    ///
    /// `progress` is called after each batch. Inside a tokio runtime the reads and the
    /// master-key work run as a task of their own (spawned, and awaited before this
    /// returns), so on a multi-threaded runtime they overlap the writes.
    ///
    /// # Errors
    /// A storage error that stops the sweep (run it again to resume). Keys that cannot be
    /// unwrapped are reported in [`RewrapReport::failures`] instead.
    pub async fn rewrap_all<P>(
        &self,
        options: &JobOptions,
        mut progress: P,
    ) -> Result<RewrapReport, Error>
    where
        P: FnMut(Progress) + Send,
    {
        let ring = self.inner.ring();
        let active_id = ring.active().id().clone();
        let (pages, mut rewrapped) = tokio::sync::mpsc::channel(1);
        let stage = rewrap_pages(
            Arc::clone(&self.inner),
            Arc::clone(&ring),
            options.batch_size,
            pages,
        );
        // The receiver moves into the write stage, so that the read stage stops at its next
        // hand-over once the write stage has ended.
        let write = async move {
            let mut report = RewrapReport::default();
            let total = self
                .master_key_usage()
                .await?
                .iter()
                .filter(|(id, _)| **id != active_id)
                .map(|(_, n)| n)
                .sum();
            while let Some(page) = rewrapped.recv().await {
                let (writes, mut scratch) = page?;
                report.examined += scratch.examined;
                report.already_current += scratch.already_current;
                report.failures.append(&mut scratch.failures);
                self.inner
                    .write_rewrapped(&ring, writes, &mut report)
                    .await?;
                progress(Progress {
                    done: report.rewrapped + report.failures.len() as u64,
                    total,
                    errors: report.failures.len() as u64,
                });
            }
            Ok::<_, Error>(report)
        };
        let report = beside(stage, write).await?;
        tracing::info!(
            rewrapped = report.rewrapped,
            failures = report.failures.len(),
            "rewrap finished"
        );
        Ok(report)
    }

    /// [`Self::rewrap_all`] for one tenant.
    ///
    /// # Errors
    /// A storage error.
    pub async fn rewrap_tenant(&self, tenant: &TenantId) -> Result<RewrapReport, Error> {
        let ring = self.inner.ring();
        let mut report = RewrapReport::default();
        for record in self.inner.store.list_deks(tenant).await? {
            if record.state == DekState::Destroyed {
                continue;
            }
            report.examined += 1;
            if record.wrapped.master_key_id() == ring.active().id() {
                report.already_current += 1;
            } else {
                self.inner
                    .rewrap_one(&ring, tenant, record.version, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Makes a new data-key version the tenant's active key; older versions become
    /// decrypt-only. Returns the new active version. Secrets stay under their old versions
    /// until [`Self::reencrypt_tenant`] moves them.
    ///
    /// The new version is written before the old one is demoted, so a crash in between
    /// leaves two active versions, of which the higher is used.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`]; a key-provider or storage error.
    pub async fn rotate_tenant_key(&self, tenant: &TenantId) -> Result<DekVersion, Error> {
        let deks = self.inner.store.list_deks(tenant).await?;
        if !deks.iter().any(|r| r.state == DekState::Active) {
            return Err(Error::TenantNotFound);
        }
        let newest = deks
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(DekVersion::FIRST);
        let next = newest
            .next()
            .ok_or(Error::Config("data key versions exhausted"))?;
        let record = self.inner.mint_dek(tenant, next).await?;
        match self.inner.put_dek(record, PutMode::Create).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.inner.demote_older_actives(tenant).await?;
        self.inner.active.remove_tenant(tenant);
        tracing::info!(tenant = %tenant, dek_version = next.get(), "tenant key rotated");
        Ok(next)
    }

    /// Re-encrypts every secret of `tenant` that is not under its active data-key version,
    /// in batches of conditional writes: a concurrent write to a secret wins and is not
    /// overwritten. Resumable and idempotent; safe to run concurrently with writers.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`]; a storage error that stops the sweep. Secrets that cannot
    /// be re-encrypted are reported in [`ReencryptReport::failures`].
    pub async fn reencrypt_tenant(
        &self,
        tenant: &TenantId,
        options: &JobOptions,
    ) -> Result<ReencryptReport, Error> {
        let mut report = ReencryptReport::default();
        let mut failed = BTreeSet::new();
        self.inner.active.remove_tenant(tenant);
        self.inner
            .reencrypt_tenant_into(tenant, options, &mut report, &mut failed, &mut |_| {})
            .await?;
        Ok(report)
    }

    /// [`Self::reencrypt_tenant`] for every tenant, with progress after each batch. Writes
    /// are batched across tenants (`batch_size` rows per round trip), so the sweep costs
    /// about one transaction per batch, not one per tenant; memory use is bounded by the
    /// batch size, whatever the number of secrets. Inside a tokio runtime the reads and
    /// the crypto run as tasks of their own (spawned, and awaited before this returns), so
    /// on a multi-threaded runtime they overlap the writes; rows are still written one
    /// batch after the other.
    ///
    /// # Errors
    /// As [`Self::reencrypt_tenant`].
    pub async fn reencrypt_all<P>(
        &self,
        options: &JobOptions,
        mut progress: P,
    ) -> Result<ReencryptReport, Error>
    where
        P: FnMut(Progress) + Send,
    {
        let inner = &self.inner;
        let mut report = ReencryptReport::default();
        let mut conflicted = BTreeSet::new();
        let tick = |r: &ReencryptReport, total: u64| Progress {
            done: r.reencrypted + r.skipped_concurrent_write + r.failures.len() as u64,
            total,
            errors: r.failures.len() as u64,
        };
        let mut on_round = |r: &ReencryptReport, total: u64| progress(tick(r, total));
        let total = inner
            .sweep_all(
                options.batch_size,
                &mut report,
                &mut conflicted,
                &mut on_round,
            )
            .await?;
        // Tenants where a concurrent write won: sweep them again (their writers may have
        // used an old version until their active-key TTL expired).
        for tenant in &conflicted {
            let mut failed = BTreeSet::new();
            let mut on_batch = |r: &ReencryptReport| progress(tick(r, total));
            match inner
                .reencrypt_tenant_into(tenant, options, &mut report, &mut failed, &mut on_batch)
                .await
            {
                Ok(()) | Err(Error::TenantNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            reencrypted = report.reencrypted,
            failures = report.failures.len(),
            "re-encryption finished"
        );
        Ok(report)
    }
}

/// What the read stage of [`Vault::rewrap_all`] hands over: a page's writes and what it
/// found so far, or the error that stopped it.
type RewrapHanded = Result<(Vec<(DekRecord, PutMode)>, RewrapReport), Error>;

/// The read stage of [`Vault::rewrap_all`]: reads the live data keys page by page,
/// rewraps each page's keys under the active master key of `ring` (the master-key work:
/// on a KMS, its round trips) and hands the page's writes over, until the scan ends, it
/// fails, or the write stage stops. Pages hold different records, and the writes are
/// conditional, so a page may be read while the one before it is written.
async fn rewrap_pages(
    inner: Arc<Inner>,
    ring: Arc<MasterKeyRing>,
    batch: usize,
    out: tokio::sync::mpsc::Sender<RewrapHanded>,
) {
    let mut after: Option<(TenantId, DekVersion)> = None;
    loop {
        let page = match inner
            .store
            .scan_live_deks(after.as_ref().map(|(t, v)| (t, *v)), batch)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let last = page.len() < batch;
        after = page.last().map(|r| (r.tenant.clone(), r.version));
        let mut scratch = RewrapReport::default();
        let writes = inner.rewrap_page(&ring, page, &mut scratch).await;
        // A closed channel: the write stage stopped, and reports why.
        if out.send(Ok((writes, scratch))).await.is_err() || last {
            return;
        }
    }
}

pub(crate) fn dek_failure(tenant: &TenantId, version: DekVersion, e: &Error) -> JobFailure {
    JobFailure {
        tenant: tenant.clone(),
        name: None,
        dek_version: Some(version),
        kind: e.kind(),
    }
}

impl Inner {
    /// The writes that move one scanned page of data keys to the active master key of
    /// `ring`.
    async fn rewrap_page(
        &self,
        ring: &MasterKeyRing,
        page: Vec<DekRecord>,
        report: &mut RewrapReport,
    ) -> Vec<(DekRecord, PutMode)> {
        let active_id = ring.active().id();
        let mut writes = Vec::new();
        for record in page.into_iter().filter(|r| r.state != DekState::Destroyed) {
            report.examined += 1;
            if record.wrapped.master_key_id() == active_id {
                report.already_current += 1;
                continue;
            }
            let expected = record.row_version;
            let (tenant, version) = (record.tenant.clone(), record.version);
            match self.rewrapped(ring, record).await {
                Ok(new) => writes.push((new, PutMode::Update(expected))),
                Err(e) => report.failures.push(dek_failure(&tenant, version, &e)),
            }
        }
        writes
    }

    /// `record` with its key rewrapped under the active master key of `ring`.
    async fn rewrapped(
        &self,
        ring: &MasterKeyRing,
        mut record: DekRecord,
    ) -> Result<DekRecord, Error> {
        let old_id = record.wrapped.master_key_id().clone();
        let old = ring.get(&old_id)?;
        let active = ring.active();
        let tenant = record.tenant.clone();
        let context = |id| WrapContext {
            tenant: &tenant,
            dek_version: record.version,
            suite: record.suite,
            master_key_id: id,
        };
        let dek = old.unwrap(&record.wrapped, &context(&old_id)).await?;
        record.wrapped = active.wrap(&dek, &context(active.id())).await?;
        record.updated_at = Timestamp::now();
        Ok(record)
    }

    /// Writes a page of rewrapped data keys in one batch; a key whose conditional write
    /// lost (a block reservation, another rewrap) is re-read and redone.
    async fn write_rewrapped(
        &self,
        ring: &MasterKeyRing,
        writes: Vec<(DekRecord, PutMode)>,
        report: &mut RewrapReport,
    ) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let keys: Vec<_> = writes
            .iter()
            .map(|(r, _)| (r.tenant.clone(), r.version))
            .collect();
        let results = self.put_deks(writes).await?;
        for ((tenant, version), result) in keys.into_iter().zip(results) {
            match result {
                Ok(_) => report.rewrapped += 1,
                Err(_) => self.rewrap_one(ring, &tenant, version, report).await?,
            }
        }
        Ok(())
    }

    /// Rewraps one data key, re-reading it after each lost conditional write.
    async fn rewrap_one(
        &self,
        ring: &MasterKeyRing,
        tenant: &TenantId,
        version: DekVersion,
        report: &mut RewrapReport,
    ) -> Result<(), Error> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(record) = self.store.get_dek(tenant, version).await? else {
                return Ok(());
            };
            if record.state == DekState::Destroyed
                || record.wrapped.master_key_id() == ring.active().id()
            {
                report.already_current += 1;
                return Ok(());
            }
            let expected = record.row_version;
            let new = match self.rewrapped(ring, record).await {
                Ok(new) => new,
                Err(e) => {
                    report.failures.push(dek_failure(tenant, version, &e));
                    return Ok(());
                }
            };
            match self.put_dek(new, PutMode::Update(expected)).await {
                Ok(_) => {
                    report.rewrapped += 1;
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => report.retries += 1,
                Err(e) => return Err(e),
            }
        }
        report.failures.push(dek_failure(
            tenant,
            version,
            &Error::Conflict { what: "data key" },
        ));
        Ok(())
    }

    /// Demotes every active version below the newest active one to decrypt-only.
    pub(crate) async fn demote_older_actives(&self, tenant: &TenantId) -> Result<(), Error> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let deks = self.store.list_deks(tenant).await?;
            let Some(newest) = deks
                .iter()
                .filter(|r| r.state == DekState::Active)
                .map(|r| r.version)
                .max()
            else {
                return Ok(());
            };
            let mut conflicted = false;
            for record in deks
                .into_iter()
                .filter(|r| r.state == DekState::Active && r.version < newest)
            {
                let expected = record.row_version;
                let mut demoted = record;
                demoted.state = DekState::DecryptOnly;
                demoted.updated_at = Timestamp::now();
                match self.put_dek(demoted, PutMode::Update(expected)).await {
                    Ok(_) => {}
                    Err(Error::Conflict { .. }) => conflicted = true,
                    Err(e) => return Err(e),
                }
            }
            if !conflicted {
                return Ok(());
            }
        }
        Err(Error::Conflict { what: "data key" })
    }

    /// The re-encryption sweep of one tenant, accumulating into `report`.
    async fn reencrypt_tenant_into(
        &self,
        tenant: &TenantId,
        options: &JobOptions,
        report: &mut ReencryptReport,
        failed: &mut BTreeSet<SecretName>,
        tick: &mut (dyn FnMut(&ReencryptReport) + Send),
    ) -> Result<(), Error> {
        // Finish an interrupted rotation first: only the newest version may stay active.
        self.demote_older_actives(tenant).await?;
        for _ in 0..MAX_PASSES {
            let target = self.active_dek(tenant).await?.version;
            let mut moved = 0;
            let mut after: Option<SecretName> = None;
            loop {
                let page = self
                    .store
                    .list_secrets_not_under(tenant, target, after.as_ref(), options.batch_size)
                    .await?;
                let full = page.len() == options.batch_size;
                after = page.last().map(|r| r.metadata.name.clone());
                let mut writes = Vec::with_capacity(page.len());
                for record in page {
                    if failed.contains(&record.metadata.name) {
                        continue;
                    }
                    report.examined += 1;
                    match self.resealed(tenant, record).await {
                        Ok(write) => writes.push(write),
                        Err((_, e)) if stops_the_job(&e) => return Err(e),
                        Err((name, e)) => {
                            report.failures.push(JobFailure {
                                tenant: tenant.clone(),
                                name: Some(name.clone()),
                                dek_version: None,
                                kind: e.kind(),
                            });
                            failed.insert(name);
                        }
                    }
                }
                for result in self.reseal_secrets(writes).await? {
                    match result {
                        Ok(_) => {
                            report.reencrypted += 1;
                            moved += 1;
                        }
                        // A concurrent write won (its value stands), or the key changed
                        // since the page was sealed (the next pass moves it).
                        Err(_) => report.skipped_concurrent_write += 1,
                    }
                }
                tick(report);
                if !full {
                    break;
                }
            }
            if moved == 0 {
                break;
            }
        }
        Ok(())
    }

    /// `record` re-sealed under the tenant's active data key, as a conditional write. On
    /// failure, the secret's name and the error.
    async fn resealed(
        &self,
        tenant: &TenantId,
        record: SecretRecord,
    ) -> Result<super::SealedWrite, (SecretName, Error)> {
        let name = record.metadata.name.clone();
        let version = record.metadata.dek_version;
        let old = self
            .deks
            .get_or_load(tenant, version, || {
                self.unwrap_record(tenant, version, None)
            })
            .await
            .map_err(|e| (name.clone(), e))?;
        self.reseal(tenant, Move { record, old }, None)
            .await
            .map_err(|e| (name, e))
    }
}
