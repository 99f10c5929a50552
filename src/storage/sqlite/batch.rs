//! Batched conditional updates: many rows per SQL statement.
//!
//! sqlx runs every SQLite statement on the connection's worker thread and waits for it. On
//! a small machine that hand-off costs several times SQLite's own work for one small row
//! (see "Rotation jobs" in `BENCHMARKS.md`), so a batch written one statement per row
//! spends most of its time switching threads. The conditional updates of a batch
//! ([`PutMode::Update`], the writes of rotation sweeps and reservations) are therefore
//! written as `UPDATE .. FROM (VALUES ..) .. RETURNING` statements of up to [`CHUNK`] rows:
//!
//! - each source row names one stored row by its primary key and the row version it
//!   expects, exactly as the one-row `UPDATE .. WHERE row_version = ?` does;
//! - the statement returns the keys it updated: a row whose key is not returned had
//!   another row version, or was gone, which is the one-row statement's conflict;
//! - the caller runs every statement of a batch in one `BEGIN IMMEDIATE` transaction, so
//!   the batch is as atomic as before against other connections and processes.
//!
//! The multi-row form needs distinct keys (`UPDATE .. FROM` applies at most one source row
//! to a stored row). A batch that names a key twice is written one statement per row, in
//! order, as before. Creates and upserts are always written one statement per row.
//!
//! Statement sizes are [`CHUNK`] and the powers of two below it, so that a connection
//! prepares at most eight statements per table and its statement cache reuses them.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::LazyLock;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::{Query, map_err, write_dek, write_secret};
use crate::error::Error;
use crate::ids::RowVersion;
use crate::storage::rows::to_sql_u64;
use crate::storage::{DekRecord, PutMode, SecretRecord, keep_conditional};

/// The most rows one statement updates. At 9 bound values per data-key row this stays far
/// below SQLite's limit on bound parameters (32,766).
const CHUNK: usize = 128;

/// Statement sizes: `CHUNK` while at least that many rows remain, then the largest power
/// of two that fits.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let take = if n >= CHUNK {
            CHUNK
        } else if n == 0 {
            return None;
        } else {
            1 << n.ilog2()
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
        "WITH v (tenant, name, kind, dek_version, envelope, updated_at, expected) AS (VALUES ",
        "(?, ?, ?, ?, ?, ?, ?)",
        ") UPDATE credvault_secrets SET kind = v.kind, dek_version = v.dek_version,
           envelope = v.envelope, updated_at = v.updated_at,
           row_version = credvault_secrets.row_version + 1
         FROM v
         WHERE credvault_secrets.tenant = v.tenant AND credvault_secrets.name = v.name
           AND credvault_secrets.row_version = v.expected
         RETURNING tenant, name",
    )
});

static DEK_UPDATES: LazyLock<Vec<String>> = LazyLock::new(|| {
    statements(
        "WITH v (tenant, version, state, suite, master_key_id, wrapped, encryptions_reserved,
                 updated_at, expected) AS (VALUES ",
        "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ") UPDATE credvault_deks SET state = v.state, suite = v.suite,
           master_key_id = v.master_key_id, wrapped = v.wrapped,
           encryptions_reserved = v.encryptions_reserved, updated_at = v.updated_at,
           row_version = credvault_deks.row_version + 1
         FROM v
         WHERE credvault_deks.tenant = v.tenant AND credvault_deks.version = v.version
           AND credvault_deks.row_version = v.expected
         RETURNING tenant, version",
    )
});

/// What a table contributes to a batched update.
trait Batched: Sized {
    /// The primary key, borrowed from a record or from a returned row.
    type Key<'a>: Eq + Hash;
    const WHAT: &'static str;

    fn key(&self) -> Self::Key<'_>;
    fn statement(n: usize) -> &'static str;
    /// Binds one source row: the key, the new values and the expected row version.
    fn bind<'q>(&'q self, q: Query<'q>, expected: i64) -> Result<Query<'q>, Error>;
    fn returned(row: &SqliteRow) -> Result<Self::Key<'_>, sqlx::Error>;
    /// The one-row write.
    async fn write_one(
        conn: &mut SqliteConnection,
        record: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error>;
}

impl Batched for SecretRecord {
    type Key<'a> = (&'a str, &'a str);
    const WHAT: &'static str = "secret";

    fn key(&self) -> Self::Key<'_> {
        (self.metadata.tenant.as_str(), self.metadata.name.as_str())
    }

    fn statement(n: usize) -> &'static str {
        sql(&SECRET_UPDATES, n)
    }

    fn bind<'q>(&'q self, q: Query<'q>, expected: i64) -> Result<Query<'q>, Error> {
        let m = &self.metadata;
        Ok(q.bind(m.tenant.as_str())
            .bind(m.name.as_str())
            .bind(i64::from(m.kind.as_u8()))
            .bind(i64::from(m.dek_version.get()))
            .bind(self.envelope.as_slice())
            .bind(m.updated_at.as_millis())
            .bind(expected))
    }

    fn returned(row: &SqliteRow) -> Result<Self::Key<'_>, sqlx::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    async fn write_one(
        conn: &mut SqliteConnection,
        record: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        write_secret(conn, record, mode).await
    }
}

impl Batched for DekRecord {
    type Key<'a> = (&'a str, i64);
    const WHAT: &'static str = "data key";

    fn key(&self) -> Self::Key<'_> {
        (self.tenant.as_str(), i64::from(self.version.get()))
    }

    fn statement(n: usize) -> &'static str {
        sql(&DEK_UPDATES, n)
    }

    fn bind<'q>(&'q self, q: Query<'q>, expected: i64) -> Result<Query<'q>, Error> {
        Ok(q.bind(self.tenant.as_str())
            .bind(i64::from(self.version.get()))
            .bind(i64::from(self.state.as_u8()))
            .bind(i64::from(self.suite.as_u8()))
            .bind(self.wrapped.master_key_id().as_str())
            .bind(self.wrapped.as_bytes())
            .bind(to_sql_u64(
                self.encryptions_reserved,
                "encryptions reserved",
            )?)
            .bind(self.updated_at.as_millis())
            .bind(expected))
    }

    fn returned(row: &SqliteRow) -> Result<Self::Key<'_>, sqlx::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    async fn write_one(
        conn: &mut SqliteConnection,
        record: Self,
        mode: PutMode,
    ) -> Result<RowVersion, Error> {
        write_dek(conn, &record, mode).await
    }
}

/// Writes a batch of secrets on `conn` (inside the caller's transaction).
pub(super) async fn write_secrets(
    conn: &mut SqliteConnection,
    batch: Vec<(SecretRecord, PutMode)>,
) -> Result<Vec<Result<RowVersion, Error>>, Error> {
    write_batch(conn, batch).await
}

/// Writes a batch of data keys on `conn` (inside the caller's transaction).
pub(super) async fn write_deks(
    conn: &mut SqliteConnection,
    batch: Vec<(DekRecord, PutMode)>,
) -> Result<Vec<Result<RowVersion, Error>>, Error> {
    write_batch(conn, batch).await
}

async fn write_batch<R: Batched>(
    conn: &mut SqliteConnection,
    batch: Vec<(R, PutMode)>,
) -> Result<Vec<Result<RowVersion, Error>>, Error> {
    let distinct = {
        let keys: HashSet<R::Key<'_>> = batch.iter().map(|(r, _)| r.key()).collect();
        keys.len() == batch.len()
    };
    let mut out: Vec<Option<Result<RowVersion, Error>>> = Vec::with_capacity(batch.len());
    // The conditional updates: (position, record, expected, new row version).
    let mut updates: Vec<(usize, R, i64, RowVersion)> = Vec::new();
    for (i, (record, mode)) in batch.into_iter().enumerate() {
        match mode {
            PutMode::Update(expected) if distinct => match expected.next() {
                Some(next) => {
                    let sql_expected = to_sql_u64(expected.0, "row version")?;
                    updates.push((i, record, sql_expected, next));
                    out.push(None);
                }
                None => out.push(Some(Err(Error::Conflict { what: R::WHAT }))),
            },
            // Distinct keys do not depend on each other, so the one-row writes may go
            // before the batched updates.
            mode => out.push(Some(keep_conditional(
                R::write_one(conn, record, mode).await,
            )?)),
        }
    }
    let mut rest = updates.as_slice();
    for n in chunk_sizes(rest.len()) {
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let mut q = sqlx::query(R::statement(n));
        for (_, record, expected, _) in chunk {
            q = record.bind(q, *expected)?;
        }
        let rows = q.fetch_all(&mut *conn).await.map_err(map_err)?;
        let won = rows
            .iter()
            .map(|row| R::returned(row).map_err(map_err))
            .collect::<Result<HashSet<R::Key<'_>>, Error>>()?;
        for (i, record, _, next) in chunk {
            let result = if won.contains(&record.key()) {
                Ok(*next)
            } else {
                Err(Error::Conflict { what: R::WHAT })
            };
            if let Some(slot) = out.get_mut(*i) {
                *slot = Some(result);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Conflict { what: R::WHAT })))
        .collect())
}
