//! Which data key encrypts a tenant's new secrets, and durable nonce accounting.
//!
//! Random 96-bit nonces are safe for about 2^32 encryptions per key, so every encryption
//! is counted against the key's [`DekRecord::encryptions_reserved`]. A process reserves a
//! block of counts with one conditional write, spends it from an in-memory counter, and
//! reserves the next block when it runs out. Counts reserved but unused when a process
//! exits are forfeited: the stored figure is always an upper bound on real encryptions.
//! When a key's reservations reach the configured limit, the tenant is rolled to a new
//! data-key version (create-only, so racing processes end with exactly one new version)
//! and the old version becomes decrypt-only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::Inner;
use crate::error::Error;
use crate::ids::{DekVersion, RowVersion, TenantId};
use crate::keys::{CachedDek, DataKey, WrapContext};
use crate::storage::{DekRecord, DekState, PutMode, Timestamp};

/// Conditional-write retries before giving up with [`Error::Conflict`].
const MAX_CAS_ATTEMPTS: usize = 32;

/// The data key a tenant currently encrypts with, as known to this process.
pub(crate) struct ActiveDek {
    pub(crate) version: DekVersion,
    pub(crate) dek: Arc<CachedDek>,
    /// Encryptions left in this process's reserved block.
    remaining: AtomicU64,
    /// Serializes refills of this entry within the process.
    refill: tokio::sync::Mutex<()>,
    /// When the entry stops being used, on [`crate::clock::coarse_monotonic`]: a clock
    /// that never goes backwards, so no clock step can lengthen the TTL (an entry may
    /// outlive it by one kernel tick, a few milliseconds).
    expires: Duration,
}

impl ActiveDek {
    /// Whether the entry may still be used at `now` (a [`crate::clock::coarse_monotonic`]
    /// reading).
    fn is_fresh(&self, now: Duration) -> bool {
        now < self.expires
    }

    /// Spends one reserved encryption, if any is left.
    pub(crate) fn try_take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .is_ok()
    }
}

/// Per-tenant [`ActiveDek`]s, bounded in number and refreshed after a TTL.
pub(crate) struct ActiveKeys {
    map: Mutex<HashMap<TenantId, Arc<ActiveDek>, foldhash::fast::RandomState>>,
    capacity: usize,
}

impl ActiveKeys {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(
        &self,
    ) -> MutexGuard<'_, HashMap<TenantId, Arc<ActiveDek>, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, tenant: &TenantId) -> (Option<Arc<ActiveDek>>, Option<Arc<ActiveDek>>) {
        let now = crate::clock::coarse_monotonic();
        let map = self.lock();
        match map.get(tenant.as_str()) {
            Some(a) if a.is_fresh(now) => (Some(Arc::clone(a)), None),
            Some(a) => (None, Some(Arc::clone(a))),
            None => (None, None),
        }
    }

    /// The tenant's active key with one encryption already taken from this process's
    /// reserved block, if its entry is fresh and the block is not spent: what
    /// [`Inner::reserve_encryption`] does in the steady state, under one lock and without a
    /// future. `None` sends the caller to `reserve_encryption`.
    pub(crate) fn take_fresh(&self, tenant: &TenantId) -> Option<Arc<ActiveDek>> {
        let now = crate::clock::coarse_monotonic();
        let map = self.lock();
        let active = map.get(tenant.as_str())?;
        (active.is_fresh(now) && active.try_take()).then(|| Arc::clone(active))
    }

    fn insert(&self, tenant: &TenantId, active: Arc<ActiveDek>) {
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(tenant.as_str()) {
            let now = crate::clock::coarse_monotonic();
            // Full: drop the expired entries, or else an eighth of them, so that the scan is
            // paid once per many inserts rather than on every one. A dropped entry only
            // forfeits the rest of its reserved block.
            map.retain(|_, a| a.is_fresh(now));
            if map.len() >= self.capacity {
                let excess: Vec<TenantId> =
                    map.keys().take(self.capacity / 8 + 1).cloned().collect();
                for key in excess {
                    map.remove(key.as_str());
                }
            }
        }
        map.insert(tenant.clone(), active);
    }

    /// Forgets `tenant`'s entry if it is still `stale`.
    pub(crate) fn forget(&self, tenant: &TenantId, stale: &Arc<ActiveDek>) {
        let mut map = self.lock();
        if map.get(tenant).is_some_and(|a| Arc::ptr_eq(a, stale)) {
            map.remove(tenant);
        }
    }

    /// Forgets every entry of `tenant`.
    pub(crate) fn remove_tenant(&self, tenant: &TenantId) {
        self.lock().remove(tenant);
    }

    /// Forgets every expired entry (see [`crate::keys::DekCache::purge_expired`]); returns
    /// how many.
    pub(crate) fn purge_expired(&self) -> usize {
        let now = crate::clock::coarse_monotonic();
        let mut map = self.lock();
        let expired: Vec<Arc<ActiveDek>> = {
            let gone: Vec<TenantId> = map
                .iter()
                .filter(|(_, a)| !a.is_fresh(now))
                .map(|(t, _)| t.clone())
                .collect();
            gone.iter().filter_map(|t| map.remove(t)).collect()
        };
        drop(map);
        expired.len()
    }

    /// Number of entries (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Forgets every entry.
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.lock());
        drop(old);
    }
}

impl Inner {
    /// Unwraps `record` into a cache entry, checking that it is the record asked for.
    pub(crate) async fn unwrap_record(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        record: Option<DekRecord>,
    ) -> Result<CachedDek, Error> {
        let record = match record {
            Some(r) => r,
            None => self
                .store
                .get_dek(tenant, version)
                .await?
                .ok_or(Error::KeyMissing { version })?,
        };
        match record.state {
            DekState::Destroyed => return Err(Error::KeyDestroyed { version }),
            DekState::Retired => return Err(Error::KeyRetired { version }),
            DekState::Active | DekState::DecryptOnly | DekState::Compromised => {}
        }
        // A store that returns another row than the one asked for is caught here as well
        // as by the binding below.
        if &record.tenant != tenant || record.version != version {
            return Err(Error::Decryption);
        }
        let master_key_id = record.wrapped.master_key_id().clone();
        let provider = Arc::clone(self.ring().get(&master_key_id)?);
        let context = WrapContext {
            tenant,
            dek_version: version,
            suite: record.suite,
            master_key_id: &master_key_id,
        };
        let dek = provider.unwrap(&record.wrapped, &context).await?;
        let cipher = crate::crypto::SecretCipher::new(record.suite, &dek)?;
        tracing::debug!(dek_version = version.get(), "unwrapped a data key");
        Ok(CachedDek {
            cipher,
            suite: record.suite,
            wrapped: record.wrapped.as_bytes().into(),
        })
    }

    /// The unwrapped key of `record`, from the cache if the cached entry came from this very
    /// wrapped key. An entry unwrapped from another record under the same (tenant, version)
    /// (rewrapped since, or a deleted and re-created tenant whose old key is destroyed) is
    /// replaced, never used.
    pub(crate) async fn key_for(
        &self,
        tenant: &TenantId,
        record: DekRecord,
    ) -> Result<Arc<CachedDek>, Error> {
        let version = record.version;
        let dek = self
            .deks
            .get_or_load(tenant, version, || {
                self.unwrap_record(tenant, version, Some(record.clone()))
            })
            .await?;
        if *dek.wrapped == *record.wrapped.as_bytes() && dek.suite == record.suite {
            return Ok(dek);
        }
        self.deks.remove(tenant, version);
        self.deks
            .get_or_load(tenant, version, || {
                self.unwrap_record(tenant, version, Some(record))
            })
            .await
    }

    /// Wraps a fresh data key for `tenant` at `version` under the active master key.
    pub(crate) async fn mint_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<DekRecord, Error> {
        let dek = DataKey::generate()?;
        let provider = Arc::clone(self.ring().active());
        let suite = self.config.suite;
        let context = WrapContext {
            tenant,
            dek_version: version,
            suite,
            master_key_id: provider.id(),
        };
        let wrapped = provider.wrap(&dek, &context).await?;
        let now = Timestamp::now();
        Ok(DekRecord {
            tenant: tenant.clone(),
            version,
            state: DekState::Active,
            suite,
            wrapped,
            encryptions_reserved: 0,
            created_at: now,
            updated_at: now,
            // Drawn by `Inner::put_dek`.
            row_version: RowVersion(0),
        })
    }

    /// The tenant's active data key, from the cache or the store.
    pub(crate) async fn active_dek(&self, tenant: &TenantId) -> Result<Arc<ActiveDek>, Error> {
        let (fresh, expired) = self.active.fresh(tenant);
        if let Some(active) = fresh {
            return Ok(active);
        }
        let record = self.newest_active(tenant).await?;
        let version = record.version;
        let dek = self.key_for(tenant, record).await?;
        // Keep what is left of this process's block if the active version did not change.
        let carried = expired
            .filter(|old| old.version == version && Arc::ptr_eq(&old.dek, &dek))
            .map_or(0, |old| old.remaining.swap(0, Ordering::AcqRel));
        let active = Arc::new(ActiveDek {
            version,
            dek,
            remaining: AtomicU64::new(carried),
            refill: tokio::sync::Mutex::new(()),
            // Read after the store round trips, so that their time counts against nothing.
            expires: crate::clock::coarse_monotonic().saturating_add(self.config.active_key_ttl),
        });
        self.active.insert(tenant, Arc::clone(&active));
        Ok(active)
    }

    /// The record of the key that seals the tenant's new secrets: its newest version, which
    /// must be active. A lower version is never used, whatever state its record claims: a
    /// store writer who marks an old (perhaps compromised) key active again gains nothing.
    /// When the newest version is not active (a record edited in the store: every rotation
    /// writes the next version before it demotes the old one), a new version is created
    /// above it. A tenant whose newest version is destroyed has been deleted.
    async fn newest_active(&self, tenant: &TenantId) -> Result<DekRecord, Error> {
        for _ in 0..2 {
            let newest = self
                .store
                .list_deks(tenant)
                .await?
                .into_iter()
                .max_by_key(|r| r.version)
                .ok_or(Error::TenantNotFound)?;
            match newest.state {
                DekState::Active => return Ok(newest),
                DekState::Destroyed => return Err(Error::TenantNotFound),
                DekState::DecryptOnly | DekState::Compromised | DekState::Retired => {
                    let next = newest
                        .version
                        .next()
                        .ok_or(Error::Config("data key versions exhausted"))?;
                    tracing::warn!(
                        tenant = %tenant,
                        newest = newest.version.get(),
                        "the tenant's newest data key is not active; creating the next version"
                    );
                    let record = self.mint_dek(tenant, next).await?;
                    match self.put_dek(record, PutMode::Create).await {
                        Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(Error::Conflict { what: "data key" })
    }

    /// Reserves one encryption under the tenant's active key: from the in-memory block, or
    /// by reserving a new block in the store, or by rolling the tenant to a new version.
    /// Returns the key to encrypt with.
    pub(crate) async fn reserve_encryption(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<ActiveDek>, Error> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let active = self.active_dek(tenant).await?;
            if active.try_take() {
                return Ok(active);
            }
            let reserved = {
                let _guard = active.refill.lock().await;
                active.try_take() || self.reserve_block(tenant, &active).await?
            };
            if reserved {
                return Ok(active);
            }
            self.active.forget(tenant, &active);
        }
        Err(Error::Conflict { what: "data key" })
    }

    /// Reserves a block for `active` in the store and takes one count from it. Returns
    /// `false` if `active` is no longer the version to use (rotated, rolled or destroyed).
    async fn reserve_block(&self, tenant: &TenantId, active: &ActiveDek) -> Result<bool, Error> {
        // The limit of the suite the key was unwrapped for (bound into its wrap context),
        // never the record's suite column, which a store writer could edit.
        let max = self.config.max_encryptions(active.dek.suite);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let version = active.version;
            // Gone (the tenant deleted since), demoted, destroyed, or replaced by another key
            // under the same version (a deleted and re-created tenant): this entry must not
            // seal any more, and the caller looks the active key up again (which mints
            // nothing: a tenant without an active key is `TenantNotFound`).
            let Some(record) = self.store.get_dek(tenant, version).await? else {
                return Ok(false);
            };
            if record.state != DekState::Active
                || *record.wrapped.as_bytes() != *active.dek.wrapped
                || record.suite != active.dek.suite
            {
                return Ok(false);
            }
            let used = record.encryptions_reserved;
            let too_old = self.config.max_key_age.is_some_and(|age| {
                let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                Timestamp::now()
                    .as_millis()
                    .saturating_sub(record.created_at.as_millis())
                    >= age
            });
            if used >= max || too_old {
                self.roll(tenant, record).await?;
                return Ok(false);
            }
            let grant = self.config.reservation_block.min(max - used);
            let expected = record.row_version;
            let mut updated = record;
            updated.encryptions_reserved = used + grant;
            updated.updated_at = Timestamp::now();
            match self.put_dek(updated, PutMode::Update(expected)).await {
                Ok(_) => {
                    // One of the granted counts is this caller's.
                    active.remaining.fetch_add(grant - 1, Ordering::AcqRel);
                    tracing::trace!(dek_version = version.get(), grant, "reserved encryptions");
                    return Ok(true);
                }
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict { what: "data key" })
    }

    /// Rolls `tenant` from the exhausted `old` key to a new version. Create-only: if another
    /// process rolled first, its version is used. The new version is written before the old
    /// one is demoted, so a crash in between leaves two active versions, of which the
    /// higher is used.
    async fn roll(&self, tenant: &TenantId, old: DekRecord) -> Result<(), Error> {
        let next = old
            .version
            .next()
            .ok_or(Error::Config("data key versions exhausted"))?;
        let record = self.mint_dek(tenant, next).await?;
        match self.put_dek(record, PutMode::Create).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            from = old.version.get(),
            to = next.get(),
            "data key reached its usage limit; rolled"
        );
        let expected = old.row_version;
        let mut demoted = old;
        demoted.state = DekState::DecryptOnly;
        demoted.updated_at = Timestamp::now();
        match self.put_dek(demoted, PutMode::Update(expected)).await {
            Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
