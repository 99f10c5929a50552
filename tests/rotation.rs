//! Key rotation and tenant life cycle: master-key rewrap, tenant-key rotation with
//! re-encryption, minimum decryption version, destruction, compromise, and tenant deletion.
//! A secret written before, during and after each rotation reads back identically.
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
use std::time::Duration;

use common::*;
use credvault::storage::{DekState, PutMode, Store};
use credvault::{
    ApiKey, DekVersion, Error, ErrorKind, ExposeSecret, JobOptions, LocalMasterKey,
    MasterKeyProvider, MasterKeyRing, OAuthToken, SecretBytes, Vault,
};

fn key_b() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[11u8; 32]).unwrap()
}

async fn seed(
    vault: &Vault,
    tenants: &[&str],
    secrets: usize,
) -> BTreeMap<(String, String), String> {
    let mut expected = BTreeMap::new();
    for t in tenants {
        vault.create_tenant(&tenant(t)).await.unwrap();
        for i in 0..secrets {
            let value = format!("{t}-secret-{i}");
            vault
                .put(
                    &tenant(t),
                    &name(&format!("s{i}")),
                    &ApiKey::new(value.clone()),
                )
                .await
                .unwrap();
            expected.insert(((*t).to_owned(), format!("s{i}")), value);
        }
    }
    expected
}

async fn assert_all_readable(vault: &Vault, expected: &BTreeMap<(String, String), String>) {
    for ((t, n), value) in expected {
        let got: ApiKey = vault
            .get(&tenant(t), &name(n))
            .await
            .unwrap_or_else(|e| panic!("{t}/{n}: {e}"));
        assert_eq!(got.expose_secret(), value);
    }
}

#[tokio::test]
async fn get_after_master_rotation_returns_same_plaintext_and_old_key_retires() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let mut expected = seed(&vault, &["acme", "globex", "initech"], 4).await;
        let old_id = master().id().clone();
        // Operator step 1: add the new master key as active, keep the old one for unwrapping.
        vault.set_master_keys(
            MasterKeyRing::new(key_b())
                .with_decrypt_only(master())
                .unwrap(),
        );
        let new_id = key_b().id().clone();
        // A secret written during the rotation (new tenant: its key is wrapped under B).
        vault.create_tenant(&tenant("hooli")).await.unwrap();
        vault
            .put(&tenant("hooli"), &name("s0"), &ApiKey::new("hooli-0"))
            .await
            .unwrap();
        expected.insert(("hooli".into(), "s0".into()), "hooli-0".into());
        assert_eq!(
            vault.master_key_usage().await.unwrap(),
            BTreeMap::from([(old_id.clone(), 3), (new_id.clone(), 1)])
        );
        let err = vault.retire_master_key(&old_id).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InUse,
            "a key still in use cannot be retired"
        );

        let mut seen = Vec::new();
        let report = vault
            .rewrap_all(&JobOptions::default().with_batch_size(2), |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!(report.rewrapped, 3);
        assert_eq!(report.already_current, 1);
        assert!(report.failures.is_empty());
        let last = seen.last().unwrap();
        assert_eq!((last.done, last.total, last.errors), (3, 3, 0));
        assert_eq!(
            vault.master_key_usage().await.unwrap(),
            BTreeMap::from([(new_id.clone(), 4)])
        );
        // Idempotent: a second run has nothing to do.
        let again = vault
            .rewrap_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!((again.rewrapped, again.already_current), (0, 4));

        vault.retire_master_key(&old_id).await.unwrap();
        assert_eq!(vault.master_keys().ids().count(), 1);
        assert_eq!(
            vault.retire_master_key(&new_id).await.unwrap_err().kind(),
            ErrorKind::InUse
        );
        // After the rotation: written and read by a vault that only knows the new key.
        let fresh = Vault::builder_with_store(store.clone(), MasterKeyRing::new(key_b()))
            .build()
            .unwrap();
        fresh
            .put(&tenant("acme"), &name("after"), &ApiKey::new("acme-after"))
            .await
            .unwrap();
        expected.insert(("acme".into(), "after".into()), "acme-after".into());
        assert_all_readable(&fresh, &expected).await;
        assert_all_readable(&vault, &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_rewrap_jobs_both_finish_and_lose_nothing() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let expected = seed(&vault, &["a", "b", "c", "d", "e", "f", "g", "h"], 2).await;
        let ring = || {
            MasterKeyRing::new(key_b())
                .with_decrypt_only(master())
                .unwrap()
        };
        let one = Vault::builder_with_store(store.clone(), ring())
            .build()
            .unwrap();
        let two = Vault::builder_with_store(store.clone(), ring())
            .build()
            .unwrap();
        let writer = Vault::builder_with_store(store.clone(), ring())
            .build()
            .unwrap();
        let opts = JobOptions::default().with_batch_size(3);
        let (r1, r2, ()) = tokio::join!(
            one.rewrap_all(&opts, |_| {}),
            two.rewrap_all(&opts, |_| {}),
            async {
                for i in 0..20 {
                    writer
                        .put(&tenant("a"), &name(&format!("w{i}")), &ApiKey::new("w"))
                        .await
                        .unwrap();
                }
            }
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(r1.failures.is_empty() && r2.failures.is_empty());
        assert!(r1.rewrapped + r2.rewrapped >= 8);
        assert_eq!(
            one.master_key_usage().await.unwrap(),
            BTreeMap::from([(key_b().id().clone(), 8)])
        );
        let only_b = Vault::builder_with_store(store.clone(), MasterKeyRing::new(key_b()))
            .build()
            .unwrap();
        assert_all_readable(&only_b, &expected).await;
    }
}

#[tokio::test]
async fn tenant_rotation_reencryption_retirement_and_destruction() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        let mut expected = seed(&vault, &["acme", "globex"], 6).await;
        vault
            .put(
                &t,
                &name("token"),
                &OAuthToken::new("ya29.before").with_scopes(["a"]),
            )
            .await
            .unwrap();
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        assert_eq!(v2.get(), 2);
        // Written during the rotation window: goes to v2.
        vault
            .put(&t, &name("during"), &ApiKey::new("acme-during"))
            .await
            .unwrap();
        expected.insert(("acme".into(), "during".into()), "acme-during".into());
        assert_eq!(
            vault
                .metadata(&t, &name("during"))
                .await
                .unwrap()
                .dek_version,
            v2
        );
        let status = vault.key_status(&t).await.unwrap();
        assert_eq!(
            status
                .iter()
                .map(|s| (s.version.get(), s.state, s.secrets))
                .collect::<Vec<_>>(),
            [(1, DekState::DecryptOnly, 7), (2, DekState::Active, 1)]
        );
        // Too early: secrets still need v1.
        assert_eq!(
            vault
                .set_min_decryption_version(&t, v2)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InUse
        );
        assert_all_readable(&vault, &expected).await;

        let report = vault
            .reencrypt_tenant(&t, &JobOptions::default().with_batch_size(4))
            .await
            .unwrap();
        assert_eq!(
            (
                report.examined,
                report.reencrypted,
                report.skipped_concurrent_write
            ),
            (7, 7, 0)
        );
        assert!(report.failures.is_empty());
        let again = vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        assert_eq!(again.examined, 0, "idempotent");
        // Written after the re-encryption: under v2, readable like everything else.
        vault
            .put(&t, &name("after"), &ApiKey::new("acme-after"))
            .await
            .unwrap();
        expected.insert(("acme".into(), "after".into()), "acme-after".into());
        let token: OAuthToken = vault.get(&t, &name("token")).await.unwrap();
        assert_eq!(token.access_token().expose_secret(), "ya29.before");
        assert_eq!(token.scopes(), ["a"]);
        assert_all_readable(&vault, &expected).await;

        assert_eq!(
            raw_secret(&store, &t, &name("s0"))
                .await
                .metadata
                .dek_version,
            v2
        );
        assert_eq!(
            vault.set_min_decryption_version(&t, v2).await.unwrap(),
            [DekVersion::FIRST]
        );
        assert!(
            vault
                .destroy_unused_keys(&t, Duration::from_hours(1))
                .await
                .unwrap()
                .is_empty(),
            "grace period holds"
        );
        assert_eq!(
            vault.destroy_unused_keys(&t, Duration::ZERO).await.unwrap(),
            [DekVersion::FIRST]
        );
        let v1 = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        assert_eq!(v1.state, DekState::Destroyed);
        assert!(
            v1.wrapped.as_bytes().is_empty(),
            "the wrapped key bytes are erased"
        );
        assert_all_readable(&vault_over(&store), &expected).await;
        // The other tenant was never touched.
        assert_eq!(store.list_deks(&tenant("globex")).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn reading_under_retired_or_destroyed_versions_is_a_distinct_error() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &name("old"), &ApiKey::new("old"))
            .await
            .unwrap();
        let old_row = raw_secret(&store, &t, &name("old")).await;
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        vault.set_min_decryption_version(&t, v2).await.unwrap();
        // Restore the pre-rotation row, as from a backup.
        overwrite_secret(&store, old_row.clone()).await;
        let err = vault_over(&store)
            .get::<ApiKey>(&t, &name("old"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::KeyRetired { version } if version == DekVersion::FIRST),
            "{err:?}"
        );
        vault.delete(&t, &name("old")).await.unwrap();
        vault.destroy_unused_keys(&t, Duration::ZERO).await.unwrap();
        overwrite_secret(&store, old_row).await;
        let err = vault_over(&store)
            .get::<ApiKey>(&t, &name("old"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::KeyDestroyed { version } if version == DekVersion::FIRST),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn compromised_active_key_is_rotated_away_then_destroyed() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let expected = seed(&vault, &["acme"], 5).await;
        let t = tenant("acme");
        vault.mark_compromised(&t, DekVersion::FIRST).await.unwrap();
        let status = vault.key_status(&t).await.unwrap();
        assert_eq!(status[0].state, DekState::Compromised);
        assert_eq!(
            (status[1].version.get(), status[1].state),
            (2, DekState::Active)
        );
        vault
            .put(&t, &name("new"), &ApiKey::new("n"))
            .await
            .unwrap();
        assert_eq!(
            vault
                .metadata(&t, &name("new"))
                .await
                .unwrap()
                .dek_version
                .get(),
            2,
            "never encrypts under a compromised key"
        );
        assert_all_readable(&vault, &expected).await;
        vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        assert_eq!(
            vault.destroy_unused_keys(&t, Duration::ZERO).await.unwrap(),
            [DekVersion::FIRST]
        );
        assert_all_readable(&vault_over(&store), &expected).await;
    }
}

#[tokio::test]
async fn reencryption_yields_to_a_concurrent_user_write() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        seed(&vault, &["acme"], 3).await;
        let stale = raw_secret(&store, &t, &name("s1")).await;
        vault.rotate_tenant_key(&t).await.unwrap();
        // Simulate the race: the sweep read `stale`, then a user wrote, then the sweep writes.
        vault
            .put(&t, &name("s1"), &ApiKey::new("user-wins"))
            .await
            .unwrap();
        let mut resealed = stale.clone();
        resealed.metadata.dek_version = DekVersion::new(2).unwrap();
        let results = store
            .put_secrets(vec![(
                resealed,
                PutMode::Update(stale.metadata.row_version),
                credvault::storage::KeyCondition::Unchecked,
            )])
            .await
            .unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            ErrorKind::Conflict,
            "the sweep's write must lose"
        );
        let report = vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        assert_eq!(report.reencrypted, 2);
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("s1"))
                .await
                .unwrap()
                .expose_secret(),
            "user-wins"
        );
    }
}

#[tokio::test]
async fn lazy_reencryption_on_read_moves_secrets_to_the_active_version() {
    for (_, store) in stores().await {
        let vault = Vault::builder_with_store(store.clone(), ring())
            .with_reencrypt_on_read(true)
            .build()
            .unwrap();
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &name("k"), &SecretBytes::from_slice(b"lazy"))
            .await
            .unwrap();
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        let (value, meta) = vault
            .get_with_metadata::<SecretBytes>(&t, &name("k"))
            .await
            .unwrap();
        assert_eq!(value.expose_secret(), b"lazy");
        assert_eq!(meta.dek_version, v2);
        assert_eq!(
            vault.metadata(&t, &name("k")).await.unwrap(),
            meta,
            "the returned metadata is what is stored"
        );
    }
}

#[tokio::test]
async fn keys_older_than_the_maximum_age_are_rolled() {
    let store: Arc<dyn Store> = Arc::new(credvault::MemoryStore::new());
    let vault = Vault::builder_with_store(store.clone(), ring())
        .with_max_key_age(Duration::from_millis(30))
        .with_reservation_block(2)
        .build()
        .unwrap();
    let t = tenant("acme");
    vault.create_tenant(&t).await.unwrap();
    vault.put(&t, &name("a"), &ApiKey::new("a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    for i in 0..3 {
        vault
            .put(&t, &name(&format!("b{i}")), &ApiKey::new("b"))
            .await
            .unwrap();
    }
    assert_eq!(
        vault
            .metadata(&t, &name("b2"))
            .await
            .unwrap()
            .dek_version
            .get(),
        2
    );
    assert_eq!(
        vault
            .get::<ApiKey>(&t, &name("a"))
            .await
            .unwrap()
            .expose_secret(),
        "a"
    );
}

#[tokio::test]
async fn delete_tenant_shreds_keys_then_rows_and_backups_stay_unreadable() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let expected = seed(&vault, &["acme", "globex"], 5).await;
        let t = tenant("acme");
        vault.rotate_tenant_key(&t).await.unwrap();
        vault.put(&t, &name("v2"), &ApiKey::new("x")).await.unwrap();
        let backup: Vec<_> = {
            let mut rows = Vec::new();
            for m in store.list_secrets(&t, None, 100).await.unwrap() {
                rows.push(raw_secret(&store, &t, &m.name).await);
            }
            rows
        };
        let receipt = vault.delete_tenant(&t).await.unwrap();
        assert_eq!(receipt.tenant, t);
        assert_eq!(
            receipt.dek_versions_destroyed,
            [DekVersion::FIRST, DekVersion::new(2).unwrap()]
        );
        assert_eq!(receipt.secrets_deleted, 6);
        assert_eq!(receipt.dek_records_removed, 2);
        assert!(store.list_deks(&t).await.unwrap().is_empty());
        assert!(store.list_secrets(&t, None, 10).await.unwrap().is_empty());
        assert!(!vault.list_tenants(None, 10).await.unwrap().contains(&t));
        // The vault's own caches are purged: a read fails at once.
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("s0"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        // A backup of the rows, restored, cannot be opened with the master key.
        for row in backup {
            overwrite_secret(&store, row.clone()).await;
            let err = vault_over(&store)
                .get::<ApiKey>(&t, &row.metadata.name)
                .await
                .unwrap_err();
            assert!(matches!(err.kind(), ErrorKind::KeyMissing), "{err:?}");
        }
        // Idempotent, and the other tenant is untouched.
        let again = vault.delete_tenant(&t).await.unwrap();
        assert_eq!(
            again.secrets_deleted, 6,
            "the restored backup rows are removed too"
        );
        let others: BTreeMap<_, _> = expected
            .into_iter()
            .filter(|((t, _), _)| t == "globex")
            .collect();
        assert_all_readable(&vault_over(&store), &others).await;
    }
}

#[tokio::test]
async fn reencrypt_all_batches_across_tenants_and_reports_progress() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let expected = seed(&vault, &["a", "b", "c", "d", "e"], 7).await;
        for t in ["a", "c", "e"] {
            vault.rotate_tenant_key(&tenant(t)).await.unwrap();
        }
        let mut seen = Vec::new();
        let report = vault
            .reencrypt_all(&JobOptions::default().with_batch_size(4), |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!((report.examined, report.reencrypted), (21, 21));
        assert!(report.failures.is_empty());
        let last = seen.last().unwrap();
        assert_eq!((last.done, last.total, last.errors), (21, 21, 0));
        assert!(
            seen.len() >= 3,
            "progress after every round of about 4 rows"
        );
        for t in ["a", "c", "e"] {
            let status = vault.key_status(&tenant(t)).await.unwrap();
            assert_eq!(status[0].secrets, 0);
            assert_eq!(status[1].secrets, 7);
        }
        assert_all_readable(&vault_over(&store), &expected).await;
        assert_eq!(
            vault
                .reencrypt_all(&JobOptions::default(), |_| {})
                .await
                .unwrap()
                .examined,
            0
        );
    }
}

#[tokio::test]
async fn create_tenant_refuses_to_mint_over_secrets_whose_keys_are_missing() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        vault.put(&t, &name("k"), &ApiKey::new("v")).await.unwrap();
        // The key rows are lost (a manual delete, an eviction, a partial restore).
        for r in store.list_deks(&t).await.unwrap() {
            store.delete_dek(&t, r.version, None).await.unwrap();
        }
        let err = vault_over(&store).create_tenant(&t).await.unwrap_err();
        assert!(
            matches!(err, Error::KeyMissing { version } if version == DekVersion::FIRST),
            "{err:?}"
        );
        assert!(
            store.list_deks(&t).await.unwrap().is_empty(),
            "no key was minted"
        );
    }
}

#[tokio::test]
async fn a_recreated_tenant_is_never_sealed_or_read_with_its_destroyed_key() {
    for (_, store) in stores().await {
        let fast = |store: &Arc<dyn Store>| {
            Vault::builder_with_store(store.clone(), ring())
                .with_active_key_ttl(Duration::from_millis(20))
                .build()
                .unwrap()
        };
        let (a, b) = (fast(&store), fast(&store));
        let t = tenant("acme");
        a.create_tenant(&t).await.unwrap();
        b.put(&t, &name("before"), &ApiKey::new("old"))
            .await
            .unwrap(); // b caches key v1
        a.delete_tenant(&t).await.unwrap();
        a.create_tenant(&t).await.unwrap(); // a new, different v1
        a.put(&t, &name("from-a"), &ApiKey::new("new-a"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // b still caches the destroyed v1: it must notice, for writes and for reads.
        b.put(&t, &name("from-b"), &ApiKey::new("new-b"))
            .await
            .unwrap();
        assert_eq!(
            vault_over(&store)
                .get::<ApiKey>(&t, &name("from-b"))
                .await
                .unwrap()
                .expose_secret(),
            "new-b"
        );
        assert_eq!(
            b.get::<ApiKey>(&t, &name("from-a"))
                .await
                .unwrap()
                .expose_secret(),
            "new-a"
        );
    }
}

#[tokio::test]
async fn retiring_a_version_takes_effect_at_once_in_this_process() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &name("old"), &ApiKey::new("old"))
            .await
            .unwrap();
        let old_row = raw_secret(&store, &t, &name("old")).await;
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        vault.set_min_decryption_version(&t, v2).await.unwrap();
        overwrite_secret(&store, old_row).await;
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("old"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::KeyRetired
        );
    }
}

/// A secret restored (from a backup, say) under a data key that was destroyed since is not
/// re-encrypted: `reencrypt_all` reports it as a `KeyDestroyed` failure, distinct from a
/// missing key, and moves every other secret.
#[tokio::test]
async fn reencrypt_all_reports_a_secret_under_a_destroyed_key_as_destroyed() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("restored");
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &name("old"), &ApiKey::new("sk_old"))
            .await
            .unwrap();
        vault
            .put(&t, &name("kept"), &ApiKey::new("sk_kept"))
            .await
            .unwrap();
        let backup = store.get_secret(&t, &name("old")).await.unwrap().unwrap();
        vault.rotate_tenant_key(&t).await.unwrap();
        vault
            .reencrypt_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        let destroyed = vault.destroy_unused_keys(&t, Duration::ZERO).await.unwrap();
        assert_eq!(destroyed, [DekVersion::FIRST]);
        store
            .put_secret(
                backup,
                PutMode::Upsert,
                credvault::storage::KeyCondition::Unchecked,
            )
            .await
            .unwrap();
        vault.rotate_tenant_key(&t).await.unwrap();
        let report = vault
            .reencrypt_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(report.reencrypted, 1, "the secret under v2 moves to v3");
        assert_eq!(report.failures.len(), 1);
        let failure = &report.failures[0];
        assert_eq!(failure.name.as_ref(), Some(&name("old")));
        assert_eq!(failure.kind, ErrorKind::KeyDestroyed);
        let kept: ApiKey = vault.get(&t, &name("kept")).await.unwrap();
        assert_eq!(kept.expose_secret(), "sk_kept");
    }
}

/// Several secrets restored under the same destroyed key are each reported as
/// `KeyDestroyed` (the sweep reads the destroyed record once per chunk and answers the
/// rest from that read).
#[tokio::test]
async fn reencrypt_all_reports_every_secret_under_a_destroyed_key() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("restored-many");
        vault.create_tenant(&t).await.unwrap();
        let names: Vec<_> = (0..5).map(|i| name(&format!("old-{i}"))).collect();
        for n in &names {
            vault.put(&t, n, &ApiKey::new("sk_old")).await.unwrap();
        }
        let mut backups = Vec::new();
        for n in &names {
            backups.push(store.get_secret(&t, n).await.unwrap().unwrap());
        }
        vault.rotate_tenant_key(&t).await.unwrap();
        vault
            .reencrypt_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        vault.destroy_unused_keys(&t, Duration::ZERO).await.unwrap();
        for row in backups {
            store
                .put_secret(
                    row,
                    PutMode::Upsert,
                    credvault::storage::KeyCondition::Unchecked,
                )
                .await
                .unwrap();
        }
        let report = vault
            .reencrypt_all(&JobOptions::default(), |_| {})
            .await
            .unwrap();
        let failed: Vec<_> = report
            .failures
            .iter()
            .map(|f| (f.name.clone(), f.kind))
            .collect();
        let expected: Vec<_> = names
            .iter()
            .map(|n| (Some(n.clone()), ErrorKind::KeyDestroyed))
            .collect();
        assert_eq!(failed, expected);
        assert_eq!(report.reencrypted, 0);
    }
}

/// `reencrypt_all` reserves its encryptions in batches (several rounds, several tenants at
/// once); every encryption it makes is still counted against the key it uses, including
/// for a tenant whose secrets span several rounds, on a runtime where its stages run as
/// tasks of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_all_counts_every_encryption_against_the_key_it_uses() {
    for (backend, store) in stores().await {
        let vault = vault_over(&store);
        let mut expected = seed(&vault, &["big"], 11).await;
        expected.extend(seed(&vault, &["a", "b", "c"], 3).await);
        expected.extend(seed(&vault, &["d"], 2).await);
        for t in ["big", "a", "b", "c", "d"] {
            vault.rotate_tenant_key(&tenant(t)).await.unwrap();
        }
        let report = vault
            .reencrypt_all(&JobOptions::default().with_batch_size(4), |_| {})
            .await
            .unwrap();
        assert_eq!(report.reencrypted, 22, "{backend}");
        for t in ["big", "a", "b", "c", "d"] {
            let mut used: BTreeMap<DekVersion, u64> = BTreeMap::new();
            for m in store.list_secrets(&tenant(t), None, 100).await.unwrap() {
                *used.entry(m.dek_version).or_default() += 1;
            }
            for dek in store.list_deks(&tenant(t)).await.unwrap() {
                let n = used.get(&dek.version).copied().unwrap_or(0);
                assert!(
                    n <= dek.encryptions_reserved,
                    "{backend}: {t} v{} sealed {n} secrets with {} reserved",
                    dek.version,
                    dek.encryptions_reserved
                );
            }
        }
        assert_all_readable(&vault, &expected).await;
    }
}

/// The jobs run their stages as tasks only inside a tokio runtime; under another executor
/// (here the smallest one: poll, park, wake) they run in the caller's task and finish.
#[test]
fn rotation_jobs_finish_without_a_tokio_runtime() {
    fn block_on<F: Future>(fut: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }
    block_on(async {
        let store: Arc<dyn Store> = Arc::new(credvault::MemoryStore::new());
        let vault = vault_over(&store);
        let expected = seed(&vault, &["a", "b"], 5).await;
        for t in ["a", "b"] {
            vault.rotate_tenant_key(&tenant(t)).await.unwrap();
        }
        let report = vault
            .reencrypt_all(&JobOptions::default().with_batch_size(3), |_| {})
            .await
            .unwrap();
        assert_eq!(report.reencrypted, 10);
        let ring = MasterKeyRing::new(key_b())
            .with_decrypt_only(master())
            .unwrap();
        let moved = Vault::builder_with_store(Arc::clone(&store), ring)
            .build()
            .unwrap();
        let rewrapped = moved
            .rewrap_all(&JobOptions::default().with_batch_size(1), |_| {})
            .await
            .unwrap();
        assert_eq!(rewrapped.rewrapped, 4);
        assert_all_readable(&moved, &expected).await;
    });
}
