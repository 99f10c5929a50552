//! Typed secret handles: [`ApiKey`], [`OAuthToken`] and [`SecretBytes`].
//!
//! Every handle
//! - keeps its secret bytes in one heap allocation that is zeroized on drop,
//! - prints `[REDACTED]` in place of secret fields in `Debug`,
//! - has no `Display`, `Serialize`, `Clone` or `PartialEq`,
//! - is read through one explicit path, `expose_secret()` (inherent, or
//!   [`secrecy::ExposeSecret`] on the [`secrecy::SecretString`] fields of an
//!   [`OAuthToken`]).
//!
//! The set of storable types is sealed by [`Secret`]: the vault owns their plaintext
//! encodings (versioned, bounded, documented in `docs/format.md`), and each has a
//! [`SecretKind`] that is recorded in the envelope and authenticated, so reading an
//! `ApiKey` record as an `OAuthToken` fails with [`crate::Error::KindMismatch`].
//!
//! None of the three handles can be formatted with `Display` (so not with `to_string()`
//! or `{}` either) or cloned; each of these fails to compile:
//!
//! ```compile_fail,E0277
//! // No Display: a secret cannot be formatted into a log line by accident.
//! let key = credvault::ApiKey::new("sk_live_123");
//! let _ = format!("{key}");
//! ```
//!
//! ```compile_fail,E0599
//! // No Clone: a secret is not copied around.
//! let key = credvault::ApiKey::new("sk_live_123");
//! let _copy = key.clone();
//! ```
//!
//! ```compile_fail,E0277
//! let token = credvault::OAuthToken::new("ya29.access");
//! let _ = format!("{token}");
//! ```
//!
//! ```compile_fail,E0599
//! let token = credvault::OAuthToken::new("ya29.access");
//! let _copy = token.clone();
//! ```
//!
//! ```compile_fail,E0277
//! let blob = credvault::SecretBytes::from_slice(b"secret");
//! let _ = format!("{blob}");
//! ```
//!
//! ```compile_fail,E0599
//! let blob = credvault::SecretBytes::from_slice(b"secret");
//! let _copy = blob.clone();
//! ```
//!
//! The same handles with `Debug` compile, and print no secret (so each block above fails
//! for the one reason it names; stable rustdoc does not check the error codes):
//!
//! ```
//! let key = credvault::ApiKey::new("sk_live_123");
//! let token = credvault::OAuthToken::new("ya29.access");
//! let blob = credvault::SecretBytes::from_slice(b"secret");
//! let printed = format!("{key:?} {token:?} {blob:?}");
//! assert!(!printed.contains("sk_live") && !printed.contains("ya29") && !printed.contains("secret\""));
//! ```
//!
//! **No `Serialize`.** credvault does not depend on `serde`, and by Rust's orphan rule a
//! crate can implement a foreign trait only for a crate it depends on: no `Serialize` (or
//! `Deserialize`) impl for these types can exist, and none can be added outside this crate.
//! `tests/secret_handles.rs` fails if `serde` ever becomes a dependency, so that adding it
//! means revisiting this promise. (A compile-fail test would need `serde` as a dependency
//! of the test, which it is not.)

mod api_key;
mod bytes;
mod oauth;

use std::fmt;

pub use api_key::ApiKey;
pub use bytes::SecretBytes;
pub use oauth::OAuthToken;

use crate::error::FormatError;

/// The kind of a stored secret, recorded in its envelope and bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretKind {
    /// An [`ApiKey`] (envelope kind byte `0x01`).
    ApiKey,
    /// An [`OAuthToken`] (envelope kind byte `0x02`).
    OAuthToken,
    /// A [`SecretBytes`] blob (envelope kind byte `0x03`).
    Bytes,
}

impl SecretKind {
    /// The byte that identifies this kind in envelopes and records.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::ApiKey => 1,
            Self::OAuthToken => 2,
            Self::Bytes => 3,
        }
    }

    /// The kind a stored byte names, if any.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::ApiKey),
            2 => Some(Self::OAuthToken),
            3 => Some(Self::Bytes),
            _ => None,
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ApiKey => "an API key",
            Self::OAuthToken => "an OAuth token",
            Self::Bytes => "secret bytes",
        })
    }
}

/// A type the vault can store. Sealed: implemented by [`ApiKey`], [`OAuthToken`] and
/// [`SecretBytes`] only, because the vault owns their plaintext encodings.
pub trait Secret: sealed::Sealed + Send + Sync + Sized + 'static {
    /// The kind recorded in the envelope of a secret of this type.
    const KIND: SecretKind;
}

pub(crate) mod sealed {
    use super::FormatError;

    /// The plaintext codec of a storable secret. Not nameable outside the crate.
    pub trait Sealed {
        /// Checks the limits of the encoding before anything is sealed.
        fn check(&self) -> Result<(), crate::Error> {
            Ok(())
        }
        /// Exact length of [`Sealed::encode`]'s output.
        fn encoded_len(&self) -> usize;
        /// Appends the versioned plaintext encoding to `out`, which the caller has sized
        /// with [`Sealed::encoded_len`] spare capacity so that it never reallocates (a
        /// reallocation would leave an unzeroized copy behind).
        fn encode(&self, out: &mut Vec<u8>);
        /// Parses the plaintext encoding, copying each secret field once into its final
        /// allocation.
        fn decode(bytes: &[u8]) -> Result<Self, FormatError>
        where
            Self: Sized;
    }
}

/// Version byte that starts every plaintext encoding in this release.
pub(crate) const PLAINTEXT_V1: u8 = 1;

/// Reads and checks the plaintext version byte.
pub(crate) fn read_plaintext_version(r: &mut crate::codec::Reader<'_>) -> Result<(), FormatError> {
    let v = r.u8()?;
    if v == PLAINTEXT_V1 {
        Ok(())
    } else {
        Err(FormatError::UnsupportedVersion(
            crate::error::Structure::Plaintext,
            v,
        ))
    }
}
