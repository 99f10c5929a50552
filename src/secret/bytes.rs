//! [`SecretBytes`]: an arbitrary secret blob.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

use super::{PLAINTEXT_V1, Secret, SecretKind, read_plaintext_version, sealed};
use crate::codec::Reader;
use crate::error::{FormatError, Structure};

/// An arbitrary secret blob: a private key, a certificate bundle, a JSON credential file.
///
/// Plaintext encoding v1: `0x01 || bytes`.
///
/// ```
/// use credvault::SecretBytes;
/// let blob = SecretBytes::from_slice(b"\x00\x01secret");
/// assert_eq!(format!("{blob:?}"), "SecretBytes([REDACTED])");
/// assert_eq!(blob.expose_secret(), b"\x00\x01secret");
/// ```
pub struct SecretBytes(SecretBox<[u8]>);

impl SecretBytes {
    /// Wraps `bytes`, copying them into an exact-size allocation and zeroizing the
    /// vector passed in (including its spare capacity).
    #[must_use]
    pub fn new(mut bytes: Vec<u8>) -> Self {
        let secret = Self::from_slice(&bytes);
        bytes.zeroize();
        secret
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for its own copy.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(SecretBox::new(Box::from(bytes)))
    }

    /// The secret bytes. This is the one read path.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Hands the bytes back as a [`SecretBox`].
    #[must_use]
    pub fn into_secret_box(self) -> SecretBox<[u8]> {
        self.0
    }
}

impl From<SecretBox<[u8]>> for SecretBytes {
    fn from(secret: SecretBox<[u8]>) -> Self {
        Self(secret)
    }
}

impl ExposeSecret<[u8]> for SecretBytes {
    fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

impl Secret for SecretBytes {
    const KIND: SecretKind = SecretKind::Bytes;
}

impl sealed::Sealed for SecretBytes {
    fn encoded_len(&self) -> usize {
        1 + self.0.expose_secret().len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(PLAINTEXT_V1);
        out.extend_from_slice(self.0.expose_secret());
    }

    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, Structure::Plaintext);
        read_plaintext_version(&mut r)?;
        let rest = r.take(r.remaining())?;
        Ok(Self::from_slice(rest))
    }
}
