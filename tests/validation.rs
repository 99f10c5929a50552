//! Bad input is rejected before anything is written: bad identifiers, oversize secrets,
//! OAuth fields over their limits, and bad configuration.
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

use common::*;
use credvault::limits::{DEFAULT_MAX_SECRET_SIZE, MAX_SECRET_SIZE_LIMIT};
use credvault::{ApiKey, ErrorKind, OAuthToken, SecretBytes, SecretName, TenantId, Vault};

#[test]
fn bad_identifiers_are_rejected_with_invalid_input() {
    for bad in [
        "",
        " ",
        "a b",
        "a*",
        "a?",
        "a[0]",
        ".hidden",
        "tab\t",
        "nul\0",
        "ünï",
        "quote\"",
        "semi;colon",
    ] {
        assert_eq!(
            TenantId::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
        assert_eq!(
            SecretName::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert!(TenantId::new("t".repeat(TenantId::MAX_LEN + 1)).is_err());
    assert!(SecretName::new("n".repeat(SecretName::MAX_LEN + 1)).is_err());
    assert!(TenantId::new("t".repeat(TenantId::MAX_LEN)).is_ok());
    assert!(SecretName::new("n".repeat(SecretName::MAX_LEN)).is_ok());
    assert!("acme".parse::<TenantId>().is_ok());
}

#[tokio::test]
async fn oversize_secret_is_rejected_and_nothing_is_written() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        let dek_before = store.list_deks(&t).await.unwrap();
        // The limit counts the encoded plaintext, which has one version byte.
        let fits = SecretBytes::new(vec![0; DEFAULT_MAX_SECRET_SIZE - 1]);
        vault.put(&t, &name("fits"), &fits).await.unwrap();
        let too_big = SecretBytes::new(vec![0; DEFAULT_MAX_SECRET_SIZE]);
        let err = vault.put(&t, &name("big"), &too_big).await.unwrap_err();
        assert!(
            matches!(err, credvault::Error::TooLarge { size, limit } if size == DEFAULT_MAX_SECRET_SIZE + 1 && limit == DEFAULT_MAX_SECRET_SIZE)
        );
        assert!(
            store.get_secret(&t, &name("big")).await.unwrap().is_none(),
            "nothing written"
        );
        // The durable encryption count did not move for the rejected write.
        let dek_after = store.list_deks(&t).await.unwrap();
        assert_eq!(dek_before.len(), dek_after.len());
        let small = Vault::builder_with_store(store.clone(), ring())
            .with_max_secret_size(16)
            .build()
            .unwrap();
        assert_eq!(
            small
                .put(&t, &name("k"), &ApiKey::new("x".repeat(16)))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        small
            .put(&t, &name("k"), &ApiKey::new("x".repeat(15)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn oauth_fields_over_their_limits_are_rejected_and_nothing_is_written() {
    for (_, store) in stores().await {
        let vault = vault_over(&store);
        let t = tenant("acme");
        vault.create_tenant(&t).await.unwrap();
        let cases = [
            OAuthToken::new("a").with_token_type("x".repeat(OAuthToken::MAX_TOKEN_TYPE_LEN + 1)),
            OAuthToken::new("a").with_scopes(vec!["s"; OAuthToken::MAX_SCOPES + 1]),
            OAuthToken::new("a").with_scopes(["s".repeat(OAuthToken::MAX_SCOPE_LEN + 1)]),
        ];
        for (i, token) in cases.iter().enumerate() {
            let n = name(&format!("t{i}"));
            assert_eq!(
                vault.put(&t, &n, token).await.unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            assert!(store.get_secret(&t, &n).await.unwrap().is_none());
        }
    }
}

#[test]
fn bad_configuration_is_refused() {
    let build = |b: credvault::VaultBuilder| b.build().unwrap_err().kind();
    let store = credvault::MemoryStore::new;
    assert_eq!(
        build(Vault::builder(store(), ring()).with_max_secret_size(0)),
        ErrorKind::Config
    );
    assert_eq!(
        build(Vault::builder(store(), ring()).with_max_secret_size(MAX_SECRET_SIZE_LIMIT + 1)),
        ErrorKind::Config
    );
    assert_eq!(
        build(Vault::builder(store(), ring()).with_reservation_block(0)),
        ErrorKind::Config
    );
    assert_eq!(
        build(Vault::builder(store(), ring()).with_max_encryptions_per_key(0)),
        ErrorKind::Config
    );
    assert_eq!(
        build(Vault::builder(store(), ring()).with_dek_cache(0, std::time::Duration::from_secs(1))),
        ErrorKind::Config
    );
    let dup = credvault::MasterKeyRing::new(master()).with_decrypt_only(master());
    assert_eq!(dup.unwrap_err().kind(), ErrorKind::Config);
}

#[test]
fn master_keys_load_from_base64_env_and_file_with_stable_ids() {
    use credvault::{ExposeSecret, LocalMasterKey, MasterKeyProvider};
    let key = LocalMasterKey::generate().unwrap();
    let text = key.export_base64().expose_secret().to_owned();
    let again = LocalMasterKey::from_base64(&format!("  {text}\n")).unwrap();
    assert_eq!(key.id(), again.id(), "the derived id is stable");
    assert!(key.id().as_str().starts_with("local-"));
    assert_ne!(key.id(), master().id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(LocalMasterKey::from_file(&path).unwrap().id(), key.id());
    assert_eq!(
        LocalMasterKey::from_file(dir.path().join("absent"))
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
    // An unset variable is a configuration error (the set case runs in `from_env_reads_the_variable`).
    assert_eq!(
        LocalMasterKey::from_env("CREDVAULT_TEST_SURELY_UNSET_VAR")
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
    assert_eq!(
        LocalMasterKey::from_base64("c2hvcnQ=").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        LocalMasterKey::from_bytes(&[0; 31]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let named = LocalMasterKey::from_base64(&text)
        .unwrap()
        .with_id(credvault::MasterKeyId::new("kek-2026").unwrap());
    assert_eq!(named.id().as_str(), "kek-2026");
}

/// Runs itself as a child process with the variable set: `std::env::set_var` is `unsafe`
/// in edition 2024 and this crate forbids unsafe code, tests included.
#[test]
fn from_env_reads_the_variable() {
    use credvault::{ExposeSecret, LocalMasterKey, MasterKeyProvider};
    const VAR: &str = "CREDVAULT_TEST_FROM_ENV_KEK";
    if let Ok(expected_id) = std::env::var("CREDVAULT_TEST_FROM_ENV_EXPECTED_ID") {
        assert_eq!(
            LocalMasterKey::from_env(VAR).unwrap().id().as_str(),
            expected_id
        );
        return;
    }
    let key = LocalMasterKey::generate().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "from_env_reads_the_variable", "--quiet"])
        .env(VAR, key.export_base64().expose_secret())
        .env("CREDVAULT_TEST_FROM_ENV_EXPECTED_ID", key.id().as_str())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "the child process could not load the key from the environment"
    );
    assert!(stdout.contains("1 passed"), "the child ran the check");
}
