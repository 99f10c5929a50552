//! `SqliteStore` passes the storage conformance suite, in memory and on a file shared by
//! two independently opened stores (as two processes would open it).
#![cfg(feature = "sqlite")]
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

use std::sync::Arc;

use credvault::SqliteStore;

mod in_memory {
    use super::*;
    credvault::store_conformance_tests!(async {
        Some(Arc::new(SqliteStore::open_in_memory().await.unwrap()))
    });
}

mod file {
    use super::*;
    credvault::store_conformance_tests!(async {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.keep().join("conformance.db");
        let store = SqliteStore::with_options(
            credvault::storage::SqliteOptions::file(&path).with_durable_commits(false),
        )
        .await
        .unwrap();
        Some(Arc::new(store))
    });
}

/// A row edited in the database to hold an envelope larger than any credvault writes is
/// refused without being loaded.
#[tokio::test]
async fn oversize_stored_envelope_is_rejected_as_malformed() {
    use credvault::storage::{PutMode, Store, conformance};
    let store = SqliteStore::open_in_memory().await.unwrap();
    let t = conformance::unique_tenant("oversize");
    let n = credvault::SecretName::new("big").unwrap();
    let limit = credvault::limits::MAX_SECRET_SIZE_LIMIT + 64;
    store
        .put_secret(
            conformance::secret_record(&t, &n, vec![0; limit]),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_secret(&t, &n)
            .await
            .unwrap()
            .unwrap()
            .envelope
            .len(),
        limit
    );
    store
        .put_secret(
            conformance::secret_record(&t, &n, vec![0; limit + 1]),
            PutMode::Upsert,
        )
        .await
        .unwrap();
    let err = store.get_secret(&t, &n).await.unwrap_err();
    assert_eq!(err.kind(), credvault::ErrorKind::Malformed);
}
