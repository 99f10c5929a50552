//! Authentication failures are one opaque error: wrong master key, wrong data key, wrong
//! tenant, wrong name, a flipped tag, ciphertext or nonce, a header edited so that it still
//! parses (kind or DEK version relabelled), a wrapped key moved from another tenant or
//! relabelled to another suite all end with the same `ErrorKind`, the same `Display` text,
//! the same `Debug` text and no `source()`. Nothing tells an attacker which check failed.
//!
//! The decision on header corruption (also in SECURITY.md): bytes that make the envelope or
//! wrapped key fail to *parse* (bad magic, an unknown version or suite, a length past the
//! end) keep their distinct format errors, and a header naming a data-key version the
//! store lacks is `KeyMissing`. These are decided from the stored bytes alone, before any
//! key is used, so they tell whoever wrote those bytes nothing they did not know, and
//! operators need them to tell corruption from an attack on authenticity. Everything that
//! parses and reaches an AEAD (or the suite check just before it) is `Error::Decryption`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::error::Error as _;
use std::sync::Arc;

use common::*;
use credvault::keys::{DataKey, WrapContext};
use credvault::storage::{DekRecord, Store};
use credvault::{
    ApiKey, DekVersion, Error, ErrorKind, LocalMasterKey, MasterKeyProvider, SecretBytes, Suite,
    TenantId, Vault,
};

/// Tenants acme and globex, each with `github`; acme also has `gitlab`.
async fn fresh() -> Arc<dyn Store> {
    let (_, store) = stores().await.remove(0);
    let vault = vault_over(&store);
    for t in ["acme", "globex"] {
        vault.create_tenant(&tenant(t)).await.unwrap();
        vault
            .put(
                &tenant(t),
                &name("github"),
                &ApiKey::new(format!("{t}-github")),
            )
            .await
            .unwrap();
    }
    vault
        .put(
            &tenant("acme"),
            &name("gitlab"),
            &ApiKey::new("acme-gitlab"),
        )
        .await
        .unwrap();
    store
}

async fn dek_record(store: &Arc<dyn Store>, t: &str) -> DekRecord {
    store
        .get_dek(&tenant(t), DekVersion::FIRST)
        .await
        .unwrap()
        .unwrap()
}

/// Wraps `dek` with `provider` for (`t`, version 1, `suite`).
async fn wrap_for(
    provider: &LocalMasterKey,
    dek: &DataKey,
    t: &TenantId,
    suite: Suite,
) -> credvault::keys::WrappedDek {
    let id = provider.id().clone();
    let context = WrapContext {
        tenant: t,
        dek_version: DekVersion::FIRST,
        suite,
        master_key_id: &id,
    };
    provider.wrap(dek, &context).await.unwrap()
}

/// Acme's data key, unwrapped with the test master key.
async fn acme_key(store: &Arc<dyn Store>) -> DataKey {
    let record = dek_record(store, "acme").await;
    let id = master().id().clone();
    let context = WrapContext {
        tenant: &tenant("acme"),
        dek_version: DekVersion::FIRST,
        suite: record.suite,
        master_key_id: &id,
    };
    master().unwrap(&record.wrapped, &context).await.unwrap()
}

async fn read_acme_github(store: &Arc<dyn Store>) -> Error {
    // A fresh vault: no cached key, so every read unwraps what the store holds.
    vault_over(store)
        .get::<ApiKey>(&tenant("acme"), &name("github"))
        .await
        .unwrap_err()
}

async fn flip_envelope_byte(store: &Arc<dyn Store>, at: impl Fn(usize) -> usize, mask: u8) {
    let mut row = raw_secret(store, &tenant("acme"), &name("github")).await;
    let i = at(row.envelope.len());
    row.envelope[i] ^= mask;
    overwrite_secret(store, row).await;
}

/// Every way of presenting a wrong key or a tampered authenticated byte, with its error.
async fn authentication_failures() -> Vec<(&'static str, Error)> {
    let mut out = Vec::new();

    let store = fresh().await;
    let impostor = LocalMasterKey::from_bytes(&[9u8; 32])
        .unwrap()
        .with_id(master().id().clone());
    let mut record = dek_record(&store, "acme").await;
    record.wrapped = wrap_for(
        &impostor,
        &acme_key(&store).await,
        &tenant("acme"),
        record.suite,
    )
    .await;
    overwrite_dek(&store, record).await;
    out.push((
        "wrong master key (another key under the same id)",
        read_acme_github(&store).await,
    ));

    let store = fresh().await;
    let mut record = dek_record(&store, "acme").await;
    let other = DataKey::generate().unwrap();
    record.wrapped = wrap_for(&master(), &other, &tenant("acme"), record.suite).await;
    overwrite_dek(&store, record).await;
    out.push((
        "wrong data key (validly wrapped)",
        read_acme_github(&store).await,
    ));

    let store = fresh().await;
    // Globex gets acme's data key, so only the tenant in the AAD can refuse the copy.
    let mut record = dek_record(&store, "globex").await;
    record.wrapped = wrap_for(
        &master(),
        &acme_key(&store).await,
        &tenant("globex"),
        record.suite,
    )
    .await;
    overwrite_dek(&store, record).await;
    let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
    row.metadata.tenant = tenant("globex");
    overwrite_secret(&store, row).await;
    let err = vault_over(&store)
        .get::<ApiKey>(&tenant("globex"), &name("github"))
        .await
        .unwrap_err();
    out.push(("wrong tenant (same data key)", err));

    let store = fresh().await;
    let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
    row.metadata.name = name("gitlab");
    overwrite_secret(&store, row).await;
    let err = vault_over(&store)
        .get::<ApiKey>(&tenant("acme"), &name("gitlab"))
        .await
        .unwrap_err();
    out.push(("wrong name", err));

    let store = fresh().await;
    flip_envelope_byte(&store, |len| len - 1, 0x01).await;
    out.push(("flipped tag", read_acme_github(&store).await));

    let store = fresh().await;
    flip_envelope_byte(&store, |_| 11 + 12 + 4, 0x80).await;
    out.push(("flipped ciphertext", read_acme_github(&store).await));

    let store = fresh().await;
    flip_envelope_byte(&store, |_| 11, 0x80).await;
    out.push(("flipped nonce", read_acme_github(&store).await));

    let store = fresh().await;
    let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
    row.envelope[6] = credvault::SecretKind::Bytes.as_u8();
    overwrite_secret(&store, row).await;
    let err = vault_over(&store)
        .get::<SecretBytes>(&tenant("acme"), &name("github"))
        .await
        .unwrap_err();
    out.push(("corrupted header: kind relabelled, read as that kind", err));

    let store = fresh().await;
    vault_over(&store)
        .rotate_tenant_key(&tenant("acme"))
        .await
        .unwrap();
    let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
    row.envelope[7..11].copy_from_slice(&2u32.to_be_bytes());
    overwrite_secret(&store, row).await;
    out.push((
        "corrupted header: DEK version relabelled to an existing version",
        read_acme_github(&store).await,
    ));

    let store = fresh().await;
    let mut record = dek_record(&store, "acme").await;
    record.wrapped = dek_record(&store, "globex").await.wrapped;
    overwrite_dek(&store, record).await;
    out.push((
        "wrapped key moved from another tenant",
        read_acme_github(&store).await,
    ));

    let store = fresh().await;
    let mut record = dek_record(&store, "acme").await;
    let mut wrapped = record.wrapped.as_bytes().to_vec();
    *wrapped.last_mut().unwrap() ^= 1;
    record.wrapped =
        credvault::keys::WrappedDek::new(record.wrapped.master_key_id().clone(), wrapped);
    overwrite_dek(&store, record).await;
    out.push(("wrapped key tag flipped", read_acme_github(&store).await));

    let store = fresh().await;
    let mut record = dek_record(&store, "acme").await;
    let other_suite = match record.suite {
        Suite::Aes256Gcm => Suite::XChaCha20Poly1305,
        _ => Suite::Aes256Gcm,
    };
    record.wrapped = wrap_for(
        &master(),
        &acme_key(&store).await,
        &tenant("acme"),
        other_suite,
    )
    .await;
    record.suite = other_suite;
    overwrite_dek(&store, record).await;
    out.push((
        "data-key record relabelled to the other suite (validly wrapped for it)",
        read_acme_github(&store).await,
    ));

    out
}

#[tokio::test]
async fn every_authentication_failure_is_the_same_opaque_error() {
    let failures = authentication_failures().await;
    let (_, first) = &failures[0];
    let reference = (first.kind(), first.to_string(), format!("{first:?}"));
    assert_eq!(reference.0, ErrorKind::Decryption);
    for (case, err) in &failures {
        let seen = (err.kind(), err.to_string(), format!("{err:?}"));
        assert_eq!(seen, reference, "{case} is distinguishable");
        assert!(err.source().is_none(), "{case} carries a source");
    }
    println!(
        "uniform failure: {} authentication failures, 1 distinct (kind, Display, Debug): \
         ({:?}, {:?}, {:?})",
        failures.len(),
        reference.0,
        reference.1,
        reference.2
    );
}

#[tokio::test]
async fn structural_errors_stay_distinct_from_authentication_failures() {
    let cases: [(&str, usize, u8, ErrorKind); 4] = [
        ("bad magic", 0, b'X', ErrorKind::Malformed),
        (
            "unknown format version",
            4,
            2,
            ErrorKind::UnsupportedVersion,
        ),
        ("unknown suite", 5, 9, ErrorKind::UnsupportedSuite),
        (
            "header names a missing DEK version",
            10,
            7,
            ErrorKind::KeyMissing,
        ),
    ];
    for (case, at, value, expected) in cases {
        let store = fresh().await;
        let mut row = raw_secret(&store, &tenant("acme"), &name("github")).await;
        row.envelope[at] = value;
        overwrite_secret(&store, row).await;
        let err = read_acme_github(&store).await;
        assert_eq!(err.kind(), expected, "{case}");
        assert_ne!(err.to_string(), Error::Decryption.to_string(), "{case}");
    }
    // Reading as the wrong kind is refused before any key is used, as its own error.
    let store = fresh().await;
    let err = Vault::builder_with_store(store, ring())
        .build()
        .unwrap()
        .get::<SecretBytes>(&tenant("acme"), &name("github"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KindMismatch);
}
