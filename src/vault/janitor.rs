//! The vault's janitor: a thread that drops the expired entries of the data-key cache and
//! of the active-key map, so that an unwrapped key leaves memory (zeroized) within its TTL
//! plus one pause, whether or not anything asks for it again.
//!
//! A plain thread, not a task: it needs no async runtime (and no runtime's timers), and
//! waits on a channel whose sender the vault holds, so that it ends as soon as the last
//! handle to the vault is dropped.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;

/// Bounds of the pause between two sweeps.
const MIN_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(15);

/// The pause between sweeps for these TTLs: a quarter of the shorter one, within bounds. An
/// entry is dropped at most this long after it expires.
pub(super) fn pause(dek_ttl: Duration, active_ttl: Duration) -> Duration {
    (dek_ttl.min(active_ttl) / 4).clamp(MIN_PAUSE, MAX_PAUSE)
}

/// What the vault keeps of its janitor: dropping it ends the thread.
pub(super) struct Janitor {
    _stop: mpsc::Sender<()>,
}

impl Janitor {
    /// The channel the janitor of a vault waits on, before the vault exists.
    pub(super) fn channel() -> (Self, mpsc::Receiver<()>) {
        let (stop, wait) = mpsc::channel();
        (Self { _stop: stop }, wait)
    }

    /// Starts the janitor of `inner`. If no thread can be started, expired entries are
    /// still never used, and are dropped when they are next looked up or evicted.
    pub(super) fn start(inner: &Arc<Inner>, wait: mpsc::Receiver<()>) {
        let vault: Weak<Inner> = Arc::downgrade(inner);
        let pause = pause(inner.config.dek_cache_ttl, inner.config.active_key_ttl);
        let started = std::thread::Builder::new()
            .name("credvault-janitor".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(pause) {
                    let Some(inner) = vault.upgrade() else { break };
                    let keys = inner.deks.purge_expired();
                    let active = inner.active.purge_expired();
                    if keys + active > 0 {
                        tracing::trace!(keys, active, "dropped expired cache entries");
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start the cache janitor; expired keys leave memory when next looked up");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use std::time::Duration;

    use super::pause;
    use crate::storage::MemoryStore;
    use crate::{ApiKey, LocalMasterKey, MasterKeyRing, SecretName, TenantId, Vault};

    #[test]
    fn the_pause_is_a_quarter_of_the_shorter_ttl_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(pause(s(300), s(30)), Duration::from_millis(7500));
        assert_eq!(pause(s(4), s(30)), s(1));
        assert_eq!(pause(Duration::ZERO, s(30)), Duration::from_millis(50));
        assert_eq!(pause(s(3600), s(3600)), s(15));
    }

    /// Keys leave memory within their TTL plus one pause with no call at all, and the
    /// janitor ends when the vault is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_keys_leave_memory_without_any_call() {
        let ttl = Duration::from_millis(200);
        let vault = Vault::builder(
            MemoryStore::new(),
            MasterKeyRing::new(LocalMasterKey::generate().unwrap()),
        )
        .with_dek_cache(100, ttl)
        .with_active_key_ttl(ttl)
        .build()
        .unwrap();
        let t = TenantId::new("acme").unwrap();
        vault.create_tenant(&t).await.unwrap();
        vault
            .put(&t, &SecretName::new("k").unwrap(), &ApiKey::new("v"))
            .await
            .unwrap();
        assert!(vault.inner.deks.len() > 0 && vault.inner.active.len() > 0);
        let bound = ttl + pause(ttl, ttl);
        let mut waited = Duration::ZERO;
        // The bound, and then a generous margin for a loaded machine.
        while (vault.inner.deks.len() > 0 || vault.inner.active.len() > 0) && waited < bound * 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(
            (vault.inner.deks.len(), vault.inner.active.len()),
            (0, 0),
            "the expired entries are still held after {waited:?}"
        );
        let weak = std::sync::Arc::downgrade(&vault.inner);
        drop(vault);
        assert!(weak.upgrade().is_none(), "the janitor keeps no vault alive");
    }
}
