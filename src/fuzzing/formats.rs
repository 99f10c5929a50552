//! The byte-format targets: envelopes, wrapped data keys and plaintext encodings.

use zeroize::Zeroizing;

use super::Outcome;
use super::fixture::{
    self, block_on, known_envelopes, known_wrapped, open_fixture, wrap_context_parts,
};
use crate::envelope::{EnvelopeRef, HEADER_LEN, MAGIC};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, RowVersion};
use crate::keys::{MasterKeyProvider, WrapContext, WrappedDek};
use crate::secret::{ApiKey, OAuthToken, Secret, SecretBytes, SecretKind};
use crate::storage::{KeyCondition, PutMode, SecretMetadata, SecretRecord, Store, Timestamp};

/// Parses `data` as an envelope. Checks that the parser returns exactly the error that
/// `docs/format.md` section 3.2 prescribes (an independent reading of the spec below), and
/// that an accepted envelope re-encodes to exactly `data`.
///
/// # Panics
/// If either property fails.
#[must_use]
pub fn envelope_parse(data: &[u8]) -> Outcome {
    let parsed = EnvelopeRef::parse(data);
    assert!(
        parsed.err() == spec_envelope_error(data),
        "the envelope parser disagrees with docs/format.md section 3.2"
    );
    let Ok(env) = parsed else {
        return Outcome::Rejected;
    };
    assert!(
        env.to_bytes() == data,
        "an accepted envelope must re-encode to exactly its input"
    );
    assert!(
        env.encoded_len() == data.len(),
        "encoded_len must be the input's length"
    );
    assert!(
        data.get(..HEADER_LEN) == Some(&env.header()[..]),
        "the header must be the input's first bytes"
    );
    Outcome::Accepted
}

/// The error `docs/format.md` section 3.2 prescribes for `data`, read step by step; `None`
/// if the input is a well-formed envelope.
fn spec_envelope_error(data: &[u8]) -> Option<FormatError> {
    const S: Structure = Structure::Envelope;
    let byte = |i: usize| data.get(i).copied();
    let u32_at = |i: usize| {
        data.get(i..i + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let truncated = Some(FormatError::Truncated(S));
    let Some(magic) = data.get(..4) else {
        return truncated;
    };
    if magic != MAGIC {
        return Some(FormatError::BadMagic(S));
    }
    match byte(4) {
        None => return truncated,
        Some(1) => {}
        Some(v) => return Some(FormatError::UnsupportedVersion(S, v)),
    }
    let nonce_len = match byte(5) {
        None => return truncated,
        Some(1) => 12,
        Some(2) => 24,
        Some(s) => return Some(FormatError::UnsupportedSuite(S, s)),
    };
    match byte(6) {
        None => return truncated,
        Some(1..=3) => {}
        Some(_) => return Some(FormatError::InvalidField(S, "secret kind")),
    }
    match u32_at(7) {
        None => return truncated,
        Some(0) => return Some(FormatError::InvalidField(S, "DEK version")),
        Some(_) => {}
    }
    let Some(sealed_len) = u32_at(11 + nonce_len) else {
        return truncated;
    };
    let end = 15 + nonce_len + usize::try_from(sealed_len).unwrap_or(usize::MAX);
    if data.len() < end {
        return truncated;
    }
    if data.len() > end {
        return Some(FormatError::TrailingBytes(S));
    }
    if sealed_len < 16 {
        return Some(FormatError::InvalidField(S, "ciphertext length"));
    }
    None
}

/// Stores `data` as the envelope of secret (`acme`, `github`) next to the fixture's two
/// data keys and reads it back through [`crate::Vault::get`] as the kind its header names.
/// Checks that exactly the known envelopes open, each to its own plaintext, and that every
/// other input fails with the error the read path prescribes (`docs/format.md` 3.5):
/// the parse error, `KeyMissing` for a DEK version the tenant lacks, else `Decryption`.
///
/// # Panics
/// If any of these properties fails.
#[must_use]
pub fn envelope_open(data: &[u8]) -> Outcome {
    let (store, vault) = open_fixture();
    let parsed = EnvelopeRef::parse(data).ok();
    let (kind, version) = parsed.map_or((SecretKind::ApiKey, DekVersion::FIRST), |e| {
        (e.kind(), e.dek_version())
    });
    let record = SecretRecord {
        metadata: SecretMetadata {
            tenant: fixture::tenant(),
            name: fixture::name(),
            kind,
            dek_version: version,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            row_version: RowVersion(1),
        },
        envelope: data.to_vec(),
    };
    let opened = block_on(async {
        store
            .put_secret(record, PutMode::Upsert, KeyCondition::Unchecked)
            .await
            .expect("a memory store accepts an upsert");
        match kind {
            SecretKind::ApiKey => read_encoded::<ApiKey>(vault).await,
            SecretKind::OAuthToken => read_encoded::<OAuthToken>(vault).await,
            SecretKind::Bytes => read_encoded::<SecretBytes>(vault).await,
        }
    });
    let known = known_envelopes().iter().find(|k| k.bytes == data);
    match (opened, known) {
        (Ok(plaintext), Some(known)) => {
            assert!(
                plaintext == known.plaintext,
                "a known envelope opened to a wrong plaintext"
            );
            Outcome::Accepted
        }
        (Ok(_), None) => panic!("an envelope that was never sealed opened"),
        (Err(_), Some(known)) => panic!("known envelope {} failed to open", known.label),
        (Err(e), None) => {
            let expected_ok = match EnvelopeRef::parse(data) {
                Err(f) => matches!(e, Error::Format(g) if g == f),
                Ok(env) if env.dek_version().get() > 2 => {
                    matches!(e, Error::KeyMissing { version } if version == env.dek_version())
                }
                Ok(_) => matches!(e, Error::Decryption),
            };
            assert!(expected_ok, "unexpected read error {:?}", e.kind());
            Outcome::Rejected
        }
    }
}

/// Reads the fixture's secret as an `S` and returns its plaintext encoding.
async fn read_encoded<S: Secret>(vault: &crate::Vault) -> Result<Zeroizing<Vec<u8>>, Error> {
    let secret: S = vault.get(&fixture::tenant(), &fixture::name()).await?;
    let mut out = Zeroizing::new(Vec::with_capacity(secret.encoded_len()));
    secret.encode(&mut out);
    Ok(out)
}

/// Unwraps `data` as a wrapped data key with the fixed master key under the fixed context
/// (`ex1.wrap_context` of `docs/format.md`). Checks that only the known wrapped keys
/// unwrap, each to its own key; that malformed input fails with the parse error section
/// 4.2 prescribes; and that everything else fails with `Decryption`.
///
/// # Panics
/// If any of these properties fails.
#[must_use]
pub fn wrapped_dek_unwrap(data: &[u8]) -> Outcome {
    let master = fixture::master();
    let (tenant, dek_version, suite, master_key_id) = wrap_context_parts();
    let context = WrapContext {
        tenant: &tenant,
        dek_version,
        suite,
        master_key_id: &master_key_id,
    };
    let wrapped = WrappedDek::new(master_key_id.clone(), data.to_vec());
    let unwrapped = block_on(master.unwrap(&wrapped, &context));
    let known = known_wrapped().iter().find(|k| k.bytes == data);
    match (unwrapped, known) {
        (Ok(key), Some(known)) => {
            assert!(
                key.expose_secret() == &known.key,
                "a known wrapped key unwrapped to a wrong key"
            );
            Outcome::Accepted
        }
        (Ok(_), None) => panic!("a wrapped key that was never wrapped unwrapped"),
        (Err(_), Some(known)) => panic!("known wrapped key {} failed to unwrap", known.label),
        (Err(e), None) => {
            let expected_ok = match spec_wrapped_error(data) {
                Some(f) => matches!(e, Error::Format(g) if g == f),
                None => matches!(e, Error::Decryption),
            };
            assert!(expected_ok, "unexpected unwrap error {:?}", e.kind());
            Outcome::Rejected
        }
    }
}

/// The parse error `docs/format.md` section 4.2 prescribes for a wrapped key, if any.
fn spec_wrapped_error(data: &[u8]) -> Option<FormatError> {
    const S: Structure = Structure::WrappedDek;
    let truncated = Some(FormatError::Truncated(S));
    match data.get(..4) {
        None => return truncated,
        Some(magic) if magic != b"CVWK" => return Some(FormatError::BadMagic(S)),
        Some(_) => {}
    }
    match data.get(4) {
        None => return truncated,
        Some(1) => {}
        Some(&v) => return Some(FormatError::UnsupportedVersion(S, v)),
    }
    match data.get(5) {
        None => return truncated,
        Some(2) => {}
        Some(&s) => return Some(FormatError::UnsupportedSuite(S, s)),
    }
    match data.len().cmp(&78) {
        std::cmp::Ordering::Less => truncated,
        std::cmp::Ordering::Greater => Some(FormatError::TrailingBytes(S)),
        std::cmp::Ordering::Equal => None,
    }
}

/// Decodes `data[1..]` as the plaintext encoding of the secret kind whose envelope byte is
/// `data[0]` (`0x01` `ApiKey`, `0x02` `OAuthToken`, `0x03` `SecretBytes`). Checks that a
/// rejected input fails with a plaintext [`FormatError`], and that an accepted one is within
/// the write-side limits and re-encodes to exactly its input.
///
/// # Panics
/// If either property fails.
#[must_use]
pub fn secret_plaintext(data: &[u8]) -> Outcome {
    let Some((&kind, plaintext)) = data.split_first() else {
        return Outcome::Rejected;
    };
    match SecretKind::from_u8(kind) {
        Some(SecretKind::ApiKey) => round_trip::<ApiKey>(plaintext),
        Some(SecretKind::OAuthToken) => round_trip::<OAuthToken>(plaintext),
        Some(SecretKind::Bytes) => round_trip::<SecretBytes>(plaintext),
        None => Outcome::Rejected,
    }
}

fn round_trip<S: Secret>(plaintext: &[u8]) -> Outcome {
    let secret = match S::decode(plaintext) {
        Ok(secret) => secret,
        Err(e) => {
            let structure = match e {
                FormatError::Truncated(s)
                | FormatError::BadMagic(s)
                | FormatError::TrailingBytes(s)
                | FormatError::UnsupportedVersion(s, _)
                | FormatError::UnsupportedSuite(s, _)
                | FormatError::InvalidField(s, _) => s,
            };
            assert!(
                structure == Structure::Plaintext,
                "a plaintext decoder reported another structure"
            );
            assert!(
                !matches!(
                    e,
                    FormatError::BadMagic(_) | FormatError::UnsupportedSuite(..)
                ),
                "plaintext encodings have no magic and no suite"
            );
            return Outcome::Rejected;
        }
    };
    assert!(
        secret.check().is_ok(),
        "a decoded secret must be within the limits checked on write"
    );
    assert!(
        secret.encoded_len() == plaintext.len(),
        "encoded_len of a decoded secret must be its input's length"
    );
    let mut out = Zeroizing::new(Vec::with_capacity(secret.encoded_len()));
    secret.encode(&mut out);
    assert!(
        out.as_slice() == plaintext,
        "a decoded secret must re-encode to exactly its input"
    );
    Outcome::Accepted
}
