//! The quickstart example, as `cargo run --example quickstart` runs it, on both runtime
//! flavours: it closes its vault, then finds none of the plaintexts it stored in whatever
//! files SQLite left on disk.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, reason = "test assertions")]

#[path = "../examples/quickstart.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod quickstart;

fn demo_leaves_no_plaintext_in_its_files(runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quickstart.db");
    let files = runtime.block_on(quickstart::run(&path)).unwrap();
    let (first, db) = files.first().unwrap();
    assert_eq!(first, &path, "the vault file itself is searched");
    for (file, bytes) in &files {
        for secret in quickstart::PLAINTEXTS {
            assert!(
                !quickstart::contains(bytes, secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
    // The search is meaningful: the closed file holds the records (their non-secret
    // identifiers and envelope magic), not only an empty schema.
    assert!(
        quickstart::contains(db, b"globex") && quickstart::contains(db, b"CVSE"),
        "the checkpointed database file holds the records"
    );
    // Scanned again now that nothing holds the files open, they are what `run` read.
    let again = quickstart::scan(&path).unwrap();
    assert_eq!(again.len(), files.len());
}

#[test]
fn quickstart_on_a_multi_thread_runtime_finds_no_plaintext() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    demo_leaves_no_plaintext_in_its_files(&runtime);
}

#[test]
fn quickstart_on_a_current_thread_runtime_finds_no_plaintext() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    demo_leaves_no_plaintext_in_its_files(&runtime);
}

#[test]
fn a_vanished_file_is_skipped_and_an_unreadable_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    assert!(
        quickstart::scan(&path).unwrap().is_empty(),
        "files that do not exist are no error"
    );
    // A directory where the log would be cannot be read as a file.
    std::fs::write(&path, b"db").unwrap();
    std::fs::create_dir(dir.path().join("none.db-wal")).unwrap();
    let err = quickstart::scan(&path).unwrap_err().to_string();
    assert!(
        err.starts_with("could not read ") && err.contains("none.db-wal"),
        "{err}"
    );
}
