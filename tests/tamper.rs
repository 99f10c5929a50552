//! Stored bytes an attacker changed never open: every single-bit flip and every
//! truncation of an envelope and of a wrapped data key is rejected, on every backend.
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
use credvault::{ApiKey, ErrorKind, OAuthToken, SecretBytes};

/// The outcomes a tampered row may produce; anything else (above all `Ok`) is a failure.
const REJECTIONS: &[ErrorKind] = &[
    ErrorKind::Decryption,
    ErrorKind::Malformed,
    ErrorKind::UnsupportedVersion,
    ErrorKind::UnsupportedSuite,
    ErrorKind::KindMismatch,
    ErrorKind::KeyMissing,
];

#[tokio::test]
async fn every_bit_flip_and_truncation_of_an_envelope_is_rejected() {
    for (backend, store) in stores().await {
        let vault = vault_over(&store);
        let (t, n) = (tenant("acme"), name("github"));
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &n, &ApiKey::new("ghp_tamper_target"))
            .await
            .unwrap();
        let original = raw_secret(&store, &t, &n).await;
        let bits = original.envelope.len() * 8;
        let mut accepted = 0;
        for bit in 0..bits {
            let mut row = original.clone();
            row.envelope[bit / 8] ^= 1 << (bit % 8);
            overwrite_secret(&store, row).await;
            match vault.get::<ApiKey>(&t, &n).await {
                Ok(_) => accepted += 1,
                Err(e) => assert!(
                    REJECTIONS.contains(&e.kind()),
                    "bit {bit}: unexpected {:?}",
                    e.kind()
                ),
            }
        }
        println!("bitflip[{backend}] envelope: {bits} tried, {accepted} accepted, 0 panics");
        assert_eq!(accepted, 0);

        let mut accepted = 0;
        for len in 0..original.envelope.len() {
            let mut row = original.clone();
            row.envelope.truncate(len);
            overwrite_secret(&store, row).await;
            match vault.get::<ApiKey>(&t, &n).await {
                Ok(_) => accepted += 1,
                Err(e) => assert_eq!(e.kind(), ErrorKind::Malformed, "truncation to {len}"),
            }
        }
        println!(
            "truncation[{backend}] envelope: {} tried, {accepted} accepted",
            original.envelope.len()
        );
        assert_eq!(accepted, 0);

        // Appending bytes is rejected too, as trailing bytes.
        let mut row = original.clone();
        row.envelope.push(0);
        overwrite_secret(&store, row).await;
        let err = vault.get::<ApiKey>(&t, &n).await.unwrap_err();
        assert!(matches!(
            err,
            credvault::Error::Format(credvault::FormatError::TrailingBytes(_))
        ));

        overwrite_secret(&store, original).await;
        assert!(
            vault.get::<ApiKey>(&t, &n).await.is_ok(),
            "the untouched row still opens"
        );
    }
}

#[tokio::test]
async fn every_bit_flip_and_truncation_of_a_wrapped_dek_is_rejected() {
    for (backend, store) in stores().await {
        let (t, n) = (tenant("acme"), name("github"));
        let writer = vault_over(&store);
        writer.create_tenant(&t).await.unwrap();
        writer
            .put(&t, &n, &ApiKey::new("ghp_tamper_target"))
            .await
            .unwrap();
        let original = store.list_deks(&t).await.unwrap().remove(0);
        let bytes = original.wrapped.as_bytes().to_vec();
        let mut accepted = 0;
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let mut record = original.clone();
            record.wrapped =
                credvault::keys::WrappedDek::new(original.wrapped.master_key_id().clone(), flipped);
            overwrite_dek(&store, record).await;
            // A fresh vault has an empty key cache, so it must unwrap the stored key.
            match vault_over(&store).get::<ApiKey>(&t, &n).await {
                Ok(_) => accepted += 1,
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Decryption
                            | ErrorKind::Malformed
                            | ErrorKind::UnsupportedVersion
                            | ErrorKind::UnsupportedSuite
                    ),
                    "bit {bit}: unexpected {:?}",
                    e.kind()
                ),
            }
        }
        println!(
            "bitflip[{backend}] wrapped DEK: {} tried, {accepted} accepted, 0 panics",
            bytes.len() * 8
        );
        assert_eq!(accepted, 0);
        for len in 0..bytes.len() {
            let mut record = original.clone();
            record.wrapped = credvault::keys::WrappedDek::new(
                original.wrapped.master_key_id().clone(),
                bytes[..len].to_vec(),
            );
            overwrite_dek(&store, record).await;
            let err = vault_over(&store).get::<ApiKey>(&t, &n).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "truncation to {len}");
        }
        overwrite_dek(&store, original).await;
        assert!(vault_over(&store).get::<ApiKey>(&t, &n).await.is_ok());
    }
}

#[tokio::test]
async fn every_kind_rejects_flips_of_its_ciphertext() {
    let (_, store) = stores().await.remove(0);
    let vault = vault_over(&store);
    let t = tenant("acme");
    vault.create_tenant(&t).await.unwrap();
    vault
        .put(
            &t,
            &name("o"),
            &OAuthToken::new("a")
                .with_refresh_token("r")
                .with_scopes(["s"]),
        )
        .await
        .unwrap();
    vault
        .put(&t, &name("b"), &SecretBytes::from_slice(&[0; 40]))
        .await
        .unwrap();
    for n in ["o", "b"] {
        let original = raw_secret(&store, &t, &name(n)).await;
        for bit in (0..original.envelope.len() * 8).step_by(3) {
            let mut row = original.clone();
            row.envelope[bit / 8] ^= 1 << (bit % 8);
            overwrite_secret(&store, row).await;
            let ok = if n == "o" {
                vault.get::<OAuthToken>(&t, &name(n)).await.is_ok()
            } else {
                vault.get::<SecretBytes>(&t, &name(n)).await.is_ok()
            };
            assert!(!ok, "{n}: bit {bit} accepted");
        }
    }
}
