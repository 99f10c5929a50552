//! Checks the worked examples and test vectors of `docs/format.md` byte for byte.
//!
//! The values are read out of the document's `vectors` blocks, so the document and the code
//! cannot drift apart: every derived value is recomputed here from the documented inputs
//! with the crate's own wrapping and sealing code, and
//! [`every_value_in_the_document_is_checked`] fails if the document holds a value that no
//! check reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

use crate::crypto::{SecretAad, SecretCipher, Suite, TAG_LEN, key_fingerprint};
use crate::envelope::{self, EnvelopeRef, HEADER_LEN, SecretContext};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::keys::{DataKey, LocalMasterKey, MasterKeyProvider, WrapContext, WrappedDek};
use crate::secret::sealed::Sealed;
use crate::secret::{ApiKey, OAuthToken, SecretBytes, SecretKind};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const FORMAT_MD: &str = include_str!("../docs/format.md");

/// `assert_eq!` on bytes, printing hex so that a failure reads like the document.
macro_rules! assert_hex_eq {
    ($got:expr, $want:expr, $($msg:tt)+) => {
        assert_eq!(hex($got), hex($want), $($msg)+)
    };
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// The `name = value` lines of every ```` ```vectors ```` block, and which were read.
struct Vectors {
    values: BTreeMap<String, Vec<u8>>,
    read: BTreeSet<String>,
}

impl Vectors {
    /// Parses the format that section 9 of the document describes.
    fn from_doc(doc: &str) -> TestResult<Self> {
        let mut values = BTreeMap::new();
        let mut in_block = false;
        for line in doc.lines().map(str::trim) {
            if !in_block {
                in_block = line == "```vectors";
                continue;
            }
            if line == "```" {
                in_block = false;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| format!("not `name = value`: {line}"))?;
            let (name, value) = (name.trim(), value.trim());
            let bytes = match value.strip_prefix('"') {
                Some(quoted) => quoted
                    .strip_suffix('"')
                    .ok_or_else(|| format!("unterminated string for {name}"))?
                    .as_bytes()
                    .to_vec(),
                None => hex_decode(value).ok_or_else(|| format!("bad hex for {name}"))?,
            };
            if values.insert(name.to_owned(), bytes).is_some() {
                return Err(format!("duplicate vector name {name}").into());
            }
        }
        if in_block {
            return Err("unterminated vectors block".into());
        }
        Ok(Self {
            values,
            read: BTreeSet::new(),
        })
    }

    fn load() -> TestResult<Self> {
        Self::from_doc(FORMAT_MD)
    }

    fn bytes(&mut self, name: &str) -> TestResult<Vec<u8>> {
        let value = self
            .values
            .get(name)
            .ok_or_else(|| format!("docs/format.md has no vector {name}"))?;
        self.read.insert(name.to_owned());
        Ok(value.clone())
    }

    fn text(&mut self, name: &str) -> TestResult<String> {
        Ok(String::from_utf8(self.bytes(name)?)?)
    }

    fn array<const N: usize>(&mut self, name: &str) -> TestResult<[u8; N]> {
        let bytes = self.bytes(name)?;
        <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| format!("{name} is not {N} bytes").into())
    }

    fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn unread(&self) -> Vec<&str> {
        self.values
            .keys()
            .filter(|k| !self.read.contains(*k))
            .map(String::as_str)
            .collect()
    }
}

fn lp32(field: &[u8]) -> TestResult<Vec<u8>> {
    let mut out = u32::try_from(field.len())?.to_be_bytes().to_vec();
    out.extend_from_slice(field);
    Ok(out)
}

fn slice(bytes: &[u8], range: std::ops::Range<usize>) -> TestResult<&[u8]> {
    bytes
        .get(range.clone())
        .ok_or_else(|| format!("{range:?} is outside {} bytes", bytes.len()).into())
}

/// The documented inputs common to both examples.
struct Common {
    master: LocalMasterKey,
    tenant: TenantId,
}

fn common(v: &mut Vectors) -> TestResult<Common> {
    let master = LocalMasterKey::from_bytes(&v.bytes("master_key")?)?;
    let tenant = TenantId::new(v.text("tenant")?)?;
    Ok(Common { master, tenant })
}

/// An example's data key, checked and ready for its secret.
struct ExampleDek {
    dek: DataKey,
    version: DekVersion,
    suite: Suite,
}

/// ChaCha20-Poly1305 under an XChaCha20 `subkey`, with the nonce `00000000 || nonce24[16..24]`.
fn chacha_with_subkey(
    subkey: &[u8; 32],
    nonce24: &[u8],
    aad: &[u8],
    msg: &[u8],
) -> TestResult<Vec<u8>> {
    let nonce = [&[0u8; 4][..], slice(nonce24, 16..24)?].concat();
    let nonce = chacha20poly1305::Nonce::try_from(nonce.as_slice()).map_err(|_| "nonce length")?;
    ChaCha20Poly1305::new(&(*subkey).into())
        .encrypt(&nonce, Payload { msg, aad })
        .map_err(|_| "ChaCha20-Poly1305 refused the input".into())
}

/// Section 4 for example `ex`: wrap context, wrap AAD, `HChaCha20` subkey, wrapped key.
async fn check_wrapped_dek(v: &mut Vectors, c: &Common, ex: &str) -> TestResult<ExampleDek> {
    let version = u32::from_be_bytes(v.array(&format!("{ex}.dek_version"))?);
    let version = DekVersion::new(version).ok_or("DEK version 0")?;
    let [suite_byte] = v.array(&format!("{ex}.suite"))?;
    let suite = Suite::from_u8(suite_byte).ok_or("unknown suite")?;
    let dek = DataKey::from_slice(&v.bytes(&format!("{ex}.dek"))?)?;
    let wrap_nonce: [u8; 24] = v.array(&format!("{ex}.wrap_nonce"))?;
    let id = c.master.id();

    let context = WrapContext {
        tenant: &c.tenant,
        dek_version: version,
        suite,
        master_key_id: id,
    };
    let context_bytes = context.associated_data();
    assert_hex_eq!(
        &context_bytes,
        v.bytes(&format!("{ex}.wrap_context"))?,
        "{ex}.wrap_context"
    );
    assert_eq!(
        context_bytes.len(),
        38 + c.tenant.as_str().len() + id.as_str().len(),
        "section 4.1's length formula"
    );

    let wrapped = c.master.wrap_with_nonce(&dek, &context, &wrap_nonce)?;
    let wrapped_bytes = wrapped.as_bytes();
    assert_hex_eq!(
        wrapped_bytes,
        v.bytes(&format!("{ex}.wrapped_dek"))?,
        "{ex}.wrapped_dek"
    );
    assert_eq!(wrapped_bytes.len(), 78, "a local wrapped key is 78 bytes");
    let header = slice(wrapped_bytes, 0..6)?;
    assert_hex_eq!(
        header,
        b"CVWK\x01\x02",
        "the wrap header is CVWK, version 1, suite 2"
    );
    if v.values.contains_key(&format!("{ex}.wrap_header")) {
        assert_hex_eq!(
            header,
            v.bytes(&format!("{ex}.wrap_header"))?,
            "{ex}.wrap_header"
        );
    }
    assert_hex_eq!(
        slice(wrapped_bytes, 6..30)?,
        wrap_nonce,
        "the wrap nonce is at offset 6"
    );
    assert_hex_eq!(
        slice(wrapped_bytes, 30..62)?,
        v.bytes(&format!("{ex}.wrapped_dek.ciphertext"))?,
        "{ex}.wrapped_dek.ciphertext"
    );
    assert_hex_eq!(
        slice(wrapped_bytes, 62..78)?,
        v.bytes(&format!("{ex}.wrapped_dek.tag"))?,
        "{ex}.wrapped_dek.tag"
    );

    let wrap_aad = [lp32(header)?, context_bytes].concat();
    assert_hex_eq!(
        &wrap_aad,
        v.bytes(&format!("{ex}.wrap_aad"))?,
        "{ex}.wrap_aad"
    );

    // The documented AAD and HChaCha20 subkey, fed to plain ChaCha20-Poly1305 as section 1
    // describes, must reproduce the crate's output: so they are what the crate really
    // authenticates and derives, not only what the document says.
    let subkey: [u8; 32] = v.array(&format!("{ex}.wrap_subkey"))?;
    let resealed = chacha_with_subkey(&subkey, &wrap_nonce, &wrap_aad, dek.expose_secret())?;
    assert_hex_eq!(
        resealed,
        slice(wrapped_bytes, 30..78)?,
        "{ex}.wrap_subkey with {ex}.wrap_aad"
    );

    let stored = WrappedDek::new(id.clone(), wrapped_bytes.to_vec());
    let unwrapped = c.master.unwrap(&stored, &context).await?;
    assert_hex_eq!(
        unwrapped.expose_secret(),
        dek.expose_secret(),
        "{ex}: unwrapping returns the data key"
    );
    Ok(ExampleDek {
        dek,
        version,
        suite,
    })
}

/// Section 3 for example `ex`: the envelope, its parts at their offsets, header and AAD.
fn check_envelope(
    v: &mut Vectors,
    ex: &str,
    envelope: &[u8],
    parsed: &EnvelopeRef<'_>,
    aad: &[u8],
) -> TestResult {
    assert_hex_eq!(
        envelope,
        v.bytes(&format!("{ex}.envelope"))?,
        "{ex}.envelope"
    );
    assert_hex_eq!(
        parsed.to_bytes(),
        envelope,
        "{ex}: parse then encode is the identity"
    );
    let n = parsed.suite().nonce_len();
    let header = parsed.header();
    assert_hex_eq!(
        slice(envelope, 0..HEADER_LEN)?,
        header,
        "the header is bytes 0..11"
    );
    assert_hex_eq!(header, v.bytes(&format!("{ex}.header"))?, "{ex}.header");
    assert_hex_eq!(
        parsed.nonce(),
        v.bytes(&format!("{ex}.nonce"))?,
        "{ex}.nonce"
    );
    assert_hex_eq!(
        slice(envelope, 11..11 + n)?,
        parsed.nonce(),
        "the nonce is at offset 11"
    );
    let sealed_len = slice(envelope, 11 + n..15 + n)?;
    assert_hex_eq!(
        sealed_len,
        v.bytes(&format!("{ex}.envelope.sealed_len"))?,
        "{ex}.envelope.sealed_len"
    );
    assert_eq!(
        usize::try_from(u32::from_be_bytes(<[u8; 4]>::try_from(sealed_len)?))?,
        parsed.ciphertext_len() + TAG_LEN,
        "the sealed length counts the tag"
    );
    let end = envelope.len();
    assert_hex_eq!(
        slice(envelope, 15 + n..end - TAG_LEN)?,
        v.bytes(&format!("{ex}.envelope.ciphertext"))?,
        "{ex}.envelope.ciphertext"
    );
    assert_hex_eq!(
        slice(envelope, end - TAG_LEN..end)?,
        v.bytes(&format!("{ex}.envelope.tag"))?,
        "{ex}.envelope.tag"
    );
    assert_hex_eq!(aad, v.bytes(&format!("{ex}.aad"))?, "{ex}.aad");
    Ok(())
}

fn check_master_key_id(v: &mut Vectors) -> TestResult {
    let key: [u8; 32] = v.array("master_key")?;
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        b"credvault/v1/master-key-id",
    );
    assert_hex_eq!(
        mac.as_ref(),
        v.bytes("master_key_id.hmac")?,
        "master_key_id.hmac"
    );
    assert_hex_eq!(
        key_fingerprint(&key),
        slice(mac.as_ref(), 0..8)?,
        "the fingerprint is the first 8 bytes"
    );
    let documented = v.text("master_key_id")?;
    assert_eq!(
        documented,
        format!("local-{}", hex(key_fingerprint(&key))),
        "master_key_id"
    );
    assert_eq!(
        LocalMasterKey::from_bytes(&key)?.id().as_str(),
        documented,
        "LocalMasterKey derives the documented id"
    );
    Ok(())
}

async fn check_example_1(v: &mut Vectors) -> TestResult {
    let c = common(v)?;
    let k = check_wrapped_dek(v, &c, "ex1").await?;
    let name = SecretName::new(v.text("ex1.secret_name")?)?;
    let [kind] = v.array("ex1.kind")?;
    assert_eq!(
        SecretKind::from_u8(kind),
        Some(SecretKind::ApiKey),
        "ex1.kind"
    );
    let text = v.text("ex1.api_key")?;
    let secret = ApiKey::new(text.clone());
    let mut plaintext = Vec::with_capacity(secret.encoded_len());
    secret.encode(&mut plaintext);
    assert_hex_eq!(plaintext, v.bytes("ex1.plaintext")?, "ex1.plaintext");

    let nonce: [u8; 12] = v.array("ex1.nonce")?;
    let cipher = SecretCipher::new(k.suite, &k.dek)?;
    let ctx = SecretContext {
        tenant: &c.tenant,
        name: &name,
    };
    let sealed = envelope::seal_with_nonce(&cipher, k.suite, k.version, ctx, &secret, &nonce)?;
    let parsed = EnvelopeRef::parse(&sealed)?;
    assert_eq!(
        (parsed.suite(), parsed.kind(), parsed.dek_version()),
        (Suite::Aes256Gcm, SecretKind::ApiKey, k.version)
    );
    let aad = SecretAad::new(&parsed.header(), c.tenant.as_str(), name.as_str());
    assert_eq!(
        aad.as_bytes().len(),
        46 + c.tenant.as_str().len() + name.as_str().len(),
        "section 3.3's length formula"
    );
    check_envelope(v, "ex1", &sealed, &parsed, aad.as_bytes())?;

    let opened: ApiKey = open_copy(&cipher, &parsed, ctx)?;
    assert_eq!(
        opened.expose_secret(),
        text,
        "ex1 opens to the documented API key"
    );
    Ok(())
}

async fn check_example_2(v: &mut Vectors) -> TestResult {
    let c = common(v)?;
    let k = check_wrapped_dek(v, &c, "ex2").await?;
    let name = SecretName::new(v.text("ex2.secret_name")?)?;
    let [kind] = v.array("ex2.kind")?;
    assert_eq!(
        SecretKind::from_u8(kind),
        Some(SecretKind::OAuthToken),
        "ex2.kind"
    );
    let expires_at = i64::from_be_bytes(v.array("ex2.expires_at")?);
    let scope_names: Vec<String> = (0..v.values.len())
        .map(|i| format!("ex2.scope.{i}"))
        .take_while(|key| v.values.contains_key(key))
        .collect();
    let scopes = scope_names
        .iter()
        .map(|key| v.text(key))
        .collect::<TestResult<Vec<_>>>()?;
    let secret = OAuthToken::new(v.text("ex2.access_token")?)
        .with_refresh_token(v.text("ex2.refresh_token")?)
        .with_token_type(v.text("ex2.token_type")?)
        .with_expires_at(UNIX_EPOCH + Duration::from_secs(u64::try_from(expires_at)?))
        .with_scopes(scopes.clone());
    let mut plaintext = Vec::with_capacity(secret.encoded_len());
    secret.encode(&mut plaintext);
    let documented_plaintext = v.bytes("ex2.plaintext")?;
    assert_hex_eq!(plaintext, &documented_plaintext, "ex2.plaintext");

    let nonce: [u8; 24] = v.array("ex2.nonce")?;
    let cipher = SecretCipher::new(k.suite, &k.dek)?;
    let ctx = SecretContext {
        tenant: &c.tenant,
        name: &name,
    };
    let sealed = envelope::seal_with_nonce(&cipher, k.suite, k.version, ctx, &secret, &nonce)?;
    let parsed = EnvelopeRef::parse(&sealed)?;
    assert_eq!(
        (parsed.suite(), parsed.kind(), parsed.dek_version()),
        (Suite::XChaCha20Poly1305, SecretKind::OAuthToken, k.version)
    );
    let aad = SecretAad::new(&parsed.header(), c.tenant.as_str(), name.as_str());
    check_envelope(v, "ex2", &sealed, &parsed, aad.as_bytes())?;

    let subkey: [u8; 32] = v.array("ex2.subkey")?;
    let resealed = chacha_with_subkey(&subkey, &nonce, aad.as_bytes(), &documented_plaintext)?;
    assert_hex_eq!(
        resealed,
        slice(&sealed, 15 + 24..sealed.len())?,
        "ex2.subkey with ex2.aad"
    );

    let opened: OAuthToken = open_copy(&cipher, &parsed, ctx)?;
    let mut reencoded = Vec::with_capacity(opened.encoded_len());
    opened.encode(&mut reencoded);
    assert_hex_eq!(
        reencoded,
        &documented_plaintext,
        "ex2 opens to the documented token"
    );
    assert_eq!(opened.scopes(), scopes.as_slice(), "ex2 scopes");
    Ok(())
}

/// The section 9.3 name of a parse error, and the structure it names.
fn format_error_name(e: &FormatError) -> (&'static str, Option<Structure>) {
    let (name, structure) = match *e {
        FormatError::Truncated(s) => ("truncated", s),
        FormatError::BadMagic(s) => ("bad_magic", s),
        FormatError::TrailingBytes(s) => ("trailing_bytes", s),
        FormatError::UnsupportedVersion(s, _) => ("unsupported_version", s),
        FormatError::UnsupportedSuite(s, _) => ("unsupported_suite", s),
        FormatError::InvalidField(s, _) => ("invalid_field", s),
    };
    (name, Some(structure))
}

fn outcome<T>(result: &Result<T, Error>) -> (&'static str, Option<Structure>) {
    match result {
        Ok(_) => ("success", None),
        Err(Error::Format(f)) => format_error_name(f),
        Err(Error::Decryption) => ("decryption", None),
        Err(_) => ("another error", None),
    }
}

async fn check_rejections(v: &mut Vectors) -> TestResult {
    let c = common(v)?;
    let k = check_wrapped_dek(v, &c, "ex1").await?;
    let name = SecretName::new(v.text("ex1.secret_name")?)?;
    let cipher = SecretCipher::new(k.suite, &k.dek)?;
    let ctx = SecretContext {
        tenant: &c.tenant,
        name: &name,
    };
    let wrap_ctx = WrapContext {
        tenant: &c.tenant,
        dek_version: k.version,
        suite: k.suite,
        master_key_id: c.master.id(),
    };

    let names = v.names_with_prefix("reject.");
    assert!(names.len() >= 20, "docs/format.md lists its reject vectors");
    for key in names {
        let input = v.bytes(&key)?;
        let mut parts = key.split('.').skip(1);
        let (structure, expected) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let got = match structure {
            "envelope" => match EnvelopeRef::parse(&input) {
                Err(e) => format_error_name(&e),
                // SecretBytes decodes any plaintext, so a failure here can only be the AEAD's.
                Ok(parsed) => outcome(&open_copy::<SecretBytes>(&cipher, &parsed, ctx)),
            },
            "wrapped_dek" => {
                let stored = WrappedDek::new(c.master.id().clone(), input.clone());
                outcome(&c.master.unwrap(&stored, &wrap_ctx).await)
            }
            "api_key" => outcome(&ApiKey::decode(&input).map_err(Error::from)),
            "oauth_token" => outcome(&OAuthToken::decode(&input).map_err(Error::from)),
            other => return Err(format!("{key}: unknown structure {other}").into()),
        };
        let want_structure = match (structure, expected) {
            (_, "decryption") => None,
            ("envelope", _) => Some(Structure::Envelope),
            ("wrapped_dek", _) => Some(Structure::WrappedDek),
            _ => Some(Structure::Plaintext),
        };
        assert_eq!(got, (expected, want_structure), "{key}");
    }
    Ok(())
}

#[test]
fn vectors_blocks_parse_strictly() -> TestResult {
    let v = Vectors::load()?;
    assert!(v.values.len() > 50, "docs/format.md holds its vectors");
    let duplicated = "```vectors\na = 00\na = 01\n```\n";
    assert!(
        Vectors::from_doc(duplicated).is_err(),
        "a repeated name is an error, not an overwrite"
    );
    assert!(
        Vectors::from_doc("```vectors\na = 0g\n```\n").is_err(),
        "bad hex is an error"
    );
    assert!(
        Vectors::from_doc("```vectors\na = 00\n").is_err(),
        "an unclosed block is an error"
    );
    Ok(())
}

#[test]
fn local_master_key_id_is_hmac_of_the_label_truncated_to_eight_bytes() -> TestResult {
    check_master_key_id(&mut Vectors::load()?)
}

#[tokio::test]
async fn example_1_aes_gcm_api_key_matches_the_document_byte_for_byte() -> TestResult {
    check_example_1(&mut Vectors::load()?).await
}

#[tokio::test]
async fn example_2_xchacha_oauth_token_matches_the_document_byte_for_byte() -> TestResult {
    check_example_2(&mut Vectors::load()?).await
}

#[tokio::test]
async fn documented_reject_vectors_fail_with_the_documented_error() -> TestResult {
    check_rejections(&mut Vectors::load()?).await
}

#[tokio::test]
async fn every_value_in_the_document_is_checked() -> TestResult {
    let mut v = Vectors::load()?;
    check_master_key_id(&mut v)?;
    check_example_1(&mut v).await?;
    check_example_2(&mut v).await?;
    check_rejections(&mut v).await?;
    assert_eq!(
        v.unread(),
        Vec::<&str>::new(),
        "values in docs/format.md that no check reads"
    );
    Ok(())
}

/// Opens a copy of a parsed envelope (the vault decrypts its own copy of the row in place).
fn open_copy<S: crate::secret::Secret>(
    cipher: &SecretCipher,
    parsed: &EnvelopeRef<'_>,
    ctx: SecretContext<'_>,
) -> Result<S, Error> {
    let mut bytes = parsed.to_bytes();
    envelope::open_in_place(cipher, &mut bytes, ctx)
}
