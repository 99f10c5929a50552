//! The store's in-process write gate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};

use super::BACKEND;
use crate::error::Error;

/// Lets one of this store's writes at a time reach the database file.
///
/// SQLite admits one writer per file. A connection of the pool that starts a write while
/// another one holds the lock gets `SQLITE_BUSY` and sleeps in SQLite's busy handler (1,
/// 2, 5, 10 ms and longer) before it tries again, holding its connection and a worker
/// thread, and it often wakes long after the file came free: a sweep whose prepare stage
/// reserves encryptions while its write stage commits a batch lost milliseconds per round
/// that way. Queued here instead, this store's writes take the file one after the other
/// as soon as the previous one is done, in arrival order (tokio's mutex is fair).
///
/// The gate is shared by clones of the store. Writers in other processes, or in other
/// stores opened over the same file, still meet at SQLite's lock and its busy timeout.
/// Reads never pass the gate: in WAL mode they run beside the writer.
#[derive(Clone)]
pub(super) struct WriteGate {
    turn: Arc<Mutex<()>>,
    /// How long a write waits for its turn before failing as unavailable.
    wait: Duration,
}

impl WriteGate {
    pub(super) fn new(wait: Duration) -> Self {
        Self {
            turn: Arc::new(Mutex::new(())),
            wait,
        }
    }

    /// Waits for this write's turn; the turn ends when the guard is dropped.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the writes ahead of it keep the gate for longer than the
    /// store's busy timeout.
    pub(super) async fn enter(&self) -> Result<MutexGuard<'_, ()>, Error> {
        tokio::time::timeout(self.wait, self.turn.lock())
            .await
            .map_err(|elapsed| Error::unavailable(BACKEND, elapsed))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "test assertions")]
mod tests {
    use std::time::Duration;

    use super::WriteGate;
    use crate::ErrorKind;

    #[tokio::test]
    async fn a_write_that_waits_longer_than_the_busy_timeout_fails_as_unavailable() {
        let gate = WriteGate::new(Duration::from_millis(20));
        let turn = gate.enter().await.expect("the gate is free");
        let waited = gate.enter().await.map(drop);
        assert_eq!(
            waited.map_err(|e| e.kind()),
            Err(ErrorKind::Unavailable),
            "a write queued behind a turn that outlasts the busy timeout must give up"
        );
        drop(turn);
        assert!(gate.enter().await.is_ok(), "the gate is free again");
    }

    #[tokio::test]
    async fn clones_of_a_store_share_one_gate() {
        let gate = WriteGate::new(Duration::from_millis(20));
        let clone = gate.clone();
        let _turn = gate.enter().await.expect("the gate is free");
        assert!(
            clone.enter().await.is_err(),
            "the clone waits for the same turn"
        );
    }
}
