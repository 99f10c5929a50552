//! Validated identifiers: [`TenantId`], [`SecretName`], [`MasterKeyId`], and the version
//! numbers [`DekVersion`] and [`RowVersion`].
//!
//! Identifiers are not secret, but they are bound into every ciphertext and become parts of
//! storage keys, so their alphabet is small and their length bounded:
//!
//! | type | length (bytes) | allowed characters |
//! |---|---|---|
//! | [`TenantId`] | 1..=128 | `A-Z a-z 0-9 _ - .` |
//! | [`SecretName`] | 1..=256 | `A-Z a-z 0-9 _ - . / : @` |
//! | [`MasterKeyId`] | 1..=256 | `A-Z a-z 0-9 _ - . / : @ + =` |
//!
//! No identifier may start with `.`, and none may contain whitespace, control characters,
//! quotes or glob characters (`* ? [ ]`).

use std::borrow::Borrow;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::Error;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Longest accepted identifier, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`Error::InvalidInput`] if `value` is empty, longer than
            /// [`Self::MAX_LEN`] bytes, starts with `.`, or holds a character outside the
            /// documented alphabet. The message never quotes the input.
            pub fn new(value: impl AsRef<str>) -> Result<Self, Error> {
                let value = value.as_ref();
                validate(value, $what, Self::MAX_LEN, $extra)?;
                Ok(Self(Arc::from(value)))
            }

            /// The identifier as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn validate(value: &str, what: &'static str, max: usize, extra: &[u8]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(what, "empty"));
    }
    if value.len() > max {
        return Err(Error::invalid(what, "too long"));
    }
    if value.starts_with('.') {
        return Err(Error::invalid(what, "starts with '.'"));
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') || extra.contains(&b);
    if !value.bytes().all(allowed) {
        return Err(Error::invalid(what, "character outside the allowed set"));
    }
    Ok(())
}

string_id!(
    /// A tenant: the unit of key isolation. Each tenant has its own data keys.
    ///
    /// 1 to 128 bytes of `A-Z a-z 0-9 _ - .`, not starting with `.`.
    TenantId,
    "tenant id",
    128,
    b""
);

string_id!(
    /// The name of a secret within its tenant, such as `github` or `stripe/live`.
    ///
    /// 1 to 256 bytes of `A-Z a-z 0-9 _ - . / : @`, not starting with `.`.
    SecretName,
    "secret name",
    256,
    b"/:@"
);

string_id!(
    /// The stable id of a master key, stored next to every data key it wraps.
    ///
    /// 1 to 256 bytes of `A-Z a-z 0-9 _ - . / : @ + =` (room for KMS ARNs and PKCS#11
    /// labels), not starting with `.`.
    MasterKeyId,
    "master key id",
    256,
    b"/:@+="
);

/// The version of a tenant's data key: 1 for the first, incremented by each rotation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DekVersion(NonZeroU32);

impl DekVersion {
    /// Version 1, the key a tenant is created with.
    pub const FIRST: Self = Self(NonZeroU32::MIN);

    /// Wraps a version number; `None` for 0, which is never a valid version.
    #[must_use]
    pub const fn new(version: u32) -> Option<Self> {
        match NonZeroU32::new(version) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The version number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The next version, or `None` after `u32::MAX`.
    #[must_use]
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Debug for DekVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DekVersion({})", self.0)
    }
}

impl fmt::Display for DekVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The version of a stored row: an opaque token naming one state of the row, which
/// conditional writes ([`crate::storage::PutMode::Update`]) compare against.
///
/// The vault draws a fresh version for every write it makes (create, update, upsert) at
/// random from 2^63 values, and the store keeps the one it is given. Versions therefore
/// never restart: a secret or key row that is deleted and created again does not take up
/// an old version, so a conditional write that expects a version read before the delete
/// fails with [`Error::Conflict`] (the chance that a write draws a version its record
/// already had is 2^-63 per earlier version). Versions carry no order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowVersion(pub u64);

impl RowVersion {
    /// Largest version a store must keep: versions fit a signed 64-bit SQL integer.
    pub const MAX: Self = Self(i64::MAX.unsigned_abs());

    /// The version formed from 64 random bits: the low 63, or 1 where those are all zero.
    #[must_use]
    pub const fn from_random_bits(bits: u64) -> Self {
        let v = bits & Self::MAX.0;
        Self(if v == 0 { 1 } else { v })
    }
}

impl fmt::Display for RowVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn tenant_id_rejects_empty_long_and_foreign_characters() {
        assert!(TenantId::new("acme-corp_1.eu").is_ok());
        assert!(TenantId::new("a".repeat(128)).is_ok());
        for bad in ["", ".hidden", "a b", "a/b", "a*", "é", "a\nb", "a\0"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TenantId::new("a".repeat(129)).is_err());
    }

    #[test]
    fn secret_name_allows_paths_but_no_globs() {
        assert!(SecretName::new("stripe/live:key@v2").is_ok());
        for bad in ["", "a?", "a[1]", "a b", ".x", "a\"b"] {
            assert!(SecretName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn invalid_id_error_does_not_quote_the_input() {
        let err = TenantId::new("sk_live_CANARY with space").unwrap_err();
        assert!(!err.to_string().contains("CANARY"));
    }

    #[test]
    fn dek_version_zero_is_not_a_version() {
        assert!(DekVersion::new(0).is_none());
        assert_eq!(DekVersion::FIRST.next().map(DekVersion::get), Some(2));
        assert!(
            DekVersion::new(u32::MAX)
                .and_then(DekVersion::next)
                .is_none()
        );
    }
}
