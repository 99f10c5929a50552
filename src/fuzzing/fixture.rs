//! The fixed keys, contexts and known-good values the fuzz functions check against, and the
//! one tokio runtime they share. The keys are those of the worked examples in
//! `docs/format.md` (section 9), so the first valid seeds are the document's own bytes.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use crate::crypto::{SecretCipher, Suite};
use crate::envelope::{self, SecretContext};
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use crate::keys::{DataKey, LocalMasterKey, MasterKeyProvider, MasterKeyRing, WrapContext};
use crate::secret::{ApiKey, OAuthToken, Secret, SecretBytes};
use crate::storage::{DekRecord, DekState, MemoryStore, PutMode, Store, Timestamp};
use crate::vault::Vault;

/// The tenant every fixed context names.
pub(super) const TENANT: &str = "acme";
/// The secret name [`super::envelope_open`] opens every input as.
pub(super) const NAME: &str = "github";

/// `[start, start + 1, ...]`, as the worked examples write keys and nonces.
pub(super) fn counting<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(u8::try_from(i % 256).unwrap_or_default()))
}

/// `master_key` of the worked examples.
pub(super) fn master_key() -> [u8; 32] {
    counting(0x00)
}

/// `ex1.dek`: data key version 1 of `acme`, AES-256-GCM.
fn dek_v1() -> [u8; 32] {
    counting(0x80)
}

/// `ex2.dek`: data key version 2 of `acme`, XChaCha20-Poly1305.
fn dek_v2() -> [u8; 32] {
    counting(0x40)
}

/// Runs `future` to completion on the one current-thread runtime the harness builds.
pub(super) fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime without drivers always builds")
        })
        .block_on(future)
}

pub(super) fn tenant() -> TenantId {
    TenantId::new(TENANT).expect("valid fixed tenant")
}

pub(super) fn name() -> SecretName {
    SecretName::new(NAME).expect("valid fixed name")
}

pub(super) fn master() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&master_key()).expect("32-byte fixed master key")
}

/// One of the two data keys of the fixture.
pub(super) struct FixedDek {
    pub(super) version: DekVersion,
    pub(super) suite: Suite,
    pub(super) key: [u8; 32],
    pub(super) wrap_nonce: [u8; 24],
}

pub(super) fn deks() -> [FixedDek; 2] {
    [
        FixedDek {
            version: DekVersion::FIRST,
            suite: Suite::Aes256Gcm,
            key: dek_v1(),
            wrap_nonce: counting(0xa0),
        },
        FixedDek {
            version: DekVersion::new(2).expect("non-zero"),
            suite: Suite::XChaCha20Poly1305,
            key: dek_v2(),
            wrap_nonce: counting(0x60),
        },
    ]
}

/// Wraps `dek` with the fixed master key under the context of (`TENANT`, `version`,
/// `suite`), with a chosen nonce.
pub(super) fn wrap(dek: &[u8; 32], version: DekVersion, suite: Suite, nonce: &[u8; 24]) -> Vec<u8> {
    let master = master();
    let tenant = tenant();
    let context = WrapContext {
        tenant: &tenant,
        dek_version: version,
        suite,
        master_key_id: master.id(),
    };
    let key = DataKey::from_slice(dek).expect("32-byte key");
    master
        .wrap_with_nonce(&key, &context, nonce)
        .expect("wrapping a 32-byte key succeeds")
        .as_bytes()
        .to_vec()
}

/// The OAuth token of the worked example 2 (expiry 2026-01-01T00:00:00Z).
pub(super) fn example_token() -> OAuthToken {
    OAuthToken::new("ya29.example-access-token")
        .with_refresh_token("1//example-refresh-token")
        .with_expires_at(std::time::UNIX_EPOCH + std::time::Duration::from_hours(490_896))
        .with_scopes(["openid", "email"])
}

/// A known-good envelope: its bytes and the plaintext encoding it must open to.
pub(super) struct KnownEnvelope {
    pub(super) label: &'static str,
    pub(super) bytes: Vec<u8>,
    pub(super) plaintext: Zeroizing<Vec<u8>>,
}

fn seal<S: Secret>(label: &'static str, dek: &FixedDek, nonce: &[u8], secret: &S) -> KnownEnvelope {
    seal_as(label, NAME, dek, nonce, secret)
}

/// Seals `secret` for (`acme`, `name`) under a fixture key with a chosen nonce.
pub(super) fn seal_as<S: Secret>(
    label: &'static str,
    name: &str,
    dek: &FixedDek,
    nonce: &[u8],
    secret: &S,
) -> KnownEnvelope {
    let key = DataKey::from_slice(&dek.key).expect("32-byte key");
    let cipher = SecretCipher::new(dek.suite, &key).expect("cipher for a 32-byte key");
    let tenant = tenant();
    let name = SecretName::new(name).expect("valid seed name");
    let ctx = SecretContext {
        tenant: &tenant,
        name: &name,
    };
    let bytes = envelope::seal_with_nonce(&cipher, dek.suite, dek.version, ctx, secret, nonce)
        .expect("sealing a small secret succeeds");
    let mut plaintext = Zeroizing::new(Vec::with_capacity(secret.encoded_len()));
    secret.encode(&mut plaintext);
    KnownEnvelope {
        label,
        bytes,
        plaintext,
    }
}

/// The envelopes sealed for (`acme`, `github`) under the fixture's keys: the only inputs
/// [`super::envelope_open`] may open. The first is `ex1.envelope` of `docs/format.md`.
pub(super) fn known_envelopes() -> &'static [KnownEnvelope] {
    static KNOWN: OnceLock<Vec<KnownEnvelope>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let [v1, v2] = deks();
        let token = example_token();
        vec![
            seal(
                "api_key-aes",
                &v1,
                &counting::<12>(0xc0),
                &ApiKey::new("ghp_example_0123456789"),
            ),
            seal("oauth_token-xchacha", &v2, &counting::<24>(0xd0), &token),
            seal(
                "secret_bytes-aes",
                &v1,
                &counting::<12>(0x10),
                &SecretBytes::from_slice(&[0x00, 0x01, 0xfe, 0xff]),
            ),
            seal(
                "api_key-empty-xchacha",
                &v2,
                &counting::<24>(0x30),
                &ApiKey::new(""),
            ),
        ]
    })
}

/// A known-good wrapped key for the fixed wrap context, and the key it must unwrap to.
pub(super) struct KnownWrapped {
    pub(super) label: &'static str,
    pub(super) bytes: Vec<u8>,
    pub(super) key: [u8; 32],
}

/// The fixed context of [`super::wrapped_dek_unwrap`]: `acme`, version 1, AES-256-GCM,
/// the fixed master key's id (`ex1.wrap_context`).
pub(super) fn wrap_context_parts() -> (TenantId, DekVersion, Suite, MasterKeyId) {
    (
        tenant(),
        DekVersion::FIRST,
        Suite::Aes256Gcm,
        master().id().clone(),
    )
}

/// The wrapped keys valid under the fixed context; the first is `ex1.wrapped_dek`.
pub(super) fn known_wrapped() -> &'static [KnownWrapped] {
    static KNOWN: OnceLock<Vec<KnownWrapped>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let (_, version, suite, _) = wrap_context_parts();
        vec![
            KnownWrapped {
                label: "ex1",
                bytes: wrap(&dek_v1(), version, suite, &counting(0xa0)),
                key: dek_v1(),
            },
            KnownWrapped {
                label: "other-key",
                bytes: wrap(&dek_v2(), version, suite, &counting(0x60)),
                key: dek_v2(),
            },
        ]
    })
}

/// The vault [`super::envelope_open`] reads through: tenant `acme` with the two fixed data
/// keys (`ex1.wrapped_dek`, `ex2.wrapped_dek`), over a memory store.
pub(super) fn open_fixture() -> &'static (Arc<MemoryStore>, Vault) {
    static FIXTURE: OnceLock<(Arc<MemoryStore>, Vault)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let store = Arc::new(MemoryStore::new());
        let master = master();
        block_on(async {
            for dek in deks() {
                let record = DekRecord {
                    tenant: tenant(),
                    version: dek.version,
                    state: DekState::Active,
                    suite: dek.suite,
                    wrapped: crate::keys::WrappedDek::new(
                        master.id().clone(),
                        wrap(&dek.key, dek.version, dek.suite, &dek.wrap_nonce),
                    ),
                    encryptions_reserved: 0,
                    created_at: Timestamp::from_millis(0),
                    updated_at: Timestamp::from_millis(0),
                    row_version: RowVersion(1),
                };
                store
                    .put_dek(record, PutMode::Create)
                    .await
                    .expect("a memory store accepts a new record");
            }
        });
        let shared: Arc<dyn Store> = store.clone();
        let vault = Vault::builder_with_store(shared, MasterKeyRing::new(master))
            .build()
            .expect("default settings are valid");
        (store, vault)
    })
}
