//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::future::Future;
use std::sync::Arc;

use credvault::storage::{DekRecord, PutMode, SecretRecord, Store};
use credvault::{LocalMasterKey, MasterKeyRing, MemoryStore, SecretName, TenantId, Vault};

pub(crate) fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub(crate) fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

pub(crate) fn master() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[7u8; 32]).unwrap()
}

pub(crate) fn ring() -> MasterKeyRing {
    MasterKeyRing::new(master())
}

/// One fresh, empty store per backend: memory, SQLite (on a file, as deployed, and in
/// memory: the two read their scans through different drivers), and the server backends
/// whose URL is configured (each in a namespace of its own: a new PostgreSQL schema, a new
/// Redis key prefix).
pub(crate) async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut out = vec![("memory", Arc::new(MemoryStore::new()) as Arc<dyn Store>)];
    #[cfg(feature = "sqlite")]
    out.push(("sqlite", Arc::new(sqlite_file().await) as Arc<dyn Store>));
    #[cfg(feature = "sqlite")]
    out.push((
        "sqlite-in-memory",
        Arc::new(credvault::SqliteStore::open_in_memory().await.unwrap()) as Arc<dyn Store>,
    ));
    #[cfg(feature = "postgres")]
    if let Some(store) = servers::fresh_postgres().await {
        out.push(("postgres", store as Arc<dyn Store>));
    }
    #[cfg(feature = "redis")]
    if let Some(store) = servers::fresh_redis().await {
        out.push(("redis", store as Arc<dyn Store>));
    }
    out
}

/// A SQLite store on a new file, in a new directory under cargo's scratch directory for
/// integration tests (`target/tmp`, removed by `cargo clean`). The directory outlives the
/// test: a store handed out as `Arc<dyn Store>` cannot take it along.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> credvault::SqliteStore {
    let path = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep()
        .join("test.db");
    credvault::SqliteStore::with_options(
        credvault::storage::SqliteOptions::file(path).with_durable_commits(false),
    )
    .await
    .unwrap()
}

/// The server backends, configured by environment variables.
///
/// `CREDVAULT_TEST_POSTGRES_URL` and `CREDVAULT_TEST_REDIS_URL` name the servers. Without
/// them a server test is skipped with a message on stderr, unless
/// `CREDVAULT_REQUIRE_SERVICES=1`, under which a missing variable fails the test.
pub(crate) mod servers {
    #[cfg(any(feature = "postgres", feature = "redis"))]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The URL in `var`, or `None` (after saying so) when the test should be skipped.
    pub(crate) fn url(var: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("CREDVAULT_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "{var} is not set, and CREDVAULT_REQUIRE_SERVICES=1 requires it"
                );
                eprintln!("SKIPPED: {var} is not set, so this server test did not run");
                None
            }
        }
    }

    /// A name no other test process or earlier run uses: `<pid>_<time>_<counter>`.
    pub(crate) fn unique_suffix() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "{}_{:x}_{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A PostgreSQL store in a new schema `cvtest_...` (`.ci/run` drops them).
    #[cfg(feature = "postgres")]
    pub(crate) async fn fresh_postgres() -> Option<Arc<credvault::PostgresStore>> {
        let url = url("CREDVAULT_TEST_POSTGRES_URL")?;
        Some(Arc::new(
            postgres_in(&url, &format!("cvtest_{}", unique_suffix())).await,
        ))
    }

    /// A PostgreSQL store in `schema`, created if missing.
    #[cfg(feature = "postgres")]
    pub(crate) async fn postgres_in(url: &str, schema: &str) -> credvault::PostgresStore {
        let options = credvault::storage::PostgresOptions::new()
            .with_schema(schema)
            .with_max_connections(8);
        credvault::PostgresStore::connect_with(url, options)
            .await
            .unwrap()
    }

    /// A Redis store under a new key prefix `cvtest:...` (`.ci/run` deletes them).
    #[cfg(feature = "redis")]
    pub(crate) async fn fresh_redis() -> Option<Arc<credvault::RedisStore>> {
        let url = url("CREDVAULT_TEST_REDIS_URL")?;
        Some(Arc::new(
            redis_under(&url, &format!("cvtest:{}", unique_suffix())).await,
        ))
    }

    /// A Redis store under `prefix`.
    #[cfg(feature = "redis")]
    pub(crate) async fn redis_under(url: &str, prefix: &str) -> credvault::RedisStore {
        let options = credvault::storage::RedisOptions::new().with_prefix(prefix);
        credvault::RedisStore::connect_with(url, options)
            .await
            .unwrap()
    }
}

pub(crate) fn vault_over(store: &Arc<dyn Store>) -> Vault {
    Vault::builder_with_store(Arc::clone(store), ring())
        .build()
        .unwrap()
}

pub(crate) async fn raw_secret(
    store: &Arc<dyn Store>,
    t: &TenantId,
    n: &SecretName,
) -> SecretRecord {
    store.get_secret(t, n).await.unwrap().unwrap()
}

pub(crate) async fn overwrite_secret(store: &Arc<dyn Store>, record: SecretRecord) {
    store
        .put_secret(
            record,
            PutMode::Upsert,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
}

pub(crate) async fn overwrite_dek(store: &Arc<dyn Store>, record: DekRecord) {
    store.put_dek(record, PutMode::Upsert).await.unwrap();
}

/// Runs `fut`, turning a panic anywhere inside it into `Err(())` (`catch_unwind` around every
/// poll), so that adversarial tests can count panics instead of stopping at the first.
pub(crate) async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, ()> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::task::Poll;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        },
    )
    .await
}

/// Tallies of an adversarial test: inputs tried, accepted (opened), panics, and rejections
/// with an error outside the allowed kinds.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) tried: usize,
    pub(crate) accepted: usize,
    pub(crate) panics: usize,
    pub(crate) unexpected: Vec<String>,
}

impl Tally {
    /// Records one attempt that must not open.
    pub(crate) fn reject<T>(
        &mut self,
        what: impl std::fmt::Display,
        outcome: Result<Result<T, credvault::Error>, ()>,
        allowed: &[credvault::ErrorKind],
    ) {
        self.tried += 1;
        match outcome {
            Ok(Ok(_)) => self.accepted += 1,
            Ok(Err(e)) if allowed.contains(&e.kind()) => {}
            Ok(Err(e)) => self.unexpected.push(format!("{what}: {:?}", e.kind())),
            Err(()) => self.panics += 1,
        }
    }

    /// Prints `label: N tried, 0 accepted, 0 panics` and fails unless every attempt was
    /// rejected with an allowed error and none panicked.
    #[expect(clippy::print_stdout, reason = "the summary line is the test's report")]
    pub(crate) fn assert_all_rejected(&self, label: &str) {
        println!(
            "{label}: {} tried, {} accepted, {} panics",
            self.tried, self.accepted, self.panics
        );
        assert!(self.tried > 0, "{label}: nothing tried");
        assert_eq!(self.accepted, 0, "{label}: tampered input opened");
        assert_eq!(self.panics, 0, "{label}: panicked");
        assert!(
            self.unexpected.is_empty(),
            "{label}: unexpected errors {:?}",
            self.unexpected
        );
    }
}

/// One database that several independently opened stores share, as several processes
/// would: a SQLite file, and the configured servers (a fresh schema or key prefix each).
pub(crate) struct SharedBackend {
    pub(crate) name: &'static str,
    _dir: Option<tempfile::TempDir>,
    target: Target,
}

enum Target {
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
    #[cfg(feature = "redis")]
    Redis { url: String, prefix: String },
}

impl SharedBackend {
    /// A new store over the shared database, with its own pool or connection.
    pub(crate) async fn open(&self) -> Arc<dyn Store> {
        match &self.target {
            #[cfg(feature = "sqlite")]
            Target::Sqlite(path) => Arc::new(
                credvault::SqliteStore::with_options(
                    credvault::storage::SqliteOptions::file(path).with_durable_commits(false),
                )
                .await
                .unwrap(),
            ),
            #[cfg(feature = "postgres")]
            Target::Postgres { url, schema } => Arc::new(servers::postgres_in(url, schema).await),
            #[cfg(feature = "redis")]
            Target::Redis { url, prefix } => Arc::new(servers::redis_under(url, prefix).await),
        }
    }
}

/// Every backend that several processes can share, each in a fresh namespace.
pub(crate) fn shared_backends() -> Vec<SharedBackend> {
    let mut out = Vec::new();
    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        out.push(SharedBackend {
            name: "sqlite",
            _dir: Some(dir),
            target: Target::Sqlite(path),
        });
    }
    #[cfg(feature = "postgres")]
    if let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") {
        out.push(SharedBackend {
            name: "postgres",
            _dir: None,
            target: Target::Postgres {
                url,
                schema: format!("cvtest_{}", servers::unique_suffix()),
            },
        });
    }
    #[cfg(feature = "redis")]
    if let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") {
        out.push(SharedBackend {
            name: "redis",
            _dir: None,
            target: Target::Redis {
                url,
                prefix: format!("cvtest:{}", servers::unique_suffix()),
            },
        });
    }
    out
}

/// A Redis server of the test's own (own port, own data directory, AOF with `appendfsync
/// always`), for tests that reconfigure or kill the server: they must not disturb the
/// shared one. `None` (after saying so) when `redis-server` is not installed, unless
/// `CREDVAULT_REQUIRE_SERVICES=1`.
#[cfg(feature = "redis")]
pub(crate) struct PrivateRedis {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
}

#[cfg(feature = "redis")]
impl PrivateRedis {
    pub(crate) fn start() -> Option<Self> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CREDVAULT_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "redis-server is not installed, and CREDVAULT_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: redis-server is not installed; this test did not run");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self {
            dir: tempfile::Builder::new()
                .prefix("credvault-redis-")
                .tempdir()
                .unwrap(),
            port,
        };
        server.restart();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn pidfile(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.pid")
    }

    /// Starts the server (again) on its port and data directory, and waits until it
    /// accepts connections.
    pub(crate) fn restart(&self) {
        let status = std::process::Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--pidfile")
            .arg(self.pidfile())
            .status()
            .unwrap();
        assert!(status.success(), "redis-server did not start");
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no final flush: a crash).
    pub(crate) fn kill(&self) {
        let t0 = std::time::Instant::now();
        let pid = loop {
            if let Ok(pid) = std::fs::read_to_string(self.pidfile()) {
                break pid.trim().to_owned();
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "no pid file"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        let _ = std::fs::remove_file(self.pidfile());
    }
}

#[cfg(feature = "redis")]
impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.pidfile().exists() {
            self.kill();
        }
    }
}
