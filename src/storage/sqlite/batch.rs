//! Batched writes: many conditional updates per SQL statement.
//!
//! sqlx runs every SQLite statement on the connection's worker thread and waits for it,
//! and hands every result row back through a channel. On a small machine that costs more
//! than SQLite's own work for one small row (see "Rotation jobs" in `BENCHMARKS.md`), so a
//! batch written one statement per row spends most of its time switching threads. A batch
//! of conditional updates of distinct rows ([`PutMode::Update`]: the writes of rotation
//! sweeps and of their reservations) is therefore written as `UPDATE .. FROM (VALUES ..)`
//! statements of up to [`CHUNK`] rows, in one `BEGIN IMMEDIATE` transaction:
//!
//! - each source row names one stored row by its primary key and the row version it
//!   expects, and a secret's the data key it was sealed under, exactly as the one-row
//!   `UPDATE .. WHERE row_version = ? AND ..` does;
//! - when every statement updated all of its rows, every condition held: the batch
//!   commits and each row has the row version its record carries;
//! - when one did not, some condition failed: the transaction is rolled back and the
//!   batch written again one statement per row, which reports each row's outcome. The
//!   write lock is held from the first attempt's `BEGIN IMMEDIATE` until its rollback,
//!   and a conflict means a concurrent writer, so this path is rare.
//!
//! Any other batch (a create or an upsert in it, or a key named twice, which
//! `UPDATE .. FROM` would apply once) is written one statement per row, in order.
//!
//! Statement sizes are [`CHUNK`] and the powers of two below it, so that a connection
//! prepares at most eight statements per table and its statement cache reuses them.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::LazyLock;

use sqlx::Arguments;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool};

use super::{BACKEND, map_err, write_dek, write_secret};
use crate::error::Error;
use crate::ids::RowVersion;
use crate::storage::rows::{to_sql_row_version, to_sql_u64};
use crate::storage::{DekRecord, KeyCondition, PutMode, SecretRecord, keep_conditional};

/// The most rows one statement updates. At 10 bound values per data-key row this stays far
/// below SQLite's limit on bound parameters (32,766).
const CHUNK: usize = 128;

/// Statement sizes: `CHUNK` while at least that many rows remain, then the largest power
/// of two that fits.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let take = match n {
            0 => return None,
            n if n >= CHUNK => CHUNK,
            n => 1 << n.ilog2(),
        };
        n -= take;
        Some(take)
    })
}

/// One `UPDATE .. FROM (VALUES ..)` statement per power of two up to `CHUNK`.
fn statements(head: &str, tuple: &str, tail: &str) -> Vec<String> {
    (0..=CHUNK.ilog2())
        .map(|k| {
            let tuples = vec![tuple; 1 << k].join(", ");
            format!("{head}{tuples}{tail}")
        })
        .collect()
}

fn sql(all: &'static [String], n: usize) -> &'static str {
    all.get(n.ilog2() as usize).map_or("", String::as_str)
}

static SECRET_UPDATES: LazyLock<Vec<String>> = LazyLock::new(|| {
    statements(
        "WITH v (tenant, name, kind, dek_version, envelope, updated_at, row_version, sealed,
                 expected) AS (VALUES ",
        "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ") UPDATE credvault_secrets SET kind = v.kind, dek_version = v.dek_version,
           envelope = v.envelope, updated_at = v.updated_at, row_version = v.row_version
         FROM v
         WHERE credvault_secrets.tenant = v.tenant AND credvault_secrets.name = v.name
           AND credvault_secrets.row_version = v.expected
           AND (v.sealed IS NULL OR EXISTS (SELECT 1 FROM credvault_deks d
                WHERE d.tenant = v.tenant AND d.version = v.dek_version AND d.state = 1
                  AND d.wrapped = v.sealed))",
    )
});

static DEK_UPDATES: LazyLock<Vec<String>> = LazyLock::new(|| {
    statements(
        "WITH v (tenant, version, state, suite, master_key_id, wrapped, encryptions_reserved,
                 updated_at, row_version, expected) AS (VALUES ",
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ") UPDATE credvault_deks SET state = v.state, suite = v.suite,
           master_key_id = v.master_key_id, wrapped = v.wrapped,
           encryptions_reserved = v.encryptions_reserved, updated_at = v.updated_at,
           row_version = v.row_version
         FROM v
         WHERE credvault_deks.tenant = v.tenant AND credvault_deks.version = v.version
           AND credvault_deks.row_version = v.expected",
    )
});

/// What a table contributes to a batched write.
pub(super) trait Batched: Sized {
    /// The primary key.
    type Key<'a>: Eq + Hash
    where
        Self: 'a;

    /// Bound values per source row.
    const VALUES: usize;

    fn key(&self) -> Self::Key<'_>;
    /// The row version the write stores.
    fn row_version(&self) -> RowVersion;
    fn statement(n: usize) -> &'static str;
    /// Adds one source row: the key, the new values (the row version last) and the
    /// expected row version.
    fn bind(&self, args: &mut SqliteArguments, expected: i64) -> Result<(), Error>;
    /// The one-row write.
    async fn write_one(
        conn: &mut SqliteConnection,
        record: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error>;
}

/// A secret write of a batch: the record and its key condition.
pub(super) struct SealedSecret {
    pub(super) record: SecretRecord,
    pub(super) key: KeyCondition,
}

impl Batched for SealedSecret {
    type Key<'a> = (&'a str, &'a str);
    const VALUES: usize = 9;

    fn key(&self) -> Self::Key<'_> {
        let m = &self.record.metadata;
        (m.tenant.as_str(), m.name.as_str())
    }

    fn row_version(&self) -> RowVersion {
        self.record.metadata.row_version
    }

    fn statement(n: usize) -> &'static str {
        sql(&SECRET_UPDATES, n)
    }

    fn bind(&self, args: &mut SqliteArguments, expected: i64) -> Result<(), Error> {
        let m = &self.record.metadata;
        add(args, m.tenant.as_str())?;
        add(args, m.name.as_str())?;
        add(args, i64::from(m.kind.as_u8()))?;
        add(args, i64::from(m.dek_version.get()))?;
        add(args, self.record.envelope.as_slice())?;
        add(args, m.updated_at.as_millis())?;
        add(args, to_sql_row_version(m.row_version)?)?;
        add(args, self.key.sealed_under())?;
        add(args, expected)
    }

    async fn write_one(
        conn: &mut SqliteConnection,
        write: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        write_secret(conn, write.record, mode, &write.key).await
    }
}

impl Batched for DekRecord {
    type Key<'a> = (&'a str, u32);
    const VALUES: usize = 10;

    fn key(&self) -> Self::Key<'_> {
        (self.tenant.as_str(), self.version.get())
    }

    fn row_version(&self) -> RowVersion {
        self.row_version
    }

    fn statement(n: usize) -> &'static str {
        sql(&DEK_UPDATES, n)
    }

    fn bind(&self, args: &mut SqliteArguments, expected: i64) -> Result<(), Error> {
        add(args, self.tenant.as_str())?;
        add(args, i64::from(self.version.get()))?;
        add(args, i64::from(self.state.as_u8()))?;
        add(args, i64::from(self.suite.as_u8()))?;
        add(args, self.wrapped.master_key_id().as_str())?;
        add(args, self.wrapped.as_bytes())?;
        add(
            args,
            to_sql_u64(self.encryptions_reserved, "encryptions reserved")?,
        )?;
        add(args, self.updated_at.as_millis())?;
        add(args, to_sql_row_version(self.row_version)?)?;
        add(args, expected)
    }

    async fn write_one(
        conn: &mut SqliteConnection,
        record: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        write_dek(conn, &record, mode).await
    }
}

/// Writes `batch` in one `BEGIN IMMEDIATE` transaction (see the module documentation).
pub(super) async fn write<R: Batched>(
    pool: &SqlitePool,
    batch: Vec<(R, PutMode)>,
) -> Result<Vec<Result<RowVersion, Error>>, Error> {
    if let Some(expected) = conditional_updates(&batch) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        if let Some(next) = update_all(&mut tx, &batch, &expected).await? {
            tx.commit().await.map_err(map_err)?;
            return Ok(next.into_iter().map(Ok).collect());
        }
        tx.rollback().await.map_err(map_err)?;
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
    let mut out = Vec::with_capacity(batch.len());
    for (record, mode) in batch {
        out.push(keep_conditional(R::write_one(&mut tx, record, mode).await)?);
    }
    tx.commit().await.map_err(map_err)?;
    Ok(out)
}

/// The expected row versions, when `batch` holds at least two conditional updates, of
/// distinct keys, and nothing else.
fn conditional_updates<R: Batched>(batch: &[(R, PutMode)]) -> Option<Vec<RowVersion>> {
    let expected = batch
        .iter()
        .map(|(_, mode)| match mode {
            PutMode::Update(v) => Some(*v),
            PutMode::Create | PutMode::Upsert => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let keys: HashSet<R::Key<'_>> = batch.iter().map(|(r, _)| r.key()).collect();
    (batch.len() >= 2 && keys.len() == batch.len()).then_some(expected)
}

/// Applies every update of `batch` with multi-row statements: the stored row versions when
/// every condition held, `None` as soon as one did not (the caller rolls back).
async fn update_all<R: Batched>(
    conn: &mut SqliteConnection,
    batch: &[(R, PutMode)],
    expected: &[RowVersion],
) -> Result<Option<Vec<RowVersion>>, Error> {
    let next: Vec<RowVersion> = batch.iter().map(|(r, _)| r.row_version()).collect();
    let mut sql_expected = Vec::with_capacity(expected.len());
    for v in expected {
        sql_expected.push(to_sql_u64(v.0, "row version")?);
    }
    let mut start = 0;
    for n in chunk_sizes(batch.len()) {
        let rows = batch.get(start..start + n).unwrap_or_default();
        let versions = sql_expected.get(start..start + n).unwrap_or_default();
        start += n;
        // Sized up front: sqlx would otherwise grow the argument list one value at a time.
        let mut args = SqliteArguments::default();
        args.reserve(n * R::VALUES, 0);
        for ((record, _), v) in rows.iter().zip(versions) {
            record.bind(&mut args, *v)?;
        }
        let done = sqlx::query_with(R::statement(n), args)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        if done.rows_affected() != n as u64 {
            return Ok(None);
        }
    }
    Ok(Some(next))
}

fn add<'t, T: sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    args: &mut SqliteArguments,
    value: T,
) -> Result<(), Error> {
    args.add(value).map_err(|e| Error::storage(BACKEND, e))
}
