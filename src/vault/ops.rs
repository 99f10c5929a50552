//! The vault's operations on tenants and secrets.

use super::{TenantCreation, Vault};
use crate::envelope::{self, EnvelopeRef, SecretContext};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};
use crate::secret::Secret;
use crate::storage::{DekState, PutMode, SecretMetadata, SecretRecord, Timestamp};

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
        match inner.store.put_dek(record, PutMode::Create).await {
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
        let active = inner.reserve_encryption(tenant).await?;
        let ctx = SecretContext { tenant, name };
        let sealed = envelope::seal(
            &active.dek.cipher,
            active.dek.suite,
            active.version,
            ctx,
            secret,
        )?;
        let now = Timestamp::now();
        let record = SecretRecord {
            metadata: SecretMetadata {
                tenant: tenant.clone(),
                name: name.clone(),
                kind: S::KIND,
                dek_version: active.version,
                created_at: now,
                updated_at: now,
                row_version: RowVersion::INITIAL,
            },
            envelope: sealed,
        };
        let row_version = inner.store.put_secret(record, mode).await?;
        tracing::debug!(tenant = %tenant, name = %name, dek_version = active.version.get(), "secret stored");
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
        self.get_with_metadata(tenant, name)
            .await
            .map(|(secret, _)| secret)
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
        self.read(tenant, name, true).await
    }

    async fn read<S: Secret>(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        retry_stale_key: bool,
    ) -> Result<(S, SecretMetadata), Error> {
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
        let dek = inner
            .deks
            .get_or_load(tenant, version, || {
                inner.unwrap_record(tenant, version, None)
            })
            .await?;
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
                let changed = stored.is_some_and(|r| {
                    crate::crypto::fingerprint(r.wrapped.as_bytes()) != dek.wrapped
                });
                if !changed {
                    return Err(Error::Decryption);
                }
                inner.deks.remove(tenant, version);
                return Box::pin(self.read(tenant, name, false)).await;
            }
            Err(e) => return Err(e),
        };
        // The metadata columns are not authenticated; the envelope's header is. A row whose
        // columns disagree with its (authentic) envelope was edited outside credvault, and its
        // metadata must not be returned as if it were true.
        if record.metadata.kind != kind
            || record.metadata.dek_version != version
            || record.metadata.tenant != *tenant
            || record.metadata.name != *name
        {
            return Err(FormatError::InvalidField(
                Structure::Record,
                "metadata disagrees with envelope",
            )
            .into());
        }
        tracing::debug!(tenant = %tenant, name = %name, dek_version = version.get(), "secret read");
        let mut metadata = record.metadata;
        if inner.config.reencrypt_on_read {
            self.reencrypt_on_read(&secret, &mut metadata).await?;
        }
        Ok((secret, metadata))
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
        if active.version == metadata.dek_version {
            return Ok(());
        }
        let active = inner.reserve_encryption(tenant).await?;
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
        match inner
            .store
            .put_secret(record, PutMode::Update(metadata.row_version))
            .await
        {
            Ok(row_version) => {
                metadata.row_version = row_version;
                metadata.dek_version = active.version;
                tracing::debug!(tenant = %tenant, name = %name, dek_version = active.version.get(), "re-encrypted on read");
                Ok(())
            }
            // A concurrent writer got there first; its value stands.
            Err(Error::Conflict { .. }) => Ok(()),
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
