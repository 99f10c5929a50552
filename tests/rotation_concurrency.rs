//! Rotation while writers run: tasks in two vault instances on one database (a SQLite
//! file, and PostgreSQL and Redis when configured) keep
//! writing and updating while one instance rotates the master key, rotates the tenant key,
//! re-encrypts and destroys old keys. Nothing is lost, and no secret is left under a
//! destroyed key.
#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use credvault::storage::{DekState, Store};
use credvault::{ApiKey, ErrorKind, JobOptions, LocalMasterKey, MasterKeyRing, Vault};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_concurrent_with_writers_loses_nothing() {
    for backend in shared_backends() {
        rotation_concurrent_with_writers_on(&backend).await;
        println!("rotation during writes on {}: nothing lost", backend.name);
    }
}

async fn rotation_concurrent_with_writers_on(backend: &SharedBackend) {
    let open = || backend.open();
    let new_key = || LocalMasterKey::from_bytes(&[21u8; 32]).unwrap();
    let both = || {
        MasterKeyRing::new(new_key())
            .with_decrypt_only(master())
            .unwrap()
    };
    // Short active-key TTL: writers notice rotations quickly; the destruction grace covers it.
    let build = |store: Arc<dyn Store>, ring: MasterKeyRing| {
        Vault::builder_with_store(store, ring)
            .with_active_key_ttl(Duration::from_millis(50))
            .with_reservation_block(4)
            .build()
            .unwrap()
    };
    let operator = build(open().await, both());
    let writer_a = build(open().await, both());
    let writer_b = build(open().await, both());
    let t = tenant("acme");
    operator.create_tenant(&t).await.unwrap();
    operator
        .create(&t, &name("counter"), &ApiKey::new("0"))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for (w, vault) in [writer_a.clone(), writer_b.clone()].into_iter().enumerate() {
        for task in 0..3 {
            let (vault, t) = (vault.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let mut written = BTreeSet::new();
                for i in 0..40 {
                    let n = format!("w{w}-t{task}-{i}");
                    vault
                        .put(&t, &name(&n), &ApiKey::new(format!("v-{n}")))
                        .await
                        .unwrap();
                    written.insert(n);
                    loop {
                        let (cur, meta) = vault
                            .get_with_metadata::<ApiKey>(&t, &name("counter"))
                            .await
                            .unwrap();
                        let next = cur.expose_secret().parse::<u64>().unwrap() + 1;
                        match vault
                            .update(
                                &t,
                                &name("counter"),
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
                written.len()
            }));
        }
    }
    // The operator rotates everything while the writers run.
    let ops = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        operator
            .rewrap_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        operator.rotate_tenant_key(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        operator
            .reencrypt_tenant(&t, &JobOptions::default().with_batch_size(8))
            .await
            .unwrap();
        operator.rotate_tenant_key(&t).await.unwrap();
        operator
            .reencrypt_tenant(&t, &JobOptions::default().with_batch_size(8))
            .await
            .unwrap();
    };
    ops.await;
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 240);
    // Writers may have used an old version until their active-key TTL expired: sweep again,
    // after the grace period, then destroy what nothing references.
    tokio::time::sleep(Duration::from_millis(120)).await;
    operator
        .reencrypt_tenant(&t, &JobOptions::default())
        .await
        .unwrap();
    let destroyed = operator
        .destroy_unused_keys(&t, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        destroyed.len(),
        2,
        "versions 1 and 2 are unused and destroyed"
    );

    let reader = Vault::builder_with_store(open().await, MasterKeyRing::new(new_key()))
        .build()
        .unwrap();
    let status = reader.key_status(&t).await.unwrap();
    for s in &status {
        if s.state == DekState::Destroyed {
            assert_eq!(
                s.secrets, 0,
                "no secret left under destroyed v{}",
                s.version
            );
        }
    }
    assert_eq!(reader.list(&t, None, 1000).await.unwrap().len(), 241);
    for w in 0..2 {
        for task in 0..3 {
            for i in 0..40 {
                let n = format!("w{w}-t{task}-{i}");
                assert_eq!(
                    reader
                        .get::<ApiKey>(&t, &name(&n))
                        .await
                        .unwrap()
                        .expose_secret(),
                    format!("v-{n}")
                );
            }
        }
    }
    assert_eq!(
        reader
            .get::<ApiKey>(&t, &name("counter"))
            .await
            .unwrap()
            .expose_secret(),
        "240",
        "no lost update"
    );
    assert_eq!(
        reader.master_key_usage().await.unwrap().len(),
        1,
        "every key is under the new master key"
    );
}
