//! A store writer cannot revive a key: whatever state a row claims, only the tenant's newest
//! data-key version seals, the usage limit comes from the suite the key was unwrapped for,
//! and marking a retired version compromised keeps it unreadable. On every backend.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]

mod common;

use common::{name, overwrite_dek, overwrite_secret, raw_secret, stores, tenant, vault_over};
use credvault::storage::DekState;
use credvault::{ApiKey, DekVersion, ErrorKind, JobOptions};

/// The old key of a rotated tenant is marked active again in the store, and the new one
/// decrypt-only: no instance seals under the old key; the tenant moves on to a new version.
#[tokio::test]
async fn an_old_key_marked_active_again_in_the_store_never_seals() {
    for (backend, store) in stores().await {
        let t = tenant("acme");
        let admin = vault_over(&store);
        admin.create_tenant(&t).await.unwrap();
        let v2 = admin.rotate_tenant_key(&t).await.unwrap();
        let mut old = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        old.state = DekState::Active;
        overwrite_dek(&store, old).await;
        let mut new = store.get_dek(&t, v2).await.unwrap().unwrap();
        new.state = DekState::DecryptOnly;
        overwrite_dek(&store, new).await;
        let (mut attempts, mut under_old) = (0, 0);
        for i in 0..10 {
            // A fresh instance each time: nothing it knows comes from before the edit.
            let vault = vault_over(&store);
            let n = name(&format!("s{i}"));
            vault.put(&t, &n, &ApiKey::new("x")).await.unwrap();
            attempts += 1;
            let (_, meta) = vault.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
            if meta.dek_version <= v2 {
                under_old += 1;
            }
        }
        assert_eq!(
            under_old, 0,
            "{backend}: {under_old} of {attempts} writes sealed under a non-current key"
        );
        let newest = admin
            .key_status(&t)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.version)
            .max()
            .unwrap();
        assert!(
            newest > v2,
            "{backend}: a new version above the edited ones"
        );
    }
}

/// The suite column of an AES-256-GCM key row is edited to XChaCha20-Poly1305 (whose limit
/// is 2^48, not 2^30) on a key whose reservations reached the AES limit: the key is not
/// used past its own limit, by the instance that has it cached or by a fresh one.
#[tokio::test]
async fn editing_the_suite_column_does_not_lift_a_keys_usage_limit() {
    for (backend, store) in stores().await {
        let t = tenant("acme");
        // One encryption per reservation, so that every write asks the store for its count
        // (a block reserved before the edit was granted within the limit, and is spent).
        let cached =
            credvault::Vault::builder_with_store(std::sync::Arc::clone(&store), common::ring())
                .with_reservation_block(1)
                .build()
                .unwrap();
        cached.create_tenant(&t).await.unwrap();
        cached
            .put(&t, &name("warm"), &ApiKey::new("w"))
            .await
            .unwrap();
        let mut row = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        assert_eq!(row.suite, credvault::Suite::Aes256Gcm);
        row.suite = credvault::Suite::XChaCha20Poly1305;
        row.encryptions_reserved = credvault::limits::DEFAULT_MAX_ENCRYPTIONS_AES;
        overwrite_dek(&store, row).await;
        for (who, vault) in [("cached", &cached), ("fresh", &vault_over(&store))] {
            let n = name(&format!("after-{who}"));
            match vault.put(&t, &n, &ApiKey::new("x")).await {
                Ok(_) => {
                    let (_, meta) = vault.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
                    assert!(
                        meta.dek_version > DekVersion::FIRST,
                        "{backend}/{who}: sealed under the exhausted key"
                    );
                }
                // The edited row no longer unwraps (the suite is bound into its wrap
                // context): refusing is as good as rolling.
                Err(e) => assert_eq!(e.kind(), ErrorKind::Decryption, "{backend}/{who}: {e}"),
            }
        }
    }
}

/// A retired version marked compromised stays retired: a row restored under it still reads
/// as `KeyRetired`, never opens.
#[tokio::test]
async fn marking_a_retired_version_compromised_does_not_make_it_readable() {
    for (backend, store) in stores().await {
        let t = tenant("acme");
        let vault = vault_over(&store);
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &name("old"), &ApiKey::new("old"))
            .await
            .unwrap();
        let backup = raw_secret(&store, &t, &name("old")).await;
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        vault
            .reencrypt_tenant(&t, &JobOptions::default())
            .await
            .unwrap();
        vault.set_min_decryption_version(&t, v2).await.unwrap();
        vault.mark_compromised(&t, DekVersion::FIRST).await.unwrap();
        let state = store
            .get_dek(&t, DekVersion::FIRST)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, DekState::Retired, "{backend}");
        overwrite_secret(&store, backup).await;
        let err = vault_over(&store)
            .get::<ApiKey>(&t, &name("old"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRetired, "{backend}: {err}");
    }
}

/// Two versions left active by an interrupted rotation: raising the minimum decryption
/// version retires the lower one too.
#[tokio::test]
async fn the_minimum_decryption_version_retires_a_leftover_active_version() {
    for (backend, store) in stores().await {
        let t = tenant("acme");
        let vault = vault_over(&store);
        vault.create_tenant(&t).await.unwrap();
        let v2 = vault.rotate_tenant_key(&t).await.unwrap();
        let mut old = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
        old.state = DekState::Active;
        overwrite_dek(&store, old).await;
        let retired = vault.set_min_decryption_version(&t, v2).await.unwrap();
        assert_eq!(retired, vec![DekVersion::FIRST], "{backend}");
        let state = store
            .get_dek(&t, DekVersion::FIRST)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, DekState::Retired, "{backend}");
    }
}
