//! Crash injection: every key job (master rewrap, tenant rotation with re-encryption and
//! key destruction, tenant deletion) is interrupted at its k-th storage write, for every k,
//! with the write lost or applied-but-unacknowledged. After each crash, a fresh vault over
//! the same store (the restarted process) must read every committed secret, and must finish
//! the job when it runs it again.
//!
//! Every sweep runs on the memory store, on SQLite (a new file per crash point) and, when
//! their URLs are configured, on PostgreSQL and Redis (a fresh schema or key prefix per
//! crash point).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use credvault::storage::{CrashPoint, DekState, FaultyStore, Store};
use credvault::{
    ApiKey, DekVersion, Error, ErrorKind, JobOptions, LocalMasterKey, MasterKeyProvider,
    MasterKeyRing, MemoryStore, Vault,
};

type Expected = BTreeMap<(String, String), String>;
type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn key_b() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[11u8; 32]).unwrap()
}

fn rotated_ring() -> MasterKeyRing {
    MasterKeyRing::new(key_b())
        .with_decrypt_only(master())
        .unwrap()
}

/// The backends a crash sweep runs on.
const BACKENDS: [&str; 4] = ["memory", "sqlite", "postgres", "redis"];

/// A fresh, empty store of `backend`, or `None` when that server is not configured.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
    allow(
        clippy::unused_async,
        reason = "only the SQLite and server backends await"
    )
)]
async fn fresh(backend: &str) -> Option<Arc<dyn Store>> {
    match backend {
        "memory" => Some(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Some(Arc::new(sqlite_file().await) as Arc<dyn Store>),
        #[cfg(feature = "postgres")]
        "postgres" => Some(servers::fresh_postgres().await? as Arc<dyn Store>),
        #[cfg(feature = "redis")]
        "redis" => Some(servers::fresh_redis().await? as Arc<dyn Store>),
        _ => None,
    }
}

/// Whether the sweeps run on `backend` (a server backend only when its URL is configured).
async fn available(backend: &str) -> bool {
    match backend {
        "memory" => true,
        "sqlite" => cfg!(feature = "sqlite"),
        _ => fresh(backend).await.is_some(),
    }
}

async fn seed(store: &Arc<dyn Store>) -> Expected {
    let vault = vault_over(store);
    let mut expected = Expected::new();
    for t in ["acme", "globex", "initech"] {
        vault.create_tenant(&tenant(t)).await.unwrap();
        for i in 0..4 {
            let value = format!("{t}-{i}");
            vault
                .put(
                    &tenant(t),
                    &name(&format!("s{i}")),
                    &ApiKey::new(value.clone()),
                )
                .await
                .unwrap();
            expected.insert((t.to_owned(), format!("s{i}")), value);
        }
    }
    // A second data-key version for acme, with one secret under it.
    vault.rotate_tenant_key(&tenant("acme")).await.unwrap();
    vault
        .put(&tenant("acme"), &name("v2"), &ApiKey::new("acme-v2"))
        .await
        .unwrap();
    expected.insert(("acme".into(), "v2".into()), "acme-v2".into());
    expected
}

async fn unreadable(vault: &Vault, expected: &Expected, skip_tenant: Option<&str>) -> u64 {
    let mut bad = 0;
    for ((t, n), value) in expected {
        if Some(t.as_str()) == skip_tenant {
            continue;
        }
        match vault.get::<ApiKey>(&tenant(t), &name(n)).await {
            Ok(got) if got.expose_secret() == value => {}
            _ => bad += 1,
        }
    }
    bad
}

#[derive(Default, Debug)]
struct Tally {
    crash_points: u64,
    unreadable: u64,
    unfinished: u64,
    backends: Vec<&'static str>,
}

/// Runs `job` against a store that crashes at write k, for k = 1, 2, ... until the job
/// completes without reaching k, at both crash points.
async fn sweep<J, F>(
    label: &str,
    ring: fn() -> MasterKeyRing,
    skip_tenant: Option<&str>,
    job: J,
    finished: F,
) -> Tally
where
    J: for<'a> Fn(&'a Vault) -> BoxFut<'a, Result<(), Error>>,
    F: for<'a> Fn(&'a Arc<dyn Store>, &'a Expected) -> BoxFut<'a, bool>,
{
    let mut tally = Tally::default();
    for backend in BACKENDS {
        if !available(backend).await {
            continue;
        }
        for point in [CrashPoint::BeforeWrite, CrashPoint::AfterWrite] {
            for k in 1.. {
                let inner = fresh(backend).await.unwrap();
                let expected = seed(&inner).await;
                let faulty = Arc::new(FaultyStore::new(Arc::clone(&inner), k, point));
                let crashing = Vault::builder_with_store(faulty.clone(), ring())
                    .build()
                    .unwrap();
                let result = job(&crashing).await;
                if !faulty.crashed() {
                    result.unwrap_or_else(|e| {
                        panic!("{label}[{backend}]: job failed without a crash: {e}")
                    });
                    assert!(
                        finished(&inner, &expected).await,
                        "{label}[{backend}]: uninterrupted job did not finish"
                    );
                    break;
                }
                tally.crash_points += 1;
                let restarted = Vault::builder_with_store(Arc::clone(&inner), ring())
                    .build()
                    .unwrap();
                tally.unreadable += unreadable(&restarted, &expected, skip_tenant).await;
                let resumed = job(&restarted).await;
                if resumed.is_err() || !finished(&inner, &expected).await {
                    tally.unfinished += 1;
                }
                tally.unreadable += unreadable(&restarted, &expected, skip_tenant).await;
            }
        }
        tally.backends.push(backend);
    }
    println!(
        "crash[{label}] on {}: {} crash points tried, {} secrets unreadable, {} jobs unfinished on resume",
        tally.backends.join("+"),
        tally.crash_points,
        tally.unreadable,
        tally.unfinished
    );
    tally
}

fn assert_clean(t: &Tally) {
    assert!(
        t.crash_points > 4,
        "the sweep must hit real crash points: {t:?}"
    );
    assert_eq!((t.unreadable, t.unfinished), (0, 0), "{t:?}");
}

#[tokio::test]
async fn master_rewrap_survives_a_crash_at_every_write() {
    let tally = sweep(
        "master rewrap",
        rotated_ring,
        None,
        |vault| {
            Box::pin(async move {
                vault
                    .rewrap_all(&JobOptions::default().with_batch_size(2), |_| {})
                    .await
                    .map(|_| ())
            })
        },
        |store, expected| {
            Box::pin(async move {
                let only_new =
                    Vault::builder_with_store(Arc::clone(store), MasterKeyRing::new(key_b()))
                        .build()
                        .unwrap();
                let usage = only_new.master_key_usage().await.unwrap();
                usage.len() == 1
                    && usage.contains_key(key_b().id())
                    && unreadable(&only_new, expected, None).await == 0
            })
        },
    )
    .await;
    assert_clean(&tally);
}

#[tokio::test]
async fn tenant_rotation_and_reencryption_survive_a_crash_at_every_write() {
    let tally = sweep(
        "tenant rotation + re-encryption + destruction",
        ring,
        None,
        |vault| {
            Box::pin(async move {
                let t = tenant("acme");
                // "Rotate to version 3": skipped if an earlier run already created it.
                if vault
                    .key_status(&t)
                    .await?
                    .iter()
                    .all(|s| s.version.get() < 3)
                {
                    vault.rotate_tenant_key(&t).await?;
                }
                vault
                    .reencrypt_tenant(&t, &JobOptions::default().with_batch_size(2))
                    .await?;
                vault
                    .set_min_decryption_version(&t, DekVersion::new(3).unwrap())
                    .await?;
                vault.destroy_unused_keys(&t, Duration::ZERO).await?;
                Ok(())
            })
        },
        |store, expected| {
            Box::pin(async move {
                let keys = vault_over(store).key_status(&tenant("acme")).await.unwrap();
                let states: Vec<_> = keys
                    .iter()
                    .map(|s| (s.version.get(), s.state, s.secrets))
                    .collect();
                states
                    == [
                        (1, DekState::Destroyed, 0),
                        (2, DekState::Destroyed, 0),
                        (3, DekState::Active, 5),
                    ]
                    && unreadable(&vault_over(store), expected, None).await == 0
            })
        },
    )
    .await;
    assert_clean(&tally);
}

#[tokio::test]
async fn tenant_deletion_survives_a_crash_at_every_write() {
    let tally = sweep(
        "tenant deletion",
        ring,
        Some("acme"),
        |vault| Box::pin(async move { vault.delete_tenant(&tenant("acme")).await.map(|_| ()) }),
        |store, expected| {
            Box::pin(async move {
                let t = tenant("acme");
                store.list_deks(&t).await.unwrap().is_empty()
                    && store.list_secrets(&t, None, 10).await.unwrap().is_empty()
                    && unreadable(&vault_over(store), expected, Some("acme")).await == 0
            })
        },
    )
    .await;
    assert_clean(&tally);
}

/// After a crash in the middle of a deletion, the deleted tenant's secrets are either all
/// still readable (no key was destroyed yet) or unreadable for good: never re-readable
/// later, and never readable with a freshly minted key.
#[tokio::test]
async fn interrupted_deletion_never_leaves_a_secret_readable_after_its_key_is_destroyed() {
    for backend in BACKENDS {
        if !available(backend).await {
            continue;
        }
        for k in 1..40 {
            let inner = fresh(backend).await.unwrap();
            let expected = seed(&inner).await;
            let faulty = Arc::new(FaultyStore::new(
                Arc::clone(&inner),
                k,
                CrashPoint::AfterWrite,
            ));
            let vault = Vault::builder_with_store(faulty.clone(), ring())
                .build()
                .unwrap();
            let _ = vault.delete_tenant(&tenant("acme")).await;
            let restarted = vault_over(&inner);
            let destroyed: Vec<_> = inner
                .list_deks(&tenant("acme"))
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.state == DekState::Destroyed)
                .map(|r| r.version)
                .collect();
            for ((t, n), _) in expected.iter().filter(|((t, _), _)| t == "acme") {
                if let Some(row) = inner.get_secret(&tenant(t), &name(n)).await.unwrap() {
                    let readable = restarted.get::<ApiKey>(&tenant(t), &name(n)).await.is_ok();
                    assert!(
                        !(readable && destroyed.contains(&row.metadata.dek_version)),
                        "k={k}: {t}/{n} readable under a destroyed key"
                    );
                }
            }
            if !faulty.crashed() {
                break;
            }
        }
    }
}

#[tokio::test]
async fn reencrypt_all_survives_a_crash_at_every_write() {
    let tally = sweep(
        "re-encryption of all tenants",
        ring,
        None,
        |vault| {
            Box::pin(async move {
                // "Every tenant on version 2 or later": rotate those still on version 1.
                for t in ["globex", "initech"] {
                    if vault
                        .key_status(&tenant(t))
                        .await?
                        .iter()
                        .all(|s| s.version.get() < 2)
                    {
                        vault.rotate_tenant_key(&tenant(t)).await?;
                    }
                }
                vault
                    .reencrypt_all(&JobOptions::default().with_batch_size(3), |_| {})
                    .await?;
                Ok(())
            })
        },
        |store, expected| {
            Box::pin(async move {
                let vault = vault_over(store);
                let mut all_current = true;
                for t in ["acme", "globex", "initech"] {
                    let status = vault.key_status(&tenant(t)).await.unwrap();
                    let newest = status.iter().map(|s| s.version).max().unwrap();
                    all_current &= status.iter().all(|s| s.version == newest || s.secrets == 0);
                }
                all_current && unreadable(&vault, expected, None).await == 0
            })
        },
    )
    .await;
    assert_clean(&tally);
}

/// A store that fails in the middle of a re-encryption sweep stops the sweep with the
/// storage error: the job never returns `Ok` with the secrets it could not reach listed as
/// per-secret failures, as if they were damaged (found by the `vault_model` fuzz target).
#[tokio::test]
async fn reencryption_interrupted_by_a_store_failure_returns_the_storage_error() {
    for all_tenants in [false, true] {
        for k in 1.. {
            let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
            seed(&inner).await;
            for t in ["globex", "initech"] {
                vault_over(&inner)
                    .rotate_tenant_key(&tenant(t))
                    .await
                    .unwrap();
            }
            let faulty = Arc::new(FaultyStore::new(
                Arc::clone(&inner),
                k,
                CrashPoint::BeforeWrite,
            ));
            // One encryption per reservation: every re-seal writes, so a crash can land there.
            let vault = Vault::builder_with_store(faulty.clone(), ring())
                .with_reservation_block(1)
                .build()
                .unwrap();
            let options = JobOptions::default().with_batch_size(2);
            let result = if all_tenants {
                vault.reencrypt_all(&options, |_| {}).await
            } else {
                vault.reencrypt_tenant(&tenant("acme"), &options).await
            };
            if !faulty.crashed() {
                let report = result.unwrap();
                assert!(report.failures.is_empty(), "{report:?}");
                break;
            }
            match result {
                Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "k={k}"),
                Ok(report) => panic!(
                    "k={k}, all tenants {all_tenants}: the sweep reported success over a failed store: {report:?}"
                ),
            }
        }
    }
}
