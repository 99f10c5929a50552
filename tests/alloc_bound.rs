//! Parsing stored bytes allocates at most the input's length plus a constant, whatever the
//! input: a length prefix is never trusted to size an allocation. Measured with a counting
//! global allocator (`testkit/alloc-probe`) over every truncation and bit flip of valid
//! encodings, crafted worst cases (length prefixes of 2^32-1, the most scopes) and seeded
//! random inputs, for every parser of stored bytes:
//!
//! - `EnvelopeRef::parse` and the wrapped-key parser borrow the input: zero allocations;
//! - the plaintext decoders copy each secret field once into its final allocation, so the
//!   copies add up to at most the input's length, plus one `String` header (24 bytes on
//!   64-bit targets) per OAuth scope, of which there are at most `OAuthToken::MAX_SCOPES`:
//!   a constant of `MAX_SCOPES * size_of::<String>()` bytes.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    reason = "test code: failing loudly is the point"
)]

mod common;

use common::*;
use credvault::envelope::EnvelopeRef;
use credvault::testkit::{decode_plaintext, parse_wrapped_dek, plaintext_encoding};
use credvault::{ApiKey, OAuthToken, SecretBytes};
use credvault_alloc_probe::{Allocated, Probe, measure};

#[global_allocator]
static ALLOC: Probe = Probe;

/// The constant of the plaintext decoders' bound: the `String` headers of the most scopes
/// an OAuth token may carry.
const DECODE_SLACK: usize = OAuthToken::MAX_SCOPES * size_of::<String>();

/// A seeded xorshift generator: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Every truncation, every single-bit flip and one appended byte of each seed, crafted
/// inputs, then random inputs: `random` of them, half starting with a seed's first bytes so
/// that they get past the magic and version checks.
fn inputs(seeds: &[Vec<u8>], crafted: &[Vec<u8>], random: usize) -> Vec<Vec<u8>> {
    let mut out = crafted.to_vec();
    for seed in seeds {
        out.push(seed.clone());
        for len in 0..seed.len() {
            out.push(seed[..len].to_vec());
        }
        for bit in 0..seed.len() * 8 {
            let mut v = seed.clone();
            v[bit / 8] ^= 1 << (bit % 8);
            out.push(v);
        }
        let mut longer = seed.clone();
        longer.push(0);
        out.push(longer);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..random {
        let len = (rng.next() % 600) as usize;
        let mut v = rng.bytes(len);
        if i % 2 == 0 && !seeds.is_empty() {
            let seed = &seeds[i / 2 % seeds.len()];
            let keep = (rng.next() as usize % 16).min(seed.len()).min(v.len());
            v[..keep].copy_from_slice(&seed[..keep]);
        }
        out.push(v);
    }
    out
}

/// Measures `parse` on every input; returns (inputs, accepted, worst allocated bytes minus
/// input length, most allocations).
fn worst<T>(
    inputs: &[Vec<u8>],
    parse: impl Fn(&[u8]) -> Option<T>,
) -> (usize, usize, isize, usize) {
    let mut accepted = 0;
    let mut worst_excess = isize::MIN;
    let mut most = 0;
    for input in inputs {
        let (parsed, Allocated { allocations, bytes }) = measure(|| parse(input));
        // Dropping happens outside the measurement; only what parsing allocated counts.
        accepted += usize::from(parsed.is_some());
        drop(parsed);
        worst_excess = worst_excess.max(bytes.cast_signed() - input.len().cast_signed());
        most = most.max(allocations);
    }
    (inputs.len(), accepted, worst_excess, most)
}

async fn sealed_envelopes() -> Vec<Vec<u8>> {
    let (_, store) = stores().await.remove(0);
    let vault = vault_over(&store);
    let t = tenant("acme");
    vault.create_tenant(&t).await.unwrap();
    vault
        .put(&t, &name("a"), &ApiKey::new("ghp_alloc"))
        .await
        .unwrap();
    let mut out = vec![raw_secret(&store, &t, &name("a")).await.envelope];
    let xchacha = credvault::Vault::builder_with_store(store.clone(), ring())
        .with_suite(credvault::Suite::XChaCha20Poly1305)
        .build()
        .unwrap();
    let u = tenant("umbrella");
    xchacha.create_tenant(&u).await.unwrap();
    xchacha
        .put(&u, &name("b"), &SecretBytes::from_slice(&[1; 20]))
        .await
        .unwrap();
    out.push(raw_secret(&store, &u, &name("b")).await.envelope);
    out.push(
        store.list_deks(&t).await.unwrap()[0]
            .wrapped
            .as_bytes()
            .to_vec(),
    );
    out
}

#[tokio::test(flavor = "current_thread")]
async fn envelope_and_wrapped_key_parsers_allocate_nothing() {
    let seeds = sealed_envelopes().await;
    let mut huge_length = seeds[0].clone();
    huge_length[23..27].copy_from_slice(&u32::MAX.to_be_bytes());
    let inputs = inputs(&seeds, &[huge_length, Vec::new()], 20_000);

    let (n, ok, excess, most) = worst(&inputs, |b| {
        EnvelopeRef::parse(b).ok().map(|e| e.encoded_len())
    });
    println!("alloc bound: envelope parse: {n} inputs ({ok} accepted), at most {most} allocations");
    assert_eq!(most, 0, "EnvelopeRef::parse allocated");
    assert!(excess <= 0);
    assert!(ok > 0, "the genuine envelopes parse");

    let (n, ok, _, most) = worst(&inputs, |b| parse_wrapped_dek(b).ok());
    println!(
        "alloc bound: wrapped DEK parse: {n} inputs ({ok} accepted), at most {most} allocations"
    );
    assert_eq!(most, 0, "the wrapped-key parser allocated");
    assert!(ok > 0, "the genuine wrapped key parses");
}

#[test]
fn plaintext_decoders_allocate_at_most_the_input_length_plus_a_constant() {
    let token = OAuthToken::new("ya29.alloc-access")
        .with_refresh_token("1//alloc-refresh")
        .with_scopes(["openid", "email", "repo"]);
    let seeds = vec![
        plaintext_encoding(&ApiKey::new("ghp_alloc_0123456789")).to_vec(),
        plaintext_encoding(&SecretBytes::from_slice(&[7; 48])).to_vec(),
        plaintext_encoding(&token).to_vec(),
    ];
    // Worst cases: the most scopes, all empty (each allocates a `String` header in the
    // scope vector and nothing else); length prefixes of 2^32-1 and 2^16-1; a scope count
    // of 65,535.
    // version, empty access token, no refresh token, empty token type, no expiry
    let mut most_scopes = vec![1, 0, 0, 0, 0, 0, 0, 0, 0];
    most_scopes.extend_from_slice(&(OAuthToken::MAX_SCOPES as u16).to_be_bytes());
    most_scopes.extend(std::iter::repeat_n(0, 2 * OAuthToken::MAX_SCOPES));
    let crafted = vec![
        most_scopes,
        vec![1, 0xff, 0xff, 0xff, 0xff, b'a'],
        vec![1, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0, 0, 0, 0, 0, 0xff, 0xff],
        vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        Vec::new(),
    ];
    let inputs = inputs(&seeds, &crafted, 20_000);
    assert!(
        decode_plaintext::<OAuthToken>(&inputs[0]).is_ok(),
        "the most-scopes case is a valid token"
    );
    let bound = DECODE_SLACK.cast_signed();
    let mut total = 0;
    for (kind, (n, ok, excess, most)) in [
        (
            "ApiKey",
            worst(&inputs, |b| decode_plaintext::<ApiKey>(b).ok()),
        ),
        (
            "SecretBytes",
            worst(&inputs, |b| decode_plaintext::<SecretBytes>(b).ok()),
        ),
        (
            "OAuthToken",
            worst(&inputs, |b| decode_plaintext::<OAuthToken>(b).ok()),
        ),
    ] {
        println!(
            "alloc bound: {kind} decode: {n} inputs ({ok} accepted), at most {most} allocations, \
             worst excess over the input length {excess} bytes (bound {bound})"
        );
        assert!(
            excess <= bound,
            "{kind}: allocated {excess} bytes beyond the input"
        );
        assert!(ok > 0);
        total += n;
    }
    assert!(total > 0);
}
