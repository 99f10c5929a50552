//! Identity survives deletion: a secret or data-key row that is deleted and created again
//! takes a row version it never had, so a conditional write that expects a version read
//! before the delete (a stale `update`, a job writing back its snapshot) fails with
//! `Conflict` instead of overwriting the new row. On every backend, with two vault
//! instances sharing the store as two processes would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]

mod common;

use common::{name, stores, tenant, vault_over};
use credvault::storage::PutMode;
use credvault::{ApiKey, DekVersion, ErrorKind};

/// Rounds of delete and re-create per backend.
const ROUNDS: usize = 25;

#[tokio::test]
async fn a_stale_update_after_delete_and_recreate_is_a_conflict() {
    for (backend, store) in stores().await {
        let (one, two) = (vault_over(&store), vault_over(&store));
        let t = tenant("acme");
        one.create_tenant(&t).await.unwrap();
        let n = name("github");
        let (mut tried, mut accepted) = (0, 0);
        for round in 0..ROUNDS {
            one.put(&t, &n, &ApiKey::new(format!("old-{round}")))
                .await
                .unwrap();
            // Instance B reads the secret and keeps its row version for a later update.
            let (_, seen) = two.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
            // Instance A deletes it and stores a new value under the same name.
            assert!(one.delete(&t, &n).await.unwrap());
            let current = one
                .create(&t, &n, &ApiKey::new(format!("new-{round}")))
                .await
                .unwrap();
            assert_ne!(current, seen.row_version, "{backend}: a version came back");
            tried += 1;
            match two
                .update(&t, &n, &ApiKey::new("stale"), seen.row_version)
                .await
            {
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{backend}: {e}"),
                Ok(_) => accepted += 1,
            }
            let read: ApiKey = two.get(&t, &n).await.unwrap();
            assert_eq!(
                read.expose_secret(),
                format!("new-{round}"),
                "{backend}: the new value survives"
            );
        }
        assert_eq!(
            accepted, 0,
            "{backend}: {accepted} of {tried} stale updates accepted"
        );
    }
}

/// A job (rewrap, re-encryption, a reservation) reads a key row, then writes it back
/// conditionally on the row version it read. If the tenant was deleted and re-created in
/// between, the write-back must fail: the row under that (tenant, version) is another key.
#[tokio::test]
async fn a_key_row_snapshot_from_before_a_tenant_was_recreated_cannot_be_written_back() {
    for (backend, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        let (mut tried, mut accepted) = (0, 0);
        for round in 0..ROUNDS {
            vault.create_tenant(&t).await.unwrap();
            vault
                .put(&t, &name("k"), &ApiKey::new(format!("before-{round}")))
                .await
                .unwrap();
            let snapshot = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
            vault.delete_tenant(&t).await.unwrap();
            vault.create_tenant(&t).await.unwrap();
            vault
                .put(&t, &name("k"), &ApiKey::new(format!("after-{round}")))
                .await
                .unwrap();
            let current = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
            tried += 1;
            let expected = snapshot.row_version;
            match store.put_dek(snapshot, PutMode::Update(expected)).await {
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{backend}: {e}"),
                Ok(_) => accepted += 1,
            }
            assert_eq!(
                store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap(),
                current,
                "{backend}: the re-created tenant's key row is untouched"
            );
            let read: ApiKey = vault_over(&store).get(&t, &name("k")).await.unwrap();
            assert_eq!(read.expose_secret(), format!("after-{round}"), "{backend}");
            vault.delete_tenant(&t).await.unwrap();
        }
        assert_eq!(
            accepted, 0,
            "{backend}: {accepted} of {tried} stale key write-backs accepted"
        );
    }
}

/// A vault that trusts its knowledge of the active key for an hour: another instance's
/// changes reach it only through the store's key conditions.
fn long_lived_instance(store: &std::sync::Arc<dyn credvault::storage::Store>) -> credvault::Vault {
    credvault::Vault::builder_with_store(std::sync::Arc::clone(store), common::ring())
        .with_active_key_ttl(std::time::Duration::from_hours(1))
        .build()
        .unwrap()
}

/// Instance B caches the tenant's active key; instance A deletes and re-creates the tenant;
/// B's next write succeeds and is readable (it was sealed again under the new key), and the
/// tenant can be deleted and created again afterwards.
#[tokio::test]
async fn a_write_from_an_instance_with_a_stale_key_is_readable_after_the_tenant_was_recreated() {
    for (backend, store) in stores().await {
        let (one, two) = (vault_over(&store), long_lived_instance(&store));
        let t = tenant("acme");
        let (mut acknowledged, mut lost) = (0, 0);
        one.create_tenant(&t).await.unwrap();
        for round in 0..ROUNDS {
            two.put(&t, &name("warm"), &ApiKey::new("warm"))
                .await
                .unwrap();
            one.delete_tenant(&t).await.unwrap();
            one.create_tenant(&t).await.unwrap();
            let value = format!("after-{round}");
            two.put(&t, &name("k"), &ApiKey::new(value.clone()))
                .await
                .unwrap();
            acknowledged += 1;
            match vault_over(&store).get::<ApiKey>(&t, &name("k")).await {
                Ok(read) if read.expose_secret() == value => {}
                Ok(_) => lost += 1,
                Err(e) => {
                    lost += 1;
                    eprintln!("{backend}: an acknowledged write reads as {e}");
                }
            }
        }
        one.delete_tenant(&t).await.unwrap();
        assert_eq!(
            one.create_tenant(&t).await.unwrap(),
            credvault::TenantCreation::Created,
            "{backend}: no orphan row stops the tenant from being created again"
        );
        assert_eq!(
            lost, 0,
            "{backend}: {lost} of {acknowledged} acknowledged writes lost"
        );
    }
}

/// Instance B still holds a key that instance A demoted and destroyed a moment ago, with no
/// grace period at all: B's write is refused by the store, sealed again under the current
/// key, and readable by everyone; nothing is left under the destroyed key.
#[tokio::test]
async fn a_write_under_a_key_destroyed_moments_ago_is_sealed_again_under_the_current_key() {
    for (backend, store) in stores().await {
        let (one, two) = (vault_over(&store), long_lived_instance(&store));
        let t = tenant("acme");
        one.create_tenant(&t).await.unwrap();
        let mut lost = 0;
        for round in 0..ROUNDS {
            two.put(&t, &name("warm"), &ApiKey::new("warm"))
                .await
                .unwrap();
            let current = one.rotate_tenant_key(&t).await.unwrap();
            one.reencrypt_tenant(&t, &credvault::JobOptions::default())
                .await
                .unwrap();
            let destroyed = one
                .destroy_unused_keys(&t, std::time::Duration::ZERO)
                .await
                .unwrap();
            assert!(!destroyed.is_empty(), "{backend}: the old key is destroyed");
            let value = format!("v-{round}");
            two.put(&t, &name("k"), &ApiKey::new(value.clone()))
                .await
                .unwrap();
            let reader = vault_over(&store);
            match reader.get_with_metadata::<ApiKey>(&t, &name("k")).await {
                Ok((read, meta)) => {
                    assert_eq!(read.expose_secret(), value, "{backend}");
                    assert_eq!(
                        meta.dek_version, current,
                        "{backend}: sealed under the current key"
                    );
                }
                Err(e) => {
                    lost += 1;
                    eprintln!("{backend}: an acknowledged write reads as {e}");
                }
            }
            for status in one.key_status(&t).await.unwrap() {
                if status.state == credvault::storage::DekState::Destroyed {
                    assert_eq!(
                        status.secrets, 0,
                        "{backend}: a secret under a destroyed key"
                    );
                }
            }
        }
        assert_eq!(lost, 0, "{backend}: {lost} acknowledged writes lost");
    }
}

/// Lazy re-encryption on one instance re-seals a secret under the new key while another
/// instance holds its row version for a read-modify-write: the re-seal changed no value, so
/// the update still succeeds (it is not a `Conflict`), and a re-seal after the update yields
/// to it.
#[tokio::test]
async fn a_lazy_reseal_does_not_break_another_instances_read_modify_write() {
    for (backend, store) in stores().await {
        let lazy =
            credvault::Vault::builder_with_store(std::sync::Arc::clone(&store), common::ring())
                .with_reencrypt_on_read(true)
                // Sees each rotation at once, so that every read below re-seals.
                .with_active_key_ttl(std::time::Duration::ZERO)
                .build()
                .unwrap();
        let plain = vault_over(&store);
        let t = tenant("acme");
        plain.create_tenant(&t).await.unwrap();
        let n = name("counter");
        let mut conflicts = 0;
        for round in 0..ROUNDS {
            plain
                .put(&t, &n, &ApiKey::new(format!("{round}")))
                .await
                .unwrap();
            let (_, seen) = plain.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
            let newer = plain.rotate_tenant_key(&t).await.unwrap();
            // The other instance reads, and so re-seals under the new version.
            let (_, resealed) = lazy.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
            assert_eq!(
                resealed.dek_version, newer,
                "{backend}: the read re-sealed it"
            );
            match plain
                .update(&t, &n, &ApiKey::new(format!("{round}+1")), seen.row_version)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                Err(e) => panic!("{backend}: {e}"),
            }
            let read: ApiKey = lazy.get(&t, &n).await.unwrap();
            assert_eq!(read.expose_secret(), format!("{round}+1"), "{backend}");
        }
        assert_eq!(
            conflicts, 0,
            "{backend}: {conflicts} of {ROUNDS} updates failed after a re-seal"
        );
    }
}

/// An instance whose view of the active key is an hour old and that re-encrypts on read
/// never moves a secret back to the older version it still believes active.
#[tokio::test]
async fn lazy_reencryption_from_a_stale_instance_never_moves_a_secret_back() {
    for (backend, store) in stores().await {
        let stale =
            credvault::Vault::builder_with_store(std::sync::Arc::clone(&store), common::ring())
                .with_reencrypt_on_read(true)
                .with_active_key_ttl(std::time::Duration::from_hours(1))
                .build()
                .unwrap();
        let current = vault_over(&store);
        let t = tenant("acme");
        current.create_tenant(&t).await.unwrap();
        let n = name("k");
        current.put(&t, &n, &ApiKey::new("v")).await.unwrap();
        let _: ApiKey = stale.get(&t, &n).await.unwrap();
        let newer = current.rotate_tenant_key(&t).await.unwrap();
        current
            .reencrypt_tenant(&t, &credvault::JobOptions::default())
            .await
            .unwrap();
        for _ in 0..3 {
            let (read, meta) = stale.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
            assert_eq!(read.expose_secret(), "v", "{backend}");
            assert_eq!(meta.dek_version, newer, "{backend}: moved back");
        }
        let stored = store.get_secret(&t, &n).await.unwrap().unwrap();
        assert_eq!(
            stored.metadata.dek_version, newer,
            "{backend}: moved back in the store"
        );
    }
}
