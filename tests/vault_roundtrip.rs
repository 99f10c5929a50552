//! Every kind of secret round-trips through the vault on every backend, and the vault's
//! read/write/list/delete operations follow their documentation.
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

use std::time::{Duration, UNIX_EPOCH};

use common::*;
use credvault::{
    ApiKey, ErrorKind, ExposeSecret, OAuthToken, SecretBytes, SecretKind, Suite, TenantCreation,
    Vault,
};

#[tokio::test]
async fn every_kind_round_trips_on_every_backend_and_suite() {
    for (backend, store) in stores().await {
        for suite in [Suite::Aes256Gcm, Suite::XChaCha20Poly1305] {
            let vault = Vault::builder_with_store(store.clone(), ring())
                .with_suite(suite)
                .build()
                .unwrap();
            let t = tenant(&format!("acme-{}", suite.as_u8()));
            assert_eq!(
                vault.create_tenant(&t).await.unwrap(),
                TenantCreation::Created
            );

            vault
                .put(&t, &name("github"), &ApiKey::new("ghp_0123456789"))
                .await
                .unwrap();
            let expiry = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
            let token = OAuthToken::new("ya29.access")
                .with_refresh_token("1//refresh")
                .with_token_type("DPoP")
                .with_expires_at(expiry)
                .with_scopes(["repo", "read:user", ""]);
            vault.put(&t, &name("google"), &token).await.unwrap();
            let blob: Vec<u8> = (0..=255).collect();
            vault
                .put(&t, &name("cert.pem"), &SecretBytes::from_slice(&blob))
                .await
                .unwrap();
            vault
                .put(&t, &name("empty"), &SecretBytes::from_slice(&[]))
                .await
                .unwrap();
            let bare = OAuthToken::new("only-access");
            vault.put(&t, &name("bare"), &bare).await.unwrap();

            let key: ApiKey = vault.get(&t, &name("github")).await.unwrap();
            assert_eq!(key.expose_secret(), "ghp_0123456789", "{backend}/{suite}");
            let got: OAuthToken = vault.get(&t, &name("google")).await.unwrap();
            assert_eq!(got.access_token().expose_secret(), "ya29.access");
            assert_eq!(got.refresh_token().unwrap().expose_secret(), "1//refresh");
            assert_eq!(got.token_type(), "DPoP");
            assert_eq!(got.expires_at(), Some(expiry));
            assert_eq!(got.scopes(), ["repo", "read:user", ""]);
            let bytes: SecretBytes = vault.get(&t, &name("cert.pem")).await.unwrap();
            assert_eq!(bytes.expose_secret(), &blob[..]);
            let empty: SecretBytes = vault.get(&t, &name("empty")).await.unwrap();
            assert!(empty.expose_secret().is_empty());
            let bare: OAuthToken = vault.get(&t, &name("bare")).await.unwrap();
            assert!(
                bare.refresh_token().is_none()
                    && bare.expires_at().is_none()
                    && bare.scopes().is_empty()
            );
            assert_eq!(bare.token_type(), "Bearer");
        }
    }
}

#[tokio::test]
async fn put_replaces_and_create_and_update_are_conditional() {
    for (backend, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        let n = name("stripe/live");
        let v1 = vault.create(&t, &n, &ApiKey::new("one")).await.unwrap();
        assert_eq!(
            vault
                .create(&t, &n, &ApiKey::new("two"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        let v2 = vault.put(&t, &n, &ApiKey::new("three")).await.unwrap();
        assert_ne!(v2, v1, "{backend}: a write changes the row version");
        assert_eq!(
            vault
                .update(&t, &n, &ApiKey::new("stale"), v1)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
        let (current, meta) = vault.get_with_metadata::<ApiKey>(&t, &n).await.unwrap();
        assert_eq!(current.expose_secret(), "three");
        assert_eq!(meta.row_version, v2);
        let v3 = vault
            .update(&t, &n, &ApiKey::new("four"), meta.row_version)
            .await
            .unwrap();
        assert_eq!(vault.metadata(&t, &n).await.unwrap().row_version, v3);
        assert_eq!(
            vault.get::<ApiKey>(&t, &n).await.unwrap().expose_secret(),
            "four"
        );
        assert_eq!(
            vault
                .update(&t, &name("absent"), &ApiKey::new("x"), v1)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
    }
}

#[tokio::test]
async fn list_returns_metadata_pages_and_delete_removes() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        let other = tenant("globex");
        vault.create_tenant(&t).await.unwrap();
        vault.create_tenant(&other).await.unwrap();
        for i in 0..25 {
            vault
                .put(
                    &t,
                    &name(&format!("key-{i:02}")),
                    &ApiKey::new(format!("v{i}")),
                )
                .await
                .unwrap();
        }
        vault
            .put(&other, &name("key-00"), &SecretBytes::from_slice(b"x"))
            .await
            .unwrap();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = vault.list(&t, after.as_ref(), 10).await.unwrap();
            all.extend(page.iter().map(|m| m.name.as_str().to_owned()));
            if page.len() < 10 {
                break;
            }
            after = page.last().map(|m| m.name.clone());
        }
        let expected: Vec<String> = (0..25).map(|i| format!("key-{i:02}")).collect();
        assert_eq!(all, expected);
        let meta = vault.metadata(&t, &name("key-03")).await.unwrap();
        assert_eq!(meta.kind, SecretKind::ApiKey);
        assert_eq!(meta.dek_version.get(), 1);
        assert!(vault.delete(&t, &name("key-03")).await.unwrap());
        assert!(!vault.delete(&t, &name("key-03")).await.unwrap());
        assert_eq!(
            vault
                .get::<ApiKey>(&t, &name("key-03"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(vault.list(&t, None, 100).await.unwrap().len(), 24);
        assert_eq!(
            vault.list_tenants(None, 10).await.unwrap(),
            [t.clone(), other.clone()]
        );
    }
}

#[tokio::test]
async fn create_tenant_is_idempotent_and_put_needs_a_tenant() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        assert_eq!(
            vault
                .put(&t, &name("k"), &ApiKey::new("x"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::TenantNotFound
        );
        assert_eq!(
            vault.create_tenant(&t).await.unwrap(),
            TenantCreation::Created
        );
        assert_eq!(
            vault.create_tenant(&t).await.unwrap(),
            TenantCreation::AlreadyExisted
        );
        assert_eq!(store.list_deks(&t).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn racing_tenant_creation_across_instances_ends_with_one_dek_v1() {
    for (_, store) in stores().await {
        let t = tenant("racy");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            // A separate vault per task: separate caches, as separate processes would have.
            let vault = vault_over(&store);
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                vault.create_tenant(&t).await.unwrap()
            }));
        }
        let mut created = 0;
        for task in tasks {
            if task.await.unwrap() == TenantCreation::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        let deks = store.list_deks(&t).await.unwrap();
        assert_eq!(deks.len(), 1);
        assert_eq!(deks[0].version.get(), 1);
        // Every instance can use the one key.
        let a = vault_over(&store);
        let b = vault_over(&store);
        a.put(&t, &name("k"), &ApiKey::new("shared")).await.unwrap();
        assert_eq!(
            b.get::<ApiKey>(&t, &name("k"))
                .await
                .unwrap()
                .expose_secret(),
            "shared"
        );
    }
}

#[test]
fn vault_is_cheap_to_clone_and_shareable_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn error_is_std<E: std::error::Error + Send + Sync + 'static>() {}
    shareable::<Vault>();
    shareable::<credvault::MasterKeyRing>();
    error_is_std::<credvault::Error>();
    assert!(
        size_of::<Vault>() <= size_of::<usize>(),
        "a Vault is one Arc"
    );
}

#[test]
fn stored_timestamps_convert_without_panicking() {
    use credvault::storage::Timestamp;
    assert_eq!(
        Timestamp::from_millis(1_500).to_system_time(),
        Some(UNIX_EPOCH + Duration::from_millis(1_500))
    );
    let _ = Timestamp::from_millis(i64::MIN).to_system_time();
    let _ = Timestamp::from_millis(i64::MAX).to_system_time();
    assert!(Timestamp::now() > Timestamp::from_millis(1_700_000_000_000));
}
