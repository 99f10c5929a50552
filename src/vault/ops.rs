//! The vault's operations on tenants and secrets.

use std::sync::Arc;

use super::active::ActiveDek;
use super::{TenantCreation, Vault};
use crate::envelope::{self, EnvelopeRef, SecretContext};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};
use crate::secret::{Secret, SecretKind};
use crate::storage::{
    DekState, KeyCondition, MemoryStore, PutMode, SecretMetadata, SecretRecord, SecretWrite,
    Timestamp,
};

/// How many times a write seals again after its key turned out not to be current, before
/// it reports [`Error::KeyNotCurrent`].
const MAX_KEY_RETRIES: usize = 8;

/// Envelopes up to this length (secrets up to about 340 bytes) are copied out of a
/// [`MemoryStore`] onto the stack for decryption; longer ones into a heap buffer.
const ENVELOPE_INLINE: usize = 384;

/// What a read learns about the row besides the secret: its metadata without the
/// identifiers, which are the caller's (checked equal).
#[derive(Clone, Copy)]
struct RowInfo {
    kind: SecretKind,
    dek_version: DekVersion,
    created_at: Timestamp,
    updated_at: Timestamp,
    row_version: RowVersion,
}

impl RowInfo {
    fn of(metadata: &SecretMetadata) -> Self {
        Self {
            kind: metadata.kind,
            dek_version: metadata.dek_version,
            created_at: metadata.created_at,
            updated_at: metadata.updated_at,
            row_version: metadata.row_version,
        }
    }

    fn metadata(self, tenant: &TenantId, name: &SecretName) -> SecretMetadata {
        SecretMetadata {
            tenant: tenant.clone(),
            name: name.clone(),
            kind: self.kind,
            dek_version: self.dek_version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            row_version: self.row_version,
        }
    }
}

/// The metadata columns are not authenticated; the envelope's header is. A row whose
/// columns disagree with its (authentic) envelope was edited outside credvault, and its
/// metadata must not be returned as if it were true.
fn check_columns(
    ids_match: bool,
    row: RowInfo,
    kind: SecretKind,
    version: DekVersion,
) -> Result<(), Error> {
    if row.kind != kind || row.dek_version != version || !ids_match {
        return Err(FormatError::InvalidField(
            Structure::Record,
            "metadata disagrees with envelope",
        )
        .into());
    }
    Ok(())
}

impl Vault {
    /// Creates `tenant` with its first data key. Idempotent and safe to race: when several
    /// instances create the same tenant at once, exactly one data key v1 is stored and
    /// every caller succeeds.
    ///
    /// A tenant whose keys were all destroyed (deleted) gets the next version number, so
    /// nothing it ever sealed can be confused with what it seals now.
    ///
    /// # Errors
    /// [`Error::Entropy`], [`Error::Provider`], or a storage error.
    pub async fn create_tenant(&self, tenant: &TenantId) -> Result<TenantCreation, Error> {
        let inner = &self.inner;
        let existing = inner.store.list_deks(tenant).await?;
        if existing.iter().any(|r| r.state != DekState::Destroyed) {
            return Ok(TenantCreation::AlreadyExisted);
        }
        // Secrets without any data-key record: the keys were lost (a manual delete, an
        // eviction, a partial restore). Minting one now would orphan every one of them.
        if existing.is_empty()
            && let Some(orphan) = inner.store.list_secrets(tenant, None, 1).await?.first()
        {
            return Err(Error::KeyMissing {
                version: orphan.dek_version,
            });
        }
        let version = match existing.iter().map(|r| r.version).max() {
            Some(v) => v
                .next()
                .ok_or(Error::Config("data key versions exhausted"))?,
            None => DekVersion::FIRST,
        };
        let record = inner.mint_dek(tenant, version).await?;
        match inner.put_dek(record, PutMode::Create).await {
            Ok(_) => {
                tracing::info!(tenant = %tenant, dek_version = version.get(), "tenant created");
                Ok(TenantCreation::Created)
            }
            Err(Error::AlreadyExists { .. }) => Ok(TenantCreation::AlreadyExisted),
            Err(e) => Err(e),
        }
    }

    /// Tenants with data keys, in ascending order, after `after`, at most `limit`. Pass the
    /// last tenant of one page as `after` to get the next; a page shorter than `limit` is
    /// the last.
    ///
    /// # Errors
    /// A storage error.
    pub async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        self.inner.store.list_tenants(after, limit).await
    }

    /// Stores `secret` under `tenant` / `name`, replacing any previous value. Returns the
    /// new row version.
    ///
    /// # Errors
    /// [`Error::TooLarge`] or [`Error::InvalidInput`] (nothing is written),
    /// [`Error::TenantNotFound`], or a key or storage error.
    pub async fn put<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        secret: &S,
    ) -> Result<RowVersion, Error> {
        self.write(tenant, name, secret, PutMode::Upsert).await
    }

    /// Stores `secret` only if no secret is stored under `tenant` / `name`.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], and the errors of [`Self::put`].
    pub async fn create<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        secret: &S,
    ) -> Result<RowVersion, Error> {
        self.write(tenant, name, secret, PutMode::Create).await
    }

    /// Replaces the secret only if its row version is still `expected` (from
    /// [`Self::get_with_metadata`] or [`Self::metadata`]): a read-modify-write that never
    /// loses a concurrent update.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the secret changed or was deleted, and the errors of
    /// [`Self::put`].
    pub async fn update<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        secret: &S,
        expected: RowVersion,
    ) -> Result<RowVersion, Error> {
        self.write(tenant, name, secret, PutMode::Update(expected))
            .await
    }

    async fn write<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        secret: &S,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        let inner = &self.inner;
        secret.check()?;
        let size = secret.encoded_len();
        if size > inner.config.max_secret_size {
            return Err(Error::TooLarge {
                size,
                limit: inner.config.max_secret_size,
            });
        }
        let mut attempts = 0;
        loop {
            let active = match inner.active.take_fresh(tenant) {
                Some(active) => active,
                None => inner.reserve_encryption(tenant).await?,
            };
            match self
                .seal_and_write(tenant, name, secret, mode, &active)
                .await
            {
                // This process's view of the tenant's key was stale (another instance
                // rotated, demoted or destroyed it, rewrapped it, or deleted and re-created
                // the tenant): nothing was written. Seal again under the current key.
                Err(Error::KeyNotCurrent { version }) if attempts < MAX_KEY_RETRIES => {
                    attempts += 1;
                    inner.active.forget(tenant, &active);
                    tracing::debug!(tenant = %tenant, dek_version = version.get(), "the data key changed under a write; sealing again");
                }
                outcome => return outcome,
            }
        }
    }

    /// Seals `secret` under `active` and writes it, conditional on `active` still being the
    /// tenant's current key when the write lands.
    async fn seal_and_write<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        secret: &S,
        mode: PutMode,
        active: &ActiveDek,
    ) -> Result<RowVersion, Error> {
        let inner = &self.inner;
        let ctx = SecretContext { tenant, name };
        let sealed = envelope::seal(
            &active.dek.cipher,
            active.dek.suite,
            active.version,
            ctx,
            secret,
        )?;
        let now = Timestamp::now();
        let dek_version = active.version;
        let key = KeyCondition::SealedUnder(Arc::clone(&active.dek.wrapped));
        let row_version = if let Some(memory) = &inner.memory {
            memory.write_secret(
                SecretWrite {
                    tenant,
                    name,
                    kind: S::KIND,
                    dek_version,
                    created_at: now,
                    updated_at: now,
                    row_version: crate::crypto::fresh_row_version(),
                    envelope: sealed,
                },
                mode,
                &key,
            )?
        } else {
            let record = SecretRecord {
                metadata: SecretMetadata {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    kind: S::KIND,
                    dek_version,
                    created_at: now,
                    updated_at: now,
                    // Drawn by `put_secret`.
                    row_version: RowVersion(0),
                },
                envelope: sealed,
            };
            inner.put_secret(record, mode, key).await?
        };
        tracing::debug!(tenant = %tenant, name = %name, dek_version = dek_version.get(), "secret stored");
        Ok(row_version)
    }

    /// Reads and decrypts the secret stored under `tenant` / `name` as an `S`.
    ///
    /// The tenant and name are bound into the ciphertext: a row copied from anywhere else
    /// fails with [`Error::Decryption`].
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::KindMismatch`], [`Error::Decryption`], a
    /// [`crate::FormatError`], [`Error::KeyMissing`], [`Error::KeyDestroyed`],
    /// [`Error::UnknownMasterKey`], or a storage error.
    pub async fn get<S: Secret>(&self, tenant: &TenantId, name: &SecretName) -> Result<S, Error> {
        self.read(tenant, name).await.map(|(secret, _)| secret)
    }

    /// [`Self::get`], with the secret's metadata (for a following [`Self::update`]).
    ///
    /// # Errors
    /// As [`Self::get`].
    pub async fn get_with_metadata<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<(S, SecretMetadata), Error> {
        let (secret, row) = self.read(tenant, name).await?;
        Ok((secret, row.metadata(tenant, name)))
    }

    async fn read<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<(S, RowInfo), Error> {
        let inner = &self.inner;
        let fast = match &inner.memory {
            Some(memory) => self.read_memory(memory, tenant, name)?,
            None => None,
        };
        let (secret, mut row) = match fast {
            Some(read) => read,
            None => self.read_store(tenant, name, true).await?,
        };
        tracing::debug!(tenant = %tenant, name = %name, dek_version = row.dek_version.get(), "secret read");
        if inner.config.reencrypt_on_read {
            let mut metadata = row.metadata(tenant, name);
            self.reencrypt_on_read(&secret, &mut metadata).await?;
            row = RowInfo::of(&metadata);
        }
        Ok((secret, row))
    }

    /// The steady-state read over a [`MemoryStore`], with no future: the row's envelope is
    /// copied out under the store's read lock (onto the stack when small) and decrypted
    /// there with a cached key. `Ok(None)` when the general path must decide: the key is
    /// not cached, or decryption failed (the general path re-reads the row and checks for
    /// a replaced key before it reports [`Error::Decryption`]).
    fn read_memory<S: Secret>(
        &self,
        memory: &MemoryStore,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<(S, RowInfo)>, Error> {
        // The caller's private copy of the envelope, decrypted in place. Filled through a
        // reference, so that the buffer is never moved.
        let mut inline = [0u8; ENVELOPE_INLINE];
        let mut heap = Vec::new();
        let read = memory.read_secret(tenant.as_str(), name.as_str(), |r| {
            let m = &r.metadata;
            let ids_match = m.tenant == *tenant && m.name == *name;
            let len = r.envelope.len();
            match inline.get_mut(..len) {
                Some(dst) => dst.copy_from_slice(&r.envelope),
                None => heap.clone_from(&r.envelope),
            }
            (len, RowInfo::of(m), ids_match)
        })?;
        // Not `ok_or`: that would build and drop an `Error` on every read.
        let Some((len, row, ids_match)) = read else {
            return Err(Error::NotFound);
        };
        let bytes = if len <= ENVELOPE_INLINE {
            inline.get_mut(..len).unwrap_or_default()
        } else {
            heap.as_mut_slice()
        };
        let parsed = EnvelopeRef::parse(bytes)?;
        let (kind, suite, version) = (parsed.kind(), parsed.suite(), parsed.dek_version());
        if kind != S::KIND {
            return Err(Error::KindMismatch {
                stored: kind,
                requested: S::KIND,
            });
        }
        let Some(dek) = self.inner.deks.cached(tenant, version) else {
            return Ok(None);
        };
        if dek.suite != suite {
            return Err(Error::Decryption);
        }
        let secret = match envelope::open_in_place::<S>(
            &dek.cipher,
            bytes,
            SecretContext { tenant, name },
        ) {
            Ok(secret) => secret,
            Err(Error::Decryption) => return Ok(None),
            Err(e) => return Err(e),
        };
        check_columns(ids_match, row, kind, version)?;
        Ok(Some((secret, row)))
    }

    /// `read` through the [`Store`] trait: any backend, and every case the fast path
    /// leaves to it.
    async fn read_store<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        retry_stale_key: bool,
    ) -> Result<(S, RowInfo), Error> {
        let inner = &self.inner;
        let mut record = inner
            .store
            .get_secret(tenant, name)
            .await?
            .ok_or(Error::NotFound)?;
        let parsed = EnvelopeRef::parse(&record.envelope)?;
        let (kind, suite, version) = (parsed.kind(), parsed.suite(), parsed.dek_version());
        if kind != S::KIND {
            return Err(Error::KindMismatch {
                stored: kind,
                requested: S::KIND,
            });
        }
        let loaded = inner
            .deks
            .get_or_load(tenant, version, || {
                inner.unwrap_record(tenant, version, None)
            })
            .await;
        let dek = match loaded {
            Ok(dek) => dek,
            Err(
                e @ (Error::KeyDestroyed { .. }
                | Error::KeyRetired { .. }
                | Error::KeyMissing { .. }),
            ) if retry_stale_key => {
                // Between the row read above and the key read, a re-encryption may have
                // moved the row to a newer key and the old key been destroyed, or a deletion
                // of the tenant removed the row and then the key: look at the row again.
                let Some(now) = inner.store.get_secret(tenant, name).await? else {
                    return Err(Error::NotFound);
                };
                let moved =
                    EnvelopeRef::parse(&now.envelope).is_ok_and(|p| p.dek_version() != version);
                if moved {
                    return Box::pin(self.read_store(tenant, name, false)).await;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if dek.suite != suite {
            return Err(Error::Decryption);
        }
        // The row is this call's own copy: decrypt it in place.
        let opened = envelope::open_in_place::<S>(
            &dek.cipher,
            &mut record.envelope,
            SecretContext { tenant, name },
        );
        let secret = match opened {
            Ok(secret) => secret,
            Err(Error::Decryption) if retry_stale_key => {
                // A cached key that no longer matches the stored record (a tenant deleted
                // and re-created under the same id) would fail every read until it
                // expires: check once, and retry with the stored key if it changed.
                let stored = inner.store.get_dek(tenant, version).await?;
                let changed = stored.is_some_and(|r| *r.wrapped.as_bytes() != *dek.wrapped);
                if !changed {
                    return Err(Error::Decryption);
                }
                inner.deks.remove(tenant, version);
                return Box::pin(self.read_store(tenant, name, false)).await;
            }
            Err(e) => return Err(e),
        };
        let m = &record.metadata;
        let ids_match = m.tenant == *tenant && m.name == *name;
        let row = RowInfo::of(m);
        check_columns(ids_match, row, kind, version)?;
        Ok((secret, row))
    }

    /// Re-seals `secret` under the tenant's active version if it is under an older one.
    async fn reencrypt_on_read<S: Secret>(
        &self,
        secret: &S,
        metadata: &mut SecretMetadata,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let (tenant, name) = (&metadata.tenant, &metadata.name);
        let active = match inner.active_dek(tenant).await {
            Ok(active) => active,
            Err(Error::TenantNotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Forward only: a secret under a newer version than this process knows (its view is
        // stale) stays where it is.
        if active.version <= metadata.dek_version {
            return Ok(());
        }
        let active = inner.reserve_encryption(tenant).await?;
        if active.version <= metadata.dek_version {
            return Ok(());
        }
        let ctx = SecretContext { tenant, name };
        let sealed = envelope::seal(
            &active.dek.cipher,
            active.dek.suite,
            active.version,
            ctx,
            secret,
        )?;
        let mut record = SecretRecord {
            metadata: metadata.clone(),
            envelope: sealed,
        };
        record.metadata.dek_version = active.version;
        let key = KeyCondition::SealedUnder(Arc::clone(&active.dek.wrapped));
        // The record keeps its row version: see `Inner::reseal_secrets`.
        let mode = PutMode::Update(metadata.row_version);
        match inner.reseal_secret(record, mode, key).await {
            Ok(row_version) => {
                metadata.row_version = row_version;
                metadata.dek_version = active.version;
                tracing::debug!(tenant = %tenant, name = %name, dek_version = active.version.get(), "re-encrypted on read");
                Ok(())
            }
            // A concurrent writer got there first; its value stands.
            Err(Error::Conflict { .. }) => Ok(()),
            // The key changed since this process last looked: the next read moves it.
            Err(Error::KeyNotCurrent { .. }) => {
                inner.active.forget(tenant, &active);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The metadata of one secret, without decrypting it.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub async fn metadata(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<SecretMetadata, Error> {
        let record = self
            .inner
            .store
            .get_secret(tenant, name)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(record.metadata)
    }

    /// Deletes one secret. Returns whether it existed.
    ///
    /// # Errors
    /// A storage error.
    pub async fn delete(&self, tenant: &TenantId, name: &SecretName) -> Result<bool, Error> {
        let deleted = self.inner.store.delete_secret(tenant, name, None).await?;
        tracing::debug!(tenant = %tenant, name = %name, deleted, "secret deleted");
        Ok(deleted)
    }

    /// Metadata of `tenant`'s secrets named after `after`, in ascending name order, at most
    /// `limit`. Nothing is decrypted. Pass the last name of one page as `after` to get the
    /// next; a page shorter than `limit` is the last.
    ///
    /// # Errors
    /// A storage error.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        self.inner.store.list_secrets(tenant, after, limit).await
    }
}
