//! Many writers at once lose nothing: tasks sharing one vault, and two vault instances
//! with separate pools on one database (as two processes would run: a SQLite file, and
//! PostgreSQL and Redis when configured), including read-modify-write on one secret,
//! data-key roll-over under contention, and a tenant deleted while writers run.
#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use credvault::storage::Store;
use credvault::{ApiKey, ErrorKind, SqliteStore, Vault};

async fn two_instances(
    backend: &SharedBackend,
    block: u64,
    max: Option<u64>,
) -> (Vec<Vault>, Arc<dyn Store>) {
    let mut vaults = Vec::new();
    let mut first: Option<Arc<dyn Store>> = None;
    for _ in 0..2 {
        let store = backend.open().await;
        let mut builder =
            Vault::builder_with_store(store.clone(), ring()).with_reservation_block(block);
        if let Some(max) = max {
            builder = builder.with_max_encryptions_per_key(max);
        }
        vaults.push(builder.build().unwrap());
        first.get_or_insert(store);
    }
    (vaults, first.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_from_tasks_and_two_instances_lose_nothing() {
    for backend in shared_backends() {
        let (vaults, store) = two_instances(&backend, 1024, None).await;
        println!("two instances on {}", backend.name);
        let t = tenant("acme");
        // Both instances race to create the tenant.
        let (a, b) = tokio::join!(vaults[0].create_tenant(&t), vaults[1].create_tenant(&t));
        a.unwrap();
        b.unwrap();
        let mut tasks = Vec::new();
        for (v, vault) in vaults.iter().enumerate() {
            for task in 0..8 {
                let (vault, t) = (vault.clone(), t.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..25 {
                        let n = name(&format!("v{v}-t{task}-s{i}"));
                        vault
                            .put(&t, &n, &ApiKey::new(format!("value-{v}-{task}-{i}")))
                            .await
                            .unwrap();
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let listed = vaults[0].list(&t, None, 10_000).await.unwrap();
        assert_eq!(listed.len(), 2 * 8 * 25);
        for v in 0..2 {
            for task in 0..8 {
                for i in 0..25 {
                    let n = name(&format!("v{v}-t{task}-s{i}"));
                    let got: ApiKey = vaults[1 - v].get(&t, &n).await.unwrap();
                    assert_eq!(got.expose_secret(), format!("value-{v}-{task}-{i}"));
                }
            }
        }
        // Each instance reserved its own block; the durable count covers all 400 encryptions.
        let dek = store.list_deks(&t).await.unwrap();
        assert_eq!(dek.len(), 1);
        assert!(dek[0].encryptions_reserved >= 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_modify_write_across_instances_loses_no_update() {
    for backend in shared_backends() {
        let (vaults, _) = two_instances(&backend, 1024, None).await;
        println!("two instances on {}", backend.name);
        let t = tenant("acme");
        let n = name("counter");
        vaults[0].create_tenant(&t).await.unwrap();
        vaults[0].create(&t, &n, &ApiKey::new("0")).await.unwrap();
        let mut tasks = Vec::new();
        for vault in &vaults {
            for _ in 0..4 {
                let (vault, t, n) = (vault.clone(), t.clone(), n.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..10 {
                        loop {
                            let (current, meta) =
                                vault.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
                            let next = current.expose_secret().parse::<u64>().unwrap() + 1;
                            match vault
                                .update(&t, &n, &ApiKey::new(next.to_string()), meta.row_version)
                                .await
                            {
                                Ok(_) => break,
                                Err(e) if e.kind() == ErrorKind::Conflict => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let last: ApiKey = vaults[1].get(&t, &n).await.unwrap();
        assert_eq!(last.expose_secret(), "80");
    }
}

/// With a tiny usage limit, both instances roll the tenant to new versions while writing.
/// Every secret stays readable, no version is over-used, and the durable counts cover every
/// encryption actually made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roll_over_under_contention_keeps_every_key_within_its_limit() {
    const LIMIT: u64 = 20;
    for backend in shared_backends() {
        let (vaults, store) = two_instances(&backend, 3, Some(LIMIT)).await;
        println!("two instances on {}", backend.name);
        let t = tenant("acme");
        vaults[0].create_tenant(&t).await.unwrap();
        let mut tasks = Vec::new();
        for (v, vault) in vaults.iter().enumerate() {
            for task in 0..4 {
                let (vault, t) = (vault.clone(), t.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..30 {
                        vault
                            .put(
                                &t,
                                &name(&format!("v{v}-t{task}-{i}")),
                                &ApiKey::new(format!("{v}{task}{i}")),
                            )
                            .await
                            .unwrap();
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let deks = store.list_deks(&t).await.unwrap();
        assert!(
            deks.len() >= 240 / LIMIT as usize,
            "rolled to {} versions",
            deks.len()
        );
        let mut used: BTreeMap<u32, u64> = BTreeMap::new();
        let secrets = store.list_secrets(&t, None, 1000).await.unwrap();
        assert_eq!(secrets.len(), 240);
        for m in &secrets {
            *used.entry(m.dek_version.get()).or_default() += 1;
            let got: ApiKey = vaults[0].get(&t, &m.name).await.unwrap();
            assert!(!got.expose_secret().is_empty());
        }
        for d in &deks {
            assert!(
                d.encryptions_reserved <= LIMIT,
                "v{} reserved {}",
                d.version,
                d.encryptions_reserved
            );
            assert!(used.get(&d.version.get()).copied().unwrap_or(0) <= d.encryptions_reserved);
        }
        let active: Vec<_> = deks
            .iter()
            .filter(|d| d.state == credvault::storage::DekState::Active)
            .collect();
        assert!(!active.is_empty());
    }
}

/// Two real processes (this test binary, re-run as children) write to one SQLite file at
/// once: distinct secrets from each, and read-modify-write increments of one shared counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_lose_nothing() {
    const CHILD: &str = "CREDVAULT_TEST_CHILD_WRITER";
    const PUTS: usize = 40;
    const INCREMENTS: u64 = 15;
    let t = tenant("acme");
    let counter = name("counter");
    if let Ok(spec) = std::env::var(CHILD) {
        let (path, id) = spec.split_once('|').unwrap();
        let store = SqliteStore::open(path).await.unwrap();
        let vault = Vault::builder(store, ring())
            .with_reservation_block(8)
            .build()
            .unwrap();
        vault.create_tenant(&t).await.unwrap();
        for i in 0..PUTS {
            let value = format!("{id}-{i}");
            vault
                .put(&t, &name(&format!("p{id}-{i}")), &ApiKey::new(value))
                .await
                .unwrap();
            if (i as u64) < INCREMENTS {
                loop {
                    let (current, meta) = vault
                        .get_with_metadata::<ApiKey>(&t, &counter)
                        .await
                        .unwrap();
                    let next = current.expose_secret().parse::<u64>().unwrap() + 1;
                    match vault
                        .update(
                            &t,
                            &counter,
                            &ApiKey::new(next.to_string()),
                            meta.row_version,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Conflict => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-processes.db");
    let parent = Vault::builder(SqliteStore::open(&path).await.unwrap(), ring())
        .build()
        .unwrap();
    parent.create_tenant(&t).await.unwrap();
    parent
        .create(&t, &counter, &ApiKey::new("0"))
        .await
        .unwrap();
    let spawn = |id: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "two_processes_on_one_sqlite_file_lose_nothing",
                "--quiet",
            ])
            .env(CHILD, format!("{}|{id}", path.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn("a"), spawn("b")];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for id in ["a", "b"] {
        for i in 0..PUTS {
            let got: ApiKey = parent.get(&t, &name(&format!("p{id}-{i}"))).await.unwrap();
            assert_eq!(got.expose_secret(), format!("{id}-{i}"));
        }
    }
    let total: ApiKey = parent.get(&t, &counter).await.unwrap();
    assert_eq!(total.expose_secret(), (2 * INCREMENTS).to_string());
    let deks = parent.store().list_deks(&t).await.unwrap();
    assert_eq!(deks.len(), 1, "both processes used the one data key");
}

/// One instance deletes a tenant while the other keeps writing to it and to a second
/// tenant. The second tenant loses nothing; once the writers stop, a repeated deletion
/// finishes the job and the deleted tenant has no key and no row left (a writer holding a
/// cached key may land a row after the first pass, sealed under a destroyed key, which the
/// repeat removes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_deletion_concurrent_with_writers_leaves_nothing_behind() {
    for backend in shared_backends() {
        let (vaults, store) = two_instances(&backend, 16, None).await;
        let (gone, kept) = (tenant("leaving"), tenant("staying"));
        vaults[0].create_tenant(&gone).await.unwrap();
        vaults[0].create_tenant(&kept).await.unwrap();
        let writer = vaults[1].clone();
        let (g, k) = (gone.clone(), kept.clone());
        let writer_task = tokio::spawn(async move {
            let mut kept_written = Vec::new();
            for i in 0..60 {
                let n = name(&format!("s{i}"));
                // Writes to the tenant being deleted may fail once its keys are destroyed.
                let _ = writer.put(&g, &n, &ApiKey::new(format!("gone-{i}"))).await;
                writer
                    .put(&k, &n, &ApiKey::new(format!("kept-{i}")))
                    .await
                    .unwrap();
                kept_written.push(i);
            }
            kept_written
        });
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        let first = vaults[0].delete_tenant(&gone).await.unwrap();
        let kept_written = writer_task.await.unwrap();
        let second = vaults[0].delete_tenant(&gone).await.unwrap();
        assert!(
            store.list_deks(&gone).await.unwrap().is_empty(),
            "{}: keys left",
            backend.name
        );
        assert!(
            store
                .list_secrets(&gone, None, 100)
                .await
                .unwrap()
                .is_empty(),
            "{}: rows left",
            backend.name
        );
        for i in kept_written {
            let got: ApiKey = vaults[0].get(&kept, &name(&format!("s{i}"))).await.unwrap();
            assert_eq!(got.expose_secret(), format!("kept-{i}"));
        }
        println!(
            "deletion during writes on {}: first pass removed {} rows, the repeat {}",
            backend.name, first.secrets_deleted, second.secrets_deleted
        );
    }
}
