//! The in-process cache of unwrapped data keys.
//!
//! - Bounded: at most `capacity` entries; the oldest entry is evicted first.
//! - Expiring: an entry older than `ttl` is a miss, so a key destroyed or rewrapped by
//!   another process stops being used here within the TTL.
//! - Single-flight: concurrent misses on one key share one unwrap.
//! - Zeroizing: an evicted entry is dropped as soon as the last in-flight operation that
//!   holds it finishes; dropping zeroizes what this crate owns (see SECURITY.md for the
//!   AES key schedule inside `ring`).
//!
//! Entries are looked up by (tenant, DEK version): the envelope names both, so a
//! steady-state read needs neither a data-key read from storage nor an unwrap. Rewrapping a
//! data key under another master key does not change the key, so it does not invalidate
//! its entry; destroying one does (`remove`, `remove_tenant`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::crypto::{SecretCipher, Suite};
use crate::error::Error;
use crate::ids::{DekVersion, TenantId};

/// An unwrapped, expanded data key. `Debug` shows the suite and the wrapped key's length
/// only: the cipher is redacted, and stored bytes are never printed.
pub(crate) struct CachedDek {
    pub(crate) cipher: SecretCipher,
    pub(crate) suite: Suite,
    /// The wrapped key this entry was unwrapped from (ciphertext, not secret): a stored
    /// record is this entry's key only if its wrapped bytes are these.
    pub(crate) wrapped: Arc<[u8]>,
}

impl std::fmt::Debug for CachedDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDek")
            .field("cipher", &self.cipher)
            .field("suite", &self.suite)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Slot {
    version: DekVersion,
    cell: Arc<OnceCell<Arc<CachedDek>>>,
    /// On [`crate::clock::coarse_monotonic`].
    expires: Duration,
    generation: u64,
}

#[derive(Default)]
struct Inner {
    /// Per tenant, its few cached versions. Looked up by `&str`, so a hit clones nothing.
    map: FastMap<TenantId, Vec<Slot>>,
    /// Insertion order, for evicting the oldest entry first; stale items are skipped.
    order: VecDeque<(TenantId, DekVersion, u64)>,
    len: usize,
    next_generation: u64,
}

impl Inner {
    fn remove(&mut self, tenant: &str, version: DekVersion) -> bool {
        let Some(slots) = self.map.get_mut(tenant) else {
            return false;
        };
        let before = slots.len();
        slots.retain(|s| s.version != version);
        let removed = before != slots.len();
        if slots.is_empty() {
            self.map.remove(tenant);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }
}

enum Lookup {
    Hit(Arc<CachedDek>),
    Pending(Arc<OnceCell<Arc<CachedDek>>>),
}

/// See the module documentation.
pub(crate) struct DekCache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

impl DekCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map holds no invariant a panicking holder could break half-way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached key, or the result of `load` (run once for all concurrent callers).
    /// A failed load is not cached.
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        load: F,
    ) -> Result<Arc<CachedDek>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedDek, Error>>,
    {
        let cell = match self.lookup(tenant, version) {
            Lookup::Hit(dek) => return Ok(dek),
            Lookup::Pending(cell) => cell,
        };
        tracing::trace!(dek_version = version.get(), "data key cache miss");
        let dek = cell
            .get_or_try_init(|| async { load().await.map(Arc::new) })
            .await?;
        Ok(Arc::clone(dek))
    }

    /// The cached key if it is loaded and fresh; never starts a load (for the vault's
    /// synchronous fast path, which falls back to [`Self::get_or_load`] on `None`).
    pub(crate) fn cached(&self, tenant: &TenantId, version: DekVersion) -> Option<Arc<CachedDek>> {
        let now = crate::clock::coarse_monotonic();
        let inner = self.lock();
        let slot = inner
            .map
            .get(tenant.as_str())?
            .iter()
            .find(|s| s.version == version)?;
        if slot.expires > now {
            slot.cell.get().map(Arc::clone)
        } else {
            None
        }
    }

    fn lookup(&self, tenant: &TenantId, version: DekVersion) -> Lookup {
        let now = crate::clock::coarse_monotonic();
        let mut inner = self.lock();
        if let Some(slot) = inner
            .map
            .get(tenant.as_str())
            .and_then(|slots| slots.iter().find(|s| s.version == version))
            && slot.expires > now
        {
            return match slot.cell.get() {
                Some(dek) => Lookup::Hit(Arc::clone(dek)),
                None => Lookup::Pending(Arc::clone(&slot.cell)),
            };
        }
        // Miss or expired: a fresh slot replaces the old one.
        if !inner.remove(tenant.as_str(), version) {
            while inner.len >= self.capacity {
                let Some((old, old_version, generation)) = inner.order.pop_front() else {
                    break;
                };
                let live = inner.map.get(old.as_str()).is_some_and(|slots| {
                    slots
                        .iter()
                        .any(|s| s.version == old_version && s.generation == generation)
                });
                if live {
                    inner.remove(old.as_str(), old_version);
                }
            }
        }
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let cell = Arc::new(OnceCell::new());
        inner.order.push_back((tenant.clone(), version, generation));
        inner.map.entry(tenant.clone()).or_default().push(Slot {
            version,
            cell: Arc::clone(&cell),
            expires: now + self.ttl,
            generation,
        });
        inner.len += 1;
        // Keep the order queue from growing without bound when keys are replaced often.
        if inner.order.len() > 2 * self.capacity + 16 {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(t, v, g)| {
                map.get(t.as_str()).is_some_and(|slots| {
                    slots.iter().any(|s| s.version == *v && s.generation == *g)
                })
            });
        }
        Lookup::Pending(cell)
    }

    /// Drops every entry of `tenant` (after its keys were destroyed or rewrapped).
    pub(crate) fn remove_tenant(&self, tenant: &TenantId) {
        let mut inner = self.lock();
        if let Some(slots) = inner.map.remove(tenant.as_str()) {
            inner.len -= slots.len();
        }
    }

    /// Drops every entry (the keys are zeroized as their last holder lets go of them).
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.lock());
        drop(old);
    }

    /// Drops one entry.
    pub(crate) fn remove(&self, tenant: &TenantId, version: DekVersion) {
        self.lock().remove(tenant.as_str(), version);
    }

    /// Drops every expired entry (their keys are zeroized as their last holder lets go of
    /// them): what the vault's janitor does, so that a key leaves memory within its TTL
    /// whether or not it is asked for again. Returns how many were dropped.
    pub(crate) fn purge_expired(&self) -> usize {
        let now = crate::clock::coarse_monotonic();
        let mut expired: Vec<Slot> = Vec::new();
        {
            let mut inner = self.lock();
            let Inner {
                map, order, len, ..
            } = &mut *inner;
            map.retain(|_, slots| {
                let (keep, gone): (Vec<Slot>, Vec<Slot>) = std::mem::take(slots)
                    .into_iter()
                    .partition(|s| s.expires > now);
                *len -= gone.len();
                expired.extend(gone);
                *slots = keep;
                !slots.is_empty()
            });
            if !expired.is_empty() {
                order.retain(|(t, v, g)| {
                    map.get(t.as_str()).is_some_and(|slots| {
                        slots.iter().any(|s| s.version == *v && s.generation == *g)
                    })
                });
            }
        }
        // The entries are dropped here, outside the lock.
        expired.len()
    }

    /// Number of live entries (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKey;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dek() -> Result<CachedDek, Error> {
        let key = DataKey::generate()?;
        Ok(CachedDek {
            cipher: SecretCipher::new(Suite::Aes256Gcm, &key)?,
            suite: Suite::Aes256Gcm,
            wrapped: Arc::new([0; 16]),
        })
    }

    #[test]
    fn debug_prints_no_wrapped_key_bytes() -> Result<(), Error> {
        let key = DataKey::generate()?;
        let entry = CachedDek {
            cipher: SecretCipher::new(Suite::Aes256Gcm, &key)?,
            suite: Suite::Aes256Gcm,
            wrapped: vec![0xa5; 78].into(),
        };
        let shown = format!("{entry:?}");
        assert!(shown.contains("wrapped_len: 78"), "{shown}");
        assert!(
            !shown.contains("165"),
            "a wrapped byte (0xa5) is printed: {shown}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_load() -> Result<(), Error> {
        let cache = Arc::new(DekCache::new(16, Duration::from_mins(1)));
        let loads = Arc::new(AtomicUsize::new(0));
        let tenant = TenantId::new("t")?;
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (cache, loads, tenant) = (Arc::clone(&cache), Arc::clone(&loads), tenant.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(&tenant, DekVersion::FIRST, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        dek()
                    })
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            t.await.map_err(|_| Error::Config("task panicked"))??;
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn capacity_bounds_entries_and_ttl_expires_them() -> Result<(), Error> {
        let cache = DekCache::new(4, Duration::from_millis(30));
        let tenant = TenantId::new("t")?;
        for v in 1..=10 {
            let version = DekVersion::new(v).ok_or(Error::Config("version"))?;
            cache
                .get_or_load(&tenant, version, || async { dek() })
                .await?;
        }
        assert_eq!(cache.len(), 4);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let loads = AtomicUsize::new(0);
        let version = DekVersion::new(10).ok_or(Error::Config("version"))?;
        cache
            .get_or_load(&tenant, version, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                dek()
            })
            .await?;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "an expired entry must be reloaded"
        );
        Ok(())
    }

    #[tokio::test]
    async fn failed_load_is_not_cached() -> Result<(), Error> {
        let cache = DekCache::new(4, Duration::from_mins(1));
        let tenant = TenantId::new("t")?;
        let err = cache
            .get_or_load(&tenant, DekVersion::FIRST, || async {
                Err(Error::Decryption)
            })
            .await;
        assert!(err.is_err());
        cache
            .get_or_load(&tenant, DekVersion::FIRST, || async { dek() })
            .await?;
        Ok(())
    }
}
