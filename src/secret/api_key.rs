//! [`ApiKey`]: a third-party API key or other secret text.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

use super::{PLAINTEXT_V1, Secret, SecretKind, read_plaintext_version, sealed};
use crate::codec::Reader;
use crate::error::{FormatError, Structure};

/// A third-party API key (or any secret text).
///
/// Plaintext encoding v1: `0x01 || UTF-8 bytes of the key`.
///
/// ```
/// use credvault::ApiKey;
/// let key = ApiKey::new("sk_live_123");
/// assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
/// assert_eq!(key.expose_secret(), "sk_live_123");
/// ```
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Wraps `key`. The text is copied into an exact-size allocation and the `String`
    /// passed in is zeroized, so no unzeroized copy outlives this call.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        let mut key = key.into();
        let secret = SecretString::from(key.as_str());
        key.zeroize();
        Self(secret)
    }

    /// The key's text. This is the one read path: grep for it in reviews.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// Hands the key back as a [`SecretString`].
    #[must_use]
    pub fn into_secret_string(self) -> SecretString {
        self.0
    }
}

impl From<SecretString> for ApiKey {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

impl ExposeSecret<str> for ApiKey {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl Secret for ApiKey {
    const KIND: SecretKind = SecretKind::ApiKey;
}

impl sealed::Sealed for ApiKey {
    fn encoded_len(&self) -> usize {
        1 + self.0.expose_secret().len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(PLAINTEXT_V1);
        out.extend_from_slice(self.0.expose_secret().as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, Structure::Plaintext);
        read_plaintext_version(&mut r)?;
        let text = r.take(r.remaining())?;
        let text = std::str::from_utf8(text)
            .map_err(|_| FormatError::InvalidField(Structure::Plaintext, "UTF-8 text"))?;
        Ok(Self(SecretString::from(text)))
    }
}
