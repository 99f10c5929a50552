//! The SQLite file the quickstart example writes holds none of the plaintexts it stored.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, reason = "test assertions")]

#[path = "../examples/quickstart.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod quickstart;

#[tokio::test]
async fn quickstart_vault_file_contains_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quickstart.db");
    let files = quickstart::run(&path).await.unwrap();
    assert!(!files.is_empty());
    let mut total = 0;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        total += bytes.len();
        for secret in quickstart::PLAINTEXTS {
            assert!(
                !quickstart::contains(&bytes, secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
    // The search is meaningful: the file does hold the (non-secret) identifiers.
    let all: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        quickstart::contains(&all, b"globex") && quickstart::contains(&all, b"CVSE"),
        "searched {total} bytes"
    );
}
