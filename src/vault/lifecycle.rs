//! Tenant key life cycle: status, minimum decryption version, destruction of unused keys,
//! compromise handling, and tenant deletion (crypto-shredding).

use std::collections::BTreeMap;
use std::time::Duration;

use super::jobs::{DeletionReceipt, JobOptions};
use super::{Inner, Vault};
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, SecretName, TenantId};
use crate::keys::WrappedDek;
use crate::storage::{DekRecord, DekState, PutMode, Timestamp};

const MAX_CAS_ATTEMPTS: usize = 32;

/// One data-key version of a tenant, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DekStatus {
    /// The version.
    pub version: DekVersion,
    /// Its state.
    pub state: DekState,
    /// The master key that wraps it.
    pub master_key_id: MasterKeyId,
    /// Encryptions reserved under it so far.
    pub encryptions_reserved: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// How many of the tenant's secrets are sealed under it.
    pub secrets: u64,
}

impl Vault {
    /// Every data-key version of `tenant` with its state and the number of secrets still
    /// sealed under it: what an operator checks before raising the minimum decryption
    /// version or destroying old keys.
    ///
    /// # Errors
    /// A storage error.
    pub async fn key_status(&self, tenant: &TenantId) -> Result<Vec<DekStatus>, Error> {
        let counts = self.inner.secrets_per_version(tenant).await?;
        Ok(self
            .inner
            .store
            .list_deks(tenant)
            .await?
            .into_iter()
            .map(|r| DekStatus {
                version: r.version,
                state: r.state,
                master_key_id: r.wrapped.master_key_id().clone(),
                encryptions_reserved: r.encryptions_reserved,
                created_at: r.created_at,
                secrets: counts.get(&r.version).copied().unwrap_or(0),
            })
            .collect())
    }

    /// Refuses decryption under every data-key version below `min`: those versions become
    /// [`DekState::Retired`] and reads under them fail with [`Error::KeyRetired`]. Run
    /// [`Self::reencrypt_tenant`] first; this call refuses while a secret is still sealed
    /// under a version it would retire. Returns the versions retired.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `min` is above the active version; [`Error::InUse`] if a
    /// secret still needs a version below `min`; a storage error.
    pub async fn set_min_decryption_version(
        &self,
        tenant: &TenantId,
        min: DekVersion,
    ) -> Result<Vec<DekVersion>, Error> {
        let active = self.inner.active_dek(tenant).await?.version;
        if min > active {
            return Err(Error::invalid(
                "minimum decryption version",
                "above the active version",
            ));
        }
        // An older version still active (left over from an interrupted rotation) is
        // demoted first, and only then are the secrets counted: a version that is not
        // active can gain no secret (the store refuses writes sealed under it), so the
        // count stays true until the versions are retired.
        self.inner.demote_older_actives(tenant).await?;
        let counts = self.inner.secrets_per_version(tenant).await?;
        if counts.iter().any(|(v, n)| *v < min && *n > 0) {
            return Err(Error::InUse {
                what: "secrets are still sealed under a version below the minimum; re-encrypt first",
            });
        }
        let retired = self
            .inner
            .set_states(
                tenant,
                |r| {
                    r.version < min
                        && matches!(r.state, DekState::DecryptOnly | DekState::Compromised)
                },
                DekState::Retired,
            )
            .await?;
        for version in &retired {
            self.inner.deks.remove(tenant, *version);
        }
        Ok(retired)
    }

    /// Destroys every non-active data-key version of `tenant` that no secret references and
    /// that has not changed for `grace`. The wrapped key bytes are erased; the record stays
    /// as a tombstone. Returns the versions destroyed.
    ///
    /// Destruction is safe whatever the grace, zero included: the versions are chosen
    /// among those already not active *before* their secrets are counted, and a store
    /// accepts a secret sealed under a key only while that key is active
    /// ([`crate::storage::KeyCondition`]), so no writer, however stale its view, can add a
    /// secret under a version between its count and its destruction. (A writer that still
    /// holds the key is refused and seals again under the current key.) The grace only
    /// keeps a recently demoted key for a while, for example to re-encrypt rows restored
    /// from a backup taken just before.
    ///
    /// # Errors
    /// A storage error.
    pub async fn destroy_unused_keys(
        &self,
        tenant: &TenantId,
        grace: Duration,
    ) -> Result<Vec<DekVersion>, Error> {
        let inner = &self.inner;
        let cutoff = Timestamp::now()
            .as_millis()
            .saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        // 1. The candidates, as they are before the count.
        let candidates: Vec<DekRecord> = inner
            .store
            .list_deks(tenant)
            .await?
            .into_iter()
            .filter(|r| {
                matches!(
                    r.state,
                    DekState::DecryptOnly | DekState::Retired | DekState::Compromised
                ) && r.updated_at.as_millis() <= cutoff
            })
            .collect();
        // 2. Their secrets, counted after: a version not active can only lose secrets.
        let counts = inner.secrets_per_version(tenant).await?;
        // 3. Each unused one destroyed, if its record is still the one read in step 1.
        let mut destroyed = Vec::new();
        for record in candidates {
            if counts.get(&record.version).copied().unwrap_or(0) > 0 {
                continue;
            }
            let version = record.version;
            let expected = record.row_version;
            match inner
                .put_dek(tombstone(record), PutMode::Update(expected))
                .await
            {
                Ok(_) => {
                    inner.deks.remove(tenant, version);
                    tracing::info!(tenant = %tenant, dek_version = version.get(), "data key destroyed");
                    destroyed.push(version);
                }
                // Changed since step 1 (another job got there, or it was re-marked): left
                // for the next call.
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Only a writer that bypasses the key condition could have sealed a secret under a
        // key destroyed above; say so if one did.
        let after = inner.secrets_per_version(tenant).await?;
        if destroyed
            .iter()
            .any(|v| after.get(v).copied().unwrap_or(0) > 0)
        {
            tracing::error!(tenant = %tenant, "a secret was written under a data key while it was destroyed, by a writer that bypassed the key condition");
        }
        Ok(destroyed)
    }

    /// Marks a data-key version as suspected compromised. If it is the active version, the
    /// tenant is first rotated to a new one. The key keeps decrypting (so that
    /// [`Self::reencrypt_tenant`] can move its secrets away) and is destroyed by
    /// [`Self::destroy_unused_keys`] once nothing references it. A version already retired
    /// or destroyed stays as it is: it opens nothing, and marking it must not change that.
    ///
    /// # Errors
    /// [`Error::KeyMissing`] if the version does not exist; a key-provider or storage error.
    pub async fn mark_compromised(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<(), Error> {
        let deks = self.inner.store.list_deks(tenant).await?;
        let record = deks
            .iter()
            .find(|r| r.version == version)
            .ok_or(Error::KeyMissing { version })?;
        // A destroyed key opens nothing and a retired one opens nothing more: marking either
        // compromised must not make it decryptable again.
        if matches!(record.state, DekState::Destroyed | DekState::Retired) {
            return Ok(());
        }
        let newest_active = deks
            .iter()
            .filter(|r| r.state == DekState::Active)
            .map(|r| r.version)
            .max();
        if record.state == DekState::Active && newest_active == Some(version) {
            self.rotate_tenant_key(tenant).await?;
        }
        self.inner
            .set_states(
                tenant,
                |r| {
                    r.version == version
                        && !matches!(r.state, DekState::Destroyed | DekState::Retired)
                },
                DekState::Compromised,
            )
            .await?;
        self.inner.active.remove_tenant(tenant);
        tracing::warn!(tenant = %tenant, dek_version = version.get(), "data key marked compromised");
        Ok(())
    }

    /// Deletes a tenant by crypto-shredding: its data keys are destroyed first (wrapped
    /// bytes erased), then its secret rows are deleted, then the key tombstones. A crash at
    /// any point leaves at most ciphertext that no key can open; calling again finishes
    /// the job. This process's caches are purged; other processes' caches expire within
    /// their TTL. Deleting a tenant that does not exist returns an empty receipt.
    ///
    /// Any copy of the old rows (a database backup) stays unreadable even with the master
    /// key, because the data keys that sealed them no longer exist anywhere.
    ///
    /// Last, the store is asked to rid its own files of the destroyed keys' bytes
    /// ([`crate::storage::Store::erase_deleted`]); the receipt's `erasure` says whether that
    /// is complete (SQLite, memory) or what the operator must still do (PostgreSQL: `VACUUM
    /// FULL` of the data-key table; Redis: the append-only file rewrite it started).
    ///
    /// # Errors
    /// A storage error (call again to resume).
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<DeletionReceipt, Error> {
        let inner = &self.inner;
        // 1. Destroy every key. From here on nothing of the tenant can be decrypted.
        inner.destroy_where(tenant, |_| true).await?;
        inner.deks.remove_tenant(tenant);
        inner.active.remove_tenant(tenant);
        let destroyed: Vec<DekVersion> = inner
            .store
            .list_deks(tenant)
            .await?
            .iter()
            .map(|r| r.version)
            .collect();
        // 2. Delete the (now unreadable) secret rows.
        let page = JobOptions::default().batch_size;
        let mut secrets_deleted = 0;
        loop {
            let names: Vec<SecretName> = inner
                .store
                .list_secrets(tenant, None, page)
                .await?
                .into_iter()
                .map(|m| m.name)
                .collect();
            for name in &names {
                if inner.store.delete_secret(tenant, name, None).await? {
                    secrets_deleted += 1;
                }
            }
            if names.len() < page {
                break;
            }
        }
        // 3. Remove the tombstones, and with them the tenant id.
        let mut dek_records_removed = 0;
        for record in inner.store.list_deks(tenant).await? {
            if record.state == DekState::Destroyed
                && inner
                    .store
                    .delete_dek(tenant, record.version, Some(record.row_version))
                    .await?
            {
                dek_records_removed += 1;
            }
        }
        // 4. Rid the store's files of the destroyed keys' bytes, as far as it can.
        let erasure = inner.store.erase_deleted().await?;
        tracing::info!(tenant = %tenant, secrets_deleted, %erasure, "tenant deleted");
        Ok(DeletionReceipt {
            tenant: tenant.clone(),
            dek_versions_destroyed: destroyed,
            secrets_deleted,
            dek_records_removed,
            erasure,
            completed_at: Timestamp::now(),
        })
    }
}

impl Inner {
    /// Number of the tenant's secrets under each data-key version.
    pub(crate) async fn secrets_per_version(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<DekVersion, u64>, Error> {
        self.store.count_secrets_by_version(tenant).await
    }

    /// Moves every record matching `select` to `state` with conditional writes; returns the
    /// versions changed.
    async fn set_states(
        &self,
        tenant: &TenantId,
        select: impl Fn(&DekRecord) -> bool + Send + Sync,
        state: DekState,
    ) -> Result<Vec<DekVersion>, Error> {
        self.update_where(tenant, select, |r| r.state = state).await
    }

    /// Destroys every record matching `select`: state `Destroyed`, wrapped bytes erased.
    async fn destroy_where(
        &self,
        tenant: &TenantId,
        select: impl Fn(&DekRecord) -> bool + Send + Sync,
    ) -> Result<Vec<DekVersion>, Error> {
        let destroyed = self
            .update_where(
                tenant,
                |r| r.state != DekState::Destroyed && select(r),
                |r| *r = tombstone(r.clone()),
            )
            .await?;
        for version in &destroyed {
            self.deks.remove(tenant, *version);
            tracing::info!(tenant = %tenant, dek_version = version.get(), "data key destroyed");
        }
        Ok(destroyed)
    }

    async fn update_where(
        &self,
        tenant: &TenantId,
        select: impl Fn(&DekRecord) -> bool + Send + Sync,
        change: impl Fn(&mut DekRecord) + Send + Sync,
    ) -> Result<Vec<DekVersion>, Error> {
        let mut changed = Vec::new();
        for _ in 0..MAX_CAS_ATTEMPTS {
            let mut conflicted = false;
            for record in self
                .store
                .list_deks(tenant)
                .await?
                .into_iter()
                .filter(|r| select(r))
            {
                let expected = record.row_version;
                let version = record.version;
                let mut updated = record;
                change(&mut updated);
                updated.updated_at = Timestamp::now();
                match self.put_dek(updated, PutMode::Update(expected)).await {
                    Ok(_) => changed.push(version),
                    Err(Error::Conflict { .. }) => conflicted = true,
                    Err(e) => return Err(e),
                }
            }
            if !conflicted {
                changed.sort_unstable();
                changed.dedup();
                return Ok(changed);
            }
        }
        Err(Error::Conflict { what: "data key" })
    }
}

/// `record` destroyed: state [`DekState::Destroyed`], wrapped bytes erased.
fn tombstone(mut record: DekRecord) -> DekRecord {
    record.state = DekState::Destroyed;
    record.updated_at = Timestamp::now();
    record.wrapped = WrappedDek::new(record.wrapped.master_key_id().clone(), Vec::new());
    record
}
