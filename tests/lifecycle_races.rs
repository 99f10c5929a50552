//! An `Ok` means readable, under every life-cycle event at once: writers on two instances
//! (one of which trusts its cached active key for an hour and re-encrypts on read) race
//! tenant deletion and re-creation, key rotation, re-encryption and destruction of the old
//! keys with no grace period, on every backend that several processes can share, and in
//! memory. Afterwards every stored secret opens, and every write acknowledged after the last
//! deletion of the tenant reads back as written (or as a later write whose outcome the
//! writer could not know).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point, and the figures are printed"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{name, ring, shared_backends, tenant};
use credvault::storage::Store;
use credvault::{ApiKey, ErrorKind, JobOptions, MemoryStore, Vault};

const WRITERS: usize = 4;
const WRITES: usize = 30;
const LIFECYCLES: usize = 5;

/// One write as a writer saw it: when it started and ended on the shared clock, and whether
/// it was acknowledged (`Some(true)`), refused with nothing written (`Some(false)`), or of
/// unknown outcome (`None`).
struct Attempt {
    value: String,
    started: u64,
    outcome: Option<bool>,
}

/// What the tasks saw.
#[derive(Default)]
struct Log {
    attempts: BTreeMap<String, Vec<Attempt>>,
    /// (start, end) of every tenant deletion.
    deletions: Vec<(u64, u64)>,
    /// Reads that found their key destroyed, with their start and end.
    destroyed_reads: Vec<(u64, u64, String)>,
    unexpected: Vec<String>,
}

fn instance(store: &Arc<dyn Store>, stale: bool) -> Vault {
    let builder = Vault::builder_with_store(Arc::clone(store), ring());
    if stale {
        builder
            .with_active_key_ttl(Duration::from_hours(1))
            .with_reencrypt_on_read(true)
            .build()
            .unwrap()
    } else {
        builder.build().unwrap()
    }
}

/// Errors a racing operation may meet and that leave nothing half done.
fn expected(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::TenantNotFound | ErrorKind::Conflict | ErrorKind::NotFound
    )
}

async fn race(backend: &str, one: Arc<dyn Store>, two: Arc<dyn Store>) -> (usize, usize) {
    let (a, b) = (
        Arc::new(instance(&one, false)),
        Arc::new(instance(&two, true)),
    );
    let t = tenant("acme");
    a.create_tenant(&t).await.unwrap();
    let clock = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Log::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let vault = Arc::clone(if w % 2 == 0 { &a } else { &b });
        let (t, clock, log) = (t.clone(), Arc::clone(&clock), Arc::clone(&log));
        tasks.spawn(async move {
            for i in 0..WRITES {
                let key = format!("w{w}-{}", i % 3);
                let value = format!("w{w}-{i}");
                let started = clock.fetch_add(1, Ordering::SeqCst);
                let result = vault
                    .put(&t, &name(&key), &ApiKey::new(value.clone()))
                    .await;
                let outcome = match &result {
                    Ok(_) => Some(true),
                    Err(e) if expected(e.kind()) => Some(false),
                    Err(_) => None,
                };
                clock.fetch_add(1, Ordering::SeqCst);
                {
                    let mut seen = log.lock().unwrap();
                    if let Err(e) = &result
                        && !expected(e.kind())
                    {
                        seen.unexpected.push(format!("put {key}: {e}"));
                    }
                    seen.attempts.entry(key.clone()).or_default().push(Attempt {
                        value,
                        started,
                        outcome,
                    });
                }
                // Reads re-encrypt lazily on instance B. A read that races a deletion of the
                // tenant may find the key destroyed before the row is deleted: checked below
                // against the deletions' times.
                let read_start = clock.fetch_add(1, Ordering::SeqCst);
                let read = vault.get::<ApiKey>(&t, &name(&key)).await;
                let read_end = clock.fetch_add(1, Ordering::SeqCst);
                match read {
                    Err(e) if e.kind() == ErrorKind::KeyDestroyed => log
                        .lock()
                        .unwrap()
                        .destroyed_reads
                        .push((read_start, read_end, format!("get {key}: {e}"))),
                    Err(e) if !expected(e.kind()) => {
                        log_unexpected(&log, format!("get {key}: {e}"));
                    }
                    _ => {}
                }
                tokio::task::yield_now().await;
            }
        });
    }
    {
        let (a, t, clock, log) = (
            Arc::clone(&a),
            t.clone(),
            Arc::clone(&clock),
            Arc::clone(&log),
        );
        tasks.spawn(async move {
            for _ in 0..LIFECYCLES {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let start = clock.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = a.delete_tenant(&t).await {
                    log_unexpected(&log, format!("delete_tenant: {e}"));
                }
                let end = clock.fetch_add(1, Ordering::SeqCst);
                log.lock().unwrap().deletions.push((start, end));
                if let Err(e) = a.create_tenant(&t).await {
                    log_unexpected(&log, format!("create_tenant: {e}"));
                }
            }
        });
    }
    {
        let (b, t, log) = (Arc::clone(&b), t.clone(), Arc::clone(&log));
        tasks.spawn(async move {
            for _ in 0..LIFECYCLES * 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let steps = async {
                    b.rotate_tenant_key(&t).await?;
                    b.reencrypt_tenant(&t, &JobOptions::default()).await?;
                    b.destroy_unused_keys(&t, Duration::ZERO).await
                };
                if let Err(e) = steps.await
                    && !expected(e.kind())
                {
                    log_unexpected(&log, format!("rotation: {e}"));
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(log.unexpected.is_empty(), "{backend}: {:?}", log.unexpected);
    for (start, end, what) in &log.destroyed_reads {
        assert!(
            log.deletions.iter().any(|(s, e)| s < end && start < e),
            "{backend}: {what}, with no deletion of the tenant under way"
        );
    }
    // Every secret stored opens.
    a.create_tenant(&t).await.unwrap();
    let reader = instance(&one, false);
    let stored = reader.list(&t, None, 1000).await.unwrap();
    for meta in &stored {
        if let Err(e) = reader.get::<ApiKey>(&t, &meta.name).await {
            panic!("{backend}: {} is stored but reads as {e}", meta.name);
        }
    }
    // Writes acknowledged after the last deletion ended read back.
    let last_deletion = log.deletions.iter().map(|(_, end)| *end).max().unwrap_or(0);
    let (mut acknowledged, mut lost) = (0, 0);
    for (key, attempts) in &log.attempts {
        acknowledged += attempts.iter().filter(|x| x.outcome == Some(true)).count();
        let Some(at) = attempts.iter().rposition(|x| x.outcome == Some(true)) else {
            continue;
        };
        let (done, after) = attempts.split_at(at + 1);
        let Some(acked) = done.last() else { continue };
        if acked.started < last_deletion {
            continue;
        }
        // The acknowledged value, or a later write whose outcome is unknown.
        let allowed: Vec<&str> = std::iter::once(acked)
            .chain(after.iter().filter(|x| x.outcome.is_none()))
            .map(|x| x.value.as_str())
            .collect();
        match reader.get::<ApiKey>(&t, &name(key)).await {
            Ok(read) if allowed.contains(&read.expose_secret()) => {}
            Ok(read) => {
                lost += 1;
                eprintln!(
                    "{backend}: {key} reads {}, not {allowed:?}",
                    read.expose_secret()
                );
            }
            Err(e) => {
                lost += 1;
                eprintln!("{backend}: {key}, acknowledged, reads as {e}");
            }
        }
    }
    assert_eq!(lost, 0, "{backend}: {lost} acknowledged writes lost");
    (acknowledged, log.deletions.len())
}

fn log_unexpected(log: &Mutex<Log>, what: String) {
    log.lock().unwrap().unexpected.push(what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_every_lifecycle_event_are_readable_on_every_backend() {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (acknowledged, deletions) = race("memory", Arc::clone(&memory), memory).await;
    println!("memory: {acknowledged} acknowledged writes, {deletions} tenant deletions, 0 lost");
    for backend in shared_backends() {
        let (one, two) = (backend.open().await, backend.open().await);
        let (acknowledged, deletions) = race(backend.name, one, two).await;
        println!(
            "{}: {acknowledged} acknowledged writes, {deletions} tenant deletions, 0 lost",
            backend.name
        );
    }
}
