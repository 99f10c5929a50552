//! Envelope format v1: the self-describing byte string stored for every secret.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "CVSE"
//! 4       1     format version (0x01)
//! 5       1     suite (0x01 AES-256-GCM, 0x02 XChaCha20-Poly1305)
//! 6       1     secret kind (0x01 ApiKey, 0x02 OAuthToken, 0x03 SecretBytes)
//! 7       4     DEK version, u32 big-endian, >= 1
//! 11      n     nonce (12 or 24 bytes, by suite)
//! 11+n    4     L = ciphertext length including the 16-byte tag, u32 big-endian, >= 16
//! 15+n    L     ciphertext || tag
//! ```
//!
//! The associated data is `lp32("credvault/v1/secret") || lp32(header) || lp32(tenant id)
//! || lp32(secret name)`, where `header` is bytes 0..11 and `lp32` prefixes a field with
//! its length as a big-endian u32. The normative description, with a worked example, is
//! `docs/format.md`.

use crate::codec::Reader;
use crate::crypto::{SecretAad, SecretCipher, Suite, TAG_LEN, random_nonce};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::secret::{Secret, SecretKind};

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = *b"CVSE";
/// The envelope format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Length of the fixed header (magic, version, suite, kind, DEK version).
pub const HEADER_LEN: usize = 11;

/// A parsed envelope, borrowing the stored bytes. Parsing allocates nothing. `Debug` shows
/// the header and lengths, never the nonce, ciphertext or tag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeRef<'a> {
    suite: Suite,
    kind: SecretKind,
    dek_version: DekVersion,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

impl<'a> EnvelopeRef<'a> {
    /// Parses `bytes`, accepting exactly one canonical encoding.
    ///
    /// # Errors
    /// A [`FormatError`] naming the first problem: [`FormatError::Truncated`],
    /// [`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`],
    /// [`FormatError::UnsupportedSuite`], [`FormatError::InvalidField`] (unknown kind, DEK
    /// version 0, ciphertext shorter than a tag) or [`FormatError::TrailingBytes`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        const S: Structure = Structure::Envelope;
        let mut r = Reader::new(bytes, S);
        if r.array::<4>()? != MAGIC {
            return Err(FormatError::BadMagic(S));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(S, version));
        }
        let suite_byte = r.u8()?;
        let suite =
            Suite::from_u8(suite_byte).ok_or(FormatError::UnsupportedSuite(S, suite_byte))?;
        let kind =
            SecretKind::from_u8(r.u8()?).ok_or(FormatError::InvalidField(S, "secret kind"))?;
        let dek_version =
            DekVersion::new(r.u32()?).ok_or(FormatError::InvalidField(S, "DEK version"))?;
        let nonce = r.take(suite.nonce_len())?;
        let sealed = r.lp32()?;
        r.finish()?;
        let Some(split) = sealed.len().checked_sub(TAG_LEN) else {
            return Err(FormatError::InvalidField(S, "ciphertext length"));
        };
        let (ciphertext, tag) = sealed.split_at(split);
        let tag =
            <&[u8; TAG_LEN]>::try_from(tag).map_err(|_| FormatError::InvalidField(S, "tag"))?;
        Ok(Self {
            suite,
            kind,
            dek_version,
            nonce,
            ciphertext,
            tag,
        })
    }

    /// The cipher suite that sealed this envelope.
    #[must_use]
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The kind of secret inside.
    #[must_use]
    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    /// The tenant data-key version that sealed it.
    #[must_use]
    pub fn dek_version(&self) -> DekVersion {
        self.dek_version
    }

    /// The nonce.
    #[must_use]
    pub fn nonce(&self) -> &'a [u8] {
        self.nonce
    }

    /// Length of the ciphertext without its tag: the plaintext encoding's length.
    #[must_use]
    pub fn ciphertext_len(&self) -> usize {
        self.ciphertext.len()
    }

    /// The fixed header, as bound into the associated data.
    #[must_use]
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header(self.suite, self.kind, self.dek_version)
    }

    /// Length of [`Self::to_bytes`].
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.nonce.len() + 4 + self.ciphertext.len() + TAG_LEN
    }

    /// Re-encodes the envelope. For every input that [`Self::parse`] accepts, this returns
    /// exactly that input.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(self.nonce);
        let sealed_len = self.ciphertext.len() + TAG_LEN;
        out.extend_from_slice(&u32::try_from(sealed_len).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(self.ciphertext);
        out.extend_from_slice(self.tag);
        out
    }
}

impl std::fmt::Debug for EnvelopeRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeRef")
            .field("suite", &self.suite)
            .field("kind", &self.kind)
            .field("dek_version", &self.dek_version)
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

fn header(suite: Suite, kind: SecretKind, dek_version: DekVersion) -> [u8; HEADER_LEN] {
    let v = dek_version.get().to_be_bytes();
    let [m0, m1, m2, m3] = MAGIC;
    [
        m0,
        m1,
        m2,
        m3,
        VERSION,
        suite.as_u8(),
        kind.as_u8(),
        v[0],
        v[1],
        v[2],
        v[3],
    ]
}

/// Where a secret lives: the context bound into its associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretContext<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) name: &'a SecretName,
}

/// Seals `secret` into a new envelope with a fresh random nonce.
pub(crate) fn seal<S: Secret>(
    cipher: &SecretCipher,
    suite: Suite,
    dek_version: DekVersion,
    ctx: SecretContext<'_>,
    secret: &S,
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; 24];
    let nonce = nonce.get_mut(..suite.nonce_len()).unwrap_or_default();
    random_nonce(nonce);
    seal_with_nonce(cipher, suite, dek_version, ctx, secret, nonce)
}

/// [`seal`] with a caller-chosen nonce; only `seal`, the format's worked example and the
/// golden vectors (`credvault::testkit`) use it.
pub(crate) fn seal_with_nonce<S: Secret>(
    cipher: &SecretCipher,
    suite: Suite,
    dek_version: DekVersion,
    ctx: SecretContext<'_>,
    secret: &S,
    nonce: &[u8],
) -> Result<Vec<u8>, Error> {
    let header = header(suite, S::KIND, dek_version);
    seal_encoded(
        cipher,
        suite,
        &header,
        ctx,
        nonce,
        secret.encoded_len(),
        |out| {
            secret.encode(out);
        },
    )
}

/// Seals an already encoded plaintext of `kind` (for re-encryption, which moves a secret
/// to a new data key without decoding it).
pub(crate) fn seal_plaintext(
    cipher: &SecretCipher,
    suite: Suite,
    kind: SecretKind,
    dek_version: DekVersion,
    ctx: SecretContext<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; 24];
    let nonce = nonce.get_mut(..suite.nonce_len()).unwrap_or_default();
    random_nonce(nonce);
    seal_plaintext_with_nonce(cipher, suite, kind, dek_version, ctx, plaintext, nonce)
}

/// [`seal_plaintext`] with a caller-chosen nonce; only `seal_plaintext` and the golden
/// vectors (`credvault::testkit`) use it.
pub(crate) fn seal_plaintext_with_nonce(
    cipher: &SecretCipher,
    suite: Suite,
    kind: SecretKind,
    dek_version: DekVersion,
    ctx: SecretContext<'_>,
    plaintext: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, Error> {
    let header = header(suite, kind, dek_version);
    seal_encoded(cipher, suite, &header, ctx, nonce, plaintext.len(), |out| {
        out.extend_from_slice(plaintext);
    })
}

/// The sealing core: `encode` appends exactly `plaintext_len` bytes.
fn seal_encoded(
    cipher: &SecretCipher,
    suite: Suite,
    header: &[u8; HEADER_LEN],
    ctx: SecretContext<'_>,
    nonce: &[u8],
    plaintext_len: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, Error> {
    if suite.nonce_len() != nonce.len() {
        return Err(Error::invalid("nonce", "wrong length for the suite"));
    }
    let sealed_len = u32::try_from(plaintext_len + TAG_LEN)
        .map_err(|_| Error::invalid("secret", "too long for the envelope format"))?;
    let total = HEADER_LEN + nonce.len() + 4 + plaintext_len + TAG_LEN;
    // Sized once: the plaintext is encoded straight into the output buffer and encrypted
    // in place, so it never exists in a second allocation.
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(header);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed_len.to_be_bytes());
    let start = out.len();
    encode(&mut out);
    debug_assert_eq!(
        out.len(),
        start + plaintext_len,
        "encoded_len must be exact"
    );
    let aad = SecretAad::new(header, ctx.tenant.as_str(), ctx.name.as_str());
    let in_out = out.get_mut(start..).unwrap_or_default();
    match cipher.seal_in_place(nonce, aad.as_bytes(), in_out) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            debug_assert_eq!(out.len(), total);
            Ok(out)
        }
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut out);
            Err(e)
        }
    }
}

/// Opens the envelope `bytes` as a secret of type `S` stored at `ctx`, decrypting in place:
/// `bytes` is the caller's own copy of the stored row, and its plaintext region is zeroized
/// before this returns, whatever the outcome.
///
/// The caller has already checked that the envelope's kind is `S::KIND` and chosen
/// `cipher` by the envelope's DEK version; both are authenticated through the header in the
/// associated data, and the tenant and name come from the caller, not from the row.
pub(crate) fn open_in_place<S: Secret>(
    cipher: &SecretCipher,
    bytes: &mut [u8],
    ctx: SecretContext<'_>,
) -> Result<S, Error> {
    with_plaintext(cipher, bytes, ctx, |plaintext| Ok(S::decode(plaintext)?))
}

/// Decrypts the envelope `bytes` in place and lends the plaintext encoding to `use_it`;
/// the plaintext is zeroized afterwards (as a slice: one memset, not a byte loop).
pub(crate) fn with_plaintext<T>(
    cipher: &SecretCipher,
    bytes: &mut [u8],
    ctx: SecretContext<'_>,
    use_it: impl FnOnce(&[u8]) -> Result<T, Error>,
) -> Result<T, Error> {
    let parsed = EnvelopeRef::parse(bytes)?;
    let header = parsed.header();
    let nonce_len = parsed.nonce.len();
    let mut nonce = [0u8; 24];
    let nonce = nonce.get_mut(..nonce_len).unwrap_or_default();
    nonce.copy_from_slice(parsed.nonce);
    let tag = *parsed.tag;
    let start = HEADER_LEN + nonce_len + 4;
    let end = start + parsed.ciphertext.len();
    let aad = SecretAad::new(&header, ctx.tenant.as_str(), ctx.name.as_str());
    let region = bytes.get_mut(start..end).ok_or(Error::Decryption)?;
    cipher.open_in_place(nonce, aad.as_bytes(), region, &tag)?;
    let result = use_it(region);
    zeroize::Zeroize::zeroize(region);
    result
}
