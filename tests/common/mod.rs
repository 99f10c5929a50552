//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::future::Future;
use std::sync::Arc;

use credvault::storage::{DekRecord, PutMode, SecretRecord, Store};
use credvault::{LocalMasterKey, MasterKeyRing, MemoryStore, SecretName, TenantId, Vault};

pub(crate) fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub(crate) fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

pub(crate) fn master() -> LocalMasterKey {
    LocalMasterKey::from_bytes(&[7u8; 32]).unwrap()
}

pub(crate) fn ring() -> MasterKeyRing {
    MasterKeyRing::new(master())
}

/// One vault per backend, each over a fresh store.
pub(crate) async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut out = vec![("memory", Arc::new(MemoryStore::new()) as Arc<dyn Store>)];
    #[cfg(feature = "sqlite")]
    out.push((
        "sqlite",
        Arc::new(credvault::SqliteStore::open_in_memory().await.unwrap()) as Arc<dyn Store>,
    ));
    out
}

pub(crate) fn vault_over(store: &Arc<dyn Store>) -> Vault {
    Vault::builder_with_store(Arc::clone(store), ring())
        .build()
        .unwrap()
}

pub(crate) async fn raw_secret(
    store: &Arc<dyn Store>,
    t: &TenantId,
    n: &SecretName,
) -> SecretRecord {
    store.get_secret(t, n).await.unwrap().unwrap()
}

pub(crate) async fn overwrite_secret(store: &Arc<dyn Store>, record: SecretRecord) {
    store.put_secret(record, PutMode::Upsert).await.unwrap();
}

pub(crate) async fn overwrite_dek(store: &Arc<dyn Store>, record: DekRecord) {
    store.put_dek(record, PutMode::Upsert).await.unwrap();
}

/// Runs `fut`, turning a panic anywhere inside it into `Err(())` (`catch_unwind` around every
/// poll), so that adversarial tests can count panics instead of stopping at the first.
pub(crate) async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, ()> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::task::Poll;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        },
    )
    .await
}

/// Tallies of an adversarial test: inputs tried, accepted (opened), panics, and rejections
/// with an error outside the allowed kinds.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) tried: usize,
    pub(crate) accepted: usize,
    pub(crate) panics: usize,
    pub(crate) unexpected: Vec<String>,
}

impl Tally {
    /// Records one attempt that must not open.
    pub(crate) fn reject<T>(
        &mut self,
        what: impl std::fmt::Display,
        outcome: Result<Result<T, credvault::Error>, ()>,
        allowed: &[credvault::ErrorKind],
    ) {
        self.tried += 1;
        match outcome {
            Ok(Ok(_)) => self.accepted += 1,
            Ok(Err(e)) if allowed.contains(&e.kind()) => {}
            Ok(Err(e)) => self.unexpected.push(format!("{what}: {:?}", e.kind())),
            Err(()) => self.panics += 1,
        }
    }

    /// Prints `label: N tried, 0 accepted, 0 panics` and fails unless every attempt was
    /// rejected with an allowed error and none panicked.
    #[expect(clippy::print_stdout, reason = "the summary line is the test's report")]
    pub(crate) fn assert_all_rejected(&self, label: &str) {
        println!(
            "{label}: {} tried, {} accepted, {} panics",
            self.tried, self.accepted, self.panics
        );
        assert!(self.tried > 0, "{label}: nothing tried");
        assert_eq!(self.accepted, 0, "{label}: tampered input opened");
        assert_eq!(self.panics, 0, "{label}: panicked");
        assert!(
            self.unexpected.is_empty(),
            "{label}: unexpected errors {:?}",
            self.unexpected
        );
    }
}
