//! The only module that calls cryptographic primitives: AEAD sealing and opening, nonce
//! generation, associated-data construction and the domain-separation labels.
//!
//! - AES-256-GCM comes from `ring` (hardware AES and carry-less multiply where the CPU has
//!   them); XChaCha20-Poly1305 from RustCrypto's `chacha20poly1305`.
//! - Nonces come from `rand`'s thread-local CSPRNG (ChaCha12, seeded and periodically
//!   reseeded from the operating system): a system call per nonce would cost more than the
//!   encryption. See SECURITY.md for `fork()`.
//! - A [`SecretCipher`] holds an expanded key. It is neither `Clone` nor constructible from
//!   a seed, and it never chooses its own nonces: callers draw them with [`random_nonce`].

use std::fmt;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::error::Error;
use crate::keys::DataKey;

/// Label that starts the associated data of every secret envelope.
pub(crate) const SECRET_AAD_LABEL: &[u8] = b"credvault/v1/secret";
/// Label that starts the context bound to every wrapped data key.
pub(crate) const DEK_WRAP_LABEL: &[u8] = b"credvault/v1/dek-wrap";
/// HMAC message from which a local master key's id is derived.
pub(crate) const MASTER_KEY_ID_LABEL: &[u8] = b"credvault/v1/master-key-id";

/// Length of every authentication tag, in bytes.
pub const TAG_LEN: usize = 16;

/// NIST SP 800-38D bound for AES-GCM with random 96-bit nonces is 2^32 encryptions per
/// key; like HashiCorp Vault we stop at 0.9 x 2^32.
pub(crate) const AES_GCM_MAX_ENCRYPTIONS: u64 = 3_865_470_566;

/// An AEAD cipher suite. The suite of each data key is fixed when the key is created and
/// recorded in every envelope it seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Suite {
    /// AES-256-GCM with a random 96-bit nonce (suite byte `0x01`). The fastest suite on
    /// CPUs with AES instructions; its usage bound is enforced by durable counting.
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305 with a random 192-bit nonce (suite byte `0x02`). Constant-time
    /// without AES hardware; random nonces are safe for any practical message count.
    XChaCha20Poly1305,
}

impl Suite {
    /// The byte that identifies this suite in stored formats.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::XChaCha20Poly1305 => 2,
        }
    }

    /// The suite a stored byte names, if this build knows it.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// Nonce length in bytes: 12 for AES-256-GCM, 24 for XChaCha20-Poly1305.
    #[must_use]
    pub const fn nonce_len(self) -> usize {
        match self {
            Self::Aes256Gcm => 12,
            Self::XChaCha20Poly1305 => 24,
        }
    }

    /// The most encryptions one key of this suite may perform with random nonces.
    #[must_use]
    pub const fn max_encryptions(self) -> u64 {
        match self {
            Self::Aes256Gcm => AES_GCM_MAX_ENCRYPTIONS,
            // 2^64 random 192-bit nonces still collide with probability below 2^-64.
            Self::XChaCha20Poly1305 => u64::MAX,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Aes256Gcm => "AES-256-GCM",
            Self::XChaCha20Poly1305 => "XChaCha20-Poly1305",
        })
    }
}

/// An expanded AEAD key. Deliberately not `Clone`: one key, one owner.
pub(crate) struct SecretCipher {
    imp: CipherImpl,
}

#[expect(
    clippy::large_enum_variant,
    reason = "the AES key schedule stays inline: no pointer chase on every seal and open"
)]
enum CipherImpl {
    // ring does not zeroize its AES key schedule on drop: `SecretCipher`'s `Drop` overwrites it.
    Aes(LessSafeKey),
    // chacha20poly1305 with the `zeroize` feature wipes the key on drop.
    XChaCha(XChaCha20Poly1305),
}

impl SecretCipher {
    /// Expands `key` for `suite`.
    ///
    /// # Errors
    /// [`Error::Decryption`] if the primitive refuses the key (it accepts every 32-byte
    /// key, so this does not happen in practice).
    pub(crate) fn new(suite: Suite, key: &DataKey) -> Result<Self, Error> {
        let bytes = key.expose_secret();
        let imp = match suite {
            Suite::Aes256Gcm => {
                let unbound =
                    UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| Error::Decryption)?;
                CipherImpl::Aes(LessSafeKey::new(unbound))
            }
            Suite::XChaCha20Poly1305 => {
                // The key array passed to the cipher is wiped when this scope ends.
                let key = zeroize::Zeroizing::new(*bytes);
                CipherImpl::XChaCha(XChaCha20Poly1305::new((&*key).into()))
            }
        };
        Ok(Self { imp })
    }

    /// Encrypts `in_out` in place under `nonce` and `aad`, returning the tag.
    ///
    /// # Errors
    /// Only for inputs beyond the primitive's length limit, far above the vault's.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        let too_long = || Error::invalid("secret", "too long for the cipher");
        match &self.imp {
            CipherImpl::Aes(key) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| too_long())?;
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
                    .map_err(|_| too_long())?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
            CipherImpl::XChaCha(key) => {
                let nonce = XNonce::try_from(nonce).map_err(|_| too_long())?;
                let tag = key
                    .encrypt_inout_detached(&nonce, aad, in_out.into())
                    .map_err(|_| too_long())?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(&tag);
                Ok(out)
            }
        }
    }

    /// Decrypts `in_out` in place after verifying `tag`. On failure the buffer holds no
    /// plaintext that the caller may use (it is zeroized here).
    ///
    /// # Errors
    /// [`Error::Decryption`], whatever the cause.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        let ok = match &self.imp {
            CipherImpl::Aes(key) => Nonce::try_assume_unique_for_key(nonce).is_ok_and(|nonce| {
                key.open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), in_out, 0..)
                    .is_ok()
            }),
            CipherImpl::XChaCha(key) => XNonce::try_from(nonce).is_ok_and(|nonce| {
                key.decrypt_inout_detached(&nonce, aad, in_out.into(), &(*tag).into())
                    .is_ok()
            }),
        };
        if ok {
            Ok(())
        } else {
            zeroize::Zeroize::zeroize(in_out);
            Err(Error::Decryption)
        }
    }
}

impl Drop for SecretCipher {
    /// `ring` does not wipe its expanded AES key on drop, and the schedule starts with the
    /// raw key, so a freed cache entry would leave the data key in the heap. The crate
    /// forbids `unsafe`, so the schedule is overwritten in place with that of the all-zero
    /// key; `black_box` keeps the compiler from treating the write as dead before the free.
    /// `tests/memory_hygiene.rs` checks that no freed block holds an AES-256-GCM data key.
    /// (XChaCha20-Poly1305 keys are wiped by `chacha20poly1305` itself.)
    fn drop(&mut self) {
        if let CipherImpl::Aes(key) = &mut self.imp
            && let Ok(zero) = UnboundKey::new(&AES_256_GCM, &[0u8; 32])
        {
            *key = LessSafeKey::new(zero);
            std::hint::black_box(&*key);
        }
    }
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCipher([REDACTED])")
    }
}

/// Fills `out` from the thread-local CSPRNG.
pub(crate) fn random_nonce(out: &mut [u8]) {
    rand::rng().fill_bytes(out);
}

/// A fresh row version for a write: 63 bits from the thread-local CSPRNG.
pub(crate) fn fresh_row_version() -> crate::ids::RowVersion {
    crate::ids::RowVersion::from_random_bits(rand::rng().next_u64())
}

/// Fills `out` directly from the operating system's generator (for keys, not nonces).
pub(crate) fn os_random(out: &mut [u8]) -> Result<(), Error> {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(out)
        .map_err(|_| Error::Entropy)
}

/// First 8 bytes of HMAC-SHA256(key, [`MASTER_KEY_ID_LABEL`]): a stable, non-reversible
/// fingerprint used to name local master keys.
pub(crate) fn key_fingerprint(key: &[u8; 32]) -> [u8; 8] {
    let mac = hmac_sha256(key, MASTER_KEY_ID_LABEL);
    let mut out = [0u8; 8];
    out.copy_from_slice(mac.get(..8).unwrap_or(&[0; 8]));
    out
}

/// HMAC-SHA256 under a 256-bit key: the MAC behind [`key_fingerprint`], separate so that
/// the Wycheproof vectors can be run through it (`tests/wycheproof.rs`).
pub(crate) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(mac.as_ref().get(..32).unwrap_or(&[0; 32]));
    out
}

/// First 16 bytes of SHA-256(`bytes`), for the Wycheproof and FIPS checks of the SHA-256
/// under HMAC (the crate itself calls SHA-256 only through HMAC).
#[cfg(feature = "testkit")]
pub(crate) fn fingerprint(bytes: &[u8]) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(digest.as_ref().get(..16).unwrap_or(&[0; 16]));
    out
}

/// `lp32(SECRET_AAD_LABEL) || be32(HEADER_LEN)`: the constant start of every secret's
/// associated data, written once at compile time instead of assembled on every seal and
/// open.
const SECRET_AAD_PREFIX: [u8; 8 + SECRET_AAD_LABEL.len()] = secret_aad_prefix();

#[expect(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "evaluated at compile time only: an index out of bounds or a label over 4 GiB \
              fails the build"
)]
const fn secret_aad_prefix() -> [u8; 8 + SECRET_AAD_LABEL.len()] {
    let mut out = [0u8; 8 + SECRET_AAD_LABEL.len()];
    let label_len = (SECRET_AAD_LABEL.len() as u32).to_be_bytes();
    let header_len = (crate::envelope::HEADER_LEN as u32).to_be_bytes();
    let mut i = 0;
    while i < 4 {
        out[i] = label_len[i];
        out[4 + SECRET_AAD_LABEL.len() + i] = header_len[i];
        i += 1;
    }
    let mut j = 0;
    while j < SECRET_AAD_LABEL.len() {
        out[4 + j] = SECRET_AAD_LABEL[j];
        j += 1;
    }
    out
}

/// Associated data up to this length is built on the stack; longer (only with very long
/// tenant ids and secret names) goes to the heap. Sized so that a tenant id and a name of
/// 146 bytes together fit.
const SECRET_AAD_INLINE: usize = 192;

/// The associated data of a secret envelope:
/// `lp32(label) || lp32(header) || lp32(tenant) || lp32(name)`.
pub(crate) struct SecretAad {
    imp: AadBuf,
}

enum AadBuf {
    Inline([u8; SECRET_AAD_INLINE], usize),
    Heap(Vec<u8>),
}

impl SecretAad {
    pub(crate) fn new(
        header: &[u8; crate::envelope::HEADER_LEN],
        tenant: &str,
        name: &str,
    ) -> Self {
        let len = SECRET_AAD_PREFIX.len() + header.len() + 8 + tenant.len() + name.len();
        // Identifier types bound both fields (128 and 256 bytes), so the prefixes fit a u32.
        let tenant_len = u32::try_from(tenant.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes();
        let imp = if len <= SECRET_AAD_INLINE {
            // The fixed-length parts are copied with constant lengths (inlined moves); only
            // the tenant id and the name need a variable-length copy.
            let mut buf = [0u8; SECRET_AAD_INLINE];
            let (fixed, rest) = buf.split_at_mut(SECRET_AAD_PREFIX.len() + header.len() + 4);
            let (prefix, fixed) = fixed.split_at_mut(SECRET_AAD_PREFIX.len());
            let (head, len_field) = fixed.split_at_mut(header.len());
            prefix.copy_from_slice(&SECRET_AAD_PREFIX);
            head.copy_from_slice(header);
            len_field.copy_from_slice(&tenant_len);
            let (t, rest) = rest.split_at_mut(tenant.len().min(rest.len()));
            t.copy_from_slice(tenant.as_bytes().get(..t.len()).unwrap_or_default());
            let (n_len, rest) = rest.split_at_mut(4.min(rest.len()));
            n_len.copy_from_slice(name_len.get(..n_len.len()).unwrap_or_default());
            let n = rest.get_mut(..name.len()).unwrap_or_default();
            n.copy_from_slice(name.as_bytes().get(..n.len()).unwrap_or_default());
            AadBuf::Inline(buf, len)
        } else {
            let mut buf = Vec::with_capacity(len);
            for part in [
                &SECRET_AAD_PREFIX[..],
                header,
                &tenant_len,
                tenant.as_bytes(),
                &name_len,
                name.as_bytes(),
            ] {
                buf.extend_from_slice(part);
            }
            AadBuf::Heap(buf)
        };
        Self { imp }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.imp {
            AadBuf::Inline(buf, len) => buf.get(..*len).unwrap_or(&[]),
            AadBuf::Heap(buf) => buf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward construction the fast one must match.
    fn reference_aad(header: &[u8], tenant: &str, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [SECRET_AAD_LABEL, header, tenant.as_bytes(), name.as_bytes()] {
            crate::codec::put_lp32(&mut out, field);
        }
        out
    }

    #[test]
    fn secret_aad_matches_the_length_prefixed_fields_inline_and_on_the_heap() {
        let header = [0x43, 0x56, 0x53, 0x45, 1, 1, 3, 0, 0, 0, 7];
        let long_tenant = "t".repeat(crate::ids::TenantId::MAX_LEN);
        let long_name = "n".repeat(crate::ids::SecretName::MAX_LEN);
        for (tenant, name) in [
            ("tenant-0001", "stripe/live"),
            ("a", "b"),
            (long_tenant.as_str(), "x"),
            (long_tenant.as_str(), long_name.as_str()),
            ("t", &long_name[..SECRET_AAD_INLINE - 27 - 11 - 8 - 1]),
            ("t", &long_name[..SECRET_AAD_INLINE - 27 - 11 - 8]),
            ("t", &long_name[..=(SECRET_AAD_INLINE - 27 - 11 - 8)]),
        ] {
            assert_eq!(
                SecretAad::new(&header, tenant, name).as_bytes(),
                reference_aad(&header, tenant, name).as_slice()
            );
        }
    }
}
