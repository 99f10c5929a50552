//! No freed heap block holds a secret: a scanning global allocator (`testkit/alloc-probe`)
//! looks at every block being freed, and at the old block of every reallocation, for
//! 32-byte canaries while a vault runs put, get, list, rotation (`rotate_tenant_key` +
//! `reencrypt_tenant`), DEK-cache eviction, error paths (a row copied to the wrong tenant,
//! a tampered row, the wrong kind, a lost conditional update, an oversized secret) and its
//! own drop. The canaries are the secret value (as an API key, both OAuth tokens and secret
//! bytes), the master key, and the data keys of an AES-256-GCM tenant and of an
//! XChaCha20-Poly1305 tenant. Every one of them must be found in 0 freed blocks; a control
//! at the start checks that the probe does find a plain copy.
//!
//! The AES-256-GCM data key is the case this test was written to catch: `ring` does not
//! wipe its expanded AES keys, and an AES-256 key schedule starts with the raw key, so every
//! DEK-cache eviction left the data key in a freed block until `SecretCipher` started
//! overwriting the schedule on drop (`src/crypto.rs`).
//! `evicted_aes_data_key_leaves_no_copy_in_freed_memory` isolates that case.
//!
//! The canaries are built at run time and the test keeps its own copies on the stack in
//! `Zeroizing` wrappers; the strings it hands to `ApiKey::new` and `OAuthToken` are zeroized
//! by them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use credvault::keys::{DataKey, WrapContext};
use credvault::storage::Store;
use credvault::{
    ApiKey, DekVersion, ErrorKind, ExposeSecret, JobOptions, LocalMasterKey, MasterKeyProvider,
    MasterKeyRing, MemoryStore, OAuthToken, SecretBytes, Suite, TenantId, Vault,
};
use credvault_alloc_probe::{
    PATTERN_LEN, Probe, ScanReport, reset_scan, scan_for, scan_report, stop_scan,
};
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: Probe = Probe;

/// The scan is global: the two tests of this binary take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const PATTERN_NAMES: [&str; 4] = [
    "secret value",
    "master key",
    "XChaCha20-Poly1305 data key",
    "AES-256-GCM data key",
];

/// 32 printable bytes derived at run time from `seed`, so that the canary is in no
/// constant of the binary.
fn canary(seed: u64) -> Zeroizing<[u8; PATTERN_LEN]> {
    let mut out = Zeroizing::new([0u8; PATTERN_LEN]);
    let mut x = seed;
    for b in out.iter_mut() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *b = b'A' + ((x >> 33) % 26) as u8;
    }
    out
}

/// `bytes` as a `String` of exactly its length (ASCII), for the secret constructors, which
/// zeroize it.
fn text(bytes: &[u8; PATTERN_LEN]) -> String {
    let mut s = String::with_capacity(PATTERN_LEN);
    s.extend(bytes.iter().map(|&b| char::from(b)));
    s
}

fn unwrap_dek(store: &Arc<dyn Store>, master: &LocalMasterKey, t: &TenantId) -> DataKey {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let record = store.get_dek(t, DekVersion::FIRST).await.unwrap().unwrap();
        let id = master.id().clone();
        let context = WrapContext {
            tenant: t,
            dek_version: DekVersion::FIRST,
            suite: record.suite,
            master_key_id: &id,
        };
        master.unwrap(&record.wrapped, &context).await.unwrap()
    })
}

struct Phases {
    rows: Vec<(&'static str, ScanReport)>,
}

impl Phases {
    fn end(&mut self, phase: &'static str) {
        self.rows.push((phase, scan_report()));
        reset_scan();
    }
}

#[test]
fn no_freed_block_holds_a_secret_value_master_key_or_data_key() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let secret = canary(0x5eed_0001);
    let master_bytes = canary(0x5eed_0002);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ring = || MasterKeyRing::new(LocalMasterKey::from_bytes(&master_bytes[..]).unwrap());
    // A DEK cache of one entry: every read of another tenant evicts a key.
    let build = |suite| {
        Vault::builder_with_store(Arc::clone(&store), ring())
            .with_suite(suite)
            .with_dek_cache(1, Duration::from_mins(5))
            .build()
            .unwrap()
    };
    let tenants = [tenant("t-aes-0"), tenant("t-aes-1"), tenant("t-xchacha")];
    let suites = [Suite::Aes256Gcm, Suite::Aes256Gcm, Suite::XChaCha20Poly1305];

    // Tenants first, so that their data keys can be canaries too.
    for (t, suite) in tenants.iter().zip(suites) {
        rt.block_on(build(suite).create_tenant(t)).unwrap();
    }
    let master = LocalMasterKey::from_bytes(&master_bytes[..]).unwrap();
    let xchacha_dek = Zeroizing::new(*unwrap_dek(&store, &master, &tenants[2]).expose_secret());
    let aes_dek = Zeroizing::new(*unwrap_dek(&store, &master, &tenants[0]).expose_secret());
    drop(master);

    // Control: the probe finds a plain, unzeroized copy of the canary when it is freed.
    scan_for(&[&secret, &master_bytes, &xchacha_dek, &aes_dek]);
    drop(std::hint::black_box(secret.to_vec()));
    let control = scan_report();
    assert_eq!(control.hits[0], 1, "the probe must see an unzeroized copy");
    println!(
        "memory hygiene [control]: a plain Vec copy of the canary, freed, is found in {} block",
        control.hits[0]
    );
    reset_scan();
    let mut phases = Phases { rows: Vec::new() };
    let vaults: Vec<Vault> = suites.iter().map(|&s| build(s)).collect();

    rt.block_on(async {
        for (t, v) in tenants.iter().zip(&vaults) {
            v.put(t, &name("api"), &ApiKey::new(text(&secret)))
                .await
                .unwrap();
            let token = OAuthToken::new(text(&secret))
                .with_refresh_token(text(&secret))
                .with_scopes(["repo"]);
            v.put(t, &name("oauth"), &token).await.unwrap();
            drop(token);
            v.put(t, &name("bytes"), &SecretBytes::from_slice(&secret[..]))
                .await
                .unwrap();
        }
    });
    phases.end("put");

    let read_all = |vaults: &[Vault]| {
        rt.block_on(async {
            for (t, v) in tenants.iter().zip(vaults) {
                let key: ApiKey = v.get(t, &name("api")).await.unwrap();
                assert_eq!(key.expose_secret().as_bytes(), &secret[..]);
                let token: OAuthToken = v.get(t, &name("oauth")).await.unwrap();
                assert_eq!(token.access_token().expose_secret().as_bytes(), &secret[..]);
                let refresh = token.refresh_token().unwrap().expose_secret();
                assert_eq!(refresh.as_bytes(), &secret[..]);
                let bytes: SecretBytes = v.get(t, &name("bytes")).await.unwrap();
                assert_eq!(bytes.expose_secret(), &secret[..]);
            }
        });
    };
    read_all(&vaults);
    phases.end("get, with DEK-cache eviction");

    rt.block_on(async {
        for (t, v) in tenants.iter().zip(&vaults) {
            assert_eq!(v.list(t, None, 100).await.unwrap().len(), 3);
        }
    });
    phases.end("list");

    rt.block_on(async {
        for (t, v) in tenants.iter().zip(&vaults) {
            v.rotate_tenant_key(t).await.unwrap();
            let report = v.reencrypt_tenant(t, &JobOptions::default()).await.unwrap();
            assert!(report.failures.is_empty());
        }
    });
    read_all(&vaults);
    phases.end("rotate_tenant_key + reencrypt_tenant, then get");

    rt.block_on(async {
        let v = &vaults[0];
        // Wrong tenant: t-aes-0's row copied under t-aes-1.
        let mut row = raw_secret(&store, &tenants[0], &name("api")).await;
        row.metadata.tenant = tenants[1].clone();
        overwrite_secret(&store, row).await;
        let err = v
            .get::<ApiKey>(&tenants[1], &name("api"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
        // Tampered: the last tag bit of t-aes-0's OAuth token.
        let mut row = raw_secret(&store, &tenants[0], &name("oauth")).await;
        *row.envelope.last_mut().unwrap() ^= 1;
        overwrite_secret(&store, row).await;
        let err = v
            .get::<OAuthToken>(&tenants[0], &name("oauth"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decryption);
        // Wrong kind.
        let err = v
            .get::<ApiKey>(&tenants[0], &name("bytes"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KindMismatch);
        // A lost conditional update: sealed, then refused by the store.
        let meta = v.metadata(&tenants[0], &name("bytes")).await.unwrap();
        v.put(
            &tenants[0],
            &name("bytes"),
            &SecretBytes::from_slice(&secret[..]),
        )
        .await
        .unwrap();
        let err = v
            .update(
                &tenants[0],
                &name("bytes"),
                &SecretBytes::from_slice(&secret[..]),
                meta.row_version,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        // Too large: refused before sealing.
        let mut big = Zeroizing::new(Vec::with_capacity(70_000));
        for _ in 0..70_000 / PATTERN_LEN {
            big.extend_from_slice(&secret[..]);
        }
        let err = v
            .put(&tenants[0], &name("big"), &SecretBytes::from_slice(&big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    });
    phases.end("error paths");

    drop(vaults);
    drop(store);
    drop(rt);
    phases.end("drop of vaults, store and runtime");
    let _ = stop_scan();

    let (mut blocks, mut bytes) = (0, 0);
    let mut leaks = Vec::new();
    for (phase, report) in &phases.rows {
        println!(
            "memory hygiene [{phase}]: {} blocks scanned ({} bytes); blocks holding the \
             secret value / master key / XChaCha20 DEK / AES DEK: {} / {} / {} / {}",
            report.blocks,
            report.bytes,
            report.hits[0],
            report.hits[1],
            report.hits[2],
            report.hits[3]
        );
        blocks += report.blocks;
        bytes += report.bytes;
        for (what, hits) in PATTERN_NAMES.iter().zip(report.hits) {
            if hits > 0 {
                leaks.push(format!("{phase}: {hits} freed blocks held the {what}"));
            }
        }
    }
    println!(
        "memory hygiene: {blocks} freed blocks scanned ({bytes} bytes), {} held a canary",
        leaks.len()
    );
    assert!(blocks > 0, "the scan saw no freed block");
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// An AES-256-GCM data key dropped from the DEK cache leaves no copy in freed memory. `ring`
/// does not wipe its key schedules, which start with the raw key: before `SecretCipher`
/// overwrote the schedule on drop, this test found the data key in one freed block at the
/// first eviction.
#[test]
fn evicted_aes_data_key_leaves_no_copy_in_freed_memory() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let master_bytes = canary(0x5eed_0003);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let master = LocalMasterKey::from_bytes(&master_bytes[..]).unwrap();
    let vault = Vault::builder_with_store(Arc::clone(&store), MasterKeyRing::new(master))
        .with_dek_cache(1, Duration::from_mins(5))
        .build()
        .unwrap();
    let (a, b) = (tenant("aes-a"), tenant("aes-b"));
    rt.block_on(async {
        for t in [&a, &b] {
            vault.create_tenant(t).await.unwrap();
        }
    });
    let master = LocalMasterKey::from_bytes(&master_bytes[..]).unwrap();
    let dek = Zeroizing::new(*unwrap_dek(&store, &master, &a).expose_secret());
    drop(master);
    scan_for(&[&dek]);
    rt.block_on(async {
        // Cache a's key by writing under it, then evict it by writing under b's (the cache
        // holds one key), then drop everything.
        vault
            .put(&a, &name("s"), &ApiKey::new("not the canary"))
            .await
            .unwrap();
        vault
            .put(&b, &name("s"), &ApiKey::new("not the canary"))
            .await
            .unwrap();
        vault.get::<ApiKey>(&a, &name("s")).await.unwrap();
        vault.get::<ApiKey>(&b, &name("s")).await.unwrap();
    });
    drop(vault);
    drop(store);
    drop(rt);
    let report = stop_scan();
    println!(
        "memory hygiene [AES-256-GCM key schedule]: {} blocks scanned, {} held the data key",
        report.blocks, report.hits[0]
    );
    assert!(report.blocks > 0);
    assert_eq!(
        report.hits[0], 0,
        "ring's AES key schedule was freed unwiped"
    );
}
