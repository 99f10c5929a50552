//! Wycheproof vectors for every primitive credvault calls, run through the crate's own crypto
//! layer (`src/crypto.rs`, reached through the hidden `credvault::testkit` seam), not through
//! `ring` or `chacha20poly1305` directly.
//!
//! | primitive | where the crate uses it | vectors |
//! |---|---|---|
//! | AES-256-GCM (`ring`) | suite `0x01` envelopes | `aes_gcm_test.json` |
//! | XChaCha20-Poly1305 (`chacha20poly1305`) | suite `0x02` envelopes, `LocalMasterKey` wrapping | `xchacha20_poly1305_test.json` |
//! | HMAC-SHA256 (`ring`) | local master key ids | `hmac_sha256_test.json` |
//! | SHA-256 (`ring`) | fingerprints of wrapped keys in the key cache | none in Wycheproof: the FIPS 180-2 examples instead |
//!
//! The crate's layer holds only 256-bit keys, 16-byte tags and the one nonce length of each
//! suite (12 bytes for AES-256-GCM, 24 for XChaCha20-Poly1305), and its HMAC takes a 256-bit
//! key. A vector of another shape is counted as *unrepresentable*, never dropped, and the
//! layer must still refuse it cleanly (no panic, an error). ChaCha20-Poly1305 with 96-bit
//! nonces and HKDF are not called by the crate (XChaCha20-Poly1305 reaches ChaCha20-Poly1305
//! only through `HChaCha20`, which the XChaCha20 vectors cover), so their files are not run.
//!
//! Each file prints `run / passed / unrepresentable`; any failure fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

use std::fmt::Write as _;

use credvault::Suite;
use credvault::testkit::{Aead, hmac_sha256, sha256_fingerprint};
use wycheproof::TestResult;

/// Counts for one vector file.
#[derive(Default)]
struct Tally {
    total: usize,
    run: usize,
    passed: usize,
    unrepresentable: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, tc_id: usize, ok: bool, what: &str) {
        self.run += 1;
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(format!("tcId {tc_id}: {what}"));
        }
    }

    /// Prints the summary line and fails on any failure or on a file that ran nothing.
    fn finish(self, file: &str, declared: usize) {
        println!(
            "{file}: run {} / passed {} / unrepresentable {}",
            self.run, self.passed, self.unrepresentable
        );
        assert_eq!(
            self.run + self.unrepresentable,
            self.total,
            "{file}: every vector is either run or counted as unrepresentable"
        );
        assert_eq!(
            self.total, declared,
            "{file}: the file declares its number of tests"
        );
        assert!(self.run > 0, "{file}: no vector could be run");
        assert!(self.failures.is_empty(), "{file}: {:#?}", self.failures);
        assert_eq!(self.passed, self.run);
    }
}

fn run_aead(name: wycheproof::aead::TestName, file: &str, suite: Suite) {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            tally.total += 1;
            let representable =
                t.key.len() == 32 && t.nonce.len() == suite.nonce_len() && t.tag.len() == 16;
            if !representable {
                tally.unrepresentable += 1;
                assert_refused(suite, t, file);
                continue;
            }
            let aead = Aead::new(suite, &t.key).unwrap();
            let tag: [u8; 16] = t.tag[..].try_into().unwrap();
            let mut opened = t.ct.to_vec();
            let open = aead.open_in_place(&t.nonce, &t.aad, &mut opened, &tag);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let mut sealed = t.pt.to_vec();
                    let sealed_tag = aead
                        .insecure_seal_in_place(&t.nonce, &t.aad, &mut sealed)
                        .unwrap();
                    let ok = open.is_ok()
                        && opened[..] == t.pt[..]
                        && sealed[..] == t.ct[..]
                        && sealed_tag == tag;
                    tally.record(t.tc_id, ok, "valid vector: seal or open differs");
                }
                TestResult::Invalid => {
                    // Rejected, and the buffer holds no unauthenticated plaintext.
                    let ok = open.is_err() && opened.iter().all(|&b| b == 0);
                    tally.record(t.tc_id, ok, "invalid vector accepted or buffer not wiped");
                }
            }
        }
    }
    tally.finish(file, set.number_of_tests);
}

/// A vector the layer cannot hold must still be refused: no key of the wrong length is
/// accepted, and no nonce of the wrong length seals or opens.
fn assert_refused(suite: Suite, t: &wycheproof::aead::Test, file: &str) {
    if t.key.len() != 32 {
        assert!(Aead::new(suite, &t.key).is_err(), "{file} tcId {}", t.tc_id);
        return;
    }
    if t.nonce.len() != suite.nonce_len() {
        let aead = Aead::new(suite, &t.key).unwrap();
        let mut buf = t.pt.to_vec();
        assert!(
            aead.insecure_seal_in_place(&t.nonce, &t.aad, &mut buf)
                .is_err(),
            "{file} tcId {}: a {}-byte nonce sealed",
            t.tc_id,
            t.nonce.len()
        );
        let mut buf = t.ct.to_vec();
        let tag = [0u8; 16];
        assert!(
            aead.open_in_place(&t.nonce, &t.aad, &mut buf, &tag)
                .is_err(),
            "{file} tcId {}",
            t.tc_id
        );
    }
    // A tag of another length cannot even be passed: the layer takes `&[u8; 16]`.
}

#[test]
fn wycheproof_aes_256_gcm_through_the_crate_cipher() {
    run_aead(
        wycheproof::aead::TestName::AesGcm,
        "wycheproof aes_gcm_test.json",
        Suite::Aes256Gcm,
    );
}

#[test]
fn wycheproof_xchacha20_poly1305_through_the_crate_cipher() {
    run_aead(
        wycheproof::aead::TestName::XChaCha20Poly1305,
        "wycheproof xchacha20_poly1305_test.json",
        Suite::XChaCha20Poly1305,
    );
}

#[test]
fn wycheproof_hmac_sha256_through_the_crate_mac() {
    let file = "wycheproof hmac_sha256_test.json";
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            tally.total += 1;
            let Ok(key) = <&[u8; 32]>::try_from(&t.key[..]) else {
                tally.unrepresentable += 1;
                continue;
            };
            // The crate computes the full MAC and uses a prefix of it (the master key id
            // keeps 8 bytes); a Wycheproof tag of `tagSize` bits is the same kind of prefix.
            let mac = hmac_sha256(key, &t.msg);
            let matches = mac.get(..t.tag.len()) == Some(&t.tag[..]);
            let ok = match t.result {
                TestResult::Valid | TestResult::Acceptable => matches,
                TestResult::Invalid => !matches,
            };
            tally.record(t.tc_id, ok, "MAC verdict differs");
        }
    }
    tally.finish(file, set.number_of_tests);
}

/// Wycheproof has no hash vectors; the SHA-256 examples of FIPS 180-2 (appendix B and the
/// NIST example values) check the crate's fingerprint, which keeps the first 16 bytes.
#[test]
fn sha256_fips_180_examples_through_the_crate_fingerprint() {
    let million_a = vec![b'a'; 1_000_000];
    let cases: [(&[u8], &str); 5] = [
        (
            b"",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        ),
        (
            &million_a,
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        ),
    ];
    let mut tally = Tally::default();
    for (i, (msg, digest)) in cases.iter().enumerate() {
        tally.total += 1;
        let got = sha256_fingerprint(msg)
            .iter()
            .fold(String::new(), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            });
        tally.record(i, digest.starts_with(&got), "digest differs");
    }
    tally.finish("FIPS 180-2 SHA-256 examples", cases.len());
}
