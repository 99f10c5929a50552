//! Rotation throughput on SQLite: master-key rewrap (DEKs/s) and re-encryption
//! (secrets/s) over 10,000 tenants and 100,000 secrets, each next to the raw batched update
//! rate of the same store (the same tables, the same pool, `UPDATE`s in transactions of
//! the job's batch size), measured in the same run.
//!
//! ```text
//! cargo bench --bench rotation                 # criterion groups: rewrap, reencrypt
//! cargo bench --bench rotation -- --rss        # peak RSS of a re-encryption, 10k vs 100k secrets (1,000 tenants)
//! cargo bench --bench rotation -- --paired     # raw and job alternating, 5 pairs each, ratio per pair
//! cargo bench --bench rotation -- --jobs=N     # N re-encryptions alone (to run under a profiler)
//! ```
//!
//! Criterion runs every sample of the raw rate before the first sample of the job, so on a
//! shared machine a change of load between the two shifts the ratio. `--paired` measures
//! the raw rate and the job alternately on the same store, one pair after the other, and
//! prints the ratio of each pair and their median.
//!
//! Each criterion iteration times one whole job with `iter_custom`; the set-up of the next
//! iteration (flipping the active master key, rotating every tenant) is not timed. The raw
//! rate is reported in the same unit (rows per iteration) so the ratio can be read off.
#![allow(
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a bench prints its figures and has nothing to measure if set-up fails"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use credvault::storage::{KeyCondition, PutMode, SecretRecord, SqliteOptions, Store};
use credvault::{
    ApiKey, DekVersion, JobOptions, LocalMasterKey, MasterKeyRing, RowVersion, SecretName,
    SqliteStore, TenantId, Vault,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;

const TENANTS: usize = 10_000;
const SECRETS_PER_TENANT: usize = 10;
const BATCH: usize = 500;

fn key(byte: u8) -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[byte; 32]).expect("key")
}

fn ring(active: u8) -> MasterKeyRing {
    let other = if active == 1 { 2 } else { 1 };
    MasterKeyRing::new(key(active))
        .with_decrypt_only(key(other))
        .expect("ring")
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    tenants: Vec<TenantId>,
}

/// A SQLite file with `tenants` tenants of `per_tenant` secrets each.
async fn fixture(tenants: usize, per_tenant: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions::file(dir.path().join("rotation.db")).with_durable_commits(false);
    let store = Arc::new(SqliteStore::with_options(options).await.expect("store"));
    let vault = Vault::builder_with_store(store.clone(), ring(1))
        .build()
        .expect("vault");
    let mut ids = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let tenant = TenantId::new(format!("tenant-{t:05}")).expect("tenant");
        vault.create_tenant(&tenant).await.expect("create");
        for s in 0..per_tenant {
            let name = SecretName::new(format!("secret-{s:02}")).expect("name");
            vault
                .put(
                    &tenant,
                    &name,
                    &ApiKey::new(format!("sk_live_{t}_{s}_0123456789abcdef")),
                )
                .await
                .expect("put");
        }
        ids.push(tenant);
    }
    Fixture {
        _dir: dir,
        store,
        tenants: ids,
    }
}

/// Which table a raw batched update rewrites.
#[derive(Clone, Copy)]
enum Table {
    Deks,
    Secrets,
}

/// The raw batched update rate of the store: every row the job rewrites (the live data
/// keys, or every secret) written through the store's own batched conditional update
/// (`Store::put_deks` / `Store::put_secrets`, the statements the jobs issue, `BATCH` rows
/// per transaction), conditional on its row version, changing the columns the job
/// changes, with no reads and no crypto: the rows are read and the batches built before
/// the clock starts.
///
/// A re-encryption changes each secret's data-key version, which is indexed, so the raw
/// secrets rewrite changes it too: one pass moves every row to the next version number
/// and a second moves it back (the envelopes, whose headers name the original version,
/// are written back unchanged and stay readable); the time is the mean of the two passes.
/// A rewrap changes no indexed column; its raw pass writes each record back unchanged.
async fn raw_batched_update(store: &SqliteStore, table: Table) -> Duration {
    match table {
        Table::Deks => {
            let mut batches = Vec::new();
            let mut after: Option<(TenantId, DekVersion)> = None;
            loop {
                let page = store
                    .scan_live_deks(after.as_ref().map(|(t, v)| (t, *v)), BATCH)
                    .await
                    .expect("scan");
                after = page.last().map(|r| (r.tenant.clone(), r.version));
                let last = page.len() < BATCH;
                batches.push(
                    page.into_iter()
                        .map(|mut r| {
                            // A version of its own for the rewritten row, as every write
                            // stores (the job draws a random one).
                            let v = r.row_version;
                            r.row_version = RowVersion(v.0 % RowVersion::MAX.0 + 1);
                            (r, PutMode::Update(v))
                        })
                        .collect::<Vec<_>>(),
                );
                if last {
                    break;
                }
            }
            let start = Instant::now();
            for batch in batches {
                let results = store.put_deks(batch).await.expect("put_deks");
                assert!(results.iter().all(Result::is_ok));
            }
            start.elapsed()
        }
        Table::Secrets => {
            let mut rows = Vec::new();
            let mut after: Option<(TenantId, SecretName)> = None;
            loop {
                let page = store
                    .scan_secrets(after.as_ref().map(|(t, n)| (t, n)), BATCH)
                    .await
                    .expect("scan");
                after = page
                    .last()
                    .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone()));
                let last = page.len() < BATCH;
                rows.extend(page);
                if last {
                    break;
                }
            }
            let mut total = Duration::ZERO;
            for pass in [Pass::Away, Pass::Back] {
                let batches: Vec<Vec<_>> = rows
                    .chunks(BATCH)
                    .map(|chunk| chunk.iter().map(|r| pass.write(r)).collect())
                    .collect();
                let start = Instant::now();
                for batch in batches {
                    let results = store.put_secrets(batch).await.expect("put_secrets");
                    assert!(results.iter().all(Result::is_ok));
                }
                total += start.elapsed();
            }
            total / 2
        }
    }
}

/// The two passes of the raw secrets rewrite.
#[derive(Clone, Copy)]
enum Pass {
    /// To the next data-key version number, conditional on the scanned row version.
    Away,
    /// Back to the scanned version, conditional on the row version `Away` left.
    Back,
}

impl Pass {
    fn write(self, scanned: &SecretRecord) -> (SecretRecord, PutMode, KeyCondition) {
        let mut r = scanned.clone();
        let v = r.metadata.row_version;
        // A version of the row's own for the `Away` state (the store keeps the version a
        // write carries), and the scanned one again for `Back`.
        let away = RowVersion(v.0 % RowVersion::MAX.0 + 1);
        match self {
            Self::Away => {
                r.metadata.dek_version = r.metadata.dek_version.next().expect("version");
                r.metadata.row_version = away;
                (r, PutMode::Update(v), KeyCondition::Unchecked)
            }
            Self::Back => (r, PutMode::Update(away), KeyCondition::Unchecked),
        }
    }
}

/// The same rewrite with one `UPDATE` statement per row (the store's batched write before
/// it wrote many rows per statement), `BATCH` rows per transaction, through the store's
/// pool: for comparison only (`--paired` prints it).
async fn per_row_update(store: &SqliteStore, table: Table) -> Duration {
    let pool = store.pool();
    let (select, update) = match table {
        Table::Deks => (
            "SELECT tenant, CAST(version AS TEXT), wrapped, row_version FROM credvault_deks WHERE state <> 3 ORDER BY tenant, version",
            "UPDATE credvault_deks SET wrapped = ?, row_version = row_version + 1 WHERE tenant = ? AND version = CAST(? AS INTEGER) AND row_version = ?",
        ),
        Table::Secrets => (
            "SELECT tenant, name, envelope, row_version FROM credvault_secrets ORDER BY tenant, name",
            "UPDATE credvault_secrets SET envelope = ?, row_version = row_version + 1 WHERE tenant = ? AND name = ? AND row_version = ?",
        ),
    };
    let rows = sqlx::query_as::<_, (String, String, Vec<u8>, i64)>(select)
        .fetch_all(pool)
        .await
        .expect("select");
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
        for (tenant, key, blob, version) in chunk {
            sqlx::query(update)
                .bind(blob.as_slice())
                .bind(tenant.as_str())
                .bind(key.as_str())
                .bind(*version)
                .execute(&mut *tx)
                .await
                .expect("update");
        }
        tx.commit().await.expect("commit");
    }
    start.elapsed()
}

fn rewrap(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let mut group = c.benchmark_group("rotation/rewrap");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TENANTS as u64));
    group.bench_function(BenchmarkId::new("raw_batched_update", TENANTS), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw_batched_update(&fx.store, Table::Deks).await;
                }
                total
            })
        });
    });
    let mut active = 1u8;
    group.bench_function(BenchmarkId::new("rewrap_all", TENANTS), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    active = if active == 1 { 2 } else { 1 };
                    let vault = Vault::builder_with_store(fx.store.clone(), ring(active))
                        .build()
                        .expect("vault");
                    let start = Instant::now();
                    let report = vault
                        .rewrap_all(&JobOptions::default().with_batch_size(BATCH), |_| {})
                        .await
                        .expect("rewrap");
                    total += start.elapsed();
                    assert_eq!(report.rewrapped as usize, TENANTS);
                    assert!(report.failures.is_empty());
                }
                total
            })
        });
    });
    group.finish();
}

fn reencrypt(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let secrets = TENANTS * SECRETS_PER_TENANT;
    let mut group = c.benchmark_group("rotation/reencrypt");
    group
        .sample_size(10)
        .measurement_time(Duration::from_mins(1));
    group.throughput(Throughput::Elements(secrets as u64));
    group.bench_function(BenchmarkId::new("raw_batched_update", secrets), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw_batched_update(&fx.store, Table::Secrets).await;
                }
                total
            })
        });
    });
    group.bench_function(BenchmarkId::new("reencrypt_all", secrets), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let vault = Vault::builder_with_store(fx.store.clone(), ring(1))
                    .build()
                    .expect("vault");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for tenant in &fx.tenants {
                        vault.rotate_tenant_key(tenant).await.expect("rotate");
                    }
                    let start = Instant::now();
                    let report = vault
                        .reencrypt_all(&JobOptions::default().with_batch_size(BATCH), |_| {})
                        .await
                        .expect("reencrypt");
                    total += start.elapsed();
                    assert_eq!(report.reencrypted as usize, secrets);
                    retire_old_keys(&vault, &fx.tenants).await;
                }
                total
            })
        });
    });
    group.finish();
}

/// The end of the documented tenant-key rotation (docs/operations.md): once nothing is
/// sealed under the old versions, destroy them. Without it every iteration would leave
/// one more decrypt-only key per tenant, which no operator keeps, and the next rewrap
/// would have more keys to move than the previous one. Not timed.
async fn retire_old_keys(vault: &Vault, tenants: &[TenantId]) {
    for tenant in tenants {
        let destroyed = vault
            .destroy_unused_keys(tenant, Duration::ZERO)
            .await
            .expect("destroy");
        assert_eq!(destroyed.len(), 1);
    }
}

/// Peak resident set of a process that builds a store of 1,000 tenants with `per_tenant`
/// secrets each and re-encrypts them all, read from /proc/self/status after resetting the
/// high-water mark. The tenant count is fixed because the vault's in-process caches are
/// per tenant (and bounded by their configured capacity); what must not grow with the
/// number of secrets is everything else.
fn rss_child(per_tenant: usize) {
    const TENANTS_FOR_RSS: usize = 1_000;
    let rt = Runtime::new().expect("runtime");
    rt.block_on(async {
        let fx = fixture(TENANTS_FOR_RSS, per_tenant).await;
        let vault = Vault::builder_with_store(fx.store.clone(), ring(1))
            .build()
            .expect("vault");
        for tenant in &fx.tenants {
            vault.rotate_tenant_key(tenant).await.expect("rotate");
        }
        let before = vm("VmRSS");
        // Reset the peak so that it measures the job, not the set-up.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let report = vault
            .reencrypt_all(&JobOptions::default().with_batch_size(BATCH), |_| {})
            .await
            .expect("reencrypt");
        println!(
            "rss secrets={} reencrypted={} rss_before_kib={} peak_during_job_kib={}",
            TENANTS_FOR_RSS * per_tenant,
            report.reencrypted,
            before,
            vm("VmHWM")
        );
    });
}

/// Raw rate and job, alternately, `PAIRS` times each for rewrap and re-encryption.
fn paired() {
    const PAIRS: usize = 5;
    let rt = Runtime::new().expect("runtime");
    rt.block_on(async {
        let fx = fixture(TENANTS, SECRETS_PER_TENANT).await;
        let options = JobOptions::default().with_batch_size(BATCH);
        let mut active = 1u8;
        let mut ratios = (Vec::new(), Vec::new());
        for pair in 1..=PAIRS {
            let per_row = per_row_update(&fx.store, Table::Deks).await;
            let raw = raw_batched_update(&fx.store, Table::Deks).await;
            active = if active == 1 { 2 } else { 1 };
            let vault = Vault::builder_with_store(fx.store.clone(), ring(active))
                .build()
                .expect("vault");
            let start = Instant::now();
            let report = vault.rewrap_all(&options, |_| {}).await.expect("rewrap");
            let job = start.elapsed();
            assert_eq!(report.rewrapped as usize, TENANTS);
            assert!(report.failures.is_empty());
            let ratio = raw.as_secs_f64() / job.as_secs_f64();
            println!("pair {pair} rewrap: raw {raw:.2?} (one statement per row {per_row:.2?}), rewrap_all {job:.2?}, job / raw rate {ratio:.2}");
            ratios.0.push(ratio);

            let per_row = per_row_update(&fx.store, Table::Secrets).await;
            let raw = raw_batched_update(&fx.store, Table::Secrets).await;
            for tenant in &fx.tenants {
                vault.rotate_tenant_key(tenant).await.expect("rotate");
            }
            let start = Instant::now();
            let report = vault.reencrypt_all(&options, |_| {}).await.expect("reencrypt");
            let job = start.elapsed();
            assert_eq!(report.reencrypted as usize, TENANTS * SECRETS_PER_TENANT);
            retire_old_keys(&vault, &fx.tenants).await;
            let ratio = raw.as_secs_f64() / job.as_secs_f64();
            println!("pair {pair} reencrypt: raw {raw:.2?} (one statement per row {per_row:.2?}), reencrypt_all {job:.2?}, job / raw rate {ratio:.2}");
            ratios.1.push(ratio);
        }
        for (name, mut r) in [("rewrap", ratios.0), ("reencrypt", ratios.1)] {
            r.sort_by(f64::total_cmp);
            let at = |i: usize| r.get(i).copied().unwrap_or(f64::NAN);
            println!(
                "{name}: median job / raw rate {:.2} (lowest {:.2}, highest {:.2}, {PAIRS} pairs)",
                at(r.len() / 2),
                at(0),
                at(r.len().saturating_sub(1))
            );
        }
    });
}

/// `n` re-encryptions of the full fixture, each after rotating every tenant, with nothing
/// else timed: for a profiler (`perf record`, `strace -c`) to see the job alone. Prints
/// each job's time and the process's CPU time over the jobs.
///
/// With `PERF_CTL_FIFO` set to the control FIFO of `perf record --control=fifo:PATH
/// --delay=-1`, the profiler records during the jobs only (not the fixture, the rotations
/// or the clean-up): `mkfifo /tmp/perf.ctl; PERF_CTL_FIFO=/tmp/perf.ctl perf record -g
/// --control=fifo:/tmp/perf.ctl --delay=-1 target/release/deps/rotation-* --jobs=3`.
fn jobs_only(n: usize) {
    let perf = std::env::var_os("PERF_CTL_FIFO").map(|path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("perf control FIFO")
    });
    let profile = |command: &str| {
        use std::io::Write;
        if let Some(mut fifo) = perf.as_ref() {
            fifo.write_all(command.as_bytes()).expect("perf control");
        }
    };
    let rt = Runtime::new().expect("runtime");
    rt.block_on(async {
        let fx = fixture(TENANTS, SECRETS_PER_TENANT).await;
        let vault = Vault::builder_with_store(fx.store.clone(), ring(1))
            .build()
            .expect("vault");
        let options = JobOptions::default().with_batch_size(BATCH);
        let mut cpu = Duration::ZERO;
        for i in 1..=n {
            for tenant in &fx.tenants {
                vault.rotate_tenant_key(tenant).await.expect("rotate");
            }
            profile("enable\n");
            let (cpu_before, start) = (process_cpu(), Instant::now());
            let report = vault
                .reencrypt_all(&options, |_| {})
                .await
                .expect("reencrypt");
            let (job, job_cpu) = (start.elapsed(), process_cpu().saturating_sub(cpu_before));
            profile("disable\n");
            cpu += job_cpu;
            assert_eq!(report.reencrypted as usize, TENANTS * SECRETS_PER_TENANT);
            retire_old_keys(&vault, &fx.tenants).await;
            println!("job {i}: reencrypt_all {job:.2?}, process CPU {job_cpu:.2?}");
        }
        println!("CPU over {n} jobs: {cpu:.2?}");
    });
}

/// User + system CPU time of this process so far, from /proc/self/stat (clock ticks of
/// 10 ms, the `USER_HZ` of Linux on every architecture it runs on here).
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.get(s.rfind(')')? + 2..)?.to_owned();
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>())
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn vm(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args.iter().find_map(|a| a.strip_prefix("--rss-child=")) {
        rss_child(n.parse().expect("secrets per tenant"));
        return;
    }
    if let Some(n) = args.iter().find_map(|a| a.strip_prefix("--jobs=")) {
        jobs_only(n.parse().expect("number of jobs"));
        return;
    }
    if args.iter().any(|a| a == "--paired") {
        paired();
        return;
    }
    if args.iter().any(|a| a == "--rss") {
        for per_tenant in [10, 100] {
            let out = std::process::Command::new(std::env::current_exe().expect("exe"))
                .arg(format!("--rss-child={per_tenant}"))
                .output()
                .expect("child");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        return;
    }
    let rt = Runtime::new().expect("runtime");
    let started = Instant::now();
    let fx = rt.block_on(fixture(TENANTS, SECRETS_PER_TENANT));
    println!(
        "fixture: {TENANTS} tenants, {} secrets in {:.1?}",
        TENANTS * SECRETS_PER_TENANT,
        started.elapsed()
    );
    let mut c = Criterion::default().configure_from_args().without_plots();
    rewrap(&mut c, &rt, &fx);
    reencrypt(&mut c, &rt, &fx);
    c.final_summary();
}
