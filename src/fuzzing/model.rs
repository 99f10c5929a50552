//! The stateful target: a [`Vault`] over a [`MemoryStore`] behind a [`FaultyStore`],
//! checked operation by operation against a map of what was acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Outcome;
use super::fixture::{self, block_on};
use crate::crypto::Suite;
use crate::error::{Error, ErrorKind};
use crate::ids::{SecretName, TenantId};
use crate::keys::MasterKeyRing;
use crate::secret::ApiKey;
use crate::storage::{CrashPoint, FaultyStore, MemoryStore, Store};
use crate::vault::{JobOptions, TenantCreation, Vault};

/// Most operations one input runs.
const MAX_OPS: usize = 64;
const TENANTS: u8 = 2;
const NAMES: u8 = 3;

/// One operation of [`vault_model`]. On the wire every operation is two bytes, an opcode
/// (taken modulo 8) and an argument; [`Op::encode`] writes the canonical pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `vault.put` of a fresh API key (a value no earlier step wrote).
    Put {
        /// Tenant index, 0 or 1.
        tenant: u8,
        /// Secret name index, 0 to 2.
        name: u8,
    },
    /// `vault.get::<ApiKey>`.
    Get {
        /// Tenant index, 0 or 1.
        tenant: u8,
        /// Secret name index, 0 to 2.
        name: u8,
    },
    /// `vault.delete`.
    Delete {
        /// Tenant index, 0 or 1.
        tenant: u8,
        /// Secret name index, 0 to 2.
        name: u8,
    },
    /// `vault.create_tenant`.
    CreateTenant {
        /// Tenant index, 0 or 1.
        tenant: u8,
    },
    /// `vault.rotate_tenant_key`.
    RotateTenantKey {
        /// Tenant index, 0 or 1.
        tenant: u8,
    },
    /// `vault.reencrypt_tenant`, or `vault.reencrypt_all` when `tenant` is `None`.
    Reencrypt {
        /// Tenant index, 0 or 1, or every tenant.
        tenant: Option<u8>,
    },
    /// `vault.delete_tenant`.
    DeleteTenant {
        /// Tenant index, 0 or 1.
        tenant: u8,
    },
    /// Restarts the process: finishes a tenant creation or deletion that a crash
    /// interrupted (as an operator would, by calling it again), then builds a fresh vault
    /// over a store that crashes at its `crash_at`-th write (0: never).
    Restart {
        /// Write number at which the new store crashes (1 to 7), or 0 for never.
        crash_at: u8,
        /// Whether the crashing write is applied before its acknowledgement is lost.
        after_write: bool,
        /// Whether the new vault creates XChaCha20-Poly1305 data keys (else AES-256-GCM).
        xchacha: bool,
    },
}

impl Op {
    /// Decodes one operation from two bytes.
    #[must_use]
    pub fn decode(opcode: u8, arg: u8) -> Self {
        let tenant = arg & 1;
        let name = (arg >> 1) % NAMES;
        match opcode % 8 {
            0 => Self::Put { tenant, name },
            1 => Self::Get { tenant, name },
            2 => Self::Delete { tenant, name },
            3 => Self::CreateTenant { tenant },
            4 => Self::RotateTenantKey { tenant },
            5 => Self::Reencrypt {
                tenant: (arg & 2 == 0).then_some(tenant),
            },
            6 => Self::DeleteTenant { tenant },
            _ => Self::Restart {
                crash_at: arg & 7,
                after_write: arg & 8 != 0,
                xchacha: arg & 16 != 0,
            },
        }
    }

    /// The two bytes that [`Op::decode`] reads back as this operation.
    #[must_use]
    pub fn encode(self) -> [u8; 2] {
        match self {
            Self::Put { tenant, name } => [0, tenant | name << 1],
            Self::Get { tenant, name } => [1, tenant | name << 1],
            Self::Delete { tenant, name } => [2, tenant | name << 1],
            Self::CreateTenant { tenant } => [3, tenant],
            Self::RotateTenantKey { tenant } => [4, tenant],
            Self::Reencrypt { tenant: Some(t) } => [5, t],
            Self::Reencrypt { tenant: None } => [5, 2],
            Self::DeleteTenant { tenant } => [6, tenant],
            Self::Restart {
                crash_at,
                after_write,
                xchacha,
            } => [
                7,
                crash_at | u8::from(after_write) << 3 | u8::from(xchacha) << 4,
            ],
        }
    }
}

/// A job that a crash interrupted and a restart finishes.
#[derive(Clone, Copy)]
enum Pending {
    Create(u8),
    Delete(u8),
}

/// What the vault may hold: per tenant whether it exists, per secret the values a read may
/// return (one after an acknowledged write; two after a write whose acknowledgement a
/// crash lost). A missing secret is `None`.
struct Model {
    tenants: [bool; TENANTS as usize],
    values: BTreeMap<(u8, u8), Vec<Option<String>>>,
    pending: Option<Pending>,
}

impl Model {
    fn possible(&self, tenant: u8, name: u8) -> &[Option<String>] {
        self.values
            .get(&(tenant, name))
            .map_or(&[None], Vec::as_slice)
    }

    fn set(&mut self, tenant: u8, name: u8, value: Option<String>) {
        self.values.insert((tenant, name), vec![value]);
    }

    fn add_possible(&mut self, tenant: u8, name: u8, value: Option<String>) {
        let mut values = self.possible(tenant, name).to_vec();
        if !values.contains(&value) {
            values.push(value);
        }
        self.values.insert((tenant, name), values);
    }

    fn exists(&self, tenant: u8) -> bool {
        self.tenants
            .get(usize::from(tenant))
            .copied()
            .unwrap_or(false)
    }

    fn set_exists(&mut self, tenant: u8, exists: bool) {
        if let Some(slot) = self.tenants.get_mut(usize::from(tenant)) {
            *slot = exists;
        }
    }
}

/// The running system: the durable store, and the current process's vault over a
/// crashing view of it.
struct System {
    inner: Arc<dyn Store>,
    faulty: Arc<FaultyStore>,
    vault: Vault,
    tenants: Vec<TenantId>,
    names: Vec<SecretName>,
}

impl System {
    fn new() -> Self {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let faulty = Arc::new(FaultyStore::new(
            Arc::clone(&inner),
            0,
            CrashPoint::BeforeWrite,
        ));
        let vault = vault_over(faulty.clone(), Suite::Aes256Gcm);
        let tenants = (0..TENANTS)
            .map(|i| TenantId::new(format!("t{i}")).expect("valid tenant"))
            .collect();
        let names = (0..NAMES)
            .map(|i| SecretName::new(format!("n{i}")).expect("valid name"))
            .collect();
        Self {
            inner,
            faulty,
            vault,
            tenants,
            names,
        }
    }

    fn tenant(&self, i: u8) -> &TenantId {
        self.tenants
            .get(usize::from(i))
            .expect("tenant index in range")
    }

    fn name(&self, i: u8) -> &SecretName {
        self.names.get(usize::from(i)).expect("name index in range")
    }
}

/// A vault with small usage limits, so that runs of a few puts reserve encryptions and
/// roll data keys over, and so reach those writes' crash points too.
fn vault_over(store: Arc<dyn Store>, suite: Suite) -> Vault {
    Vault::builder_with_store(store, MasterKeyRing::new(fixture::master()))
        .with_suite(suite)
        .with_reservation_block(2)
        .with_max_encryptions_per_key(5)
        .build()
        .expect("valid settings")
}

/// Decodes `data` into at most 64 [`Op`]s (two bytes each) and runs them against a vault
/// over a [`MemoryStore`] wrapped in a [`FaultyStore`], checking each result against a
/// model map:
/// - a read returns exactly the last acknowledged write (or, after a crash lost a write's
///   acknowledgement, that write or the value before it), never another plaintext;
/// - every operation on a crashed process fails cleanly with `Unavailable`;
/// - tenant-level operations agree with whether the tenant exists, key jobs report no
///   failure, and nothing panics.
///
/// # Panics
/// If the vault and the model disagree.
#[must_use]
pub fn vault_model(data: &[u8]) -> Outcome {
    let ops: Vec<Op> = data
        .chunks_exact(2)
        .take(MAX_OPS)
        .filter_map(|pair| match pair {
            [opcode, arg] => Some(Op::decode(*opcode, *arg)),
            _ => None,
        })
        .collect();
    if ops.is_empty() {
        return Outcome::Rejected;
    }
    block_on(async {
        let mut system = System::new();
        let mut model = Model {
            tenants: [false; TENANTS as usize],
            values: BTreeMap::new(),
            pending: None,
        };
        for (step, op) in ops.into_iter().enumerate() {
            run(&mut system, &mut model, step, op).await;
        }
    });
    Outcome::Accepted
}

async fn run(system: &mut System, model: &mut Model, step: usize, op: Op) {
    if let Op::Restart {
        crash_at,
        after_write,
        xchacha,
    } = op
    {
        restart(system, model, crash_at, after_write, xchacha).await;
        return;
    }
    let dead_before = system.faulty.crashed();
    let result = apply(system, model, step, op).await;
    if dead_before || system.faulty.crashed() {
        assert!(
            result.as_ref().err().map(Error::kind) == Some(ErrorKind::Unavailable),
            "an operation of a crashed process must fail with Unavailable ({op:?})"
        );
        if !dead_before {
            crashed_during(model, step, op);
        }
        return;
    }
    let Ok(()) = result else {
        panic!("{op:?} failed without a crash");
    };
}

/// What a crash in the middle of `op` may have left behind.
fn crashed_during(model: &mut Model, step: usize, op: Op) {
    match op {
        Op::Put { tenant, name } => model.add_possible(tenant, name, Some(value(step))),
        Op::Delete { tenant, name } => model.add_possible(tenant, name, None),
        Op::CreateTenant { tenant } => model.pending = Some(Pending::Create(tenant)),
        Op::DeleteTenant { tenant } => model.pending = Some(Pending::Delete(tenant)),
        // Key jobs change no value; every value stays readable.
        Op::Get { .. } | Op::RotateTenantKey { .. } | Op::Reencrypt { .. } | Op::Restart { .. } => {
        }
    }
}

fn value(step: usize) -> String {
    format!("secret-{step}")
}

/// Runs `op` and checks its result against the model; `Err` only for a storage failure,
/// which the caller checks against the crash schedule.
async fn apply(system: &System, model: &mut Model, step: usize, op: Op) -> Result<(), Error> {
    let vault = &system.vault;
    match op {
        Op::Put { tenant, name } => {
            let v = value(step);
            let result = vault
                .put(
                    system.tenant(tenant),
                    system.name(name),
                    &ApiKey::new(v.clone()),
                )
                .await;
            if expect_tenant(result, model.exists(tenant))?.is_some() {
                model.set(tenant, name, Some(v));
            }
        }
        Op::Get { tenant, name } => {
            let got = match vault
                .get::<ApiKey>(system.tenant(tenant), system.name(name))
                .await
            {
                Ok(key) => Some(key.expose_secret().to_owned()), // compared, never printed
                Err(Error::NotFound) => None,
                Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e),
                Err(e) => panic!("get failed with {:?}", e.kind()),
            };
            assert!(
                model.possible(tenant, name).contains(&got),
                "a read returned neither the last acknowledged write nor a possibly applied one"
            );
            model.set(tenant, name, got);
        }
        Op::Delete { tenant, name } => {
            let existed = vault
                .delete(system.tenant(tenant), system.name(name))
                .await?;
            assert!(
                model
                    .possible(tenant, name)
                    .iter()
                    .any(|v| v.is_some() == existed),
                "delete disagrees about whether the secret existed"
            );
            model.set(tenant, name, None);
        }
        Op::CreateTenant { tenant } => {
            let created = vault.create_tenant(system.tenant(tenant)).await?;
            assert!(
                (created == TenantCreation::Created) != model.exists(tenant),
                "create_tenant disagrees about whether the tenant existed"
            );
            model.set_exists(tenant, true);
        }
        Op::RotateTenantKey { tenant } => {
            let result = vault.rotate_tenant_key(system.tenant(tenant)).await;
            expect_tenant(result, model.exists(tenant))?;
        }
        Op::Reencrypt {
            tenant: Some(tenant),
        } => {
            let result = vault
                .reencrypt_tenant(system.tenant(tenant), &JobOptions::default())
                .await;
            if let Some(report) = expect_tenant(result, model.exists(tenant))? {
                assert!(
                    report.failures.is_empty(),
                    "re-encryption reported failures"
                );
            }
        }
        Op::Reencrypt { tenant: None } => {
            let report = vault
                .reencrypt_all(&JobOptions::default().with_batch_size(2), |_| {})
                .await?;
            assert!(
                report.failures.is_empty(),
                "re-encryption reported failures"
            );
        }
        Op::DeleteTenant { tenant } => {
            let receipt = vault.delete_tenant(system.tenant(tenant)).await?;
            deleted_tenant(model, tenant, receipt.secrets_deleted);
        }
        Op::Restart { .. } => {}
    }
    Ok(())
}

/// Checks a completed `delete_tenant` against the model and applies it.
fn deleted_tenant(model: &mut Model, tenant: u8, secrets_deleted: u64) {
    let names = 0..NAMES;
    let surely = names
        .clone()
        .filter(|&n| model.possible(tenant, n).iter().all(Option::is_some))
        .count();
    let maybe = names
        .clone()
        .filter(|&n| model.possible(tenant, n).iter().any(Option::is_some))
        .count();
    let deleted = usize::try_from(secrets_deleted).unwrap_or(usize::MAX);
    assert!(
        (surely..=maybe).contains(&deleted),
        "delete_tenant removed a number of secrets the model cannot explain"
    );
    for n in names {
        model.set(tenant, n, None);
    }
    model.set_exists(tenant, false);
}

/// Checks an operation that needs an existing tenant: `Ok` if it exists, `TenantNotFound`
/// if not. Returns the value, `None` for the expected `TenantNotFound`, or the storage
/// error for the caller to check.
fn expect_tenant<T>(result: Result<T, Error>, exists: bool) -> Result<Option<T>, Error> {
    match result {
        Ok(v) => {
            assert!(exists, "an operation on a missing tenant succeeded");
            Ok(Some(v))
        }
        Err(Error::TenantNotFound) => {
            assert!(!exists, "an existing tenant was reported missing");
            Ok(None)
        }
        Err(e) if e.kind() == ErrorKind::Unavailable => Err(e),
        Err(e) => panic!("unexpected error {:?}", e.kind()),
    }
}

/// The restarted process: finishes the interrupted tenant job, then runs over a new
/// crash schedule.
async fn restart(
    system: &mut System,
    model: &mut Model,
    crash_at: u8,
    after_write: bool,
    xchacha: bool,
) {
    let suite = if xchacha {
        Suite::XChaCha20Poly1305
    } else {
        Suite::Aes256Gcm
    };
    let recovery = vault_over(Arc::clone(&system.inner), suite);
    match model.pending.take() {
        Some(Pending::Create(tenant)) => {
            recovery
                .create_tenant(system.tenant(tenant))
                .await
                .unwrap_or_else(|e| panic!("resuming create_tenant failed: {:?}", e.kind()));
            model.set_exists(tenant, true);
        }
        Some(Pending::Delete(tenant)) => {
            recovery
                .delete_tenant(system.tenant(tenant))
                .await
                .unwrap_or_else(|e| panic!("resuming delete_tenant failed: {:?}", e.kind()));
            for n in 0..NAMES {
                model.set(tenant, n, None);
            }
            model.set_exists(tenant, false);
        }
        None => {}
    }
    let point = if after_write {
        CrashPoint::AfterWrite
    } else {
        CrashPoint::BeforeWrite
    };
    system.faulty = Arc::new(FaultyStore::new(
        Arc::clone(&system.inner),
        u64::from(crash_at),
        point,
    ));
    system.vault = vault_over(system.faulty.clone(), suite);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_decodes_from_its_encoding() {
        for opcode in 0..=u8::MAX {
            for arg in 0..=u8::MAX {
                let op = Op::decode(opcode, arg);
                let [o, a] = op.encode();
                assert_eq!(Op::decode(o, a), op);
            }
        }
    }
}
