//! Replays the fuzz corpus under stable `cargo test`: every file in `fuzz/corpus/<target>/`,
//! and every file in `fuzz/artifacts/<target>/` if there is one (crashes a campaign found,
//! kept as regression inputs), goes through the same function the fuzz target calls.
//! Seeds named `seed-valid-*` must be accepted and `seed-invalid-*` rejected; nothing may
//! panic; an empty corpus directory fails.
//!
//! The seed files are written by `credvault::__fuzz::seeds()`:
//! `UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` rewrites them, and without it the
//! test fails if the checked-in seeds and the generator differ.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use credvault::__fuzz::{Outcome, TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Regular files of `dir`, sorted by name; none if it does not exist.
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

#[test]
fn corpus_replays_without_panics_and_seeds_meet_their_expectations() {
    let mut broken = Vec::new();
    let mut panics = 0;
    for &(target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty: run UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus"
        );
        let artifacts = files(&fuzz_dir().join("artifacts").join(target));
        let (mut accepted, mut rejected, mut target_panics) = (0, 0, 0);
        for (name, path) in corpus.iter().chain(&artifacts) {
            let data = fs::read(path).unwrap();
            match catch_unwind(AssertUnwindSafe(|| run(&data))) {
                Err(_) => {
                    target_panics += 1;
                    broken.push(format!("{target}/{name}: panicked"));
                }
                Ok(outcome) => {
                    match outcome {
                        Outcome::Accepted => accepted += 1,
                        Outcome::Rejected => rejected += 1,
                    }
                    // Redis replies decode only with the Redis backend built.
                    let redis_off = !cfg!(feature = "redis") && name.contains("-redis_");
                    let expected = if redis_off {
                        None
                    } else if name.starts_with("seed-valid-") {
                        Some(Outcome::Accepted)
                    } else if name.starts_with("seed-invalid-") {
                        Some(Outcome::Rejected)
                    } else {
                        None
                    };
                    if expected.is_some_and(|e| e != outcome) {
                        broken.push(format!("{target}/{name}: {outcome:?}"));
                    }
                }
            }
        }
        println!(
            "{target}: {} inputs replayed ({} corpus, {} artifacts; {accepted} accepted, {rejected} rejected), {target_panics} panics",
            corpus.len() + artifacts.len(),
            corpus.len(),
            artifacts.len(),
        );
        panics += target_panics;
    }
    assert!(
        broken.is_empty(),
        "{panics} panics; inputs that broke their expectation:\n{}",
        broken.join("\n")
    );
}

#[test]
fn seed_corpus_is_what_the_generator_writes() {
    let mut by_target: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for seed in seeds() {
        let previous = by_target
            .entry(seed.target)
            .or_default()
            .insert(seed.name.clone(), seed.bytes);
        assert!(previous.is_none(), "seed {} is generated twice", seed.name);
    }
    let update = std::env::var_os("UPDATE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    for &(target, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let generated = by_target.remove(target).unwrap_or_default();
        assert!(!generated.is_empty(), "no seeds are generated for {target}");
        let on_disk: BTreeMap<String, Vec<u8>> = files(&dir)
            .into_iter()
            .filter(|(name, _)| name.starts_with("seed-"))
            .map(|(name, path)| (name, fs::read(path).unwrap()))
            .collect();
        if update {
            fs::create_dir_all(&dir).unwrap();
            for name in on_disk.keys().filter(|n| !generated.contains_key(*n)) {
                fs::remove_file(dir.join(name)).unwrap();
            }
            for (name, bytes) in &generated {
                fs::write(dir.join(name), bytes).unwrap();
            }
            println!("{target}: wrote {} seeds", generated.len());
        } else {
            assert!(
                on_disk == generated,
                "fuzz/corpus/{target} differs from the generator: run UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus"
            );
        }
    }
    assert!(
        by_target.is_empty(),
        "seeds for unknown targets: {:?}",
        by_target.keys()
    );
}
