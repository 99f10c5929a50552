//! [`OAuthToken`]: an OAuth 2.0 access token with its refresh token and metadata.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

use super::{PLAINTEXT_V1, Secret, SecretKind, read_plaintext_version, sealed};
use crate::codec::{Reader, put_lp16, put_lp32};
use crate::error::{Error, FormatError, Structure};

/// An OAuth 2.0 token set: the access token, an optional refresh token, and the
/// non-secret fields a client needs to use them.
///
/// The secret fields are [`SecretString`]s, read with [`secrecy::ExposeSecret`]; the
/// non-secret ones (`token_type`, `expires_at`, `scopes`) are plain accessors. All fields
/// are encrypted together: the vault keeps no field in the clear.
///
/// Plaintext encoding v1 (big-endian):
/// `0x01 || lp32(access) || u8 has_refresh || [lp32(refresh)] || lp16(token_type) ||
/// u8 has_expiry || [i64 expires_at, Unix seconds] || u16 scope_count || lp16(scope)*`.
///
/// Limits: `token_type` at most [`Self::MAX_TOKEN_TYPE_LEN`] bytes, at most
/// [`Self::MAX_SCOPES`] scopes of at most [`Self::MAX_SCOPE_LEN`] bytes each; the vault
/// rejects a token over these limits with [`Error::InvalidInput`] before writing.
///
/// ```
/// use credvault::{ExposeSecret, OAuthToken};
/// let token = OAuthToken::new("ya29.access")
///     .with_refresh_token("1//refresh")
///     .with_scopes(["repo", "read:user"]);
/// assert_eq!(token.token_type(), "Bearer");
/// assert_eq!(token.access_token().expose_secret(), "ya29.access");
/// assert!(!format!("{token:?}").contains("ya29"));
/// ```
pub struct OAuthToken {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    token_type: String,
    expires_at: Option<i64>,
    scopes: Vec<String>,
}

fn secret_string(mut text: String) -> SecretString {
    let secret = SecretString::from(text.as_str());
    text.zeroize();
    secret
}

impl OAuthToken {
    /// Longest `token_type`, in bytes.
    pub const MAX_TOKEN_TYPE_LEN: usize = 255;
    /// Most scopes a token may carry.
    pub const MAX_SCOPES: usize = 1024;
    /// Longest single scope, in bytes.
    pub const MAX_SCOPE_LEN: usize = 1024;

    /// A bearer token with no refresh token, expiry or scopes.
    #[must_use]
    pub fn new(access_token: impl Into<String>) -> Self {
        Self::from_secret(secret_string(access_token.into()))
    }

    /// A bearer token from an access token already held as a [`SecretString`].
    #[must_use]
    pub fn from_secret(access_token: SecretString) -> Self {
        Self {
            access_token,
            refresh_token: None,
            token_type: String::from("Bearer"),
            expires_at: None,
            scopes: Vec::new(),
        }
    }

    /// Sets the refresh token.
    #[must_use]
    pub fn with_refresh_token(self, refresh_token: impl Into<String>) -> Self {
        self.with_refresh_secret(secret_string(refresh_token.into()))
    }

    /// Sets the refresh token from a [`SecretString`].
    #[must_use]
    pub fn with_refresh_secret(mut self, refresh_token: SecretString) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// Sets the token type (default `Bearer`).
    #[must_use]
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// Sets the expiry. Stored with one-second precision (sub-second parts are dropped).
    #[must_use]
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(unix_seconds(expires_at));
        self
    }

    /// Sets the granted scopes.
    #[must_use]
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The access token.
    #[must_use]
    pub fn access_token(&self) -> &SecretString {
        &self.access_token
    }

    /// The refresh token, if any.
    #[must_use]
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The token type, such as `Bearer`.
    #[must_use]
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the access token expires, if known.
    #[must_use]
    pub fn expires_at(&self) -> Option<SystemTime> {
        let secs = self.expires_at?;
        let magnitude = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// Whether the access token has expired at `now` (false when no expiry is known).
    #[must_use]
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|exp| unix_seconds(now) >= exp)
    }

    /// The granted scopes.
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("access_token", &format_args!("[REDACTED]"))
            .field(
                "refresh_token",
                &self
                    .refresh_token
                    .as_ref()
                    .map(|_| format_args!("[REDACTED]")),
            )
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Secret for OAuthToken {
    const KIND: SecretKind = SecretKind::OAuthToken;
}

impl sealed::Sealed for OAuthToken {
    fn check(&self) -> Result<(), Error> {
        if self.token_type.len() > Self::MAX_TOKEN_TYPE_LEN {
            return Err(Error::invalid("OAuth token", "token type too long"));
        }
        if self.scopes.len() > Self::MAX_SCOPES {
            return Err(Error::invalid("OAuth token", "too many scopes"));
        }
        if self.scopes.iter().any(|s| s.len() > Self::MAX_SCOPE_LEN) {
            return Err(Error::invalid("OAuth token", "scope too long"));
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        1 + 4
            + self.access_token.expose_secret().len()
            + 1
            + self
                .refresh_token
                .as_ref()
                .map_or(0, |r| 4 + r.expose_secret().len())
            + 2
            + self.token_type.len()
            + 1
            + self.expires_at.map_or(0, |_| 8)
            + 2
            + self.scopes.iter().map(|s| 2 + s.len()).sum::<usize>()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(PLAINTEXT_V1);
        put_lp32(out, self.access_token.expose_secret().as_bytes());
        match &self.refresh_token {
            Some(refresh) => {
                out.push(1);
                put_lp32(out, refresh.expose_secret().as_bytes());
            }
            None => out.push(0),
        }
        put_lp16(out, self.token_type.as_bytes());
        match self.expires_at {
            Some(exp) => {
                out.push(1);
                out.extend_from_slice(&exp.to_be_bytes());
            }
            None => out.push(0),
        }
        let count = u16::try_from(self.scopes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for scope in &self.scopes {
            put_lp16(out, scope.as_bytes());
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        fn text<'b>(b: &'b [u8], field: &'static str) -> Result<&'b str, FormatError> {
            std::str::from_utf8(b)
                .map_err(|_| FormatError::InvalidField(Structure::Plaintext, field))
        }
        let flag = |b: u8, field| match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FormatError::InvalidField(Structure::Plaintext, field)),
        };
        let mut r = Reader::new(bytes, Structure::Plaintext);
        read_plaintext_version(&mut r)?;
        let access_token = SecretString::from(text(r.lp32()?, "access token")?);
        let refresh_token = if flag(r.u8()?, "refresh flag")? {
            Some(SecretString::from(text(r.lp32()?, "refresh token")?))
        } else {
            None
        };
        let token_type = text(r.lp16()?, "token type")?;
        if token_type.len() > Self::MAX_TOKEN_TYPE_LEN {
            return Err(FormatError::InvalidField(
                Structure::Plaintext,
                "token type",
            ));
        }
        let expires_at = if flag(r.u8()?, "expiry flag")? {
            Some(r.i64()?)
        } else {
            None
        };
        let count = usize::from(r.u16()?);
        // Each scope takes at least two bytes, so the input bounds the allocation.
        if count > Self::MAX_SCOPES || count > r.remaining() / 2 {
            return Err(FormatError::InvalidField(
                Structure::Plaintext,
                "scope count",
            ));
        }
        let mut scopes = Vec::with_capacity(count);
        for _ in 0..count {
            let scope = text(r.lp16()?, "scope")?;
            if scope.len() > Self::MAX_SCOPE_LEN {
                return Err(FormatError::InvalidField(Structure::Plaintext, "scope"));
            }
            scopes.push(scope.to_owned());
        }
        r.finish()?;
        Ok(Self {
            access_token,
            refresh_token,
            token_type: token_type.to_owned(),
            expires_at,
            scopes,
        })
    }
}
