//! The key hierarchy: master keys ([`MasterKeyProvider`], [`LocalMasterKey`],
//! [`MasterKeyRing`]) wrap per-tenant data keys ([`DataKey`], stored as [`WrappedDek`]).
//!
//! A data key is bound to its context when wrapped: the [`WrapContext`] names the tenant,
//! the data-key version, the data key's cipher suite and the master key id, and every
//! provider must authenticate it. A wrapped key copied to another tenant, relabelled to
//! another version or attributed to another master key fails to unwrap.

mod cache;
mod keyring;
mod local;

use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroize;

pub(crate) use cache::{CachedDek, DekCache};
pub use keyring::MasterKeyRing;
pub use local::LocalMasterKey;
#[cfg(feature = "testkit")]
pub(crate) use local::LocalWrappedRef;

use crate::codec::put_lp32;
use crate::crypto::{DEK_WRAP_LABEL, Suite, os_random};
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, TenantId};

/// A plaintext 256-bit data key. Zeroized on drop; never printed; not `Clone`.
///
/// Only master-key providers see one: they receive it to wrap and return it from unwrap.
pub struct DataKey(Box<[u8; 32]>);

impl DataKey {
    /// Length of a data key, in bytes.
    pub const LEN: usize = 32;

    /// A fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Entropy`] if the operating system's generator fails.
    pub fn generate() -> Result<Self, Error> {
        let mut key = Self(Box::new([0u8; 32]));
        os_random(&mut key.0[..])?;
        Ok(key)
    }

    /// Copies a key out of `bytes` (for providers that unwrap into their own buffer; they
    /// should zeroize that buffer afterwards).
    ///
    /// # Errors
    /// [`Error::Decryption`] unless `bytes` is exactly 32 bytes long: an unwrapped key of
    /// the wrong length is treated like any other failed unwrap.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let mut key = Self(Box::new([0u8; 32]));
        if bytes.len() != Self::LEN {
            return Err(Error::Decryption);
        }
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// The key bytes, for a provider to wrap.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for DataKey {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Everything a wrapped data key is bound to. Providers must authenticate
/// [`WrapContext::associated_data`] (as AEAD associated data, or as a KMS encryption
/// context) and refuse to unwrap under any other context.
#[derive(Debug, Clone, Copy)]
pub struct WrapContext<'a> {
    /// The tenant that owns the data key.
    pub tenant: &'a TenantId,
    /// The data key's version.
    pub dek_version: DekVersion,
    /// The suite the data key will encrypt secrets with.
    pub suite: Suite,
    /// The master key that wraps it.
    pub master_key_id: &'a MasterKeyId,
}

impl WrapContext<'_> {
    /// The canonical, injective encoding of the context:
    /// `lp32("credvault/v1/dek-wrap") || lp32(tenant) || u32 dek_version || u8 suite ||
    /// lp32(master_key_id)`, big-endian, `lp32` being a u32 length prefix.
    #[must_use]
    pub fn associated_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + DEK_WRAP_LABEL.len()
                + 4
                + self.tenant.as_str().len()
                + 4
                + 1
                + 4
                + self.master_key_id.as_str().len(),
        );
        put_lp32(&mut out, DEK_WRAP_LABEL);
        put_lp32(&mut out, self.tenant.as_str().as_bytes());
        out.extend_from_slice(&self.dek_version.get().to_be_bytes());
        out.push(self.suite.as_u8());
        put_lp32(&mut out, self.master_key_id.as_str().as_bytes());
        out
    }
}

/// A data key wrapped by a master key: the master key's id and the provider's opaque
/// bytes. Not secret, but `Debug` shows only the length of the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek {
    master_key_id: MasterKeyId,
    bytes: Vec<u8>,
}

impl WrappedDek {
    /// Pairs a provider's output with the id of the master key that produced it.
    #[must_use]
    pub fn new(master_key_id: MasterKeyId, bytes: Vec<u8>) -> Self {
        Self {
            master_key_id,
            bytes,
        }
    }

    /// The master key that wrapped this data key.
    #[must_use]
    pub fn master_key_id(&self) -> &MasterKeyId {
        &self.master_key_id
    }

    /// The provider-specific wrapped bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDek")
            .field("master_key_id", &self.master_key_id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A master key (KEK) that wraps and unwraps tenant data keys.
///
/// Object-safe and async, because real providers (a KMS, an HSM over PKCS#11) are remote.
///
/// # Contract
/// - [`id`](Self::id) is stable across restarts and unique within a [`MasterKeyRing`]; it
///   is stored with every key this provider wraps.
/// - `wrap` authenticates `context.associated_data()`; `unwrap` fails unless it is given
///   the identical context. A wrapped key moved to another tenant, version, suite or
///   master key id must fail to unwrap.
/// - Every authentication failure is [`Error::Decryption`], with no detail. Transport or
///   service failures are [`Error::Provider`] with the cause as `source()`.
/// - Neither the data key nor the master key material appears in any error, log line or
///   `Debug` output.
/// - Calls may run concurrently from many tasks.
#[async_trait]
pub trait MasterKeyProvider: fmt::Debug + Send + Sync + 'static {
    /// This master key's stable id.
    fn id(&self) -> &MasterKeyId;

    /// Wraps `dek` under this master key, bound to `context`.
    ///
    /// # Errors
    /// [`Error::Provider`] if the key service fails.
    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedDek, Error>;

    /// Unwraps `wrapped`, which must have been wrapped under exactly `context`.
    ///
    /// # Errors
    /// [`Error::Decryption`] if authentication fails; [`Error::Provider`] if the key
    /// service fails.
    async fn unwrap(
        &self,
        wrapped: &WrappedDek,
        context: &WrapContext<'_>,
    ) -> Result<DataKey, Error>;
}
