//! Each storage backend next to its raw driver doing the same single-row write and read,
//! in one run: the overhead the vault adds on a real server.
//!
//! ```text
//! CREDVAULT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! CREDVAULT_TEST_REDIS_URL=redis://127.0.0.1:6379/0 \
//!   cargo bench --features postgres,redis --bench backends
//! ```
//!
//! For every backend (SQLite on a file, PostgreSQL, Redis; a server whose URL is not set is
//! skipped with a message):
//! - **raw**: the driver alone writes a fresh random 256 B value into one row and reads it back — an
//!   `INSERT .. ON CONFLICT DO UPDATE` and a `SELECT` by primary key (sqlx, same pool size
//!   and SQLite pragmas as the store), or `HSET` and `HGET` (the same connection manager);
//! - **raw record** (Redis only): the driver alone writes and reads the whole record the vault
//!   stores — an `HSET` of its six fields (`k`, `v`, `e` of the vault's envelope length, `c`,
//!   `u`, `r`) and an `HMGET` of them — but without the scripts' conditional write and read
//!   bound: the gap from raw to raw record is the record's size, the gap from raw record to
//!   vault the atomic scripts (and the sealing);
//! - **vault**: `vault.put` then `vault.get` of a 256 B `SecretBytes` (sealed, bound,
//!   conditional write, bounded read, opened), over the store on the same server.
//!
//! Latency: one task, put+get pairs alternating between raw (and raw record) and vault in
//! blocks, repeated; the median (p50) and p90 of every pair. Throughput: 1 and 16 tasks
//! doing put+get pairs on 100 rows each for a fixed time, the sides alternating, repeated;
//! the median rate.
//! This is a bench binary (not criterion) because it measures concurrent throughput; it
//! asserts nothing about speed. Figures are in `BENCHMARKS.md`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::indexing_slicing,
    reason = "a bench binary: setup failures abort it, it indexes only its own list of sides, and it reports on stdout"
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use credvault::storage::{PostgresOptions, RedisOptions, SqliteOptions, Store};
use credvault::{
    LocalMasterKey, MasterKeyRing, PostgresStore, RedisStore, SecretBytes, SecretName, SqliteStore,
    TenantId, Vault,
};

const VALUE_LEN: usize = 256;
const ROWS_PER_TASK: usize = 100;
const LATENCY_ROUNDS: usize = 7;
const LATENCY_BLOCK: usize = 300;
const THROUGHPUT_ROUNDS: usize = 3;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const POOL: u32 = 16;

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One put+get pair against row `i` by task `task`.
trait Side: Send + Sync {
    fn pair(&self, task: usize, i: usize) -> BoxFut<'_>;
}

struct VaultSide {
    vault: Vault,
    tenant: TenantId,
    value: Vec<u8>,
}

impl Side for VaultSide {
    fn pair(&self, task: usize, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let name = SecretName::new(format!("t{task}-s{i}")).unwrap();
            self.vault
                .put(&self.tenant, &name, &SecretBytes::new(self.value.clone()))
                .await
                .expect("vault put");
            let got: SecretBytes = self.vault.get(&self.tenant, &name).await.expect("get");
            assert_eq!(got.expose_secret().len(), VALUE_LEN);
        })
    }
}

struct SqlSide<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    upsert: &'static str,
    select: &'static str,
}

macro_rules! sql_side {
    ($db:ty) => {
        impl Side for SqlSide<$db> {
            fn pair(&self, task: usize, i: usize) -> BoxFut<'_> {
                Box::pin(async move {
                    let name = format!("t{task}-s{i}");
                    sqlx::query(self.upsert)
                        .bind("bench-tenant")
                        .bind(&name)
                        .bind(fresh_value())
                        .execute(&self.pool)
                        .await
                        .expect("raw write");
                    let got: Vec<u8> = sqlx::query_scalar(self.select)
                        .bind("bench-tenant")
                        .bind(&name)
                        .fetch_one(&self.pool)
                        .await
                        .expect("raw read");
                    assert_eq!(got.len(), VALUE_LEN);
                })
            }
        }
    };
}
sql_side!(sqlx::Sqlite);
sql_side!(sqlx::Postgres);

struct RedisSide {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl Side for RedisSide {
    fn pair(&self, task: usize, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let key = format!("{}:t{task}-s{i}", self.prefix);
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("HSET")
                .arg(&key)
                .arg("e")
                .arg(fresh_value())
                .query_async(&mut conn)
                .await
                .expect("raw HSET");
            let got: Vec<u8> = redis::cmd("HGET")
                .arg(&key)
                .arg("e")
                .query_async(&mut conn)
                .await
                .expect("raw HGET");
            assert_eq!(got.len(), VALUE_LEN);
        })
    }
}

/// The Redis raw record side: the six fields of the vault's record, written and read
/// without a script.
struct RedisRecordSide {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    envelope_len: usize,
}

impl Side for RedisRecordSide {
    fn pair(&self, task: usize, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let key = format!("{}:t{task}-s{i}", self.prefix);
            let mut envelope = vec![0; self.envelope_len];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut envelope);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .to_string();
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("HSET")
                .arg(&key)
                .arg("k")
                .arg(1)
                .arg("v")
                .arg(1)
                .arg("e")
                .arg(envelope)
                .arg("c")
                .arg(&now)
                .arg("u")
                .arg(&now)
                .arg("r")
                .arg(i + 1)
                .query_async(&mut conn)
                .await
                .expect("raw record HSET");
            let got: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&["k", "v", "e", "c", "u", "r"])
                .query_async(&mut conn)
                .await
                .expect("raw record HMGET");
            assert_eq!(
                got.get(2).and_then(Option::as_ref).map(Vec::len),
                Some(self.envelope_len)
            );
        })
    }
}

/// A fresh random value per raw write, as the vault writes fresh ciphertext: SQLite skips
/// rewriting a cell whose bytes do not change, so rewriting one constant value would commit
/// nothing and flatter the raw side.
fn fresh_value() -> Vec<u8> {
    let mut v = vec![0; VALUE_LEN];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut v);
    v
}

fn value() -> Vec<u8> {
    (0..VALUE_LEN).map(|i| (i * 31 % 251) as u8).collect()
}

async fn vault_side(store: Arc<dyn Store>) -> VaultSide {
    let ring = MasterKeyRing::new(LocalMasterKey::from_bytes(&[7u8; 32]).unwrap());
    let vault = Vault::builder_with_store(store, ring).build().unwrap();
    let tenant = TenantId::new("bench-tenant").unwrap();
    vault.create_tenant(&tenant).await.unwrap();
    VaultSide {
        vault,
        tenant,
        value: value(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-pair latencies of one task for each side, in blocks, the side that starts a round
/// rotating.
async fn latency(sides: &[Arc<dyn Side>]) -> Vec<Vec<Duration>> {
    let mut out = vec![Vec::new(); sides.len()];
    for round in 0..LATENCY_ROUNDS {
        for k in 0..sides.len() {
            let s = (round + k) % sides.len();
            for i in 0..LATENCY_BLOCK {
                let t0 = Instant::now();
                sides[s].pair(0, i % ROWS_PER_TASK).await;
                out[s].push(t0.elapsed());
            }
        }
    }
    for v in &mut out {
        v.sort();
    }
    out
}

/// Pairs per second with `tasks` concurrent tasks for one window.
async fn rate(side: Arc<dyn Side>, tasks: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (side, stop, done) = (Arc::clone(&side), Arc::clone(&stop), Arc::clone(&done));
        handles.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                side.pair(task, i % ROWS_PER_TASK).await;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(THROUGHPUT_WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    for h in handles {
        h.await.unwrap();
    }
    counted as f64 / elapsed.as_secs_f64()
}

/// `raw` and `vault` side by side, and `record` (a second raw baseline) next to them when
/// given. The lines comparing raw and vault are printed first, in the same form either way.
async fn compare(
    label: &str,
    raw: Arc<dyn Side>,
    record: Option<Arc<dyn Side>>,
    vault: Arc<dyn Side>,
) {
    let mut sides = vec![raw, vault];
    sides.extend(record);
    // Warm up: every row exists on every side, caches and pools are warm.
    for task in 0..16 {
        for i in 0..ROWS_PER_TASK {
            for side in &sides {
                side.pair(task, i).await;
            }
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let lat = latency(&sides).await;
    let p50: Vec<Duration> = lat.iter().map(|l| percentile(l, 0.5)).collect();
    let p90: Vec<Duration> = lat.iter().map(|l| percentile(l, 0.9)).collect();
    println!(
        "{label:<9} latency put+get, 1 task ({} pairs each): raw p50 {:>7.1} us p90 {:>7.1} us | vault p50 {:>7.1} us p90 {:>7.1} us | vault/raw p50 {:.3}",
        lat[0].len(),
        us(p50[0]),
        us(p90[0]),
        us(p50[1]),
        us(p90[1]),
        p50[1].as_secs_f64() / p50[0].as_secs_f64()
    );
    if sides.len() > 2 {
        println!(
            "{label:<9} latency put+get, 1 task: raw record p50 {:>7.1} us p90 {:>7.1} us | raw record/raw p50 {:.3} | vault/raw record p50 {:.3}",
            us(p50[2]),
            us(p90[2]),
            p50[2].as_secs_f64() / p50[0].as_secs_f64(),
            p50[1].as_secs_f64() / p50[2].as_secs_f64()
        );
    }
    for tasks in [1, 16] {
        let mut runs = vec![Vec::new(); sides.len()];
        for round in 0..THROUGHPUT_ROUNDS {
            for k in 0..sides.len() {
                let s = (round + k) % sides.len();
                runs[s].push(rate(Arc::clone(&sides[s]), tasks).await);
            }
        }
        let m: Vec<f64> = runs.iter().map(|r| median(r.clone())).collect();
        println!(
            "{label:<9} throughput put+get, {tasks:>2} tasks: raw {:>8.0} pairs/s (runs {}) | vault {:>8.0} pairs/s (runs {}) | vault/raw {:.3}",
            m[0],
            fmt_runs(&runs[0]),
            m[1],
            fmt_runs(&runs[1]),
            m[1] / m[0]
        );
        if sides.len() > 2 {
            println!(
                "{label:<9} throughput put+get, {tasks:>2} tasks: raw record {:>8.0} pairs/s (runs {}) | raw record/raw {:.3} | vault/raw record {:.3}",
                m[2],
                fmt_runs(&runs[2]),
                m[2] / m[0],
                m[1] / m[2]
            );
        }
    }
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join("/")
}

async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::with_options(
        SqliteOptions::file(dir.path().join("vault.db")).with_max_connections(POOL),
    )
    .await
    .unwrap();
    // The raw side: the same pragmas as the store (WAL, synchronous FULL), its own file.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("raw.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(POOL)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE raw (tenant TEXT NOT NULL, name TEXT NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY (tenant, name)) WITHOUT ROWID")
        .execute(&pool)
        .await
        .unwrap();
    let raw = SqlSide::<sqlx::Sqlite> {
        pool,
        upsert: "INSERT INTO raw (tenant, name, envelope) VALUES (?, ?, ?) ON CONFLICT (tenant, name) DO UPDATE SET envelope = excluded.envelope",
        select: "SELECT envelope FROM raw WHERE tenant = ? AND name = ?",
    };
    compare(
        "sqlite",
        Arc::new(raw),
        None,
        Arc::new(vault_side(Arc::new(store)).await),
    )
    .await;
}

async fn postgres(url: &str) {
    let schema = format!("cvbench_{}", std::process::id());
    let store = PostgresStore::connect_with(
        url,
        PostgresOptions::new()
            .with_schema(schema.clone())
            .with_max_connections(POOL),
    )
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect(url)
        .await
        .unwrap();
    sqlx::query("DROP TABLE IF EXISTS credvault_bench_raw")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE credvault_bench_raw (tenant TEXT COLLATE \"C\" NOT NULL, name TEXT COLLATE \"C\" NOT NULL, envelope BYTEA NOT NULL, PRIMARY KEY (tenant, name))")
        .execute(&pool)
        .await
        .unwrap();
    let raw = SqlSide::<sqlx::Postgres> {
        pool: pool.clone(),
        upsert: "INSERT INTO credvault_bench_raw (tenant, name, envelope) VALUES ($1, $2, $3) ON CONFLICT (tenant, name) DO UPDATE SET envelope = EXCLUDED.envelope",
        select: "SELECT envelope FROM credvault_bench_raw WHERE tenant = $1 AND name = $2",
    };
    compare(
        "postgres",
        Arc::new(raw),
        None,
        Arc::new(vault_side(Arc::new(store)).await),
    )
    .await;
    sqlx::query("DROP TABLE credvault_bench_raw")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

async fn redis_backend(url: &str) {
    let prefix = format!("cvbench:{}", std::process::id());
    let store = RedisStore::connect_with(url, RedisOptions::new().with_prefix(prefix.clone()))
        .await
        .unwrap();
    let conn = redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let vault = vault_side(Arc::clone(&store)).await;
    // The raw record's envelope is as long as the vault's.
    let probe = SecretName::new("envelope-length").unwrap();
    vault
        .vault
        .put(&vault.tenant, &probe, &SecretBytes::new(value()))
        .await
        .unwrap();
    let envelope_len = store
        .get_secret(&vault.tenant, &probe)
        .await
        .unwrap()
        .unwrap()
        .envelope
        .len();
    let raw = RedisSide {
        conn: conn.clone(),
        prefix: format!("{{{prefix}}}:raw"),
    };
    let record = RedisRecordSide {
        conn: conn.clone(),
        prefix: format!("{{{prefix}}}:rawrecord"),
        envelope_len,
    };
    compare(
        "redis",
        Arc::new(raw),
        Some(Arc::new(record)),
        Arc::new(vault),
    )
    .await;
    // Remove what the bench wrote (SCAN, never KEYS).
    let mut conn = conn;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects backends by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "backends: put+get of a {VALUE_LEN} B value, raw driver vs vault, pools of {POOL} connections, {} cores",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    runtime.block_on(async {
        if wanted("sqlite") {
            sqlite().await;
        }
        if wanted("postgres") {
            match std::env::var("CREDVAULT_TEST_POSTGRES_URL") {
                Ok(url) => postgres(&url).await,
                Err(_) => println!("postgres: skipped (CREDVAULT_TEST_POSTGRES_URL is not set)"),
            }
        }
        if wanted("redis") {
            match std::env::var("CREDVAULT_TEST_REDIS_URL") {
                Ok(url) => redis_backend(&url).await,
                Err(_) => println!("redis: skipped (CREDVAULT_TEST_REDIS_URL is not set)"),
            }
        }
    });
}
