//! # credvault
//!
//! Envelope-encrypted, multi-tenant storage for the credentials your customers entrust to
//! you: third-party API keys, OAuth tokens, arbitrary secret blobs.
//!
//! - Each tenant has its own 256-bit data keys (DEKs), versioned, stored only wrapped by a
//!   master key from a pluggable [`MasterKeyProvider`].
//! - Every secret is sealed (AES-256-GCM or XChaCha20-Poly1305) under its tenant's current
//!   data key and bound to its tenant, name, kind and key version: a row copied anywhere
//!   else fails to open.
//! - Secrets are typed, zeroizing handles ([`ApiKey`], [`OAuthToken`], [`SecretBytes`])
//!   with redacted `Debug` and one read path, `expose_secret()`.
//! - Storage is a small async trait with conditional writes ([`storage::Store`]), with
//!   in-memory and SQLite backends, safe for many service instances at once.
//!
//! ```
//! use credvault::{ApiKey, LocalMasterKey, MasterKeyRing, MemoryStore, SecretName, TenantId, Vault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), credvault::Error> {
//! let master = LocalMasterKey::generate()?; // in production: from_env, from_file, or a KMS
//! let vault = Vault::builder(MemoryStore::new(), MasterKeyRing::new(master)).build()?;
//!
//! let tenant = TenantId::new("acme")?;
//! vault.create_tenant(&tenant).await?;
//! let name = SecretName::new("github")?;
//! vault.put(&tenant, &name, &ApiKey::new("ghp_example")).await?;
//!
//! let key: ApiKey = vault.get(&tenant, &name).await?;
//! assert_eq!(key.expose_secret(), "ghp_example");
//! # Ok(())
//! # }
//! ```
//!
//! The byte formats are specified in `docs/format.md`; the threat model is in
//! `SECURITY.md`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;
mod clock;
mod codec;
mod crypto;
pub mod envelope;
mod error;
mod ids;
pub mod keys;
pub mod secret;
pub mod storage;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
mod vault;
#[cfg(test)]
mod worked_example;

pub use crypto::{Suite, TAG_LEN};
pub use error::{BoxError, Error, ErrorKind, FormatError, Structure};
pub use ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
pub use keys::{LocalMasterKey, MasterKeyProvider, MasterKeyRing};
pub use secrecy::{ExposeSecret, SecretBox, SecretString};
pub use secret::{ApiKey, OAuthToken, Secret, SecretBytes, SecretKind};
#[cfg(feature = "postgres")]
pub use storage::PostgresStore;
#[cfg(feature = "redis")]
pub use storage::RedisStore;
#[cfg(feature = "sqlite")]
pub use storage::SqliteStore;
pub use storage::{MemoryStore, SecretMetadata};
pub use vault::{
    DekStatus, DeletionReceipt, JobFailure, JobOptions, Progress, ReencryptReport, RewrapReport,
    TenantCreation, Vault, VaultBuilder,
};

/// Vault limits and defaults.
pub mod limits {
    pub use crate::vault::{
        DEFAULT_MAX_ENCRYPTIONS_AES, DEFAULT_MAX_ENCRYPTIONS_XCHACHA, DEFAULT_MAX_SECRET_SIZE,
        MAX_SECRET_SIZE_LIMIT,
    };
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
