//! The all-tenants re-encryption sweep: two global, paged scans (data keys and secrets,
//! both ordered by tenant) merged tenant by tenant, so that the sweep costs a few store
//! round trips per batch of rows rather than several per tenant.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::jobs::{JobFailure, ReencryptReport, beside, stops_the_job};
use super::{Inner, SealedWrite};
use crate::envelope::{self, EnvelopeRef, SecretContext};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::keys::CachedDek;
use crate::storage::{DekRecord, DekState, KeyCondition, PutMode, SecretRecord, Timestamp};

/// One tenant's share of the scan: its data keys and a bounded chunk of its secrets (a
/// tenant with more secrets than a page comes in several chunks).
pub(crate) struct Chunk {
    pub(crate) tenant: TenantId,
    pub(crate) deks: Arc<Vec<DekRecord>>,
    pub(crate) secrets: Vec<SecretRecord>,
}

impl Chunk {
    /// The newest active version, the one secrets are moved to.
    pub(crate) fn target(&self) -> Option<&DekRecord> {
        self.deks
            .iter()
            .filter(|r| r.state == DekState::Active)
            .max_by_key(|r| r.version)
    }
}

/// Merges `scan_secrets` and `scan_live_deks` (destroyed keys, which pile up with every
/// rotation, are left out; a secret under one is looked up on its own).
pub(crate) struct TenantCursor {
    page: usize,
    secrets: VecDeque<SecretRecord>,
    secrets_after: Option<(TenantId, SecretName)>,
    secrets_done: bool,
    deks: VecDeque<DekRecord>,
    deks_after: Option<(TenantId, DekVersion)>,
    deks_done: bool,
    current: Option<(TenantId, Arc<Vec<DekRecord>>)>,
}

impl TenantCursor {
    pub(crate) fn new(page: usize) -> Self {
        Self {
            page,
            secrets: VecDeque::new(),
            secrets_after: None,
            secrets_done: false,
            deks: VecDeque::new(),
            deks_after: None,
            deks_done: false,
            current: None,
        }
    }

    async fn refill_secrets(&mut self, inner: &Inner) -> Result<(), Error> {
        if self.secrets.is_empty() && !self.secrets_done {
            let after = self.secrets_after.as_ref().map(|(t, n)| (t, n));
            let page = inner.store.scan_secrets(after, self.page).await?;
            self.secrets_done = page.len() < self.page;
            self.secrets_after = page
                .last()
                .map(|r| (r.metadata.tenant.clone(), r.metadata.name.clone()));
            self.secrets.extend(page);
        }
        Ok(())
    }

    async fn refill_deks(&mut self, inner: &Inner) -> Result<(), Error> {
        if self.deks.is_empty() && !self.deks_done {
            let after = self.deks_after.as_ref().map(|(t, v)| (t, *v));
            let page = inner.store.scan_live_deks(after, self.page).await?;
            self.deks_done = page.len() < self.page;
            self.deks_after = page.last().map(|r| (r.tenant.clone(), r.version));
            self.deks.extend(page);
        }
        Ok(())
    }

    /// The data keys of `tenant` (which is at or after every tenant asked for before).
    async fn deks_of(
        &mut self,
        inner: &Inner,
        tenant: &TenantId,
    ) -> Result<Arc<Vec<DekRecord>>, Error> {
        if let Some((t, deks)) = &self.current
            && t == tenant
        {
            return Ok(Arc::clone(deks));
        }
        let mut mine = Vec::new();
        loop {
            self.refill_deks(inner).await?;
            match self.deks.front() {
                Some(r) if &r.tenant < tenant => {
                    self.deks.pop_front();
                }
                Some(r) if &r.tenant == tenant => mine.extend(self.deks.pop_front()),
                _ if self.deks.is_empty() && !self.deks_done => {}
                _ => break,
            }
        }
        let mine = Arc::new(mine);
        self.current = Some((tenant.clone(), Arc::clone(&mine)));
        Ok(mine)
    }

    /// The next chunk, or `None` when every secret has been visited.
    pub(crate) async fn next(&mut self, inner: &Inner) -> Result<Option<Chunk>, Error> {
        self.refill_secrets(inner).await?;
        let Some(tenant) = self.secrets.front().map(|r| r.metadata.tenant.clone()) else {
            return Ok(None);
        };
        let mut secrets = Vec::new();
        while secrets.len() < self.page {
            match self.secrets.front() {
                Some(r) if r.metadata.tenant == tenant => secrets.extend(self.secrets.pop_front()),
                None if !self.secrets_done => self.refill_secrets(inner).await?,
                _ => break,
            }
        }
        let deks = self.deks_of(inner, &tenant).await?;
        Ok(Some(Chunk {
            tenant,
            deks,
            secrets,
        }))
    }
}

/// A planned round: the secrets to move, tenant by tenant.
struct Planned {
    chunks: Vec<(Chunk, Vec<Move>)>,
    /// Secrets to move.
    moved: usize,
    /// Whether the scan is exhausted (the last round).
    last: bool,
}

/// A sealed round: its rows re-sealed and ready to write.
struct Round {
    /// The round's rows, re-sealed, with the row versions they were read at.
    writes: Vec<SealedWrite>,
    /// Secrets planned to move (some may have failed to re-seal).
    moved: usize,
}

/// What writing a round did.
#[derive(Default)]
struct Written {
    reencrypted: u64,
    skipped: u64,
    /// Tenants where a concurrent write won.
    conflicted: Vec<TenantId>,
}

impl Written {
    fn add_to(self, report: &mut ReencryptReport, conflicted: &mut BTreeSet<TenantId>) {
        report.reencrypted += self.reencrypted;
        report.skipped_concurrent_write += self.skipped;
        conflicted.extend(self.conflicted);
    }
}

/// One secret to move, with the keys to move it with.
pub(crate) struct Move {
    pub(crate) record: SecretRecord,
    pub(crate) old: Arc<CachedDek>,
}

impl Inner {
    /// The sweep: moves every secret to its tenant's newest active version, `page` rows per
    /// round, and returns the number of secrets it expected to move (the progress total).
    ///
    /// Three stages run side by side, each handing its rounds to the next over a channel:
    /// - plan: scans a round's secrets and data keys and picks the secrets to move, each
    ///   with its old key;
    /// - seal: takes the planned rounds that are ready (up to [`SEAL_AHEAD`]), reserves
    ///   their encryptions for all their tenants in one batch, then re-seals their rows;
    /// - write (this task): writes each round's rows in one batch of conditional writes,
    ///   in the order they were planned, and reports progress.
    ///
    /// The plan and seal stages run as tasks of their own ([`beside`]), so the reads and
    /// the crypto of the next rounds run while the store writes. The seal stage works
    /// ahead of the write stage, so a round's reservation reaches the store before the
    /// rows of the rounds ahead of it are all written, and the store's writer goes from
    /// one round's rows to the next without waiting for a reservation between them. At
    /// most ten rounds are held at once (one planned, three queued for sealing, four being
    /// sealed, one queued for writing, one written): memory is bounded by the batch size,
    /// whatever the number of secrets. The pending count (one aggregate query on SQL
    /// backends) is taken while the first round is planned.
    ///
    /// Rows are written in the write stage only, one round after the other, as in a
    /// sequential sweep, so crash safety is unchanged: a round's rows come after those of
    /// the rounds before it, and none of them is written until those are. A round's
    /// reservation lands before its rows are sealed; a crash after it only wastes counts.
    /// If a stage fails, the rounds before it are written and its error is returned; if a
    /// write fails, the other stages stop at their next hand-over.
    pub(crate) async fn sweep_all(
        self: &Arc<Self>,
        page: usize,
        report: &mut ReencryptReport,
        conflicted: &mut BTreeSet<TenantId>,
        tick: &mut (dyn FnMut(&ReencryptReport, u64) + Send),
    ) -> Result<u64, Error> {
        let (planned, to_seal) = mpsc::channel(SEAL_AHEAD - 1);
        let (sealed, mut to_write) = mpsc::channel(1);
        let plan = plan_rounds(Arc::clone(self), page, planned);
        let seal = seal_rounds(Arc::clone(self), to_seal, sealed);
        let write = async move {
            let total = self.store.count_secrets_to_reencrypt().await?;
            while let Some(round) = to_write.recv().await {
                let (round, mut scratch): (Round, ReencryptReport) = round?;
                report.examined += scratch.examined;
                report.failures.append(&mut scratch.failures);
                let moved = round.moved;
                self.write_round(round.writes)
                    .await?
                    .add_to(report, conflicted);
                if moved > 0 {
                    tick(report, total);
                }
            }
            Ok(total)
        };
        // Each stage is a task of its own: one that holds the store's writer (the seal
        // stage, while it reserves) must not wait for another's CPU work to be polled.
        beside(plan, beside(seal, write)).await
    }

    /// Scans and plans until `page` secrets are to be moved or the scan ends. Its only
    /// writes finish a tenant's interrupted rotation (conditional writes that demote its
    /// older active keys).
    async fn plan_round(
        &self,
        cursor: &mut TenantCursor,
        page: usize,
        report: &mut ReencryptReport,
    ) -> Result<Planned, Error> {
        let mut chunks: Vec<(Chunk, Vec<Move>)> = Vec::new();
        let mut to_move = 0;
        let last = loop {
            let Some(mut chunk) = cursor.next(self).await? else {
                break true;
            };
            let moves = self.plan(&mut chunk, report).await?;
            to_move += moves.len();
            if !moves.is_empty() {
                chunks.push((chunk, moves));
            }
            if to_move >= page {
                break false;
            }
        };
        Ok(Planned {
            chunks,
            moved: to_move,
            last,
        })
    }

    /// The secrets of `chunk` to move (taken out of it), each with its old key (unwrapped
    /// from the scanned record, so no per-tenant read).
    async fn plan(
        &self,
        chunk: &mut Chunk,
        report: &mut ReencryptReport,
    ) -> Result<Vec<Move>, Error> {
        let Some(target) = chunk.target().map(|r| r.version) else {
            return Ok(Vec::new());
        };
        let tenant = &chunk.tenant;
        // Finish an interrupted rotation: only the newest version may stay active.
        if chunk
            .deks
            .iter()
            .filter(|r| r.state == DekState::Active)
            .count()
            > 1
        {
            self.demote_older_actives(tenant).await?;
        }
        let mut moves = Vec::new();
        // The old keys met in this chunk (usually one), so each is looked up once; and the
        // versions not among the live keys, read from the store once each.
        let mut keys: Vec<(DekVersion, Arc<CachedDek>)> = Vec::new();
        let mut not_live: Vec<(DekVersion, Option<DekRecord>)> = Vec::new();
        for record in std::mem::take(&mut chunk.secrets) {
            if record.metadata.dek_version == target {
                continue;
            }
            report.examined += 1;
            let version = record.metadata.dek_version;
            let old = if let Some((_, key)) = keys.iter().find(|(v, _)| *v == version) {
                Ok(Arc::clone(key))
            } else {
                // Not among the live keys: destroyed (reported as such) or missing.
                let stored = match chunk.deks.iter().find(|r| r.version == version) {
                    Some(r) => Some(r.clone()),
                    None => {
                        if let Some((_, stored)) = not_live.iter().find(|(v, _)| *v == version) {
                            stored.clone()
                        } else {
                            let stored = self.store.get_dek(tenant, version).await?;
                            not_live.push((version, stored.clone()));
                            stored
                        }
                    }
                };
                let key = match stored {
                    Some(stored) => self.key_for(tenant, stored).await,
                    None => Err(Error::KeyMissing { version }),
                };
                if let Ok(key) = &key {
                    keys.push((version, Arc::clone(key)));
                }
                key
            };
            match old {
                Ok(old) => moves.push(Move { record, old }),
                Err(e) => report
                    .failures
                    .push(failure(tenant, &record.metadata.name, &e)),
            }
        }
        Ok(moves)
    }

    /// Reserves, in one batch, the encryptions that the planned rounds of `rounds` need
    /// under each tenant's target key, and returns the tenants granted. A tenant whose key
    /// changed since the scan, or that would pass its limit, is not granted: its rows take
    /// the ordinary per-write path instead (which also rolls an exhausted key).
    async fn reserve<'a>(
        &self,
        rounds: impl Iterator<Item = &'a Planned>,
    ) -> Result<BTreeSet<TenantId>, Error> {
        let mut needed: BTreeMap<TenantId, (DekRecord, u64)> = BTreeMap::new();
        for (chunk, moves) in rounds.flat_map(|r| &r.chunks) {
            if let Some(target) = chunk.target() {
                let entry = needed
                    .entry(chunk.tenant.clone())
                    .or_insert_with(|| (target.clone(), 0));
                entry.1 += moves.len() as u64;
            }
        }
        let mut batch = Vec::new();
        let mut order = Vec::new();
        for (tenant, (record, n)) in &needed {
            let max = self.config.max_encryptions(record.suite);
            if record.encryptions_reserved.saturating_add(*n) > max {
                continue;
            }
            let mut reserved = record.clone();
            reserved.encryptions_reserved += n;
            reserved.updated_at = Timestamp::now();
            batch.push((reserved, PutMode::Update(record.row_version)));
            order.push(tenant.clone());
        }
        let mut granted = BTreeSet::new();
        if batch.is_empty() {
            return Ok(granted);
        }
        for (tenant, result) in order.into_iter().zip(self.put_deks(batch).await?) {
            if result.is_ok() {
                granted.insert(tenant);
            }
        }
        Ok(granted)
    }

    /// Re-seals the rows of a planned round: under its tenant's target key where its
    /// encryptions were reserved (`granted`), else through the ordinary reservation path.
    async fn reseal_round(
        &self,
        chunks: Vec<(Chunk, Vec<Move>)>,
        granted: &BTreeSet<TenantId>,
        report: &mut ReencryptReport,
    ) -> Result<Vec<SealedWrite>, Error> {
        let mut writes = Vec::new();
        for (chunk, moves) in chunks {
            let tenant = &chunk.tenant;
            let Some(target) = chunk.target().cloned() else {
                continue;
            };
            let new = if granted.contains(tenant) {
                let version = target.version;
                Some((self.key_for(tenant, target).await?, version))
            } else {
                None
            };
            for m in moves {
                let name = m.record.metadata.name.clone();
                match self.reseal(tenant, m, new.as_ref()).await {
                    Ok(write) => writes.push(write),
                    Err(e) if stops_the_job(&e) => return Err(e),
                    Err(e) => report.failures.push(failure(tenant, &name, &e)),
                }
            }
        }
        Ok(writes)
    }

    /// Writes a prepared round's rows in one batch of conditional writes.
    async fn write_round(&self, writes: Vec<SealedWrite>) -> Result<Written, Error> {
        let mut written = Written::default();
        if writes.is_empty() {
            return Ok(written);
        }
        let tenants: Vec<TenantId> = writes
            .iter()
            .map(|(r, _, _)| r.metadata.tenant.clone())
            .collect();
        for (tenant, result) in tenants.into_iter().zip(self.reseal_secrets(writes).await?) {
            if result.is_ok() {
                written.reencrypted += 1;
            } else {
                // A concurrent write won (its value stands), or the tenant's key changed
                // since the round was sealed (the tenant is swept again).
                written.skipped += 1;
                written.conflicted.push(tenant);
            }
        }
        Ok(written)
    }

    /// Re-seals one row under `new` (whose encryptions were reserved in batch) or, without
    /// it, under the tenant's active key through the ordinary reservation path: a write
    /// conditional on the row version read and on that key still being current.
    pub(crate) async fn reseal(
        &self,
        tenant: &TenantId,
        m: Move,
        new: Option<&(Arc<CachedDek>, DekVersion)>,
    ) -> Result<SealedWrite, Error> {
        let Move { mut record, old } = m;
        let expected = record.metadata.row_version;
        let name = record.metadata.name.clone();
        let parsed = EnvelopeRef::parse(&record.envelope)?;
        let (kind, suite, version) = (parsed.kind(), parsed.suite(), parsed.dek_version());
        if record.metadata.kind != kind || record.metadata.dek_version != version {
            return Err(FormatError::InvalidField(
                Structure::Record,
                "metadata disagrees with envelope",
            )
            .into());
        }
        if old.suite != suite {
            return Err(Error::Decryption);
        }
        let (cipher, new_suite, new_version) = if let Some((new, version)) = new {
            (Arc::clone(new), new.suite, *version)
        } else {
            let active = self.reserve_encryption(tenant).await?;
            (Arc::clone(&active.dek), active.dek.suite, active.version)
        };
        let ctx = SecretContext {
            tenant,
            name: &name,
        };
        let sealed =
            envelope::with_plaintext(&old.cipher, &mut record.envelope, ctx, |plaintext| {
                envelope::seal_plaintext(
                    &cipher.cipher,
                    new_suite,
                    kind,
                    new_version,
                    ctx,
                    plaintext,
                )
            })?;
        record.metadata.dek_version = new_version;
        record.envelope = sealed;
        let key = KeyCondition::SealedUnder(Arc::clone(&cipher.wrapped));
        Ok((record, PutMode::Update(expected), key))
    }
}

/// Planned rounds whose encryptions the seal stage reserves in one batch (at most). The
/// plan stage runs ahead of the writes, so several rounds are usually ready: one
/// reservation batch for all their tenants costs about as much as one for a single round.
const SEAL_AHEAD: usize = 4;

/// What a stage hands to the next: a round and what it found so far (examined secrets
/// and failures), or the error that stopped it.
type Handed<T> = Result<(T, ReencryptReport), Error>;

/// The plan stage of [`Inner::sweep_all`]: plans round after round and hands each over,
/// until the scan ends, it fails, or the next stage stops.
async fn plan_rounds(inner: Arc<Inner>, page: usize, out: mpsc::Sender<Handed<Planned>>) {
    let mut cursor = TenantCursor::new(page);
    loop {
        let mut scratch = ReencryptReport::default();
        let round = inner.plan_round(&mut cursor, page, &mut scratch).await;
        let last = round.as_ref().map_or(true, |r| r.last);
        // A closed channel: the next stage stopped, and the write stage reports why.
        if out.send(round.map(|r| (r, scratch))).await.is_err() || last {
            return;
        }
    }
}

/// The seal stage of [`Inner::sweep_all`]: takes the planned rounds that are ready (up to
/// [`SEAL_AHEAD`]), reserves their encryptions in one batch, then re-seals each and hands
/// it over; passes on the error that stopped the plan stage (after the rounds before it),
/// or its own.
async fn seal_rounds(
    inner: Arc<Inner>,
    mut planned: mpsc::Receiver<Handed<Planned>>,
    out: mpsc::Sender<Handed<Round>>,
) {
    while let Some(first) = planned.recv().await {
        let mut group = vec![first];
        while group.len() < SEAL_AHEAD && group.last().is_some_and(Result::is_ok) {
            match planned.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut rounds = Vec::with_capacity(group.len());
        let mut failed = None;
        for handed in group {
            match handed {
                Ok(round) => rounds.push(round),
                Err(e) => failed = Some(e),
            }
        }
        let granted = match inner.reserve(rounds.iter().map(|(r, _)| r)).await {
            Ok(granted) => granted,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        for (round, mut scratch) in rounds {
            let Planned { chunks, moved, .. } = round;
            let sealed = inner
                .reseal_round(chunks, &granted, &mut scratch)
                .await
                .map(|writes| (Round { writes, moved }, scratch));
            let stop = sealed.is_err();
            // A closed channel: the write stage stopped, and reports why.
            if out.send(sealed).await.is_err() || stop {
                return;
            }
        }
        if let Some(e) = failed {
            let _ = out.send(Err(e)).await;
            return;
        }
    }
}

fn failure(tenant: &TenantId, name: &SecretName, e: &Error) -> JobFailure {
    JobFailure {
        tenant: tenant.clone(),
        name: Some(name.clone()),
        dek_version: None,
        kind: e.kind(),
    }
}
