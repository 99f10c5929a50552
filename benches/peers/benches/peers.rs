//! credvault's `put` + `get` round trip next to the encrypt + decrypt of the Rust
//! envelope-encryption libraries a user would consider. What each entry does and does not do
//! is in `README.md`; the figures are in the main crate's `BENCHMARKS.md`.
//!
//! One criterion group per size (`peers/32`, `peers/256`, `peers/4096`), so a report shows
//! every library side by side for one size in one run.

#![expect(
    clippy::expect_used,
    reason = "a bench whose setup fails has nothing to measure"
)]

use std::hint::black_box;
use std::time::Duration;

use async_trait::async_trait;
use credvault::{
    LocalMasterKey, MasterKeyRing, MemoryStore, SecretBytes, SecretName, Suite, TenantId, Vault,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kms_aead::ring_encryption::RingAeadEncryption;
use kms_aead::{
    AeadEncryption, CipherText, DataEncryptionKey, EncryptedDataEncryptionKey,
    KmsAeadEnvelopeEncryption, KmsAeadResult, KmsAeadRingEncryptionProvider,
    KmsAeadRingEnvelopeEncryption,
};
use rand::Rng;
use secret_vault_value::SecretValue;
use tokio::runtime::Runtime;

const SIZES: [usize; 3] = [32, 256, 4096];
const TENANT: &str = "tenant-0001";
const NAME: &str = "stripe/live";
/// What the peers that take associated data bind: the same tenant and name credvault binds.
const AAD: &str = "tenant-0001/stripe/live";

fn plaintext(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// kms-aead 0.29 has no local-KEK provider; this is the one a user would write: the DEK is
/// wrapped with AES-256-GCM under a local 256-bit key through kms-aead's own ring AEAD.
struct LocalKek {
    aead: RingAeadEncryption,
    kek: DataEncryptionKey,
}

impl LocalKek {
    fn generate() -> Self {
        let aead = RingAeadEncryption::with_algorithm(
            &ring::aead::AES_256_GCM,
            ring::rand::SystemRandom::new(),
        )
        .expect("ring aead");
        let kek = aead.generate_data_encryption_key().expect("kek");
        Self { aead, kek }
    }
}

#[async_trait]
impl KmsAeadRingEncryptionProvider for LocalKek {
    async fn encrypt_data_encryption_key(
        &self,
        encryption_key: &DataEncryptionKey,
    ) -> KmsAeadResult<EncryptedDataEncryptionKey> {
        let wrapped = self
            .aead
            .encrypt_value(&"", &encryption_key.0, &self.kek)
            .await?;
        Ok(EncryptedDataEncryptionKey::new(wrapped.0, None))
    }

    async fn decrypt_data_encryption_key(
        &self,
        encrypted_key: &EncryptedDataEncryptionKey,
    ) -> KmsAeadResult<DataEncryptionKey> {
        let dek = self
            .aead
            .decrypt_value(
                &"",
                &CipherText(encrypted_key.wrapped().to_vec()),
                &self.kek,
            )
            .await?;
        Ok(DataEncryptionKey(dek))
    }

    async fn generate_encryption_key(
        &self,
        aead_encryption: &RingAeadEncryption,
    ) -> KmsAeadResult<DataEncryptionKey> {
        aead_encryption.generate_data_encryption_key()
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one entry per library, side by side, reads best in one place"
)]
fn peers(c: &mut Criterion) {
    let rt = runtime();
    tink_aead::init();

    for size in SIZES {
        let mut group = c.benchmark_group(format!("peers/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        let plain = plaintext(size);

        // credvault: put + get over MemoryStore, warm data-key cache, both suites.
        for (id, suite) in [
            ("credvault_put_get", Suite::Aes256Gcm),
            ("credvault_put_get_xchacha", Suite::XChaCha20Poly1305),
        ] {
            let vault = Vault::builder(
                MemoryStore::new(),
                MasterKeyRing::new(LocalMasterKey::generate().expect("master key")),
            )
            .with_suite(suite)
            .build()
            .expect("vault");
            let tenant = TenantId::new(TENANT).expect("tenant id");
            let name = SecretName::new(NAME).expect("secret name");
            let secret = SecretBytes::new(plain.clone());
            rt.block_on(async {
                vault.create_tenant(&tenant).await.expect("create tenant");
                vault.put(&tenant, &name, &secret).await.expect("put");
                let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
                assert_eq!(back.expose_secret(), plain.as_slice());
            });
            group.bench_function(BenchmarkId::new(id, size), |b| {
                b.to_async(&rt).iter(|| async {
                    vault
                        .put(&tenant, &name, black_box(&secret))
                        .await
                        .expect("put");
                    let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
                    black_box(back)
                });
            });
        }

        // tink-rust: an AES256_GCM keyset primitive (no key wrapping), and KmsEnvelopeAead
        // with a local AES256_GCM primitive as the "remote" KEK (a new DEK per encryption).
        let aes = tink_aead::new(
            &tink_core::keyset::Handle::new(&tink_aead::aes256_gcm_key_template())
                .expect("tink keyset"),
        )
        .expect("tink primitive");
        let envelope = tink_aead::KmsEnvelopeAead::new(
            tink_aead::aes256_gcm_key_template(),
            tink_aead::new(
                &tink_core::keyset::Handle::new(&tink_aead::aes256_gcm_key_template())
                    .expect("tink kek keyset"),
            )
            .expect("tink kek primitive"),
        );
        for (id, primitive) in [
            ("tink_aes256gcm_keyset", &aes),
            (
                "tink_kms_envelope_local_kek",
                &(Box::new(envelope) as Box<dyn tink_core::Aead>),
            ),
        ] {
            let sealed = primitive
                .encrypt(&plain, AAD.as_bytes())
                .expect("tink seal");
            assert_eq!(
                primitive
                    .decrypt(&sealed, AAD.as_bytes())
                    .expect("tink open"),
                plain
            );
            group.bench_function(BenchmarkId::new(id, size), |b| {
                b.iter(|| {
                    let sealed = primitive
                        .encrypt(black_box(&plain), AAD.as_bytes())
                        .expect("seal");
                    black_box(primitive.decrypt(&sealed, AAD.as_bytes()).expect("open"))
                });
            });
        }

        // envelopers: a new DEK per message wrapped by SimpleKeyProvider's local KEK
        // (AES-128-GCM whatever the data cipher), and the same behind CachingKeyWrapper.
        let mut kek = [0u8; 16];
        rand::rng().fill_bytes(&mut kek);
        let simple: envelopers::EnvelopeCipher<
            envelopers::SimpleKeyProvider<envelopers::Aes256Gcm>,
        > = envelopers::EnvelopeCipher::init(envelopers::SimpleKeyProvider::init(kek));
        group.bench_function(BenchmarkId::new("envelopers_simple", size), |b| {
            b.to_async(&rt).iter(|| async {
                let record = simple
                    .encrypt_with(black_box(&plain))
                    .aad(AAD)
                    .encrypt()
                    .await
                    .expect("seal");
                black_box(
                    simple
                        .decrypt_with(&record)
                        .aad(AAD)
                        .decrypt()
                        .await
                        .expect("open"),
                )
            });
        });
        let cached: envelopers::EnvelopeCipher<
            envelopers::CachingKeyWrapper<
                envelopers::Aes256Gcm,
                envelopers::SimpleKeyProvider<envelopers::Aes256Gcm>,
            >,
        > = envelopers::EnvelopeCipher::init(envelopers::CachingKeyWrapper::new(
            envelopers::SimpleKeyProvider::init(kek),
            envelopers::CacheOptions::default()
                .with_max_age(Duration::from_hours(1))
                .with_max_bytes(usize::MAX)
                .with_max_messages(usize::MAX),
        ));
        group.bench_function(BenchmarkId::new("envelopers_cached", size), |b| {
            b.to_async(&rt).iter(|| async {
                let record = cached
                    .encrypt_with(black_box(&plain))
                    .aad(AAD)
                    .encrypt()
                    .await
                    .expect("seal");
                black_box(
                    cached
                        .decrypt_with(&record)
                        .aad(AAD)
                        .decrypt()
                        .await
                        .expect("open"),
                )
            });
        });

        // kms-aead 0.29: envelope encryption with the local KEK above (a new DEK per value,
        // wrapped and unwrapped), and its ring AEAD with one held DEK (the cached-DEK path).
        let kms = rt
            .block_on(KmsAeadRingEnvelopeEncryption::with_algorithm(
                LocalKek::generate(),
                &ring::aead::AES_256_GCM,
            ))
            .expect("kms-aead");
        let secret = SecretValue::new(plain.clone());
        let aad = AAD.to_owned();
        group.bench_function(BenchmarkId::new("kms_aead_local_kek", size), |b| {
            b.to_async(&rt).iter(|| async {
                let sealed = kms
                    .encrypt_value(&aad, black_box(&secret))
                    .await
                    .expect("seal");
                black_box(kms.decrypt_value(&aad, &sealed).await.expect("open"))
            });
        });
        let ring_aead = RingAeadEncryption::with_algorithm(
            &ring::aead::AES_256_GCM,
            ring::rand::SystemRandom::new(),
        )
        .expect("ring aead");
        let dek = ring_aead.generate_data_encryption_key().expect("dek");
        group.bench_function(BenchmarkId::new("kms_aead_held_dek", size), |b| {
            b.to_async(&rt).iter(|| async {
                let sealed = ring_aead
                    .encrypt_value(&aad, black_box(&secret), &dek)
                    .await
                    .expect("seal");
                black_box(
                    ring_aead
                        .decrypt_value(&aad, &sealed, &dek)
                        .await
                        .expect("open"),
                )
            });
        });

        // cocoon: MiniCocoon with a 256-bit key (ChaCha20-Poly1305, no KDF per call, no
        // associated data, no key wrapping).
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let mut mini = cocoon::MiniCocoon::from_key(&key, &seed);
        group.bench_function(BenchmarkId::new("cocoon_mini_key", size), |b| {
            b.iter(|| {
                let sealed = mini.wrap(black_box(&plain)).expect("seal");
                black_box(mini.unwrap(&sealed).expect("open"))
            });
        });

        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = peers
}
criterion_main!(benches);
