//! `MemoryStore` passes the storage conformance suite.

use std::sync::Arc;

use credvault::MemoryStore;

credvault::store_conformance_tests!(async { Some(Arc::new(MemoryStore::new())) });
