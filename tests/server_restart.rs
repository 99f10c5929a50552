//! A real server restarted in the middle of a run: a private PostgreSQL cluster and a
//! private Redis (AOF, `appendfsync always`) are started by the test, killed without
//! warning while a writer runs (`pg_ctl -m immediate`, `kill -9`), and started again. While
//! a server is down, operations fail with `ErrorKind::Unavailable`; after it is back they
//! succeed without re-creating the store; and every acknowledged write is still there.
//!
//! This is a crash of the server *process*: the operating system's page cache survives it,
//! so the test shows that the server recovers every acknowledged write from its log, not
//! that the log reached the disk (that is `synchronous_commit` / `appendfsync`, documented
//! in `docs/operations.md`).
//!
//! The servers are private (own data directory, own port) so that killing them disturbs no
//! other test. The binaries come from Debian's `postgresql` and `redis-server` packages; if
//! they are missing the tests are skipped with a message, or fail under
//! `CREDVAULT_REQUIRE_SERVICES=1`.
#![cfg(all(feature = "postgres", feature = "redis"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::too_many_lines,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use credvault::storage::{PostgresOptions, RedisOptions, Store};
use credvault::{ApiKey, ErrorKind, PostgresStore, RedisStore, Vault};

fn require_services() -> bool {
    std::env::var("CREDVAULT_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn skip(why: &str) {
    assert!(
        !require_services(),
        "{why}, and CREDVAULT_REQUIRE_SERVICES=1"
    );
    eprintln!("SKIPPED: {why}; this restart test did not run");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tally of one restart run.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: Vec<u64>,
    unavailable: u64,
}

/// Writes secret after secret until `stop`; a write that fails must fail as
/// `Unavailable`, and is retried.
async fn write_until(vault: Vault, stop: Arc<AtomicBool>) -> Tally {
    let t = tenant("restart");
    let mut tally = Tally::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        match vault
            .put(&t, &name(&format!("s{i}")), &ApiKey::new(format!("v{i}")))
            .await
        {
            Ok(_) => {
                tally.acknowledged.push(i);
                i += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                tally.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tally
}

/// Runs the writer, kills the server with `kill` after some writes, restarts it with
/// `start`, lets the writer go on, then checks every acknowledged write.
async fn restart_run(
    label: &str,
    store: Arc<dyn Store>,
    kill: impl FnOnce(),
    start: impl FnOnce(),
) {
    let vault = vault_over(&store);
    vault.create_tenant(&tenant("restart")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(vault.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill();
    // While it is down, a read fails as unavailable too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = vault
        .get::<ApiKey>(&tenant("restart"), &name("s0"))
        .await
        .unwrap_err();
    assert_eq!(down.kind(), ErrorKind::Unavailable, "{down}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    start();
    let back = Instant::now();
    // Wait until the writer has made progress again (at most 30 s).
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if vault
            .get::<ApiKey>(&tenant("restart"), &name("s0"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "{label}: never came back"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = writer.await.unwrap();
    // A fresh vault (a restarted process) reads every acknowledged write.
    let reader = vault_over(&store);
    let mut lost = 0;
    for i in &tally.acknowledged {
        match reader
            .get::<ApiKey>(&tenant("restart"), &name(&format!("s{i}")))
            .await
        {
            Ok(v) if v.expose_secret() == format!("v{i}") => {}
            _ => lost += 1,
        }
    }
    println!(
        "restart[{label}]: {} writes acknowledged, {} refused as unavailable while down, {lost} acknowledged writes lost",
        tally.acknowledged.len(),
        tally.unavailable
    );
    assert!(
        tally.unavailable > 0,
        "{label}: the outage was not observed"
    );
    assert!(tally.acknowledged.len() > 10, "{label}: too few writes");
    assert_eq!(lost, 0, "{label}: acknowledged writes lost");
}

/// The directory of PostgreSQL's server binaries, if installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs a PostgreSQL binary, as the `postgres` user when this process is root (PostgreSQL
/// refuses to run as root).
fn pg(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_loses_no_acknowledged_write() {
    let Some(bin) = postgres_bin() else {
        return skip("PostgreSQL server binaries are not installed");
    };
    let dir = tempfile::Builder::new()
        .prefix("credvault-pg-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path()));
    }
    run(pg(&bin, "initdb")
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data));
    let port = free_port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
        dir.path().display()
    );
    let start = || {
        run(pg(&bin, "pg_ctl")
            .args(["-w", "-l"])
            .arg(dir.path().join("log"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "start"]));
    };
    start();
    // Whatever happens below, the private server is stopped when the test ends.
    let _guard = StopOnDrop(pg(&bin, "pg_ctl"), data.clone());
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let store = PostgresStore::connect_with(
        &url,
        PostgresOptions::new()
            .with_max_connections(4)
            .with_acquire_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    restart_run(
        "postgres",
        Arc::new(store),
        || {
            // `immediate`: no checkpoint, no clean shutdown, as a crash.
            run(pg(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"]));
        },
        start,
    )
    .await;
}

/// Stops a private PostgreSQL cluster (`pg_ctl -m immediate stop`) on drop, also when the
/// test panics.
struct StopOnDrop(Command, PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self
            .0
            .arg("-D")
            .arg(&self.1)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_write() {
    let Some(server) = PrivateRedis::start() else {
        return;
    };
    let store = RedisStore::connect_with(
        &server.url(),
        RedisOptions::new()
            .with_required_aof(true)
            .with_response_timeout(Duration::from_secs(1))
            .with_connection_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    restart_run(
        "redis",
        Arc::new(store),
        || server.kill(),
        || server.restart(),
    )
    .await;
}
