//! Test seams for credvault's own test suite (feature `testkit`, hidden from the docs).
//!
//! **Not an API.** Nothing here is covered by semver, and a production build must not
//! enable the feature: the `insecure_*` functions let the caller choose nonces, which the
//! real API never does. The feature exists because integration tests can reach only public
//! items; `Cargo.toml` enables it for the crate's own tests and examples through the self
//! dev-dependency.
//!
//! What it exposes, and which test needs it:
//! - [`Aead`], [`hmac_sha256`], [`sha256_fingerprint`]: the crate's crypto layer
//!   (`src/crypto.rs`) for the Wycheproof vectors (`tests/wycheproof.rs`).
//! - [`insecure_wrap_with_nonce`], [`insecure_seal_with_nonce`],
//!   [`insecure_seal_plaintext_with_nonce`], [`open_plaintext`], [`plaintext_encoding`]: the
//!   golden envelope vectors (`examples/gen_vectors.rs`, `tests/golden_vectors.rs`).
//! - [`parse_wrapped_dek`], [`decode_plaintext`]: the parsers for the allocation bound
//!   (`tests/alloc_bound.rs`).

use zeroize::Zeroizing;

use crate::crypto::{SecretCipher, Suite, TAG_LEN};
use crate::envelope::{self, SecretContext};
use crate::error::{Error, FormatError};
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::keys::{DataKey, LocalMasterKey, WrapContext, WrappedDek};
use crate::secret::{Secret, SecretKind};

/// The crate's AEAD layer (`crypto::SecretCipher`) over a raw key.
#[derive(Debug)]
pub struct Aead {
    cipher: SecretCipher,
}

impl Aead {
    /// Expands `key` for `suite`.
    ///
    /// # Errors
    /// [`Error::Decryption`] unless `key` is 32 bytes: the crate's layer holds only
    /// 256-bit keys.
    pub fn new(suite: Suite, key: &[u8]) -> Result<Self, Error> {
        let key = DataKey::from_slice(key)?;
        Ok(Self {
            cipher: SecretCipher::new(suite, &key)?,
        })
    }

    /// Encrypts `in_out` in place under a caller-chosen `nonce`; returns the tag.
    ///
    /// # Errors
    /// As the crate's layer: a nonce of the wrong length for the suite is refused.
    pub fn insecure_seal_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        self.cipher.seal_in_place(nonce, aad, in_out)
    }

    /// Verifies `tag` and decrypts `in_out` in place (zeroized on failure).
    ///
    /// # Errors
    /// [`Error::Decryption`], whatever the cause.
    pub fn open_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        self.cipher.open_in_place(nonce, aad, in_out, tag)
    }
}

/// HMAC-SHA256 as the crate computes it (the MAC behind local master key ids).
#[must_use]
pub fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    crate::crypto::hmac_sha256(key, message)
}

/// The first 16 bytes of SHA-256 (the hash under the crate's HMAC).
#[must_use]
pub fn sha256_fingerprint(bytes: &[u8]) -> [u8; 16] {
    crate::crypto::fingerprint(bytes)
}

/// Wraps `dek` with `master` under `context`, with a caller-chosen nonce.
///
/// # Errors
/// As [`crate::MasterKeyProvider::wrap`].
pub fn insecure_wrap_with_nonce(
    master: &LocalMasterKey,
    dek: &DataKey,
    context: &WrapContext<'_>,
    nonce: &[u8; 24],
) -> Result<WrappedDek, Error> {
    master.wrap_with_nonce(dek, context, nonce)
}

/// Seals `secret` for (`tenant`, `name`) under `dek`, with a caller-chosen nonce.
///
/// # Errors
/// [`Error::InvalidInput`] for a nonce of the wrong length for `suite`.
pub fn insecure_seal_with_nonce<S: Secret>(
    dek: &DataKey,
    suite: Suite,
    dek_version: DekVersion,
    (tenant, name): (&TenantId, &SecretName),
    secret: &S,
    nonce: &[u8],
) -> Result<Vec<u8>, Error> {
    let cipher = SecretCipher::new(suite, dek)?;
    let ctx = SecretContext { tenant, name };
    envelope::seal_with_nonce(&cipher, suite, dek_version, ctx, secret, nonce)
}

/// Seals an arbitrary plaintext encoding (well-formed or not) as a secret of `kind`, with a
/// caller-chosen nonce: an authentic envelope around bytes the decoder must reject.
///
/// # Errors
/// [`Error::InvalidInput`] for a nonce of the wrong length for `suite`.
pub fn insecure_seal_plaintext_with_nonce(
    dek: &DataKey,
    (suite, kind, dek_version): (Suite, SecretKind, DekVersion),
    (tenant, name): (&TenantId, &SecretName),
    plaintext: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, Error> {
    let cipher = SecretCipher::new(suite, dek)?;
    let ctx = SecretContext { tenant, name };
    envelope::seal_plaintext_with_nonce(&cipher, suite, kind, dek_version, ctx, plaintext, nonce)
}

/// Opens `envelope` for (`tenant`, `name`) under `dek` (with the envelope's own suite) and
/// returns its plaintext encoding, undecoded.
///
/// # Errors
/// A [`FormatError`] if the envelope does not parse, [`Error::Decryption`] if it does not
/// authenticate.
pub fn open_plaintext(
    dek: &DataKey,
    (tenant, name): (&TenantId, &SecretName),
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let suite = envelope::EnvelopeRef::parse(envelope)?.suite();
    let cipher = SecretCipher::new(suite, dek)?;
    let mut copy = Zeroizing::new(envelope.to_vec());
    let ctx = SecretContext { tenant, name };
    envelope::with_plaintext(&cipher, &mut copy, ctx, |plaintext| {
        Ok(Zeroizing::new(plaintext.to_vec()))
    })
}

/// The plaintext encoding of `secret` (`docs/format.md`, section 5).
#[must_use]
pub fn plaintext_encoding<S: Secret>(secret: &S) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(secret.encoded_len()));
    secret.encode(&mut out);
    out
}

/// Decodes a plaintext encoding as an `S`.
///
/// # Errors
/// The [`FormatError`] the decoder reports.
pub fn decode_plaintext<S: Secret>(bytes: &[u8]) -> Result<S, FormatError> {
    S::decode(bytes)
}

/// Parses a `LocalMasterKey` wrapped data key (`docs/format.md`, section 4.2).
///
/// # Errors
/// The [`FormatError`] the parser reports.
pub fn parse_wrapped_dek(bytes: &[u8]) -> Result<(), FormatError> {
    crate::keys::LocalWrappedRef::parse(bytes).map(|_| ())
}
