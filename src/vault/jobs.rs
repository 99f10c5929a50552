//! Options, progress and reports of the long-running key jobs.

use crate::error::ErrorKind;
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::storage::Timestamp;

/// Settings shared by the key jobs ([`crate::Vault::rewrap_all`],
/// [`crate::Vault::reencrypt_all`], ...).
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub(crate) batch_size: usize,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self { batch_size: 500 }
    }
}

impl JobOptions {
    /// Records read and written per round trip (default 500, clamped to 1..=10,000).
    /// Memory use is proportional to it, never to the number of records swept.
    #[must_use]
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.clamp(1, 10_000);
        self
    }
}

/// Whether `e`, met while processing one item, stops the whole job instead of being
/// reported as that item's failure: a store that fails or cannot be reached says nothing
/// about the item, and the job is resumable, so it returns the error for the caller to
/// run it again.
pub(crate) fn stops_the_job(e: &crate::Error) -> bool {
    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Storage)
}

/// How far a running job has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Items processed so far (changed, found current, or failed).
    pub done: u64,
    /// Items the job expected to process when it started (concurrent writers can make the
    /// final `done` differ).
    pub total: u64,
    /// Items that failed so far.
    pub errors: u64,
}

/// One item a job could not process. Names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobFailure {
    /// The tenant involved.
    pub tenant: TenantId,
    /// The secret, for re-encryption failures.
    pub name: Option<SecretName>,
    /// The data-key version involved.
    pub dek_version: Option<DekVersion>,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What [`crate::Vault::rewrap_all`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Live data keys examined.
    pub examined: u64,
    /// Data keys rewrapped under the active master key by this job.
    pub rewrapped: u64,
    /// Data keys that were already under the active master key.
    pub already_current: u64,
    /// Conditional writes that lost to a concurrent writer and were retried.
    pub retries: u64,
    /// Data keys that could not be rewrapped (they are still readable under their old
    /// master key; the job can be run again).
    pub failures: Vec<JobFailure>,
}

/// What [`crate::Vault::reencrypt_tenant`] and [`crate::Vault::reencrypt_all`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReencryptReport {
    /// Secrets found under an older data-key version.
    pub examined: u64,
    /// Secrets re-encrypted under the active version by this job.
    pub reencrypted: u64,
    /// Secrets skipped because a concurrent write changed them first (that write already
    /// used a current key; the job never overwrites it).
    pub skipped_concurrent_write: u64,
    /// Secrets that could not be re-encrypted (for example a row that fails to open).
    pub failures: Vec<JobFailure>,
}

/// Proof of a tenant deletion ([`crate::Vault::delete_tenant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeletionReceipt {
    /// The deleted tenant.
    pub tenant: TenantId,
    /// Data-key versions that are destroyed (by this call or an interrupted earlier one).
    pub dek_versions_destroyed: Vec<DekVersion>,
    /// Secret rows this call removed.
    pub secrets_deleted: u64,
    /// Data-key records (destroyed tombstones) this call removed.
    pub dek_records_removed: u64,
    /// Whether the store's own files are rid of the destroyed keys' bytes, or what the
    /// operator must still do ([`Store::erase_deleted`](crate::storage::Store::erase_deleted)).
    pub erasure: crate::storage::Erasure,
    /// When the deletion completed.
    pub completed_at: Timestamp,
}

/// Runs a job's `stage` (a producer that hands its work to `caller` over a channel) beside
/// `caller`, and returns what `caller` returns once both have ended.
///
/// On a tokio runtime the stage is a task of its own, spawned by this call, so that on a
/// multi-threaded runtime its CPU work (reading rows, crypto) runs on another worker
/// thread while `caller` hands statements to the store: in one task, the caller's next
/// statement would wait for every stretch of the stage's work that does not yield.
/// Elsewhere both run in the caller's task (the stage boxed, so the job's future stays
/// small).
///
/// `caller` must own the channel's receiving end, so that when it ends (done or failed)
/// the stage's next hand-over fails and the stage ends too; the stage is awaited, so no
/// work of the job outlives it. If the job's future is dropped, the task is aborted.
pub(crate) fn beside<S, C, T>(stage: S, caller: C) -> impl Future<Output = T>
where
    S: Future<Output = ()> + Send + 'static,
    C: Future<Output = T>,
{
    let stage = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Stage::Spawned(AbortOnDrop(runtime.spawn(stage))),
        Err(_) => Stage::Local(Box::pin(stage)),
    };
    async move {
        match stage {
            Stage::Spawned(task) => {
                let out = caller.await;
                task.finish().await;
                out
            }
            Stage::Local(stage) => tokio::join!(stage, caller).1,
        }
    }
}

/// Where [`beside`] runs a stage.
enum Stage<S> {
    Spawned(AbortOnDrop),
    Local(std::pin::Pin<Box<S>>),
}

/// A spawned stage, aborted if the job is dropped before it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn finish(mut self) {
        if let Err(e) = (&mut self.0).await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
