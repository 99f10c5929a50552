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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.keep().join("conformance.db");
        let store = SqliteStore::with_options(
            credvault::storage::SqliteOptions::file(&path).with_durable_commits(false),
        )
        .await
        .unwrap();
        Some(Arc::new(store))
    });
}
