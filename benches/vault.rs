//! Vault round trips next to the raw AEAD they are built on.
//!
//! Run with `cargo bench --bench vault`; results and their reading are in `BENCHMARKS.md`.
//!
//! Groups:
//! - `roundtrip`: per secret size (32 B, 256 B, 4 KiB), the raw primitive (the physical
//!   limit of what the vault does) next to the vault operations over [`MemoryStore`] with a
//!   warm data-key cache and a reserved nonce block.
//!   - `raw_ring_aes256gcm`: `ring` AES-256-GCM seal + open of the same bytes, key expanded
//!     once, a fresh 12-byte nonce per iteration from `rand::rng()`, no associated data.
//!   - `raw_ring_aes256gcm_envelope`: the crypto work an envelope needs and the bare
//!     cipher does not: `n + 1` bytes (the plaintext encoding's version byte) with
//!     associated data as long as the vault binds for this tenant and name. This is the
//!     floor for the envelope format, as `raw_ring_aes256gcm` is for the cipher.
//!   - `raw_ring_put_get_map`: the reference "raw put + get": seal into a fresh
//!     buffer, store it in a `HashMap` under (tenant, name), fetch a copy, open it, and
//!     return the plaintext in a fresh allocation.
//!   - `raw_xchacha20poly1305`: the baseline for the XChaCha20-Poly1305 suite (24-byte nonce).
//!   - `vault_put_get`: `vault.put` then `vault.get::<SecretBytes>` (AES-256-GCM suite).
//!   - `vault_put_get_xchacha`: the same with `Suite::XChaCha20Poly1305`.
//!   - `vault_put`, `vault_get`: each half alone (AES-256-GCM).
//! - `dek_cache`: `vault.get` of a 256 B secret with a warm cache versus a fresh `Vault`
//!   over the same store (cold cache: one data-key read and one unwrap per call).
//! - `envelope`: per secret size and suite, `credvault::envelope` on the stored bytes of a
//!   real record (fetched from the store after a `vault.put`):
//!   - `parse_aes256gcm`, `parse_xchacha`: `EnvelopeRef::parse` of the valid envelope
//!     (bounds and field checks; it borrows, allocates nothing and copies nothing).
//!   - `encode_aes256gcm`, `encode_xchacha`: `EnvelopeRef::to_bytes` of the parsed envelope
//!     (one allocation and the copies, checked equal to the input once before timing).
//!   - `raw_copy_aes256gcm`, `raw_copy_xchacha`: the raw primitive: `to_vec` of the same
//!     bytes, one allocation and one copy, the floor for `encode`.
//! - `async_driver`: what driving a future costs, with criterion's `to_async` (one
//!   `block_on` around the whole timing loop) versus one `Runtime::block_on` per call.
//!
//! The vault's plaintext encoding of a `SecretBytes` is one version byte followed by the
//! bytes, so a vault operation of size `n` seals and opens `n + 1` bytes; the raw
//! baselines seal `n` bytes, except `raw_ring_aes256gcm_envelope`. Throughput is reported
//! for `n` everywhere.

#![expect(
    clippy::expect_used,
    reason = "a bench whose setup fails has nothing to measure"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use credvault::envelope::EnvelopeRef;
use credvault::storage::Store;
use credvault::{
    LocalMasterKey, MasterKeyRing, MemoryStore, SecretBytes, SecretName, Suite, TenantId, Vault,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::runtime::Runtime;

const SIZES: [usize; 3] = [32, 256, 4096];
const TENANT: &str = "tenant-0001";
const NAME: &str = "stripe/live";

/// Length of the associated data the vault binds for `TENANT` / `NAME`:
/// `lp32("credvault/v1/secret") || lp32(11-byte header) || lp32(tenant) || lp32(name)`.
const VAULT_AAD_LEN: usize = 4 * 4 + b"credvault/v1/secret".len() + 11 + TENANT.len() + NAME.len();

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

fn plaintext(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn ring_key() -> LessSafeKey {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("AES-256 key"))
}

/// The raw baselines' plaintext and working buffer, in one allocation at a fixed distance.
///
/// Two separately allocated buffers of 4 KiB sit 4 KiB + 16 B apart in glibc's heap, and on
/// this kind of CPU (AMD EPYC, glibc 2.36 `rep movsb` for copies of 2 KiB and more) a copy
/// whose destination lies 1 to 31 bytes past the source modulo 4 KiB runs about 30x slower
/// (1.5 us instead of 50 ns for 4 KiB). A baseline that paid that would not be the physical
/// limit, so the buffer starts 2 KiB (mod 4 KiB) after the plaintext.
struct RawBuffers {
    arena: Vec<u8>,
    offset: usize,
    size: usize,
}

impl RawBuffers {
    fn new(size: usize) -> Self {
        let offset = size.next_multiple_of(4096) + 2048;
        let mut arena = vec![0u8; offset + size];
        rand::rng().fill_bytes(arena.split_at_mut(size).0);
        Self {
            arena,
            offset,
            size,
        }
    }

    /// The plaintext and the working buffer.
    fn split(&mut self) -> (&[u8], &mut [u8]) {
        let (plain, rest) = self.arena.split_at_mut(self.offset);
        (plain.split_at(self.size).0, rest.split_at_mut(self.size).0)
    }
}

/// One raw AES-256-GCM seal + open: fresh nonce, plaintext copied into `buf`.
fn ring_seal_open(key: &LessSafeKey, plain: &[u8], aad: &[u8], buf: &mut [u8]) {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    buf.copy_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
        .expect("seal");
    let opened = key
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            tag,
            buf,
            0..,
        )
        .expect("open");
    black_box(opened);
}

/// A vault over a fresh [`MemoryStore`] with one `size`-byte secret stored, its data key
/// cached and a block of nonces reserved.
fn warm_vault(
    rt: &Runtime,
    suite: Suite,
    size: usize,
) -> (Vault, TenantId, SecretName, SecretBytes) {
    let master = LocalMasterKey::generate().expect("master key");
    let vault = Vault::builder(MemoryStore::new(), MasterKeyRing::new(master))
        .with_suite(suite)
        .build()
        .expect("vault");
    let tenant = TenantId::new(TENANT).expect("tenant id");
    let name = SecretName::new(NAME).expect("secret name");
    let secret = SecretBytes::new(plaintext(size));
    rt.block_on(async {
        vault.create_tenant(&tenant).await.expect("create tenant");
        vault.put(&tenant, &name, &secret).await.expect("put");
        let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
        assert_eq!(back.expose_secret(), secret.expose_secret());
    });
    (vault, tenant, name, secret)
}

fn roundtrip(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("roundtrip");

    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut raw = RawBuffers::new(size);
        let (plain, buf) = raw.split();

        let key = ring_key();
        group.bench_function(BenchmarkId::new("raw_ring_aes256gcm", size), |b| {
            b.iter(|| ring_seal_open(&key, black_box(plain), &[], buf));
        });

        let aad = plaintext(VAULT_AAD_LEN);
        let mut envelope = RawBuffers::new(size + 1);
        let (env_plain, env_buf) = envelope.split();
        group.bench_function(BenchmarkId::new("raw_ring_aes256gcm_envelope", size), |b| {
            b.iter(|| ring_seal_open(&key, black_box(env_plain), &aad, env_buf));
        });

        // The reference point: a raw ring "put + get" that stores the sealed bytes in
        // a map under (tenant, name) and returns the plaintext in a fresh allocation, with no
        // format, binding, cache or accounting.
        let mut map: HashMap<(Arc<str>, Arc<str>), Vec<u8>> = HashMap::new();
        let map_key: (Arc<str>, Arc<str>) = (Arc::from(TENANT), Arc::from(NAME));
        group.bench_function(BenchmarkId::new("raw_ring_put_get_map", size), |b| {
            b.iter(|| {
                let mut nonce = [0u8; 12];
                rand::rng().fill_bytes(&mut nonce);
                let mut sealed = Vec::with_capacity(12 + size + 16);
                sealed.extend_from_slice(&nonce);
                sealed.extend_from_slice(black_box(plain));
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        sealed.get_mut(12..).expect("sealed holds the nonce"),
                    )
                    .expect("seal");
                sealed.extend_from_slice(tag.as_ref());
                map.insert(map_key.clone(), sealed);
                let mut stored = map.get(&map_key).expect("stored").clone();
                let (nonce, rest) = stored.split_at_mut(12);
                let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce");
                let opened = key.open_in_place(nonce, Aad::empty(), rest).expect("open");
                black_box(opened.to_vec().into_boxed_slice())
            });
        });

        let mut xkey = [0u8; 32];
        rand::rng().fill_bytes(&mut xkey);
        let xcipher = XChaCha20Poly1305::new(&xkey.into());
        group.bench_function(BenchmarkId::new("raw_xchacha20poly1305", size), |b| {
            b.iter(|| {
                let mut nonce = [0u8; 24];
                rand::rng().fill_bytes(&mut nonce);
                let nonce = XNonce::from(nonce);
                buf.copy_from_slice(black_box(plain));
                let tag = xcipher
                    .encrypt_inout_detached(&nonce, &[], (&mut *buf).into())
                    .expect("seal");
                xcipher
                    .decrypt_inout_detached(&nonce, &[], (&mut *buf).into(), &tag)
                    .expect("open");
                black_box(&buf);
            });
        });

        for (op, suite) in [
            ("vault_put_get", Suite::Aes256Gcm),
            ("vault_put_get_xchacha", Suite::XChaCha20Poly1305),
        ] {
            let (vault, tenant, name, secret) = warm_vault(&rt, suite, size);
            group.bench_function(BenchmarkId::new(op, size), |b| {
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

        let (vault, tenant, name, secret) = warm_vault(&rt, Suite::Aes256Gcm, size);
        group.bench_function(BenchmarkId::new("vault_put", size), |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    vault
                        .put(&tenant, &name, black_box(&secret))
                        .await
                        .expect("put"),
                )
            });
        });
        group.bench_function(BenchmarkId::new("vault_get", size), |b| {
            b.to_async(&rt).iter(|| async {
                let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
                black_box(back)
            });
        });
    }
    group.finish();
}

fn dek_cache(c: &mut Criterion) {
    const SIZE: usize = 256;
    let rt = runtime();
    let mut group = c.benchmark_group("dek_cache");
    group.throughput(Throughput::Bytes(SIZE as u64));

    let (vault, tenant, name, _) = warm_vault(&rt, Suite::Aes256Gcm, SIZE);
    group.bench_function(BenchmarkId::new("get_warm", SIZE), |b| {
        b.to_async(&rt).iter(|| async {
            let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
            black_box(back)
        });
    });

    // Fresh vaults over the same store and master keys: each first `get` reads the data-key
    // record and unwraps it. Building and dropping the vault are outside the timing.
    let store: Arc<dyn Store> = Arc::clone(vault.store());
    let keys = MasterKeyRing::clone(&vault.master_keys());
    group.bench_function(BenchmarkId::new("get_cold", SIZE), |b| {
        b.to_async(&rt).iter_batched(
            || {
                Vault::builder_with_store(Arc::clone(&store), keys.clone())
                    .build()
                    .expect("vault")
            },
            |fresh| async {
                let back: SecretBytes = fresh.get(&tenant, &name).await.expect("get");
                (fresh, back)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("envelope");

    for size in SIZES {
        for (suffix, suite) in [
            ("aes256gcm", Suite::Aes256Gcm),
            ("xchacha", Suite::XChaCha20Poly1305),
        ] {
            let (vault, tenant, name, _) = warm_vault(&rt, suite, size);
            let bytes = rt
                .block_on(vault.store().get_secret(&tenant, &name))
                .expect("get record")
                .expect("record stored")
                .envelope;
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            let parsed = EnvelopeRef::parse(&bytes).expect("valid envelope");
            assert_eq!(parsed.to_bytes(), bytes, "canonical encoding");

            group.bench_function(BenchmarkId::new(format!("parse_{suffix}"), size), |b| {
                b.iter(|| EnvelopeRef::parse(black_box(&bytes)).expect("parse"));
            });
            group.bench_function(BenchmarkId::new(format!("encode_{suffix}"), size), |b| {
                b.iter(|| black_box(&parsed).to_bytes());
            });
            group.bench_function(BenchmarkId::new(format!("raw_copy_{suffix}"), size), |b| {
                b.iter(|| black_box(bytes.as_slice()).to_vec());
            });
        }
    }
    group.finish();
}

fn async_driver(c: &mut Criterion) {
    const SIZE: usize = 256;
    let rt = runtime();
    let mut group = c.benchmark_group("async_driver");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));

    group.bench_function("noop/to_async", |b| {
        b.to_async(&rt).iter(|| async { black_box(1u8) });
    });
    group.bench_function("noop/block_on_per_call", |b| {
        b.iter(|| rt.block_on(async { black_box(1u8) }));
    });

    let (vault, tenant, name, secret) = warm_vault(&rt, Suite::Aes256Gcm, SIZE);
    let put_get = || async {
        vault
            .put(&tenant, &name, black_box(&secret))
            .await
            .expect("put");
        let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
        black_box(back)
    };
    group.bench_function(BenchmarkId::new("vault_put_get/to_async", SIZE), |b| {
        b.to_async(&rt).iter(put_get);
    });
    group.bench_function(
        BenchmarkId::new("vault_put_get/block_on_per_call", SIZE),
        |b| {
            b.iter(|| rt.block_on(put_get()));
        },
    );
    group.finish();
}

/// What the associated data costs ring's AES-256-GCM: seal + open of the envelope's 33-byte
/// plaintext (a 32 B secret plus its kind byte) with associated data of 0 to 256 bytes
/// (the vault's is `VAULT_AAD_LEN`). ring hashes the associated data one 16-byte block at
/// a time, while it hashes the message in wide blocks, so at small sizes the binding costs
/// about as much as the encryption; this is the floor under `vault_put_get/32`.
fn aad_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("aad_cost");
    let key = ring_key();
    let mut buffers = RawBuffers::new(33);
    let (plain, buf) = buffers.split();
    for aad_len in [0, 16, 32, VAULT_AAD_LEN, 128, 256] {
        let aad = plaintext(aad_len);
        group.bench_function(BenchmarkId::new("raw_ring_seal_open_33B", aad_len), |b| {
            b.iter(|| ring_seal_open(&key, black_box(plain), &aad, buf));
        });
    }
    group.finish();
}

/// Sized to keep a whole `cargo bench --bench vault` run under three minutes on two cores.
/// Plots are off: the plotters backend spends about 3.5 s drawing each benchmark here, more
/// than measuring it; the numbers are in `target/criterion/**/new/estimates.json`.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = roundtrip, dek_cache, envelope, async_driver, aad_cost
}
criterion_main!(benches);
