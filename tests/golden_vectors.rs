//! The golden envelope vectors of `tests/data/golden/` (format: `tests/data/README.md`):
//! every file is replayed through the vault's read path over a fresh store, and must end as
//! it says (`ok` with the SHA-256 of the plaintext encoding, or one named error); the
//! generator (`examples/gen_vectors.rs`) must reproduce every file byte for byte; and the
//! files must cover every reject class of `docs/format.md`.
//!
//! A change to the format that breaks an old vector fails here: either it keeps the old
//! bytes opening, or it bumps the version (`docs/format.md`, section 11).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::too_many_lines,
    reason = "test code: failing loudly is the point"
)]

#[path = "../examples/gen_vectors.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod gen_vectors;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use credvault::envelope::EnvelopeRef;
use credvault::keys::{WrapContext, WrappedDek};
use credvault::secret::Secret;
use credvault::storage::{DekRecord, DekState, PutMode, SecretMetadata, SecretRecord, Store};
use credvault::testkit;
use credvault::{
    ApiKey, DekVersion, Error, FormatError, LocalMasterKey, MasterKeyId, MasterKeyProvider,
    MasterKeyRing, MemoryStore, OAuthToken, RowVersion, SecretBytes, SecretKind, SecretName,
    Structure, Suite, TenantId, Vault,
};

/// Every outcome class the vectors must cover: each reject class of `docs/format.md`
/// (sections 3.2, 3.5, 4.2, 5 and 8) and success.
const REQUIRED_OUTCOMES: &[&str] = &[
    "ok",
    "envelope.truncated",
    "envelope.bad_magic",
    "envelope.unsupported_version",
    "envelope.unsupported_suite",
    "envelope.invalid_field",
    "envelope.trailing_bytes",
    "wrapped_dek.truncated",
    "wrapped_dek.bad_magic",
    "wrapped_dek.unsupported_version",
    "wrapped_dek.unsupported_suite",
    "wrapped_dek.trailing_bytes",
    "plaintext.truncated",
    "plaintext.unsupported_version",
    "plaintext.invalid_field",
    "plaintext.trailing_bytes",
    "decryption",
    "kind_mismatch",
    "key_missing",
    "unknown_master_key",
];

/// One parsed vector file: `name = value` lines, values hex or a quoted string.
struct VectorFile {
    file: String,
    values: BTreeMap<String, Vec<u8>>,
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl VectorFile {
    fn parse(file: &str, text: &str) -> Self {
        let mut values = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: not `name = value`: {line}"));
            let (key, value) = (key.trim(), value.trim());
            let bytes = match value.strip_prefix('"') {
                Some(q) => q
                    .strip_suffix('"')
                    .unwrap_or_else(|| panic!("{file}: unterminated string"))
                    .as_bytes()
                    .to_vec(),
                None => hex_decode(value).unwrap_or_else(|| panic!("{file}: bad hex for {key}")),
            };
            assert!(
                values.insert(key.to_owned(), bytes).is_none(),
                "{file}: duplicate {key}"
            );
        }
        Self {
            file: file.to_owned(),
            values,
        }
    }

    fn bytes(&self, key: &str) -> &[u8] {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("{}: no {key}", self.file))
    }

    fn text(&self, key: &str) -> &str {
        std::str::from_utf8(self.bytes(key)).unwrap()
    }

    fn u32(&self, key: &str) -> u32 {
        u32::from_be_bytes(self.bytes(key).try_into().unwrap())
    }

    fn u8(&self, key: &str) -> u8 {
        let [b] = self.bytes(key) else {
            panic!("{}: {key} is not one byte", self.file)
        };
        *b
    }
}

fn golden_files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(gen_vectors::golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The outcome name of a read, in the vocabulary of the files' `expect` field.
fn outcome_name(error: &Error) -> String {
    match error {
        Error::Decryption => "decryption".into(),
        Error::KindMismatch { .. } => "kind_mismatch".into(),
        Error::KeyMissing { .. } => "key_missing".into(),
        Error::UnknownMasterKey { .. } => "unknown_master_key".into(),
        Error::Format(f) => {
            let (structure, variant) = match f {
                FormatError::Truncated(s) => (s, "truncated"),
                FormatError::BadMagic(s) => (s, "bad_magic"),
                FormatError::TrailingBytes(s) => (s, "trailing_bytes"),
                FormatError::UnsupportedVersion(s, _) => (s, "unsupported_version"),
                FormatError::UnsupportedSuite(s, _) => (s, "unsupported_suite"),
                FormatError::InvalidField(s, _) => (s, "invalid_field"),
                other => panic!("unexpected format error {other:?}"),
            };
            let structure = match structure {
                Structure::Envelope => "envelope",
                Structure::WrappedDek => "wrapped_dek",
                Structure::Plaintext => "plaintext",
                Structure::Record => "record",
                other => panic!("unexpected structure {other:?}"),
            };
            format!("{structure}.{variant}")
        }
        other => format!("unexpected {other:?}"),
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

async fn read_as<S: Secret>(vault: &Vault, t: &TenantId, n: &SecretName) -> Result<Vec<u8>, Error> {
    let secret: S = vault.get(t, n).await?;
    Ok(sha256(&testkit::plaintext_encoding(&secret)))
}

/// Stores the vector's data-key record and secret row in a fresh store, reads the secret
/// through a fresh vault, and returns the outcome name (and the plaintext digest if ok).
async fn replay(v: &VectorFile) -> (String, Option<Vec<u8>>) {
    let tenant = TenantId::new(v.text("tenant")).unwrap();
    let name = SecretName::new(v.text("secret_name")).unwrap();
    let kind = SecretKind::from_u8(v.u8("kind")).unwrap();
    let master_key_id = MasterKeyId::new(v.text("master_key_id")).unwrap();
    let master = LocalMasterKey::from_bytes(v.bytes("master_key"))
        .unwrap()
        .with_id(master_key_id);
    let dek_version = DekVersion::new(v.u32("dek.version")).unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .put_dek(
            DekRecord {
                tenant: tenant.clone(),
                version: dek_version,
                state: DekState::Active,
                suite: Suite::from_u8(v.u8("dek.suite")).unwrap(),
                wrapped: WrappedDek::new(
                    MasterKeyId::new(v.text("dek.master_key_id")).unwrap(),
                    v.bytes("dek.wrapped").to_vec(),
                ),
                encryptions_reserved: 0,
                created_at: credvault::storage::Timestamp::from_millis(0),
                updated_at: credvault::storage::Timestamp::from_millis(0),
                row_version: RowVersion(1),
            },
            PutMode::Create,
        )
        .await
        .unwrap();
    // The row's bookkeeping columns agree with its envelope wherever the envelope parses,
    // as a tamperer who wants the row to be read would make them.
    let envelope = v.bytes("envelope").to_vec();
    let (row_kind, row_version) =
        EnvelopeRef::parse(&envelope).map_or((kind, dek_version), |e| (e.kind(), e.dek_version()));
    store
        .put_secret(
            SecretRecord {
                metadata: SecretMetadata {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    kind: row_kind,
                    dek_version: row_version,
                    created_at: credvault::storage::Timestamp::from_millis(0),
                    updated_at: credvault::storage::Timestamp::from_millis(0),
                    row_version: RowVersion(1),
                },
                envelope,
            },
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let vault = Vault::builder_with_store(store, MasterKeyRing::new(master))
        .build()
        .unwrap();
    let result = match kind {
        SecretKind::ApiKey => read_as::<ApiKey>(&vault, &tenant, &name).await,
        SecretKind::OAuthToken => read_as::<OAuthToken>(&vault, &tenant, &name).await,
        SecretKind::Bytes => read_as::<SecretBytes>(&vault, &tenant, &name).await,
        other => panic!("unexpected kind {other:?}"),
    };
    match result {
        Ok(digest) => ("ok".into(), Some(digest)),
        Err(e) => (outcome_name(&e), None),
    }
}

/// For a positive vector, the stated data key is what the master key unwraps, and it opens
/// the envelope to the stated plaintext: the file is enough for an independent reader.
async fn check_stated_key(v: &VectorFile) {
    let tenant = TenantId::new(v.text("tenant")).unwrap();
    let name = SecretName::new(v.text("secret_name")).unwrap();
    let id = MasterKeyId::new(v.text("master_key_id")).unwrap();
    let master = LocalMasterKey::from_bytes(v.bytes("master_key"))
        .unwrap()
        .with_id(id.clone());
    let context = WrapContext {
        tenant: &tenant,
        dek_version: DekVersion::new(v.u32("dek.version")).unwrap(),
        suite: Suite::from_u8(v.u8("dek.suite")).unwrap(),
        master_key_id: &id,
    };
    let wrapped = WrappedDek::new(id.clone(), v.bytes("dek.wrapped").to_vec());
    let dek = master.unwrap(&wrapped, &context).await.unwrap();
    assert_eq!(&dek.expose_secret()[..], v.bytes("dek.key"), "{}", v.file);
    let plaintext = testkit::open_plaintext(&dek, (&tenant, &name), v.bytes("envelope")).unwrap();
    assert_eq!(
        sha256(&plaintext),
        v.bytes("plaintext_sha256"),
        "{}",
        v.file
    );
}

#[tokio::test]
async fn golden_vectors_replay_through_the_vault_read_path() {
    let files = golden_files();
    let mut seen = BTreeSet::new();
    let (mut ok, mut rejected) = (0, 0);
    for (file, text) in &files {
        let v = VectorFile::parse(file, text);
        let expect = v.text("expect").to_owned();
        assert_eq!(
            format!("{}.txt", v.text("name")),
            *file,
            "a vector's name is its file name"
        );
        let (got, digest) = replay(&v).await;
        assert_eq!(got, expect, "{file}: {}", v.text("description"));
        if expect == "ok" {
            assert_eq!(
                digest.as_deref(),
                Some(v.bytes("plaintext_sha256")),
                "{file}"
            );
            check_stated_key(&v).await;
            ok += 1;
        } else {
            assert!(
                !v.values.contains_key("plaintext_sha256"),
                "{file}: a rejected vector states no plaintext"
            );
            rejected += 1;
        }
        seen.insert(expect);
    }
    println!(
        "golden vectors: {} replayed, {ok} opened, {rejected} rejected as expected",
        files.len()
    );
    let missing: Vec<_> = REQUIRED_OUTCOMES
        .iter()
        .filter(|o| !seen.contains(**o))
        .collect();
    assert!(missing.is_empty(), "no vector covers {missing:?}");
}

#[test]
fn generator_reproduces_the_checked_in_vectors_byte_for_byte() {
    let generated = gen_vectors::vectors().unwrap();
    let on_disk: BTreeMap<String, String> = golden_files().into_iter().collect();
    let names: BTreeSet<String> = generated
        .iter()
        .map(gen_vectors::Vector::file_name)
        .collect();
    assert_eq!(names.len(), generated.len(), "vector names are unique");
    assert_eq!(
        names,
        on_disk.keys().cloned().collect::<BTreeSet<_>>(),
        "the generator and tests/data/golden/ hold the same files \
         (regenerate with `cargo run --example gen_vectors`)"
    );
    for v in &generated {
        assert_eq!(
            on_disk[&v.file_name()],
            v.render(),
            "{} differs from what the generator writes",
            v.file_name()
        );
    }
    println!(
        "golden vectors: the generator reproduces all {} files byte for byte",
        generated.len()
    );
}
