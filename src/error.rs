//! The crate's error type, [`Error`], and its program-facing category, [`ErrorKind`].
//!
//! # What an error may contain
//!
//! No error carries a secret, a key, a ciphertext or a raw stored value. Tenant ids and
//! secret names are not repeated either: the caller knows what it asked for. Text that a
//! database server or key service returns (which can quote row values) is reachable only
//! through [`std::error::Error::source`], never through `Display`.
//!
//! Authentication failures — wrong key, wrong tenant, a tampered tag, a row copied to
//! another name — are one opaque variant, [`Error::Decryption`].

use std::fmt;

use crate::ids::{DekVersion, MasterKeyId};
use crate::secret::SecretKind;

/// A boxed error from a storage backend or key provider, kept only as a `source()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in credvault.
///
/// Match on [`Error::kind`] in programs; the variants carry only non-secret detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier, option or argument was rejected before anything was written.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was rejected (for example `tenant id`).
        what: &'static str,
        /// Why, in words that never quote the input.
        reason: &'static str,
    },
    /// The encoded secret is larger than the vault's configured limit.
    #[error("secret too large: {size} bytes encoded, the limit is {limit}")]
    TooLarge {
        /// Encoded size of the rejected secret, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// No secret is stored under that tenant and name.
    #[error("secret not found")]
    NotFound,
    /// The tenant has no active data key: it was never created, or it was deleted.
    #[error("tenant not found (create it with Vault::create_tenant)")]
    TenantNotFound,
    /// A create-only write found an existing record.
    #[error("{what} already exists")]
    AlreadyExists {
        /// The kind of record (`secret`, `data key`).
        what: &'static str,
    },
    /// A conditional write lost: the record changed (or vanished) since it was read.
    #[error("conditional write failed: the {what} changed since it was read")]
    Conflict {
        /// The kind of record (`secret`, `data key`).
        what: &'static str,
    },
    /// A secret write was sealed under a data key that, when the write reached the store,
    /// was no longer its tenant's current key (rotated, demoted, destroyed, rewrapped, or
    /// the tenant deleted and created again). Nothing was written; the vault retries such a
    /// write under the current key by itself and reports this only if the key kept
    /// changing.
    #[error(
        "data key version {version} is no longer the tenant's current key: nothing was written"
    )]
    KeyNotCurrent {
        /// The data-key version the write was sealed under.
        version: DekVersion,
    },
    /// The stored secret is of another kind than the one asked for.
    #[error("stored secret is {stored}, not {requested}")]
    KindMismatch {
        /// The kind recorded in the envelope.
        stored: SecretKind,
        /// The kind the caller asked for.
        requested: SecretKind,
    },
    /// Authentication failed. Wrong key, wrong tenant or name, tampering and corruption
    /// of authenticated bytes are deliberately indistinguishable.
    #[error("decryption failed")]
    Decryption,
    /// Stored bytes could not be parsed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A stored secret names a data-key version whose record is missing from storage.
    /// credvault never mints a key to fill such a gap.
    #[error("data key version {version} of the tenant is missing from storage")]
    KeyMissing {
        /// The data-key version the secret was sealed under.
        version: DekVersion,
    },
    /// The data-key version was destroyed (crypto-shredded); what it sealed is gone.
    #[error("data key version {version} of the tenant has been destroyed")]
    KeyDestroyed {
        /// The destroyed data-key version.
        version: DekVersion,
    },
    /// The data-key version is below the tenant's minimum decryption version.
    #[error(
        "data key version {version} of the tenant is retired (below the minimum decryption version)"
    )]
    KeyRetired {
        /// The retired data-key version.
        version: DekVersion,
    },
    /// The operation was refused because the key is still in use.
    #[error("refused: {what}")]
    InUse {
        /// What is still in use, in words that name no secret.
        what: &'static str,
    },
    /// A wrapped data key names a master key that the key ring does not hold.
    #[error("master key `{id}` is not in the key ring")]
    UnknownMasterKey {
        /// The id recorded with the wrapped key.
        id: MasterKeyId,
    },
    /// The storage backend could not be reached, or timed out. Retrying may succeed.
    #[error("storage backend `{backend}` is unavailable")]
    Unavailable {
        /// The backend's name (`sqlite`, `memory`, ...).
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// The storage backend failed for another reason.
    #[error("storage backend `{backend}` failed")]
    Storage {
        /// The backend's name.
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// A master-key provider failed for a reason other than authentication.
    #[error("master key provider for `{id}` failed")]
    Provider {
        /// The master key involved.
        id: MasterKeyId,
        /// The provider's own error.
        #[source]
        source: BoxError,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Entropy,
    /// The vault or a backend was configured inconsistently.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// The category of an [`Error`], for programs that branch on failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidInput`] and [`Error::TooLarge`].
    InvalidInput,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::TenantNotFound`].
    TenantNotFound,
    /// See [`Error::AlreadyExists`].
    AlreadyExists,
    /// See [`Error::Conflict`] and [`Error::KeyNotCurrent`].
    Conflict,
    /// See [`Error::KindMismatch`].
    KindMismatch,
    /// See [`Error::Decryption`].
    Decryption,
    /// Stored bytes are malformed: truncated, bad magic, trailing bytes, bad field.
    Malformed,
    /// Stored bytes carry a format version this build does not know.
    UnsupportedVersion,
    /// Stored bytes name a cipher suite this build does not know.
    UnsupportedSuite,
    /// See [`Error::KeyMissing`].
    KeyMissing,
    /// See [`Error::KeyDestroyed`].
    KeyDestroyed,
    /// See [`Error::KeyRetired`].
    KeyRetired,
    /// See [`Error::InUse`].
    InUse,
    /// See [`Error::UnknownMasterKey`].
    UnknownMasterKey,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Storage`].
    Storage,
    /// See [`Error::Provider`].
    Provider,
    /// See [`Error::Entropy`].
    Entropy,
    /// See [`Error::Config`].
    Config,
}

impl Error {
    /// The category of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput { .. } | Self::TooLarge { .. } => ErrorKind::InvalidInput,
            Self::NotFound => ErrorKind::NotFound,
            Self::TenantNotFound => ErrorKind::TenantNotFound,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::Conflict { .. } | Self::KeyNotCurrent { .. } => ErrorKind::Conflict,
            Self::KindMismatch { .. } => ErrorKind::KindMismatch,
            Self::Decryption => ErrorKind::Decryption,
            Self::Format(f) => f.kind(),
            Self::KeyMissing { .. } => ErrorKind::KeyMissing,
            Self::KeyDestroyed { .. } => ErrorKind::KeyDestroyed,
            Self::KeyRetired { .. } => ErrorKind::KeyRetired,
            Self::InUse { .. } => ErrorKind::InUse,
            Self::UnknownMasterKey { .. } => ErrorKind::UnknownMasterKey,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Storage { .. } => ErrorKind::Storage,
            Self::Provider { .. } => ErrorKind::Provider,
            Self::Entropy => ErrorKind::Entropy,
            Self::Config(_) => ErrorKind::Config,
        }
    }

    /// Wraps a backend error as [`Error::Storage`].
    pub fn storage(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Storage {
            backend,
            source: source.into(),
        }
    }

    /// Wraps a backend error as [`Error::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            backend,
            source: source.into(),
        }
    }

    pub(crate) const fn invalid(what: &'static str, reason: &'static str) -> Self {
        Self::InvalidInput { what, reason }
    }
}

/// Which stored structure a [`FormatError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Structure {
    /// A secret envelope (`docs/format.md`, "Envelope").
    Envelope,
    /// A data key wrapped by [`crate::LocalMasterKey`].
    WrappedDek,
    /// The plaintext encoding of a typed secret (inside the ciphertext).
    Plaintext,
    /// A stored record's non-secret columns.
    Record,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Envelope => "envelope",
            Self::WrappedDek => "wrapped data key",
            Self::Plaintext => "secret encoding",
            Self::Record => "stored record",
        })
    }
}

/// Why stored bytes were rejected by a parser. Each reason is its own variant, so tests
/// and programs can tell a truncation from trailing bytes or an unknown version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The input ended before the structure did.
    #[error("malformed {0}: truncated")]
    Truncated(Structure),
    /// The input does not start with the structure's magic bytes.
    #[error("malformed {0}: bad magic bytes")]
    BadMagic(Structure),
    /// Bytes follow the end of the structure.
    #[error("malformed {0}: trailing bytes")]
    TrailingBytes(Structure),
    /// The structure's format version is not one this build reads.
    #[error("unsupported {0} version {1}")]
    UnsupportedVersion(Structure, u8),
    /// The cipher suite id is not one this build knows.
    #[error("unsupported {0} cipher suite {1}")]
    UnsupportedSuite(Structure, u8),
    /// A field holds a value outside its documented range.
    #[error("malformed {0}: invalid {1}")]
    InvalidField(Structure, &'static str),
}

impl FormatError {
    /// The category of this format error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnsupportedVersion(..) => ErrorKind::UnsupportedVersion,
            Self::UnsupportedSuite(..) => ErrorKind::UnsupportedSuite,
            Self::Truncated(_)
            | Self::BadMagic(_)
            | Self::TrailingBytes(_)
            | Self::InvalidField(..) => ErrorKind::Malformed,
        }
    }
}
