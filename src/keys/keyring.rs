//! [`MasterKeyRing`]: one active master key for new wraps, older ones for unwrapping.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::MasterKeyProvider;
use crate::error::Error;
use crate::ids::MasterKeyId;

/// The master keys a vault may use: exactly one active key, which wraps every new data
/// key, and any number of decrypt-only keys that can still unwrap what they wrapped
/// before a rotation. Keys are found by the id stored with each wrapped data key.
#[derive(Clone)]
pub struct MasterKeyRing {
    active: Arc<dyn MasterKeyProvider>,
    by_id: HashMap<MasterKeyId, Arc<dyn MasterKeyProvider>>,
}

impl MasterKeyRing {
    /// A ring whose only (and active) key is `active`.
    #[must_use]
    pub fn new(active: impl MasterKeyProvider) -> Self {
        Self::from_arc(Arc::new(active))
    }

    /// [`Self::new`] for a provider that is already shared.
    #[must_use]
    pub fn from_arc(active: Arc<dyn MasterKeyProvider>) -> Self {
        let mut by_id = HashMap::new();
        by_id.insert(active.id().clone(), Arc::clone(&active));
        Self { active, by_id }
    }

    /// Adds a decrypt-only key (a previous master key that still wraps data keys).
    ///
    /// # Errors
    /// [`Error::Config`] if a key with the same id is already in the ring.
    pub fn with_decrypt_only(self, provider: impl MasterKeyProvider) -> Result<Self, Error> {
        self.with_decrypt_only_arc(Arc::new(provider))
    }

    /// [`Self::with_decrypt_only`] for a provider that is already shared.
    ///
    /// # Errors
    /// [`Error::Config`] if a key with the same id is already in the ring.
    pub fn with_decrypt_only_arc(
        mut self,
        provider: Arc<dyn MasterKeyProvider>,
    ) -> Result<Self, Error> {
        if self.by_id.contains_key(provider.id()) {
            return Err(Error::Config("two master keys in the ring share an id"));
        }
        self.by_id.insert(provider.id().clone(), provider);
        Ok(self)
    }

    /// The key that wraps new data keys.
    #[must_use]
    pub fn active(&self) -> &Arc<dyn MasterKeyProvider> {
        &self.active
    }

    /// The key with this id.
    ///
    /// # Errors
    /// [`Error::UnknownMasterKey`], naming the id, if the ring does not hold it.
    pub fn get(&self, id: &MasterKeyId) -> Result<&Arc<dyn MasterKeyProvider>, Error> {
        self.by_id
            .get(id)
            .ok_or_else(|| Error::UnknownMasterKey { id: id.clone() })
    }

    /// Ids of every key in the ring, the active one included.
    pub fn ids(&self) -> impl Iterator<Item = &MasterKeyId> {
        self.by_id.keys()
    }
}

impl fmt::Debug for MasterKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.by_id.keys().collect();
        ids.sort();
        f.debug_struct("MasterKeyRing")
            .field("active", self.active.id())
            .field("keys", &ids)
            .finish()
    }
}
