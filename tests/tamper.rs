//! Stored bytes an attacker changed never open, exhaustively, on every backend: every
//! single-bit flip and every truncation of an envelope (of each kind) and of a wrapped data
//! key; all 256 values of every header byte of both; and every ordered pair of 10 tenants x
//! 10 secrets with rows swapped, and with wrapped data keys swapped. Only the genuine value
//! opens. Every attempt runs under `catch_unwind`, and each test prints one summary line
//! (`cargo test --test tamper -- --nocapture`).
//!
//! The counts are exhaustive, not sampled; the slowest test, the 9,900 swapped rows over
//! SQLite, takes about 10 s in a debug build on two cores, which is the price of covering
//! every pair on the store that production uses.
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

use std::sync::Arc;

use common::*;
use credvault::keys::WrappedDek;
use credvault::storage::{DekRecord, Store};
use credvault::{ApiKey, Error, ErrorKind, OAuthToken, SecretBytes, SecretName, TenantId, Vault};

/// The outcomes a tampered envelope may produce; anything else (above all `Ok`) is a failure.
const ENVELOPE_REJECTIONS: &[ErrorKind] = &[
    ErrorKind::Decryption,
    ErrorKind::Malformed,
    ErrorKind::UnsupportedVersion,
    ErrorKind::UnsupportedSuite,
    ErrorKind::KindMismatch,
    ErrorKind::KeyMissing,
];

/// The outcomes a tampered wrapped data key may produce.
const WRAPPED_REJECTIONS: &[ErrorKind] = &[
    ErrorKind::Decryption,
    ErrorKind::Malformed,
    ErrorKind::UnsupportedVersion,
    ErrorKind::UnsupportedSuite,
];

/// Byte 6 of an envelope is its kind.
const KIND_AT: usize = 6;

/// Reads `t`/`n` as the kind it was stored as, and, when the kind byte was changed, as the
/// other two kinds as well (a relabelled kind must not open as the kind it now claims).
/// Each read is one attempt.
async fn read_tampered(
    tally: &mut Tally,
    vault: &Vault,
    (t, n): (&TenantId, &SecretName),
    (what, changed_at): (&str, usize),
    allowed: &[ErrorKind],
) {
    let every_kind = changed_at == KIND_AT;
    if every_kind || n.as_str() == "api" {
        let r = catch_panic(vault.get::<ApiKey>(t, n)).await;
        tally.reject(format_args!("{what} as ApiKey"), r, allowed);
    }
    if every_kind || n.as_str() == "oauth" {
        let r = catch_panic(vault.get::<OAuthToken>(t, n)).await;
        tally.reject(format_args!("{what} as OAuthToken"), r, allowed);
    }
    if every_kind || n.as_str() == "bytes" {
        let r = catch_panic(vault.get::<SecretBytes>(t, n)).await;
        tally.reject(format_args!("{what} as SecretBytes"), r, allowed);
    }
}

/// One tenant with one secret of each kind: `api`, `oauth`, `bytes`.
async fn one_of_each(store: &Arc<dyn Store>) -> (Vault, TenantId) {
    let vault = vault_over(store);
    let t = tenant("acme");
    vault.create_tenant(&t).await.unwrap();
    vault
        .put(&t, &name("api"), &ApiKey::new("ghp_tamper_target"))
        .await
        .unwrap();
    let token = OAuthToken::new("ya29.tamper")
        .with_refresh_token("1//tamper")
        .with_scopes(["repo"]);
    vault.put(&t, &name("oauth"), &token).await.unwrap();
    vault
        .put(&t, &name("bytes"), &SecretBytes::from_slice(&[0x5a; 40]))
        .await
        .unwrap();
    (vault, t)
}

async fn genuine_opens(vault: &Vault, t: &TenantId) -> bool {
    vault.get::<ApiKey>(t, &name("api")).await.is_ok()
        && vault.get::<OAuthToken>(t, &name("oauth")).await.is_ok()
        && vault.get::<SecretBytes>(t, &name("bytes")).await.is_ok()
}

#[tokio::test]
async fn every_bit_flip_and_truncation_of_an_envelope_is_rejected() {
    for (backend, store) in stores().await {
        let (vault, t) = one_of_each(&store).await;
        let mut flips = Tally::default();
        let mut cuts = Tally::default();
        for n in ["api", "oauth", "bytes"] {
            let n = name(n);
            let original = raw_secret(&store, &t, &n).await;
            for bit in 0..original.envelope.len() * 8 {
                let mut row = original.clone();
                row.envelope[bit / 8] ^= 1 << (bit % 8);
                overwrite_secret(&store, row).await;
                let what = format!("{n} bit {bit}");
                let at = (what.as_str(), bit / 8);
                read_tampered(&mut flips, &vault, (&t, &n), at, ENVELOPE_REJECTIONS).await;
            }
            for len in 0..original.envelope.len() {
                let mut row = original.clone();
                row.envelope.truncate(len);
                overwrite_secret(&store, row).await;
                let what = format!("{n} cut to {len}");
                let at = (what.as_str(), usize::MAX);
                read_tampered(&mut cuts, &vault, (&t, &n), at, &[ErrorKind::Malformed]).await;
            }
            // Appending bytes is rejected too, as trailing bytes.
            let mut row = original.clone();
            row.envelope.push(0);
            overwrite_secret(&store, row).await;
            let err = vault.get::<ApiKey>(&t, &n).await.err();
            assert!(matches!(
                err,
                Some(Error::Format(credvault::FormatError::TrailingBytes(_)))
            ));
            overwrite_secret(&store, original).await;
        }
        flips.assert_all_rejected(&format!("bitflip[{backend}] envelope, 3 kinds"));
        cuts.assert_all_rejected(&format!("truncation[{backend}] envelope, 3 kinds"));
        assert!(
            genuine_opens(&vault, &t).await,
            "the untouched rows still open"
        );
    }
}

#[tokio::test]
async fn every_bit_flip_and_truncation_of_a_wrapped_dek_is_rejected() {
    for (backend, store) in stores().await {
        let (_, t) = one_of_each(&store).await;
        let original = store.list_deks(&t).await.unwrap().remove(0);
        let bytes = original.wrapped.as_bytes().to_vec();
        let with_bytes = |b: Vec<u8>| DekRecord {
            wrapped: WrappedDek::new(original.wrapped.master_key_id().clone(), b),
            ..original.clone()
        };
        let mut flips = Tally::default();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            overwrite_dek(&store, with_bytes(flipped)).await;
            // A fresh vault has an empty key cache, so it must unwrap the stored key.
            let r = catch_panic(vault_over(&store).get::<ApiKey>(&t, &name("api"))).await;
            flips.reject(format_args!("bit {bit}"), r, WRAPPED_REJECTIONS);
        }
        flips.assert_all_rejected(&format!("bitflip[{backend}] wrapped DEK"));

        let mut cuts = Tally::default();
        for len in 0..bytes.len() {
            overwrite_dek(&store, with_bytes(bytes[..len].to_vec())).await;
            let r = catch_panic(vault_over(&store).get::<ApiKey>(&t, &name("api"))).await;
            cuts.reject(format_args!("cut to {len}"), r, &[ErrorKind::Malformed]);
        }
        cuts.assert_all_rejected(&format!("truncation[{backend}] wrapped DEK"));
        overwrite_dek(&store, original).await;
        assert!(genuine_opens(&vault_over(&store), &t).await);
    }
}

#[tokio::test]
async fn every_value_of_every_envelope_header_byte_is_rejected_but_the_genuine_one() {
    for (backend, store) in stores().await {
        let (vault, t) = one_of_each(&store).await;
        let mut tally = Tally::default();
        for n in ["api", "oauth", "bytes"] {
            let n = name(n);
            let original = raw_secret(&store, &t, &n).await;
            // Bytes 0..11: magic (4), format version, suite, kind, DEK version (4).
            for at in 0..credvault::envelope::HEADER_LEN {
                for value in 0..=255u8 {
                    if value == original.envelope[at] {
                        continue;
                    }
                    let mut row = original.clone();
                    row.envelope[at] = value;
                    overwrite_secret(&store, row).await;
                    let what = format!("{n} byte {at} = {value:#04x}");
                    read_tampered(
                        &mut tally,
                        &vault,
                        (&t, &n),
                        (&what, at),
                        ENVELOPE_REJECTIONS,
                    )
                    .await;
                }
            }
            overwrite_secret(&store, original).await;
        }
        tally.assert_all_rejected(&format!(
            "header bytes[{backend}] envelope: 11 bytes x 255 other values x 3 kinds"
        ));
        assert!(genuine_opens(&vault, &t).await);
    }
}

#[tokio::test]
async fn every_value_of_every_wrapped_dek_header_byte_is_rejected_but_the_genuine_one() {
    for (backend, store) in stores().await {
        let (_, t) = one_of_each(&store).await;
        let original = store.list_deks(&t).await.unwrap().remove(0);
        let bytes = original.wrapped.as_bytes().to_vec();
        let mut tally = Tally::default();
        // Bytes 0..6: magic (4), format version, wrap suite.
        for at in 0..6 {
            for value in 0..=255u8 {
                if value == bytes[at] {
                    continue;
                }
                let mut changed = bytes.clone();
                changed[at] = value;
                overwrite_dek(
                    &store,
                    DekRecord {
                        wrapped: WrappedDek::new(original.wrapped.master_key_id().clone(), changed),
                        ..original.clone()
                    },
                )
                .await;
                let r = catch_panic(vault_over(&store).get::<ApiKey>(&t, &name("api"))).await;
                tally.reject(
                    format_args!("byte {at} = {value:#04x}"),
                    r,
                    WRAPPED_REJECTIONS,
                );
            }
        }
        tally.assert_all_rejected(&format!(
            "header bytes[{backend}] wrapped DEK: 6 bytes x 255 other values"
        ));
        overwrite_dek(&store, original).await;
        assert!(genuine_opens(&vault_over(&store), &t).await);
    }
}

const TENANTS: usize = 10;
const SECRETS: usize = 10;

fn cell_value(t: usize, s: usize) -> String {
    format!("value-of-tenant-{t}-secret-{s}")
}

/// 10 tenants with 10 API keys each, every value distinct.
async fn grid(store: &Arc<dyn Store>) -> (Vault, Vec<TenantId>, Vec<SecretName>) {
    let vault = vault_over(store);
    let tenants: Vec<_> = (0..TENANTS)
        .map(|i| tenant(&format!("tenant-{i}")))
        .collect();
    let names: Vec<_> = (0..SECRETS).map(|i| name(&format!("secret-{i}"))).collect();
    for (ti, t) in tenants.iter().enumerate() {
        vault.create_tenant(t).await.unwrap();
        for (si, n) in names.iter().enumerate() {
            vault
                .put(t, n, &ApiKey::new(cell_value(ti, si)))
                .await
                .unwrap();
        }
    }
    (vault, tenants, names)
}

#[tokio::test]
async fn rows_swapped_between_any_two_cells_of_ten_tenants_by_ten_secrets_never_open() {
    for (backend, store) in stores().await {
        let (vault, tenants, names) = grid(&store).await;
        let cells: Vec<(usize, usize)> = (0..TENANTS)
            .flat_map(|t| (0..SECRETS).map(move |s| (t, s)))
            .collect();
        let mut rows = Vec::new();
        for &(t, s) in &cells {
            rows.push(raw_secret(&store, &tenants[t], &names[s]).await);
        }
        let mut foreign = Tally::default();
        let mut genuine = 0;
        for (to, &(tt, ts)) in cells.iter().enumerate() {
            let (t, n) = (&tenants[tt], &names[ts]);
            for (from, source) in rows.iter().enumerate() {
                // The attacker writes another cell's envelope into this cell's row.
                let mut row = rows[to].clone();
                row.envelope.clone_from(&source.envelope);
                overwrite_secret(&store, row).await;
                let r = catch_panic(vault.get::<ApiKey>(t, n)).await;
                if from == to {
                    let key = r.unwrap().unwrap();
                    assert_eq!(key.expose_secret(), cell_value(tt, ts));
                    genuine += 1;
                } else {
                    let what = format!("cell {from} into cell {to}");
                    foreign.reject(what, r, &[ErrorKind::Decryption]);
                }
            }
            overwrite_secret(&store, rows[to].clone()).await;
        }
        assert_eq!(genuine, cells.len());
        println!("rows swapped[{backend}]: {genuine} genuine opened");
        foreign.assert_all_rejected(&format!(
            "rows swapped[{backend}]: ordered pairs of 10 tenants x 10 secrets"
        ));
    }
}

#[tokio::test]
async fn wrapped_deks_swapped_between_any_two_of_ten_tenants_never_open() {
    for (backend, store) in stores().await {
        let (_, tenants, names) = grid(&store).await;
        let mut records = Vec::new();
        for t in &tenants {
            records.push(store.list_deks(t).await.unwrap().remove(0));
        }
        let mut foreign = Tally::default();
        let mut genuine = 0;
        for (to, target) in records.iter().enumerate() {
            for (from, source) in records.iter().enumerate() {
                // The attacker writes another tenant's wrapped key into this tenant's record.
                let mut record = target.clone();
                record.wrapped = source.wrapped.clone();
                overwrite_dek(&store, record).await;
                let vault = vault_over(&store);
                for (si, n) in names.iter().enumerate() {
                    let r = catch_panic(vault.get::<ApiKey>(&tenants[to], n)).await;
                    if from == to {
                        let key = r.unwrap().unwrap();
                        assert_eq!(key.expose_secret(), cell_value(to, si));
                        genuine += 1;
                    } else {
                        let what = format!("tenant {from}'s key into tenant {to}, secret {si}");
                        foreign.reject(what, r, &[ErrorKind::Decryption]);
                    }
                }
            }
            overwrite_dek(&store, target.clone()).await;
        }
        assert_eq!(genuine, TENANTS * SECRETS);
        println!("wrapped DEKs swapped[{backend}]: {genuine} genuine opened");
        foreign.assert_all_rejected(&format!(
            "wrapped DEKs swapped[{backend}]: ordered pairs of 10 tenants, 10 secrets each"
        ));
    }
}
