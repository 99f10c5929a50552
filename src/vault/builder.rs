//! [`VaultBuilder`] and the vault's settings.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use super::janitor::Janitor;
use super::{ActiveKeys, Inner, Vault};
use crate::crypto::Suite;
use crate::error::Error;
use crate::keys::{DekCache, MasterKeyRing};
use crate::storage::{MemoryStore, Store};

/// The largest `max_secret_size` a vault accepts: 16 MiB.
pub const MAX_SECRET_SIZE_LIMIT: usize = 16 << 20;
/// Default limit on a secret's encoded plaintext: 64 KiB.
pub const DEFAULT_MAX_SECRET_SIZE: usize = 64 << 10;
/// Default number of encryptions after which an AES-256-GCM data key is rolled to a new
/// version: 2^30, a quarter of the 2^32 bound for random 96-bit nonces.
pub const DEFAULT_MAX_ENCRYPTIONS_AES: u64 = 1 << 30;
/// Default roll-over count for XChaCha20-Poly1305 data keys: 2^48.
pub const DEFAULT_MAX_ENCRYPTIONS_XCHACHA: u64 = 1 << 48;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) suite: Suite,
    pub(crate) max_secret_size: usize,
    pub(crate) dek_cache_capacity: usize,
    pub(crate) dek_cache_ttl: Duration,
    pub(crate) active_key_ttl: Duration,
    pub(crate) max_encryptions: Option<u64>,
    pub(crate) reservation_block: u64,
    pub(crate) max_key_age: Option<Duration>,
    pub(crate) reencrypt_on_read: bool,
}

impl Config {
    /// The roll-over count for a data key of `suite`.
    pub(crate) fn max_encryptions(&self, suite: Suite) -> u64 {
        let default = match suite {
            Suite::Aes256Gcm => DEFAULT_MAX_ENCRYPTIONS_AES,
            Suite::XChaCha20Poly1305 => DEFAULT_MAX_ENCRYPTIONS_XCHACHA,
        };
        self.max_encryptions
            .unwrap_or(default)
            .min(suite.max_encryptions())
    }
}

/// Configures a [`Vault`]. Every setting has a safe default.
#[must_use]
pub struct VaultBuilder {
    store: Arc<dyn Store>,
    memory: Option<Arc<MemoryStore>>,
    keys: MasterKeyRing,
    config: Config,
}

impl VaultBuilder {
    /// A builder over a store of a known type: a [`MemoryStore`] is recognised, so that
    /// `put` and `get` can call it without going through the [`Store`] trait's futures.
    pub(crate) fn from_store<S: Store>(store: Arc<S>, keys: MasterKeyRing) -> Self {
        let any: Arc<dyn Any + Send + Sync> = Arc::clone(&store) as _;
        let memory = any.downcast::<MemoryStore>().ok();
        Self {
            memory,
            ..Self::new(store, keys)
        }
    }

    pub(crate) fn new(store: Arc<dyn Store>, keys: MasterKeyRing) -> Self {
        Self {
            store,
            memory: None,
            keys,
            config: Config {
                suite: Suite::Aes256Gcm,
                max_secret_size: DEFAULT_MAX_SECRET_SIZE,
                dek_cache_capacity: 10_000,
                dek_cache_ttl: Duration::from_mins(5),
                active_key_ttl: Duration::from_secs(30),
                max_encryptions: None,
                reservation_block: 1024,
                max_key_age: None,
                reencrypt_on_read: false,
            },
        }
    }

    /// The suite of newly created data keys (default AES-256-GCM). Existing keys keep
    /// their suite.
    pub fn with_suite(mut self, suite: Suite) -> Self {
        self.config.suite = suite;
        self
    }

    /// Largest accepted secret, measured as its encoded plaintext (default 64 KiB, at most
    /// [`MAX_SECRET_SIZE_LIMIT`]).
    pub fn with_max_secret_size(mut self, bytes: usize) -> Self {
        self.config.max_secret_size = bytes;
        self
    }

    /// Size and lifetime of the cache of unwrapped data keys (default 10,000 entries, five
    /// minutes). The lifetime bounds how long this process keeps using a key that another
    /// process destroyed or rewrapped.
    pub fn with_dek_cache(mut self, capacity: usize, ttl: Duration) -> Self {
        self.config.dek_cache_capacity = capacity;
        self.config.dek_cache_ttl = ttl;
        self
    }

    /// How long this process trusts its knowledge of which data-key version is active
    /// before re-reading it from the store (default 30 s).
    pub fn with_active_key_ttl(mut self, ttl: Duration) -> Self {
        self.config.active_key_ttl = ttl;
        self
    }

    /// Encryptions after which a tenant's data key is rolled to a new version. Defaults:
    /// [`DEFAULT_MAX_ENCRYPTIONS_AES`], [`DEFAULT_MAX_ENCRYPTIONS_XCHACHA`]. For
    /// AES-256-GCM it is capped at 0.9 x 2^32 whatever is configured.
    pub fn with_max_encryptions_per_key(mut self, count: u64) -> Self {
        self.config.max_encryptions = Some(count);
        self
    }

    /// How many encryptions one durable write reserves (default 1024). Larger blocks cost
    /// fewer writes; a process that exits forfeits the unused part of its block.
    pub fn with_reservation_block(mut self, count: u64) -> Self {
        self.config.reservation_block = count;
        self
    }

    /// Automatic rotation by age: a data key older than `age` is rolled to a new version
    /// when its current block of reserved encryptions runs out (so within
    /// `reservation_block` writes, or at the next write after a restart). Default: none;
    /// the usage limit ([`Self::with_max_encryptions_per_key`]) always applies.
    pub fn with_max_key_age(mut self, age: Duration) -> Self {
        self.config.max_key_age = Some(age);
        self
    }

    /// Re-encrypt lazily on read: a secret read under an older data-key version than the
    /// tenant's active one is re-sealed under the active version (a conditional write that
    /// yields to concurrent writers). Default off.
    pub fn with_reencrypt_on_read(mut self, enabled: bool) -> Self {
        self.config.reencrypt_on_read = enabled;
        self
    }

    /// Checks the settings and builds the vault.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero or over-limit size, a zero cache capacity, a zero
    /// reservation block or a zero encryption limit.
    pub fn build(self) -> Result<Vault, Error> {
        let c = &self.config;
        if c.max_secret_size == 0 || c.max_secret_size > MAX_SECRET_SIZE_LIMIT {
            return Err(Error::Config(
                "max secret size must be between 1 byte and 16 MiB",
            ));
        }
        if c.dek_cache_capacity == 0 {
            return Err(Error::Config("data key cache capacity must be at least 1"));
        }
        if c.reservation_block == 0 {
            return Err(Error::Config("reservation block must be at least 1"));
        }
        let year = Duration::from_hours(365 * 24);
        if c.dek_cache_ttl > year
            || c.active_key_ttl > year
            || c.max_key_age.is_some_and(|a| a > 100 * year)
        {
            return Err(Error::Config("cache lifetimes must be at most a year"));
        }
        if c.max_encryptions == Some(0) {
            return Err(Error::Config("max encryptions per key must be at least 1"));
        }
        Ok(self.build_unchecked())
    }

    pub(crate) fn build_unchecked(self) -> Vault {
        let deks = DekCache::new(self.config.dek_cache_capacity, self.config.dek_cache_ttl);
        let active = ActiveKeys::new(self.config.dek_cache_capacity);
        let (janitor, wait) = Janitor::channel();
        let inner = Arc::new(Inner {
            store: self.store,
            memory: self.memory,
            keys: std::sync::RwLock::new(Arc::new(self.keys)),
            config: self.config,
            deks,
            active,
            _janitor: janitor,
        });
        Janitor::start(&inner, wait);
        Vault { inner }
    }
}
