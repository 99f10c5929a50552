//! [`LocalMasterKey`]: a 256-bit master key held in process memory.
//!
//! Wrapped data-key format v1 (78 bytes):
//!
//! ```text
//! offset  size  field
//! 0       4     magic "CVWK"
//! 4       1     format version (0x01)
//! 5       1     wrap suite (0x02 XChaCha20-Poly1305)
//! 6       24    nonce
//! 30      48    encrypted data key (32) || tag (16)
//! ```
//!
//! Associated data: `lp32(bytes 0..6) || WrapContext::associated_data()`. XChaCha20-Poly1305
//! with random 192-bit nonces puts no practical bound on the number of wraps.

use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;
use zeroize::{Zeroize, Zeroizing};

use super::{DataKey, MasterKeyProvider, WrapContext, WrappedDek};
use crate::codec::{Reader, put_lp32};
use crate::crypto::{SecretCipher, Suite, TAG_LEN, key_fingerprint, random_nonce};
use crate::error::{Error, FormatError, Structure};
use crate::ids::MasterKeyId;

/// Magic bytes of a locally wrapped data key.
pub(crate) const WRAP_MAGIC: [u8; 4] = *b"CVWK";
const WRAP_VERSION: u8 = 1;
const WRAP_SUITE: Suite = Suite::XChaCha20Poly1305;
const WRAP_HEADER_LEN: usize = 6;
const WRAP_NONCE_LEN: usize = 24;
/// Length of a locally wrapped data key.
pub(crate) const WRAPPED_LEN: usize = WRAP_HEADER_LEN + WRAP_NONCE_LEN + DataKey::LEN + TAG_LEN;

/// A master key held in memory: for development, tests, and deployments whose master key
/// comes from a secret manager as base64 text. Production fleets usually put the master
/// key in a KMS or HSM behind their own [`MasterKeyProvider`].
///
/// Its id defaults to `local-` followed by 16 hex digits of HMAC-SHA256(key,
/// "credvault/v1/master-key-id"): stable across restarts, different for different keys,
/// and revealing nothing about the key.
pub struct LocalMasterKey {
    id: MasterKeyId,
    key: DataKey,
    cipher: SecretCipher,
}

impl LocalMasterKey {
    /// A fresh random key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Entropy`] if the generator fails.
    pub fn generate() -> Result<Self, Error> {
        let dek = DataKey::generate()?;
        Self::from_bytes(dek.expose_secret())
    }

    /// A key from its 32 raw bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless `bytes` is 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let key = DataKey::from_slice(bytes)
            .map_err(|_| Error::invalid("master key", "must be 32 bytes"))?;
        let cipher = SecretCipher::new(WRAP_SUITE, &key)?;
        let fingerprint = key_fingerprint(key.expose_secret());
        let mut id = String::with_capacity(22);
        id.push_str("local-");
        for b in fingerprint {
            let _ = write!(id, "{b:02x}");
        }
        let id = MasterKeyId::new(id)?;
        Ok(Self { id, key, cipher })
    }

    /// A key from standard base64 text (44 characters; surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the text is not base64 for exactly 32 bytes; the message
    /// never quotes the text.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let mut buf = Zeroizing::new([0u8; 48]);
        let n = STANDARD
            .decode_slice(text.trim().as_bytes(), &mut buf[..])
            .map_err(|_| Error::invalid("master key", "not base64 for 32 bytes"))?;
        if n != 32 {
            return Err(Error::invalid("master key", "not base64 for 32 bytes"));
        }
        Self::from_bytes(buf.get(..32).unwrap_or_default())
    }

    /// A key from the base64 text in environment variable `var`. The copy of the value
    /// read from the environment is zeroized; the environment itself is left as it is.
    ///
    /// # Errors
    /// [`Error::Config`] if the variable is unset or not Unicode; as
    /// [`Self::from_base64`] otherwise.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let mut text = std::env::var(var).map_err(|_| {
            Error::Config("master key environment variable is unset or not Unicode")
        })?;
        let key = Self::from_base64(&text);
        text.zeroize();
        key
    }

    /// A key from a file holding its base64 text.
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be read; as [`Self::from_base64`] otherwise.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|_| Error::Config("master key file cannot be read"))?,
        );
        Self::from_base64(&text)
    }

    /// Replaces the derived id with a name of your choosing.
    #[must_use]
    pub fn with_id(mut self, id: MasterKeyId) -> Self {
        self.id = id;
        self
    }

    /// The key as standard base64 text, to store in a secret manager after
    /// [`Self::generate`].
    #[must_use]
    pub fn export_base64(&self) -> SecretString {
        let mut text = STANDARD.encode(self.key.expose_secret());
        let secret = SecretString::from(text.as_str());
        text.zeroize();
        secret
    }

    pub(crate) fn wrap_with_nonce(
        &self,
        dek: &DataKey,
        context: &WrapContext<'_>,
        nonce: &[u8; WRAP_NONCE_LEN],
    ) -> Result<WrappedDek, Error> {
        let header = wrap_header();
        let aad = wrap_aad(&header, context);
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(nonce);
        let start = out.len();
        out.extend_from_slice(dek.expose_secret());
        let tag = self
            .cipher
            .seal_in_place(nonce, &aad, out.get_mut(start..).unwrap_or_default());
        match tag {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(WrappedDek::new(self.id.clone(), out))
            }
            Err(e) => {
                out.zeroize();
                Err(e)
            }
        }
    }
}

fn wrap_header() -> [u8; WRAP_HEADER_LEN] {
    let [m0, m1, m2, m3] = WRAP_MAGIC;
    [m0, m1, m2, m3, WRAP_VERSION, WRAP_SUITE.as_u8()]
}

fn wrap_aad(header: &[u8], context: &WrapContext<'_>) -> Vec<u8> {
    let ctx = context.associated_data();
    let mut aad = Vec::with_capacity(4 + header.len() + ctx.len());
    put_lp32(&mut aad, header);
    aad.extend_from_slice(&ctx);
    aad
}

/// A parsed locally wrapped data key, borrowing the stored bytes.
pub(crate) struct LocalWrappedRef<'a> {
    pub(crate) nonce: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
    pub(crate) tag: &'a [u8; TAG_LEN],
}

impl<'a> LocalWrappedRef<'a> {
    /// Parses the format in the module docs.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        const S: Structure = Structure::WrappedDek;
        let mut r = Reader::new(bytes, S);
        if r.array::<4>()? != WRAP_MAGIC {
            return Err(FormatError::BadMagic(S));
        }
        let version = r.u8()?;
        if version != WRAP_VERSION {
            return Err(FormatError::UnsupportedVersion(S, version));
        }
        let suite = r.u8()?;
        if suite != WRAP_SUITE.as_u8() {
            return Err(FormatError::UnsupportedSuite(S, suite));
        }
        let nonce = r.take(WRAP_NONCE_LEN)?;
        let ciphertext = r.take(DataKey::LEN)?;
        let tag =
            <&[u8; TAG_LEN]>::try_from(r.take(TAG_LEN)?).map_err(|_| FormatError::Truncated(S))?;
        r.finish()?;
        Ok(Self {
            nonce,
            ciphertext,
            tag,
        })
    }
}

#[async_trait]
impl MasterKeyProvider for LocalMasterKey {
    fn id(&self) -> &MasterKeyId {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedDek, Error> {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        random_nonce(&mut nonce);
        self.wrap_with_nonce(dek, context, &nonce)
    }

    async fn unwrap(
        &self,
        wrapped: &WrappedDek,
        context: &WrapContext<'_>,
    ) -> Result<DataKey, Error> {
        if wrapped.master_key_id() != &self.id || context.master_key_id != &self.id {
            return Err(Error::Decryption);
        }
        let parsed = LocalWrappedRef::parse(wrapped.as_bytes())?;
        let aad = wrap_aad(&wrap_header(), context);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(parsed.ciphertext);
        self.cipher
            .open_in_place(parsed.nonce, &aad, &mut key[..], parsed.tag)?;
        DataKey::from_slice(&key[..])
    }
}

impl fmt::Debug for LocalMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalMasterKey")
            .field("id", &self.id)
            .field("key", &format_args!("[REDACTED]"))
            .finish_non_exhaustive()
    }
}
