//! The storage conformance suite (feature `conformance`): one set of checks that every
//! [`Store`] must pass — ours and yours.
//!
//! Each check is an async function taking a fresh handle to the store under test. Checks
//! use tenant ids with a random prefix, so they can run concurrently against one shared
//! database that also holds other data.
//!
//! The [`store_conformance_tests!`](crate::store_conformance_tests) macro turns the whole
//! suite into one `#[tokio::test]` per check:
//!
//! ```ignore
//! credvault::store_conformance_tests!(async { Some(std::sync::Arc::new(MyStore::connect().await)) });
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation,
    clippy::format_collect,
    clippy::too_many_lines,
    missing_docs,
    reason = "conformance checks are test assertions; each check's name is its documentation"
)]

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{
    DekRecord, DekState, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store, Timestamp,
};
use crate::crypto::Suite;
use crate::error::{Error, ErrorKind};
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use crate::keys::WrappedDek;
use crate::secret::SecretKind;

/// A tenant id no other check (or earlier run) uses.
#[must_use]
pub fn unique_tenant(label: &str) -> TenantId {
    let mut r = [0u8; 6];
    crate::crypto::random_nonce(&mut r);
    let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
    TenantId::new(format!("conf-{suffix}-{label}")).unwrap()
}

fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

/// A data-key record with recognisable contents, under a fresh row version.
#[must_use]
pub fn dek_record(tenant: &TenantId, version: u32, fill: u8) -> DekRecord {
    DekRecord {
        tenant: tenant.clone(),
        version: DekVersion::new(version).unwrap(),
        state: DekState::Active,
        suite: Suite::Aes256Gcm,
        wrapped: WrappedDek::new(MasterKeyId::new("conformance-kek").unwrap(), vec![fill; 78]),
        encryptions_reserved: u64::from(fill),
        created_at: Timestamp::from_millis(1_700_000_000_000 + i64::from(fill)),
        updated_at: Timestamp::from_millis(1_700_000_000_000 + i64::from(fill)),
        row_version: crate::crypto::fresh_row_version(),
    }
}

/// A secret record with the given envelope bytes (a store never looks inside), under a
/// fresh row version.
#[must_use]
pub fn secret_record(tenant: &TenantId, secret: &SecretName, envelope: Vec<u8>) -> SecretRecord {
    SecretRecord {
        metadata: SecretMetadata {
            tenant: tenant.clone(),
            name: secret.clone(),
            kind: SecretKind::ApiKey,
            dek_version: DekVersion::FIRST,
            created_at: Timestamp::from_millis(1_700_000_000_000),
            updated_at: Timestamp::from_millis(1_700_000_000_000),
            row_version: crate::crypto::fresh_row_version(),
        },
        envelope,
    }
}

/// Secret writes with no key condition (the checks of the store's own conditions).
#[must_use]
pub fn unchecked(
    batch: Vec<(SecretRecord, PutMode)>,
) -> Vec<(SecretRecord, PutMode, KeyCondition)> {
    batch
        .into_iter()
        .map(|(record, mode)| (record, mode, KeyCondition::Unchecked))
        .collect()
}

fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

pub async fn dek_create_is_create_only(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-create");
    let first = dek_record(&t, 1, 1);
    assert_eq!(
        store.put_dek(first.clone(), PutMode::Create).await.unwrap(),
        first.row_version,
        "a write stores and returns the row version its record carries"
    );
    assert_eq!(
        kind(store.put_dek(dek_record(&t, 1, 2), PutMode::Create).await),
        ErrorKind::AlreadyExists
    );
    let stored = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
    assert_eq!(
        stored.wrapped.as_bytes(),
        &[1; 78][..],
        "a refused create must not overwrite"
    );
    assert_eq!(stored.row_version, first.row_version);
}

pub async fn dek_update_requires_the_stored_row_version(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-update");
    let first = dek_record(&t, 1, 1);
    assert_eq!(
        kind(
            store
                .put_dek(first.clone(), PutMode::Update(first.row_version))
                .await
        ),
        ErrorKind::Conflict,
        "an update of nothing fails"
    );
    let v1 = store.put_dek(first, PutMode::Create).await.unwrap();
    assert_eq!(
        kind(
            store
                .put_dek(dek_record(&t, 1, 2), PutMode::Update(RowVersion(7)))
                .await
        ),
        ErrorKind::Conflict
    );
    let mut changed = dek_record(&t, 1, 3);
    changed.state = DekState::DecryptOnly;
    changed.encryptions_reserved = u64::from(u32::MAX) + 5;
    changed.created_at = Timestamp::from_millis(5);
    let v2 = changed.row_version;
    assert_eq!(
        store.put_dek(changed, PutMode::Update(v1)).await.unwrap(),
        v2
    );
    let stored = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
    assert_eq!(stored.state, DekState::DecryptOnly);
    assert_eq!(stored.encryptions_reserved, u64::from(u32::MAX) + 5);
    assert_eq!(stored.wrapped.as_bytes(), &[3; 78][..]);
    assert_eq!(stored.row_version, v2);
    assert_eq!(
        stored.created_at,
        dek_record(&t, 1, 1).created_at,
        "created_at is kept"
    );
    assert_eq!(
        kind(
            store
                .put_dek(dek_record(&t, 1, 4), PutMode::Update(v1))
                .await
        ),
        ErrorKind::Conflict,
        "the version before the update is stale"
    );
}

pub async fn dek_upsert_creates_then_replaces(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-upsert");
    let first = dek_record(&t, 2, 1);
    assert_eq!(
        store.put_dek(first.clone(), PutMode::Upsert).await.unwrap(),
        first.row_version
    );
    let second = dek_record(&t, 2, 2);
    assert_eq!(
        store
            .put_dek(second.clone(), PutMode::Upsert)
            .await
            .unwrap(),
        second.row_version
    );
    let stored = store
        .get_dek(&t, DekVersion::new(2).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.wrapped.as_bytes(), &[2; 78][..]);
    assert_eq!(stored.row_version, second.row_version);
    assert_eq!(stored.created_at, dek_record(&t, 2, 1).created_at);
}

pub async fn dek_records_round_trip_exactly(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-exact");
    let mut record = dek_record(&t, u32::MAX, 9);
    record.suite = Suite::XChaCha20Poly1305;
    record.state = DekState::Destroyed;
    record.wrapped = WrappedDek::new(
        MasterKeyId::new("arn:aws:kms:eu-west-1:1:key/a+b=c@d").unwrap(),
        (0..=255).collect(),
    );
    record.encryptions_reserved = i64::MAX as u64;
    record.created_at = Timestamp::from_millis(-1);
    record.updated_at = Timestamp::from_millis(i64::MAX);
    record.row_version = RowVersion::MAX;
    store
        .put_dek(record.clone(), PutMode::Create)
        .await
        .unwrap();
    let stored = store.get_dek(&t, record.version).await.unwrap().unwrap();
    assert_eq!(stored, record);
    assert!(
        store
            .get_dek(&t, DekVersion::FIRST)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn list_deks_is_ascending_and_per_tenant(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-list");
    let other = unique_tenant("dek-list-other");
    for v in [3, 1, 2, 10] {
        store
            .put_dek(dek_record(&t, v, 1), PutMode::Create)
            .await
            .unwrap();
    }
    store
        .put_dek(dek_record(&other, 1, 1), PutMode::Create)
        .await
        .unwrap();
    let versions: Vec<u32> = store
        .list_deks(&t)
        .await
        .unwrap()
        .iter()
        .map(|r| r.version.get())
        .collect();
    assert_eq!(versions, [1, 2, 3, 10]);
    assert!(
        store
            .list_deks(&unique_tenant("none"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn secret_modes_follow_the_contract(store: Arc<dyn Store>) {
    let t = unique_tenant("secret-modes");
    let n = name("github");
    assert_eq!(
        kind(
            store
                .put_secret(
                    secret_record(&t, &n, vec![0]),
                    PutMode::Update(RowVersion(1)),
                    KeyCondition::Unchecked
                )
                .await
        ),
        ErrorKind::Conflict
    );
    let created = secret_record(&t, &n, vec![1]);
    let v1 = created.metadata.row_version;
    assert_eq!(
        store
            .put_secret(created, PutMode::Create, KeyCondition::Unchecked)
            .await
            .unwrap(),
        v1
    );
    assert_eq!(
        kind(
            store
                .put_secret(
                    secret_record(&t, &n, vec![2]),
                    PutMode::Create,
                    KeyCondition::Unchecked
                )
                .await
        ),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(
            store
                .put_secret(
                    secret_record(&t, &n, vec![3]),
                    PutMode::Update(RowVersion(2)),
                    KeyCondition::Unchecked
                )
                .await
        ),
        ErrorKind::Conflict
    );
    let mut update = secret_record(&t, &n, vec![4]);
    update.metadata.kind = SecretKind::Bytes;
    update.metadata.dek_version = DekVersion::new(2).unwrap();
    update.metadata.created_at = Timestamp::from_millis(1);
    update.metadata.updated_at = Timestamp::from_millis(1_800_000_000_000);
    let v2 = update.metadata.row_version;
    assert_eq!(
        store
            .put_secret(update, PutMode::Update(v1), KeyCondition::Unchecked)
            .await
            .unwrap(),
        v2
    );
    let upsert = secret_record(&t, &n, vec![5]);
    let v3 = upsert.metadata.row_version;
    assert_eq!(
        store
            .put_secret(upsert, PutMode::Upsert, KeyCondition::Unchecked)
            .await
            .unwrap(),
        v3
    );
    let stored = store.get_secret(&t, &n).await.unwrap().unwrap();
    assert_eq!(stored.envelope, [5]);
    assert_eq!(stored.metadata.row_version, v3);
    assert_eq!(
        stored.metadata.created_at,
        Timestamp::from_millis(1_700_000_000_000),
        "created_at is kept"
    );
    for stale in [v1, v2] {
        assert_eq!(
            kind(
                store
                    .put_secret(
                        secret_record(&t, &n, vec![6]),
                        PutMode::Update(stale),
                        KeyCondition::Unchecked
                    )
                    .await
            ),
            ErrorKind::Conflict
        );
    }
    let fresh = secret_record(&t, &name("fresh"), vec![6]);
    assert_eq!(
        store
            .put_secret(fresh.clone(), PutMode::Upsert, KeyCondition::Unchecked)
            .await
            .unwrap(),
        fresh.metadata.row_version
    );
}

pub async fn secret_records_round_trip_exactly(store: Arc<dyn Store>) {
    let t = unique_tenant("secret-exact");
    let n = name("blob/with:odd@chars");
    let envelope: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut record = secret_record(&t, &n, envelope);
    record.metadata.kind = SecretKind::OAuthToken;
    record.metadata.dek_version = DekVersion::new(u32::MAX).unwrap();
    record.metadata.updated_at = Timestamp::from_millis(-5);
    record.metadata.row_version = RowVersion::MAX;
    store
        .put_secret(record.clone(), PutMode::Create, KeyCondition::Unchecked)
        .await
        .unwrap();
    let stored = store.get_secret(&t, &n).await.unwrap().unwrap();
    assert_eq!(stored, record);
    assert!(
        store
            .get_secret(&t, &name("absent"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn row_versions_outside_the_stored_range_are_refused(store: Arc<dyn Store>) {
    let t = unique_tenant("version-range");
    for bad in [
        RowVersion(0),
        RowVersion(RowVersion::MAX.0 + 1),
        RowVersion(u64::MAX),
    ] {
        let mut secret = secret_record(&t, &name("s"), vec![1]);
        secret.metadata.row_version = bad;
        assert_eq!(
            kind(
                store
                    .put_secret(secret, PutMode::Upsert, KeyCondition::Unchecked)
                    .await
            ),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
        let mut dek = dek_record(&t, 1, 1);
        dek.row_version = bad;
        assert_eq!(
            kind(store.put_dek(dek, PutMode::Upsert).await),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert!(store.get_secret(&t, &name("s")).await.unwrap().is_none());
    assert!(store.list_deks(&t).await.unwrap().is_empty());
}

/// A record deleted and created again takes a new row version: every conditional write or
/// delete that expects a version read before the delete fails.
pub async fn a_recreated_record_refuses_every_stale_expectation(store: Arc<dyn Store>) {
    let t = unique_tenant("recreate");
    let n = name("k");
    let old = secret_record(&t, &n, vec![1]);
    let stale = store
        .put_secret(old, PutMode::Create, KeyCondition::Unchecked)
        .await
        .unwrap();
    assert!(store.delete_secret(&t, &n, Some(stale)).await.unwrap());
    let new = secret_record(&t, &n, vec![2]);
    let current = store
        .put_secret(new, PutMode::Create, KeyCondition::Unchecked)
        .await
        .unwrap();
    assert_ne!(current, stale);
    assert_eq!(
        kind(
            store
                .put_secret(
                    secret_record(&t, &n, vec![3]),
                    PutMode::Update(stale),
                    KeyCondition::Unchecked
                )
                .await
        ),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(store.delete_secret(&t, &n, Some(stale)).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        store.get_secret(&t, &n).await.unwrap().unwrap().envelope,
        [2]
    );

    let v = DekVersion::FIRST;
    let stale = store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    assert!(store.delete_dek(&t, v, Some(stale)).await.unwrap());
    store
        .put_dek(dek_record(&t, 1, 2), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        kind(
            store
                .put_dek(dek_record(&t, 1, 3), PutMode::Update(stale))
                .await
        ),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(
            store
                .put_deks(vec![(dek_record(&t, 1, 3), PutMode::Update(stale))])
                .await
                .unwrap()
                .remove(0)
        ),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(store.delete_dek(&t, v, Some(stale)).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        store
            .get_dek(&t, v)
            .await
            .unwrap()
            .unwrap()
            .wrapped
            .as_bytes(),
        &[2; 78][..]
    );
}

/// The key condition of a data-key record, as the vault writes it.
fn sealed_under(dek: &DekRecord) -> KeyCondition {
    KeyCondition::SealedUnder(dek.wrapped.as_bytes().into())
}

/// A secret write sealed under a data key succeeds only while that key is its tenant's
/// active key with the same wrapped bytes, checked with the write itself; a write that
/// fails it writes nothing.
pub async fn secret_writes_check_the_key_they_were_sealed_under(store: Arc<dyn Store>) {
    let t = unique_tenant("key-condition");
    let (k1, k2) = (dek_record(&t, 1, 1), dek_record(&t, 2, 2));
    for k in [&k1, &k2] {
        store.put_dek(k.clone(), PutMode::Create).await.unwrap();
    }
    let n = name("s");
    let at = |version: u32, fill: u8| {
        let mut r = secret_record(&t, &n, vec![fill; 8]);
        r.metadata.dek_version = DekVersion::new(version).unwrap();
        r
    };
    // Another key's bytes under version 1: refused, nothing written.
    assert_eq!(
        kind(
            store
                .put_secret(at(1, 1), PutMode::Create, sealed_under(&k2))
                .await
        ),
        ErrorKind::Conflict
    );
    assert!(matches!(
        store.put_secret(at(1, 1), PutMode::Upsert, sealed_under(&k2)).await,
        Err(Error::KeyNotCurrent { version }) if version == DekVersion::FIRST
    ));
    assert!(store.get_secret(&t, &n).await.unwrap().is_none());
    // The right key: written.
    let v = store
        .put_secret(at(1, 1), PutMode::Create, sealed_under(&k1))
        .await
        .unwrap();
    // An update that moves the secret to version 2 is checked against version 2's key.
    assert!(matches!(
        store
            .put_secret(at(2, 2), PutMode::Update(v), sealed_under(&k1))
            .await,
        Err(Error::KeyNotCurrent { .. })
    ));
    let v = store
        .put_secret(at(2, 2), PutMode::Update(v), sealed_under(&k2))
        .await
        .unwrap();
    let stored = store.get_secret(&t, &n).await.unwrap().unwrap();
    assert_eq!(
        (stored.metadata.dek_version.get(), stored.envelope),
        (2, vec![2; 8])
    );
    // A version with no record.
    assert!(matches!(
        store
            .put_secret(at(3, 3), PutMode::Update(v), sealed_under(&k2))
            .await,
        Err(Error::KeyNotCurrent { .. })
    ));
    // A key that is no longer active: demoted, then destroyed (its bytes erased).
    let mut demoted = k1.clone();
    demoted.state = DekState::DecryptOnly;
    let demoted_version = store
        .put_dek(demoted.clone(), PutMode::Update(k1.row_version))
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_secret(at(1, 4), PutMode::Update(v), sealed_under(&k1))
            .await,
        Err(Error::KeyNotCurrent { .. })
    ));
    let mut destroyed = demoted;
    destroyed.state = DekState::Destroyed;
    destroyed.wrapped = WrappedDek::new(destroyed.wrapped.master_key_id().clone(), Vec::new());
    store
        .put_dek(destroyed.clone(), PutMode::Update(demoted_version))
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_secret(at(1, 5), PutMode::Upsert, sealed_under(&destroyed))
            .await,
        Err(Error::KeyNotCurrent { .. })
    ));
    let stored = store.get_secret(&t, &n).await.unwrap().unwrap();
    assert_eq!(
        (stored.metadata.row_version, stored.envelope),
        (v, vec![2; 8]),
        "no refused write changed the row"
    );
    // Unchecked writes look at no key.
    store
        .put_secret(at(9, 6), PutMode::Upsert, KeyCondition::Unchecked)
        .await
        .unwrap();

    // Batches, of updates of distinct rows (the multi-row path) and mixed: each row is
    // checked against its own key.
    let names: Vec<SecretName> = (0..6).map(|i| name(&format!("b{i}"))).collect();
    let mut current = Vec::new();
    for n in &names {
        let mut r = secret_record(&t, n, vec![0; 8]);
        r.metadata.dek_version = DekVersion::new(2).unwrap();
        current.push(
            store
                .put_secret(r, PutMode::Create, sealed_under(&k2))
                .await
                .unwrap(),
        );
    }
    let batch: Vec<_> = names
        .iter()
        .zip(&current)
        .enumerate()
        .map(|(i, (n, v))| {
            let mut r = secret_record(&t, n, vec![1; 8]);
            r.metadata.dek_version = DekVersion::new(2).unwrap();
            let key = if i == 4 {
                sealed_under(&k1)
            } else {
                sealed_under(&k2)
            };
            (r, PutMode::Update(*v), key)
        })
        .collect();
    let results = store.put_secrets(batch).await.unwrap();
    for (i, (result, n)) in results.iter().zip(&names).enumerate() {
        let stored = store.get_secret(&t, n).await.unwrap().unwrap();
        if i == 4 {
            assert!(
                matches!(result, Err(Error::KeyNotCurrent { .. })),
                "{result:?}"
            );
            assert_eq!(stored.envelope, vec![0; 8]);
        } else {
            assert_eq!(result.as_ref().unwrap(), &stored.metadata.row_version);
            assert_eq!(stored.envelope, vec![1; 8]);
        }
    }
}

pub async fn delete_honours_the_expected_version(store: Arc<dyn Store>) {
    let t = unique_tenant("delete");
    let n = name("k");
    assert!(!store.delete_secret(&t, &n, None).await.unwrap());
    assert!(
        !store
            .delete_secret(&t, &n, Some(RowVersion(1)))
            .await
            .unwrap()
    );
    let v = store
        .put_secret(
            secret_record(&t, &n, vec![1]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    assert_eq!(
        kind(store.delete_secret(&t, &n, Some(RowVersion(2))).await),
        ErrorKind::Conflict
    );
    assert!(
        store.get_secret(&t, &n).await.unwrap().is_some(),
        "a refused delete deletes nothing"
    );
    assert!(store.delete_secret(&t, &n, Some(v)).await.unwrap());
    assert!(store.get_secret(&t, &n).await.unwrap().is_none());
    store
        .put_secret(
            secret_record(&t, &n, vec![1]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    assert!(store.delete_secret(&t, &n, None).await.unwrap());
}

/// Ids that a careless key scheme would confuse: prefixes, separators, case.
pub async fn adversarial_ids_never_collide(store: Arc<dyn Store>) {
    let base = unique_tenant("adv");
    let a = TenantId::new(format!("{base}")).unwrap();
    let a_dot = TenantId::new(format!("{base}.b")).unwrap();
    let a_upper = TenantId::new(base.as_str().to_uppercase()).unwrap();
    let pairs = [
        (a.clone(), name("b.c")),
        (a_dot.clone(), name("c")),
        (a.clone(), name("b")),
        (a.clone(), name("B")),
        (a.clone(), name("b/c")),
        (a.clone(), name("b:c")),
        (a.clone(), name("b@c")),
        (a.clone(), name("b_")),
        (a.clone(), name("b-")),
        (a_upper.clone(), name("b")),
        (a.clone(), name(&"x".repeat(SecretName::MAX_LEN))),
    ];
    for (i, (t, n)) in pairs.iter().enumerate() {
        store
            .put_secret(
                secret_record(t, n, vec![i as u8]),
                PutMode::Create,
                KeyCondition::Unchecked,
            )
            .await
            .unwrap();
    }
    for (i, (t, n)) in pairs.iter().enumerate() {
        let got = store.get_secret(t, n).await.unwrap().unwrap();
        assert_eq!(got.envelope, [i as u8], "{t}/{n} collided");
        assert_eq!(&got.metadata.tenant, t);
        assert_eq!(&got.metadata.name, n);
    }
    assert!(store.get_secret(&a, &name("b.")).await.unwrap().is_none());
    assert!(
        store.get_secret(&a, &name("_")).await.unwrap().is_none(),
        "no pattern matching"
    );
    let listed = store.list_secrets(&a_dot, None, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    let long = TenantId::new("t".repeat(TenantId::MAX_LEN)).unwrap();
    store
        .put_dek(dek_record(&long, 1, 1), PutMode::Upsert)
        .await
        .unwrap();
    assert!(
        store
            .get_dek(&long, DekVersion::FIRST)
            .await
            .unwrap()
            .is_some()
    );
}

/// Pages through `count` records with an awkward page size.
pub async fn paging_has_no_gaps_or_duplicates(store: Arc<dyn Store>) {
    paging_with(store, 10_000, 97).await;
}

pub async fn paging_with(store: Arc<dyn Store>, count: usize, page: usize) {
    let t = unique_tenant("paging");
    let mut expected = BTreeSet::new();
    for i in 0..count {
        let n = name(&format!("s{:x}-{}", i * 7919 % count, i % 3));
        store
            .put_secret(
                secret_record(&t, &n, vec![1]),
                PutMode::Upsert,
                KeyCondition::Unchecked,
            )
            .await
            .unwrap();
        expected.insert(n);
    }
    let mut seen = Vec::new();
    let mut after: Option<SecretName> = None;
    loop {
        let items = store.list_secrets(&t, after.as_ref(), page).await.unwrap();
        assert!(items.len() <= page);
        for m in &items {
            assert_eq!(m.tenant, t);
        }
        seen.extend(items.iter().map(|m| m.name.clone()));
        if items.len() < page {
            break;
        }
        after = items.last().map(|m| m.name.clone());
    }
    let sorted: Vec<_> = expected.iter().cloned().collect();
    assert_eq!(seen.len(), sorted.len(), "gaps or duplicates");
    assert_eq!(seen, sorted, "pages must come in ascending byte order");
}

pub async fn tenants_are_listed_once_in_order(store: Arc<dyn Store>) {
    let mine: BTreeSet<TenantId> = (0..25)
        .map(|i| unique_tenant(&format!("list{i}")))
        .collect();
    for t in &mine {
        store
            .put_dek(dek_record(t, 1, 1), PutMode::Create)
            .await
            .unwrap();
        store
            .put_dek(dek_record(t, 2, 1), PutMode::Create)
            .await
            .unwrap();
    }
    // A tenant with secrets but no data key is not a tenant.
    let orphan = unique_tenant("orphan");
    store
        .put_secret(
            secret_record(&orphan, &name("x"), vec![1]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<TenantId> = None;
    loop {
        let page = store.list_tenants(after.as_ref(), 7).await.unwrap();
        if let (Some(prev), Some(first)) = (&after, page.first()) {
            assert!(first > prev);
        }
        seen.extend(page.iter().cloned());
        if page.len() < 7 {
            break;
        }
        after = page.last().cloned();
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ascending, no duplicates"
    );
    let seen: BTreeSet<_> = seen.into_iter().collect();
    assert!(mine.is_subset(&seen));
    assert!(!seen.contains(&orphan));
}

/// 16 writers increment one counter with read-modify-write under `PutMode::Update`.
pub async fn concurrent_conditional_writers_lose_no_update(store: Arc<dyn Store>) {
    const WRITERS: u64 = 16;
    const INCREMENTS: u64 = 20;
    let t = unique_tenant("cas");
    let n = name("counter");
    let first = store
        .put_secret(
            secret_record(&t, &n, 0u64.to_be_bytes().to_vec()),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (store, t, n) = (Arc::clone(&store), t.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get_secret(&t, &n).await.unwrap().unwrap();
                    let value = u64::from_be_bytes(current.envelope.as_slice().try_into().unwrap());
                    let next = secret_record(&t, &n, (value + 1).to_be_bytes().to_vec());
                    match store
                        .put_secret(
                            next,
                            PutMode::Update(current.metadata.row_version),
                            KeyCondition::Unchecked,
                        )
                        .await
                    {
                        Ok(v) => {
                            written.push(v);
                            break;
                        }
                        Err(e) if e.kind() == ErrorKind::Conflict => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
            written
        }));
    }
    let mut versions = BTreeSet::from([first.0]);
    for task in tasks {
        versions.extend(task.await.unwrap().into_iter().map(|v| v.0));
    }
    let last = store.get_secret(&t, &n).await.unwrap().unwrap();
    assert_eq!(
        u64::from_be_bytes(last.envelope.as_slice().try_into().unwrap()),
        WRITERS * INCREMENTS
    );
    assert_eq!(
        versions.len() as u64,
        1 + WRITERS * INCREMENTS,
        "every write stored a version of its own"
    );
    assert!(versions.contains(&last.metadata.row_version.0));
}

/// 16 tasks race to create the same tenant's first data key; exactly one wins.
pub async fn racing_dek_creation_has_exactly_one_winner(store: Arc<dyn Store>) {
    let t = unique_tenant("race");
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let (store, t) = (Arc::clone(&store), t.clone());
        tasks.push(tokio::spawn(async move {
            store.put_dek(dek_record(&t, 1, i), PutMode::Create).await
        }));
    }
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => winners.push(i),
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists),
        }
    }
    assert_eq!(winners.len(), 1);
    let stored = store.get_dek(&t, DekVersion::FIRST).await.unwrap().unwrap();
    assert_eq!(
        stored.wrapped.as_bytes(),
        &[winners[0] as u8; 78][..],
        "the winner's record is the one stored"
    );
    assert_eq!(store.list_deks(&t).await.unwrap().len(), 1);
}

/// Eight tasks delete the same record at once, with and without the expected row version:
/// every call succeeds, and exactly one reports that it deleted the record (a lost race is
/// "nothing to delete", never a conflict).
pub async fn racing_deletes_of_one_record_all_succeed_once(store: Arc<dyn Store>) {
    let t = unique_tenant("racing-delete");
    for round in 0..10u8 {
        let n = name(&format!("r{round}"));
        let version = store
            .put_secret(
                secret_record(&t, &n, vec![round]),
                PutMode::Create,
                KeyCondition::Unchecked,
            )
            .await
            .unwrap();
        let dek_version = store
            .put_dek(dek_record(&t, u32::from(round) + 1, round), PutMode::Create)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (store, t, n) = (Arc::clone(&store), t.clone(), n.clone());
            let expected = (i % 2 == 0).then_some(version);
            let dek_expected = (i % 2 == 0).then_some(dek_version);
            tasks.push(tokio::spawn(async move {
                let secret = store.delete_secret(&t, &n, expected).await.unwrap();
                let dek = store
                    .delete_dek(
                        &t,
                        DekVersion::new(u32::from(round) + 1).unwrap(),
                        dek_expected,
                    )
                    .await
                    .unwrap();
                (secret, dek)
            }));
        }
        let (mut secrets, mut deks) = (0, 0);
        for task in tasks {
            let (secret_deleted, dek_deleted) = task.await.unwrap();
            secrets += usize::from(secret_deleted);
            deks += usize::from(dek_deleted);
        }
        assert_eq!((secrets, deks), (1, 1), "round {round}");
    }
}

pub async fn delete_dek_honours_the_expected_version(store: Arc<dyn Store>) {
    let t = unique_tenant("dek-delete");
    let v1 = DekVersion::FIRST;
    assert!(!store.delete_dek(&t, v1, None).await.unwrap());
    let stored = store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    store
        .put_dek(dek_record(&t, 2, 1), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        kind(store.delete_dek(&t, v1, Some(RowVersion(5))).await),
        ErrorKind::Conflict
    );
    assert!(
        store.get_dek(&t, v1).await.unwrap().is_some(),
        "a refused delete deletes nothing"
    );
    assert!(store.delete_dek(&t, v1, Some(stored)).await.unwrap());
    assert!(store.get_dek(&t, v1).await.unwrap().is_none());
    assert_eq!(
        store.list_deks(&t).await.unwrap().len(),
        1,
        "other versions are untouched"
    );
    assert!(
        store
            .delete_dek(&t, DekVersion::new(2).unwrap(), None)
            .await
            .unwrap()
    );
    let tenants = store.list_tenants(None, usize::MAX).await.unwrap();
    assert!(
        !tenants.contains(&t),
        "a tenant without data-key records is not listed"
    );
}

pub async fn listing_secrets_not_under_a_version_returns_whole_records(store: Arc<dyn Store>) {
    let t = unique_tenant("not-under");
    for i in 0..30u8 {
        let mut r = secret_record(&t, &name(&format!("s{i:02}")), vec![i; 3]);
        r.metadata.dek_version = DekVersion::new(u32::from(i % 3) + 1).unwrap();
        store
            .put_secret(r, PutMode::Create, KeyCondition::Unchecked)
            .await
            .unwrap();
    }
    let v2 = DekVersion::new(2).unwrap();
    let mut seen = Vec::new();
    let mut after: Option<SecretName> = None;
    loop {
        let page = store
            .list_secrets_not_under(&t, v2, after.as_ref(), 4)
            .await
            .unwrap();
        for r in &page {
            assert_ne!(r.metadata.dek_version, v2);
            let i: u8 = r.metadata.name.as_str()[1..].parse().unwrap();
            assert_eq!(r.envelope, vec![i; 3], "envelopes come with the records");
        }
        seen.extend(page.iter().map(|r| r.metadata.name.clone()));
        if page.len() < 4 {
            break;
        }
        after = page.last().map(|r| r.metadata.name.clone());
    }
    let expected: Vec<_> = (0..30u8)
        .filter(|i| i % 3 != 1)
        .map(|i| name(&format!("s{i:02}")))
        .collect();
    assert_eq!(seen, expected);
}

pub async fn batched_writes_apply_each_condition_separately(store: Arc<dyn Store>) {
    let t = unique_tenant("batch");
    let a1 = store
        .put_secret(
            secret_record(&t, &name("a"), vec![1]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    store
        .put_secret(
            secret_record(&t, &name("b"), vec![1]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let (a2, c1) = (
        secret_record(&t, &name("a"), vec![2]),
        secret_record(&t, &name("c"), vec![2]),
    );
    let (a2_version, c1_version) = (a2.metadata.row_version, c1.metadata.row_version);
    let results = store
        .put_secrets(unchecked(vec![
            (a2, PutMode::Update(a1)),
            (
                secret_record(&t, &name("b"), vec![2]),
                PutMode::Update(RowVersion(9)),
            ),
            (c1, PutMode::Create),
            (secret_record(&t, &name("a"), vec![3]), PutMode::Create),
        ]))
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap(), &a2_version);
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(results[2].as_ref().unwrap(), &c1_version);
    assert_eq!(
        results[3].as_ref().unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        store
            .get_secret(&t, &name("a"))
            .await
            .unwrap()
            .unwrap()
            .envelope,
        [2]
    );
    assert_eq!(
        store
            .get_secret(&t, &name("b"))
            .await
            .unwrap()
            .unwrap()
            .envelope,
        [1]
    );
    let k1 = store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    let results = store
        .put_deks(vec![
            (dek_record(&t, 1, 2), PutMode::Update(k1)),
            (dek_record(&t, 1, 3), PutMode::Update(k1)),
            (dek_record(&t, 2, 4), PutMode::Create),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    assert!(results[2].is_ok());
    assert_eq!(
        store
            .get_dek(&t, DekVersion::FIRST)
            .await
            .unwrap()
            .unwrap()
            .wrapped
            .as_bytes(),
        &[2; 78][..]
    );
    assert!(store.put_secrets(Vec::new()).await.unwrap().is_empty());
}

/// Batches of hundreds of conditional updates of distinct rows (as rotation sweeps write):
/// all of them holding, some of them stale or naming a missing row, and mixed with
/// creates and upserts. Every condition is checked on its own row, every winner gets the
/// row version its record carries and its new columns, every loser is a conflict that changed nothing,
/// and no write touches the creation time.
pub async fn large_batches_apply_each_condition_separately(store: Arc<dyn Store>) {
    large_secret_batch(store.as_ref(), "all-hold", false, false, false).await;
    large_secret_batch(store.as_ref(), "some-stale", true, false, false).await;
    large_secret_batch(store.as_ref(), "one-missing", false, true, false).await;
    large_secret_batch(store.as_ref(), "mixed", true, true, true).await;
    large_dek_batch(store.as_ref(), "dek-all-hold", false, false).await;
    large_dek_batch(store.as_ref(), "dek-some-stale", true, false).await;
    large_dek_batch(store.as_ref(), "dek-one-missing", false, true).await;
}

/// Creates `names` under `t` in one batch, then moves every fifth one version ahead;
/// returns each row's current version.
async fn seed_rows(store: &dyn Store, t: &TenantId, names: &[SecretName]) -> Vec<RowVersion> {
    let batch: Vec<_> = names
        .iter()
        .map(|n| (secret_record(t, n, vec![1]), PutMode::Create))
        .collect();
    let carried: Vec<RowVersion> = batch.iter().map(|(r, _)| r.metadata.row_version).collect();
    let created = store.put_secrets(unchecked(batch)).await.unwrap();
    let mut current: Vec<RowVersion> = created.into_iter().map(Result::unwrap).collect();
    assert_eq!(current, carried);
    // Every fifth row is one version ahead.
    for (n, v) in names.iter().zip(&mut current).step_by(5) {
        *v = store
            .put_secret(
                secret_record(t, n, vec![1]),
                PutMode::Update(*v),
                KeyCondition::Unchecked,
            )
            .await
            .unwrap();
    }
    current
}

/// One batch of 300 updates, every seventh stale when `stale`, then an update of a missing
/// row when `missing`, and a create and an upsert when `mixed`.
async fn large_secret_batch(
    store: &dyn Store,
    label: &str,
    stale: bool,
    missing: bool,
    mixed: bool,
) {
    const N: usize = 300;
    let t = unique_tenant(label);
    let names: Vec<SecretName> = (0..N).map(|i| name(&format!("s{i:03}"))).collect();
    let seeded = seed_rows(store, &t, &names).await;
    let is_stale = |i: usize| stale && i % 7 == 3;
    let current = |i: usize| seeded[i];
    let later = Timestamp::from_millis(1_800_000_000_000);
    let moved = |n: &SecretName, i: usize| {
        let mut r = secret_record(&t, n, vec![2, (i % 251) as u8]);
        r.metadata.kind = SecretKind::Bytes;
        r.metadata.dek_version = DekVersion::new(2).unwrap();
        r.metadata.updated_at = later;
        r
    };
    let mut batch: Vec<(SecretRecord, PutMode)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let expected = if is_stale(i) {
                RowVersion(9)
            } else {
                current(i)
            };
            (moved(n, i), PutMode::Update(expected))
        })
        .collect();
    if missing {
        batch.push((
            secret_record(&t, &name("missing"), vec![3]),
            PutMode::Update(RowVersion(1)),
        ));
    }
    if mixed {
        batch.push((
            secret_record(&t, &name("new-create"), vec![4]),
            PutMode::Create,
        ));
        batch.push((
            secret_record(&t, &name("new-upsert"), vec![5]),
            PutMode::Upsert,
        ));
    }
    let len = batch.len();
    let carried: Vec<RowVersion> = batch.iter().map(|(r, _)| r.metadata.row_version).collect();
    let results = store.put_secrets(unchecked(batch)).await.unwrap();
    assert_eq!(results.len(), len);
    for (i, n) in names.iter().enumerate() {
        let stored = store.get_secret(&t, n).await.unwrap().unwrap();
        if is_stale(i) {
            assert_eq!(
                results[i].as_ref().unwrap_err().kind(),
                ErrorKind::Conflict,
                "{label} row {i}"
            );
            assert_eq!(stored.envelope, [1], "{label} row {i}");
            assert_eq!(stored.metadata.row_version, current(i));
            assert_eq!(stored.metadata.dek_version, DekVersion::FIRST);
        } else {
            let next = carried[i];
            assert_eq!(results[i].as_ref().unwrap(), &next, "{label} row {i}");
            assert_eq!(stored.envelope, [2, (i % 251) as u8], "{label} row {i}");
            assert_eq!(stored.metadata.row_version, next);
            assert_eq!(stored.metadata.kind, SecretKind::Bytes);
            assert_eq!(stored.metadata.dek_version, DekVersion::new(2).unwrap());
            assert_eq!(stored.metadata.updated_at, later);
        }
        assert_eq!(
            stored.metadata.created_at,
            Timestamp::from_millis(1_700_000_000_000)
        );
    }
    if missing {
        assert_eq!(results[N].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
        assert!(
            store
                .get_secret(&t, &name("missing"))
                .await
                .unwrap()
                .is_none()
        );
    }
    if mixed {
        assert_eq!(results[len - 2].as_ref().unwrap(), &carried[len - 2]);
        assert_eq!(results[len - 1].as_ref().unwrap(), &carried[len - 1]);
    }
}

/// The data-key side of [`large_batches_apply_each_condition_separately`]: 150 updates,
/// every fourth stale when `stale`, then one of a missing key when `missing`.
async fn large_dek_batch(store: &dyn Store, label: &str, stale: bool, missing: bool) {
    const K: u32 = 150;
    let t = unique_tenant(label);
    let later = Timestamp::from_millis(1_800_000_000_000);
    let created: Vec<RowVersion> = store
        .put_deks(
            (1..=K)
                .map(|v| (dek_record(&t, v, 1), PutMode::Create))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let created_version = |v: u32| created[(v - 1) as usize];
    let is_stale = |v: u32| stale && v % 4 == 1;
    let mut batch: Vec<(DekRecord, PutMode)> = (1..=K)
        .map(|v| {
            let mut r = dek_record(&t, v, 7);
            r.state = DekState::DecryptOnly;
            r.updated_at = later;
            let expected = if is_stale(v) {
                RowVersion(2)
            } else {
                created_version(v)
            };
            (r, PutMode::Update(expected))
        })
        .collect();
    if missing {
        batch.push((dek_record(&t, K + 1, 7), PutMode::Update(RowVersion(1))));
    }
    let carried: Vec<RowVersion> = batch.iter().map(|(r, _)| r.row_version).collect();
    let results = store.put_deks(batch).await.unwrap();
    for v in 1..=K {
        let i = (v - 1) as usize;
        let stored = store
            .get_dek(&t, DekVersion::new(v).unwrap())
            .await
            .unwrap()
            .unwrap();
        if is_stale(v) {
            assert_eq!(
                results[i].as_ref().unwrap_err().kind(),
                ErrorKind::Conflict,
                "key {v}"
            );
            assert_eq!(
                stored,
                DekRecord {
                    row_version: created_version(v),
                    ..dek_record(&t, v, 1)
                }
            );
        } else {
            assert_eq!(results[i].as_ref().unwrap(), &carried[i], "key {v}");
            let mut want = dek_record(&t, v, 7);
            want.state = DekState::DecryptOnly;
            want.updated_at = later;
            want.created_at = dek_record(&t, v, 1).created_at;
            want.row_version = carried[i];
            assert_eq!(stored, want, "key {v}");
        }
    }
    if missing {
        assert_eq!(
            results[K as usize].as_ref().unwrap_err().kind(),
            ErrorKind::Conflict
        );
    }
    assert!(
        store
            .get_dek(&t, DekVersion::new(K + 1).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

/// A batch with nothing in it succeeds and writes nothing.
pub async fn empty_batches_are_no_ops(store: Arc<dyn Store>) {
    assert!(store.put_secrets(Vec::new()).await.unwrap().is_empty());
    assert!(store.put_deks(Vec::new()).await.unwrap().is_empty());
}

/// How long a closed store may take to refuse an operation before it counts as a hang.
const PROMPTLY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `op` on a closed store: it must fail with [`ErrorKind::Unavailable`], promptly.
async fn refused<T: std::fmt::Debug>(what: &str, op: impl Future<Output = Result<T, Error>>) {
    let outcome = tokio::time::timeout(PROMPTLY, op)
        .await
        .unwrap_or_else(|_| panic!("{what} on a closed store hangs"));
    match outcome {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::Unavailable,
            "{what} on a closed store: {e}"
        ),
        Ok(v) => panic!("{what} on a closed store succeeded: {v:?}"),
    }
}

pub async fn a_closed_store_refuses_every_operation_as_unavailable(store: Arc<dyn Store>) {
    let t = unique_tenant("closed");
    let n = name("s");
    store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    store
        .put_secret(
            secret_record(&t, &n, vec![1; 40]),
            PutMode::Create,
            KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    // A scan before the close, so that a backend with connections of its own for scans
    // holds one when it closes.
    assert!(!store.scan_deks(None, 10).await.unwrap().is_empty());
    tokio::time::timeout(PROMPTLY, store.close())
        .await
        .expect("close returns")
        .unwrap();

    let v = DekVersion::FIRST;
    refused("get_dek", store.get_dek(&t, v)).await;
    refused("list_deks", store.list_deks(&t)).await;
    refused(
        "put_dek",
        store.put_dek(dek_record(&t, 2, 2), PutMode::Create),
    )
    .await;
    refused("get_secret", store.get_secret(&t, &n)).await;
    refused(
        "put_secret",
        store.put_secret(
            secret_record(&t, &name("t"), vec![2; 40]),
            PutMode::Upsert,
            KeyCondition::Unchecked,
        ),
    )
    .await;
    refused("delete_secret", store.delete_secret(&t, &n, None)).await;
    refused("list_secrets", store.list_secrets(&t, None, 10)).await;
    refused("list_tenants", store.list_tenants(None, 10)).await;
    refused("scan_secrets", store.scan_secrets(None, 10)).await;
    refused("scan_deks", store.scan_deks(None, 10)).await;
    refused("scan_live_deks", store.scan_live_deks(None, 10)).await;
    refused("delete_dek", store.delete_dek(&t, v, None)).await;
    refused(
        "list_secrets_not_under",
        store.list_secrets_not_under(&t, DekVersion::new(2).unwrap(), None, 10),
    )
    .await;
    refused(
        "count_secrets_by_version",
        store.count_secrets_by_version(&t),
    )
    .await;
    refused(
        "count_secrets_by_tenant_version",
        store.count_secrets_by_tenant_version(None, 10),
    )
    .await;
    refused(
        "count_secrets_to_reencrypt",
        store.count_secrets_to_reencrypt(),
    )
    .await;
    refused("count_deks_by_master_key", store.count_deks_by_master_key()).await;
    refused(
        "put_secrets",
        store.put_secrets(unchecked(vec![(
            secret_record(&t, &n, vec![3; 40]),
            PutMode::Upsert,
        )])),
    )
    .await;
    refused(
        "put_deks",
        store.put_deks(vec![(dek_record(&t, 1, 3), PutMode::Upsert)]),
    )
    .await;

    refused("erase_deleted", store.erase_deleted()).await;

    tokio::time::timeout(PROMPTLY, store.close())
        .await
        .expect("a second close returns")
        .expect("a second close succeeds");
}

pub async fn closing_during_operations_neither_hangs_nor_fails_them_otherwise(
    store: Arc<dyn Store>,
) {
    let t = unique_tenant("closing");
    store
        .put_dek(dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u32 {
        let (store, t) = (Arc::clone(&store), t.clone());
        tasks.spawn(async move {
            let n = name(&format!("s{i:02}"));
            let mut outcomes = Vec::new();
            for round in 0..20u8 {
                let write = store
                    .put_secret(
                        secret_record(&t, &n, vec![round; 40]),
                        PutMode::Upsert,
                        KeyCondition::Unchecked,
                    )
                    .await
                    .map(drop);
                let read = store.get_secret(&t, &n).await.map(drop);
                let scan = store.scan_secrets(None, 50).await.map(drop);
                outcomes.extend([write, read, scan]);
            }
            outcomes
        });
    }
    tokio::task::yield_now().await;
    // Two closes at once, beside the work: both return, and every operation either did its
    // work or was refused as unavailable.
    let (a, b) = tokio::join!(
        tokio::time::timeout(PROMPTLY, store.close()),
        tokio::time::timeout(PROMPTLY, store.close()),
    );
    a.expect("close returns").unwrap();
    b.expect("a concurrent close returns").unwrap();
    let all = tokio::time::timeout(PROMPTLY, tasks.join_all())
        .await
        .expect("the operations under way return");
    for outcome in all.into_iter().flatten() {
        if let Err(e) = outcome {
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        }
    }
    refused("get_secret after close", store.get_secret(&t, &name("s00"))).await;
}

pub async fn scanning_deks_visits_each_record_once_in_order(store: Arc<dyn Store>) {
    let mine: BTreeSet<TenantId> = (0..7).map(|i| unique_tenant(&format!("scan{i}"))).collect();
    for t in &mine {
        for v in 1..=3 {
            store
                .put_dek(dek_record(t, v, 1), PutMode::Create)
                .await
                .unwrap();
        }
    }
    let mut seen: Vec<(TenantId, u32)> = Vec::new();
    let mut after: Option<(TenantId, DekVersion)> = None;
    loop {
        let page = store
            .scan_deks(after.as_ref().map(|(t, v)| (t, *v)), 4)
            .await
            .unwrap();
        seen.extend(page.iter().map(|r| (r.tenant.clone(), r.version.get())));
        if page.len() < 4 {
            break;
        }
        after = page.last().map(|r| (r.tenant.clone(), r.version));
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly ascending by (tenant, version)"
    );
    let ours: Vec<_> = seen.into_iter().filter(|(t, _)| mine.contains(t)).collect();
    let expected: Vec<_> = mine
        .iter()
        .flat_map(|t| (1..=3).map(move |v| (t.clone(), v)))
        .collect();
    assert_eq!(ours, expected);
}

/// The live scan returns exactly the records of the full scan that are not destroyed, in
/// the same order, whatever the page size (including pages that begin after a tombstone).
/// Compared on this test's tenants only: other tests may write to a shared store meanwhile.
pub async fn scanning_live_deks_skips_tombstones_only(store: Arc<dyn Store>) {
    let mine: BTreeSet<TenantId> = (0..5).map(|i| unique_tenant(&format!("live{i}"))).collect();
    for (i, t) in mine.iter().enumerate() {
        for v in 1..=4u32 {
            let mut record = dek_record(t, v, 1);
            // Tombstones at the start, the middle, the end, and a tenant of only those.
            if i == 3 || (v + u32::try_from(i).unwrap()) % 2 == 0 {
                record.state = DekState::Destroyed;
            }
            store.put_dek(record, PutMode::Create).await.unwrap();
        }
    }
    let key = |r: &DekRecord| (r.tenant.clone(), r.version.get());
    let ours = |k: &(TenantId, u32)| mine.contains(&k.0);
    let mut expected = Vec::new();
    let mut after: Option<(TenantId, DekVersion)> = None;
    loop {
        let page = store
            .scan_deks(after.as_ref().map(|(t, v)| (t, *v)), 7)
            .await
            .unwrap();
        expected.extend(
            page.iter()
                .filter(|r| r.state != DekState::Destroyed)
                .map(key)
                .filter(ours),
        );
        if page.len() < 7 {
            break;
        }
        after = page.last().map(|r| (r.tenant.clone(), r.version));
    }
    for limit in [1, 2, 3, 500] {
        let mut seen = Vec::new();
        let mut after: Option<(TenantId, DekVersion)> = None;
        loop {
            let page = store
                .scan_live_deks(after.as_ref().map(|(t, v)| (t, *v)), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit);
            assert!(page.iter().all(|r| r.state != DekState::Destroyed));
            assert!(page.windows(2).all(|w| key(&w[0]) < key(&w[1])));
            seen.extend(page.iter().map(key).filter(ours));
            if page.len() < limit {
                break;
            }
            after = page.last().map(|r| (r.tenant.clone(), r.version));
        }
        assert_eq!(seen, expected, "page size {limit}");
    }
    assert_eq!(
        expected.len(),
        8,
        "two live keys in each of four tenants, none in the fifth"
    );
}

pub async fn scanning_secrets_visits_each_record_once_in_order(store: Arc<dyn Store>) {
    let mine: BTreeSet<TenantId> = (0..5)
        .map(|i| unique_tenant(&format!("sscan{i}")))
        .collect();
    for t in &mine {
        for i in 0..4 {
            store
                .put_secret(
                    secret_record(t, &name(&format!("n{i}")), vec![i]),
                    PutMode::Create,
                    KeyCondition::Unchecked,
                )
                .await
                .unwrap();
        }
    }
    let mut seen: Vec<(TenantId, SecretName)> = Vec::new();
    let mut after: Option<(TenantId, SecretName)> = None;
    loop {
        let page = store
            .scan_secrets(after.as_ref().map(|(t, n)| (t, n)), 3)
            .await
            .unwrap();
        seen.extend(
            page.iter()
                .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone())),
        );
        if page.len() < 3 {
            break;
        }
        after = page
            .last()
            .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone()));
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly ascending by (tenant, name)"
    );
    let ours: Vec<_> = seen.into_iter().filter(|(t, _)| mine.contains(t)).collect();
    let expected: Vec<_> = mine
        .iter()
        .flat_map(|t| (0..4).map(move |i| (t.clone(), name(&format!("n{i}")))))
        .collect();
    assert_eq!(ours, expected);
}

pub async fn grouped_counts_page_through_every_tenant_and_version(store: Arc<dyn Store>) {
    let mine: BTreeSet<TenantId> = (0..4).map(|i| unique_tenant(&format!("gc{i}"))).collect();
    let mut expected = Vec::new();
    for (i, t) in mine.iter().enumerate() {
        store
            .put_dek(dek_record(t, 1, 1), PutMode::Create)
            .await
            .unwrap();
        for v in 1..=3u32 {
            let count = (i as u32 + v) % 3;
            for j in 0..count {
                let mut r = secret_record(t, &name(&format!("v{v}-{j}")), vec![1]);
                r.metadata.dek_version = DekVersion::new(v).unwrap();
                store
                    .put_secret(r, PutMode::Create, KeyCondition::Unchecked)
                    .await
                    .unwrap();
            }
            if count > 0 {
                expected.push((t.clone(), DekVersion::new(v).unwrap(), u64::from(count)));
            }
        }
    }
    let mut seen = Vec::new();
    let mut after: Option<(TenantId, DekVersion)> = None;
    loop {
        let page = store
            .count_secrets_by_tenant_version(after.as_ref().map(|(t, v)| (t, *v)), 2)
            .await
            .unwrap();
        seen.extend(page.iter().cloned());
        if page.len() < 2 {
            break;
        }
        after = page.last().map(|(t, v, _)| (t.clone(), *v));
    }
    assert!(
        seen.windows(2)
            .all(|w| (&w[0].0, w[0].1) < (&w[1].0, w[1].1)),
        "ascending, no duplicates"
    );
    let ours: Vec<_> = seen
        .into_iter()
        .filter(|(t, _, _)| mine.contains(t))
        .collect();
    assert_eq!(ours, expected);
}

/// The re-encryption count, worked out from every record the store holds: secrets whose
/// version is not their tenant's newest active one, for tenants that have one.
async fn pending_by_scanning(store: &dyn Store) -> u64 {
    let mut newest = std::collections::BTreeMap::<TenantId, DekVersion>::new();
    let mut after: Option<(TenantId, DekVersion)> = None;
    loop {
        let page = store
            .scan_deks(after.as_ref().map(|(t, v)| (t, *v)), 500)
            .await
            .unwrap();
        for r in page.iter().filter(|r| r.state == DekState::Active) {
            let e = newest.entry(r.tenant.clone()).or_insert(r.version);
            *e = (*e).max(r.version);
        }
        if page.len() < 500 {
            break;
        }
        after = page.last().map(|r| (r.tenant.clone(), r.version));
    }
    let mut total = 0;
    let mut after: Option<(TenantId, SecretName)> = None;
    loop {
        let page = store
            .scan_secrets(after.as_ref().map(|(t, n)| (t, n)), 500)
            .await
            .unwrap();
        total += page
            .iter()
            .filter(|r| {
                newest
                    .get(&r.metadata.tenant)
                    .is_some_and(|v| *v != r.metadata.dek_version)
            })
            .count() as u64;
        if page.len() < 500 {
            break;
        }
        after = page
            .last()
            .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone()));
    }
    total
}

/// `count_secrets_to_reencrypt` counts exactly the secrets not under their tenant's newest
/// active version: several versions per tenant, a newest key that is decrypt-only,
/// compromised or destroyed, a tenant with no active key, secrets under a version with no
/// key record, and a tenant with more data keys than one page. The count is global, so it
/// is compared with a full scan taken just before and just after it (retried while other
/// checks write to a shared store).
pub async fn reencryption_count_matches_the_records(store: Arc<dyn Store>) {
    let put_secrets = |t: &TenantId, version: u32, n: usize| {
        let store = Arc::clone(&store);
        let t = t.clone();
        async move {
            for j in 0..n {
                let mut r = secret_record(&t, &name(&format!("v{version}-{j}")), vec![1]);
                r.metadata.dek_version = DekVersion::new(version).unwrap();
                store
                    .put_secret(r, PutMode::Create, KeyCondition::Unchecked)
                    .await
                    .unwrap();
            }
        }
    };
    let key = |t: &TenantId, version: u32, state: DekState| {
        let mut r = dek_record(t, version, 1);
        r.state = state;
        r
    };
    // Newest active v3 over v1 and v2 (active, decrypt-only): 5 + 2 pending.
    let ta = unique_tenant("pending-a");
    for (v, state) in [
        (1, DekState::Active),
        (2, DekState::DecryptOnly),
        (3, DekState::Active),
    ] {
        store
            .put_dek(key(&ta, v, state), PutMode::Create)
            .await
            .unwrap();
    }
    put_secrets(&ta, 1, 5).await;
    put_secrets(&ta, 2, 2).await;
    put_secrets(&ta, 3, 4).await;
    // Newest key compromised, v2 active: 3 under v1 and 1 under v3 pending.
    let tb = unique_tenant("pending-b");
    for (v, state) in [
        (1, DekState::DecryptOnly),
        (2, DekState::Active),
        (3, DekState::Compromised),
    ] {
        store
            .put_dek(key(&tb, v, state), PutMode::Create)
            .await
            .unwrap();
    }
    put_secrets(&tb, 1, 3).await;
    put_secrets(&tb, 2, 2).await;
    put_secrets(&tb, 3, 1).await;
    // No active key at all: nothing counts.
    let tc = unique_tenant("pending-c");
    store
        .put_dek(key(&tc, 1, DekState::Retired), PutMode::Create)
        .await
        .unwrap();
    store
        .put_dek(key(&tc, 2, DekState::Destroyed), PutMode::Create)
        .await
        .unwrap();
    put_secrets(&tc, 1, 2).await;
    // Active v1, a secret under v7 that has no key record, and 1,100 destroyed keys
    // (more than a page of the scans) below a newest active one.
    let td = unique_tenant("pending-d");
    store
        .put_dek(key(&td, 1, DekState::Active), PutMode::Create)
        .await
        .unwrap();
    put_secrets(&td, 7, 1).await;
    put_secrets(&td, 1, 1).await;
    let te = unique_tenant("pending-e");
    let tombstones: Vec<_> = (1..=1100)
        .map(|v| (key(&te, v, DekState::Destroyed), PutMode::Create))
        .collect();
    assert!(
        store
            .put_deks(tombstones)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    store
        .put_dek(key(&te, 1101, DekState::Active), PutMode::Create)
        .await
        .unwrap();
    put_secrets(&te, 1100, 2).await;
    put_secrets(&te, 1101, 1).await;

    let mine: u64 = 5 + 2 + 3 + 1 + 1 + 2;
    for _ in 0..100 {
        let before = pending_by_scanning(store.as_ref()).await;
        let counted = store.count_secrets_to_reencrypt().await.unwrap();
        let after = pending_by_scanning(store.as_ref()).await;
        if before == after {
            assert_eq!(counted, before, "the count disagrees with the records");
            assert!(counted >= mine);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the store never held still long enough to compare the count");
}

/// Generates one `#[tokio::test]` per conformance check.
///
/// `$make` is an expression evaluating to a future of `Option<Arc<S>>` for a store type
/// `S`; it is evaluated once per test, and must give each test a handle of its own (with
/// connections of its own), since two of the checks close the store they are given. `None` skips the test (for a server backend whose
/// server is not configured: print why before returning `None`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@tests $make;
            dek_create_is_create_only,
            dek_update_requires_the_stored_row_version,
            dek_upsert_creates_then_replaces,
            dek_records_round_trip_exactly,
            list_deks_is_ascending_and_per_tenant,
            secret_modes_follow_the_contract,
            secret_records_round_trip_exactly,
            row_versions_outside_the_stored_range_are_refused,
            a_recreated_record_refuses_every_stale_expectation,
            secret_writes_check_the_key_they_were_sealed_under,
            delete_honours_the_expected_version,
            adversarial_ids_never_collide,
            paging_has_no_gaps_or_duplicates,
            tenants_are_listed_once_in_order,
            concurrent_conditional_writers_lose_no_update,
            racing_dek_creation_has_exactly_one_winner,
            delete_dek_honours_the_expected_version,
            racing_deletes_of_one_record_all_succeed_once,
            listing_secrets_not_under_a_version_returns_whole_records,
            batched_writes_apply_each_condition_separately,
            large_batches_apply_each_condition_separately,
            empty_batches_are_no_ops,
            scanning_deks_visits_each_record_once_in_order,
            scanning_live_deks_skips_tombstones_only,
            scanning_secrets_visits_each_record_once_in_order,
            grouped_counts_page_through_every_tenant_and_version,
            reencryption_count_matches_the_records,
            a_closed_store_refuses_every_operation_as_unavailable,
            closing_during_operations_neither_hangs_nor_fails_them_otherwise,
        );
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(store) = $make.await else { return };
                let store: ::std::sync::Arc<dyn $crate::storage::Store> = store;
                $crate::storage::conformance::$check(store).await;
            }
        )*
    };
}
