//! [`SqliteStore`]: the embedded default backend (feature `sqlite`).
//!
//! - WAL journal, `synchronous = FULL` by default (an acknowledged write survives power
//!   loss), a busy timeout so that several processes can share one file.
//! - The store's own writes take the file one at a time, queued in process (`gate`)
//!   rather than in SQLite's busy handler; reads run beside them.
//! - Every conditional write is a single SQL statement (`INSERT .. ON CONFLICT DO
//!   NOTHING`, `UPDATE .. WHERE row_version = ?`, `INSERT .. ON CONFLICT DO UPDATE`), so it
//!   is atomic against other connections and other processes. A batch runs in one
//!   `BEGIN IMMEDIATE` transaction, its conditional updates many rows per statement
//!   (`batch`), each row still checked against its own row version.
//! - The paged scans of the key jobs (`scan_secrets`, `scan_deks`, `scan_live_deks`,
//!   `list_secrets_not_under`) read on connections of their own, through rusqlite,
//!   decoding each row where SQLite steps to it (`bulk`): sqlx hands every row across
//!   threads, which cost a sweep four times SQLite's own reading. A store over a database
//!   in memory, or over a pool the caller supplied, reads them through sqlx.
//! - The schema is created and migrated by the crate inside a `BEGIN IMMEDIATE`
//!   transaction: idempotent, and safe when several processes open the file at once. A
//!   file written by a newer schema version is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};

mod batch;
mod bulk;
mod gate;

use super::rows::{DekRow, MetaRow, lite, secret_record, sql as columns, to_sql_u64};
use super::{
    DekRecord, DekState, Erasure, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store,
};
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use bulk::BulkReader;
use gate::WriteGate;

pub(super) const BACKEND: &str = "sqlite";
/// How long a write waits for the file by default ([`SqliteOptions::with_busy_timeout`]).
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 1;

/// Rows sqlx's SQLite worker thread may hand over before waiting for the caller to take
/// them. With sqlx's default (50) a page of 500 rows costs hundreds of thread wake-ups: the
/// worker blocks on the full channel and is woken once per row taken. Every query here
/// either reads one row or a page that is collected whole, so a larger buffer holds
/// nothing that the collected page would not; it only saves the wake-ups.
const ROW_BUFFER: usize = 1024;

const MIGRATION_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS credvault_deks (
        tenant TEXT NOT NULL,
        version INTEGER NOT NULL,
        state INTEGER NOT NULL,
        suite INTEGER NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        encryptions_reserved INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        row_version INTEGER NOT NULL,
        PRIMARY KEY (tenant, version)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS credvault_secrets (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        kind INTEGER NOT NULL,
        dek_version INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        row_version INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS credvault_secrets_by_dek ON credvault_secrets (tenant, dek_version)",
];

/// The `LIMIT` of a paged query, bound as a parameter.
///
/// Not a plain `LIMIT ?`: SQLite (3.51, the version libsqlite3-sys bundles) reads the value
/// bound to a bare `LIMIT ?` while planning, and so marks the statement to be compiled again
/// whenever that parameter is bound (`sqlite3ExprIsInteger` sets the parameter's bit in the
/// statement's `expmask`). sqlx binds every parameter on every execution, so every page of
/// a scan re-parsed and re-planned its statement: 8.5% of the CPU time of a scan of
/// 100,000 secrets (`perf`, BENCHMARKS.md). Cast, the limit is an expression the planner
/// does not read, and the statement in sqlx's cache is reused as prepared.
macro_rules! limit_param {
    () => {
        " LIMIT CAST(? AS INTEGER)"
    };
}

/// The data-key columns, the wrapped key bounded as [`bounded_envelope!`] bounds the
/// envelope: `NULL` for a wrapped key longer than any credvault writes.
macro_rules! dek_columns {
    () => {
        "tenant, version, state, suite, master_key_id,
         CASE WHEN octet_length(wrapped) <= 65536 THEN wrapped END,
         encryptions_reserved, created_at, updated_at, row_version"
    };
}
/// The envelope column, or NULL when it is longer than any envelope credvault writes
/// (16 MiB of plaintext plus 64 bytes of framing): a row edited in the database cannot make
/// a read allocate without bound. `octet_length` counts bytes whatever the value's type
/// (`length` counts the characters of text) and, like `length` of a blob, reads only the
/// value's size, never its content.
macro_rules! bounded_envelope {
    () => {
        "CASE WHEN octet_length(envelope) <= 16777280 THEN envelope END"
    };
}

// The literals in `bounded_envelope!` and `dek_columns!` are the shared bounds.
const _: () = assert!(super::rows::MAX_STORED_ENVELOPE == 16_777_280);
const _: () = assert!(super::rows::MAX_STORED_WRAPPED_KEY == 65_536);

/// Reads the bounded envelope column (index 7).
fn envelope_column(row: &SqliteRow) -> Result<Vec<u8>, Error> {
    columns::envelope(row).map_err(map_err)?
}

macro_rules! meta_columns {
    () => {
        "tenant, name, kind, dek_version, created_at, updated_at, row_version"
    };
}

/// Where and how to open a [`SqliteStore`].
#[derive(Clone)]
pub struct SqliteOptions {
    path: Option<PathBuf>,
    busy_timeout: Duration,
    max_connections: u32,
    durable: bool,
}

impl SqliteOptions {
    /// A database file, created if missing.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self {
            path: Some(path.as_ref().to_path_buf()),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_connections: 8,
            durable: true,
        }
    }

    /// A private in-memory database, gone when the store is dropped.
    #[must_use]
    pub fn in_memory() -> Self {
        Self {
            path: None,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_connections: 1,
            durable: true,
        }
    }

    /// How long a write waits for another connection or process to release the file
    /// (default 10 s) before failing with [`Error::Unavailable`]. A write also waits at
    /// most this long for the store's own earlier writes, which are queued in process.
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Pool size for a file database (default 8). An in-memory database always uses one
    /// connection, which owns the data.
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// `synchronous = FULL` (the default, `true`): every acknowledged write survives a power
    /// loss. `false` selects `NORMAL`: faster, and still never corrupt, but the last
    /// commits before a power loss may be lost.
    #[must_use]
    pub fn with_durable_commits(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("path", &self.path)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_connections", &self.max_connections)
            .field("durable", &self.durable)
            .finish()
    }
}

/// A [`Store`] in a SQLite database. See the module documentation.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: Option<PathBuf>,
    writes: WriteGate,
    /// The paged scans' reader (`bulk`), for a store over a file it opened itself.
    bulk: Option<BulkReader>,
    /// Whether every connection runs with `secure_delete` (not known of a caller's pool).
    secure_delete: bool,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database file at `path`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the file cannot be opened; [`Error::Config`] if it holds
    /// a newer schema; [`Error::Storage`] otherwise.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::with_options(SqliteOptions::file(path)).await
    }

    /// A private in-memory database.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_in_memory() -> Result<Self, Error> {
        Self::with_options(SqliteOptions::in_memory()).await
    }

    /// Opens a database with explicit options.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn with_options(mut options: SqliteOptions) -> Result<Self, Error> {
        // Absolute, so that every connection (sqlx's, and the scans' own) opens the same
        // file whatever the process's working directory is when it opens.
        if let Some(path) = &options.path {
            options.path =
                Some(std::path::absolute(path).map_err(|_| Error::Config("SQLite database path"))?);
        }
        let connect = match &options.path {
            Some(path) => SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
            None => SqliteConnectOptions::from_str("sqlite::memory:").map_err(map_err)?,
        }
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if options.durable {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(options.busy_timeout)
        // Deleted and overwritten content is overwritten with zeros, so that the bytes of a
        // destroyed data key do not linger in free space of the database file.
        .pragma("secure_delete", "ON")
        .foreign_keys(true)
        .row_buffer_size(ROW_BUFFER);
        let mut pool = SqlitePoolOptions::new().max_connections(options.max_connections);
        if options.path.is_none() {
            // The single connection owns the in-memory database: never recycle it.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .max_connections(1);
        }
        let pool = pool.connect_with(connect).await.map_err(map_err)?;
        let store = Self {
            pool,
            bulk: options
                .path
                .clone()
                .map(|path| BulkReader::new(path, options.busy_timeout, options.max_connections)),
            path: options.path,
            writes: WriteGate::new(options.busy_timeout),
            secure_delete: true,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Uses a pool the caller already has, creating or migrating the schema in it. Give its
    /// connections `PRAGMA secure_delete = ON` for deleted keys to be erased from the file;
    /// [`Store::erase_deleted`] cannot tell, and says so.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, Error> {
        let store = Self {
            pool,
            path: None,
            writes: WriteGate::new(DEFAULT_BUSY_TIMEOUT),
            bulk: None,
            secure_delete: false,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A data-key scan page: `sql` binds (tenant, version) after which to start, then the
    /// limit (`scan_deks` and `scan_live_deks`).
    async fn scan_deks_with(
        &self,
        sql: &'static str,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let (tenant, version) = after.map_or(("", 0), |(t, v)| (t.as_str(), i64::from(v.get())));
        if let Some(bulk) = self.bulk()? {
            let params = (tenant.to_owned(), version, limit(n));
            return bulk.page(sql, params, n, lite::dek_row).await;
        }
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(version)
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(dek_row).collect()
    }

    /// The scans' own reader, for a store over a file it opened; `None` otherwise. A store
    /// whose pool was closed reads nothing, through either driver.
    fn bulk(&self) -> Result<Option<&BulkReader>, Error> {
        if self.pool.is_closed() {
            return Err(map_err(sqlx::Error::PoolClosed));
        }
        Ok(self.bulk.as_ref())
    }

    /// The underlying pool.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the schema. Idempotent; safe to run from several processes.
    ///
    /// # Errors
    /// [`Error::Config`] if the database was written by a newer schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        let _turn = self.writes.enter().await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS credvault_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM credvault_schema WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        match current {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::Config(
                    "the SQLite database was written by a newer credvault schema",
                ));
            }
            Some(v) if v == SCHEMA_VERSION => {}
            _ => {
                for statement in MIGRATION_V1 {
                    sqlx::query(*statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                sqlx::query("INSERT INTO credvault_schema (id, version) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET version = excluded.version")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
        }
        tx.commit().await.map_err(map_err)
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Maps a driver error to the crate's categories; the driver's text stays in `source()`.
/// A stored value that does not decode as its column's type (a value of another SQL type,
/// text that is not UTF-8) is a malformed row, as the scans' own decoder (`rows::lite`)
/// reports it.
fn map_err(e: sqlx::Error) -> Error {
    if let sqlx::Error::ColumnDecode { .. } = e {
        return Error::Format(crate::FormatError::InvalidField(
            crate::Structure::Record,
            "a column holds a value of another type",
        ));
    }
    let busy = match &e {
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5), SQLITE_LOCKED (6) and SQLITE_CANTOPEN (14), with their
            // extended codes.
            db.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 14))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if busy {
        Error::unavailable(BACKEND, e)
    } else {
        Error::storage(BACKEND, e)
    }
}

/// After a data key was destroyed or its record deleted: empties the write-ahead log, whose
/// earlier frames still hold the key's wrapped bytes (`secure_delete` zeroes them in the
/// database file when the log is copied into it). A checkpoint that another connection
/// keeps from finishing leaves them in the log until the next one; that is logged, and the
/// write that destroyed the key still stands.
async fn erase_log(conn: &mut SqliteConnection) {
    if let Err(e) = checkpoint(conn).await {
        tracing::warn!(error = %e, "the SQLite write-ahead log could not be emptied after a data key was destroyed; its bytes stay in the log until the next checkpoint");
    }
}

/// Copies the write-ahead log into the database file and empties it, waiting (up to the
/// busy timeout) for readers of older snapshots, in this process or another, to finish.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<(), Error> {
    // (busy, frames in the log, frames checkpointed); busy is 1 when a reader or writer
    // elsewhere kept the checkpoint from finishing. A database in memory has no log.
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    if busy == 0 {
        Ok(())
    } else {
        Err(Error::unavailable(
            BACKEND,
            "another connection to the database kept its write-ahead log from being checkpointed",
        ))
    }
}

fn dek_row(row: &SqliteRow) -> Result<DekRecord, Error> {
    columns::dek_row(row).map_err(map_err)??.into_record()
}

fn meta_row(row: &SqliteRow) -> Result<MetaRow, Error> {
    columns::meta_row(row).map_err(map_err)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One conditional data-key write on `conn`.
async fn write_dek(
    conn: &mut SqliteConnection,
    record: &DekRecord,
    mode: PutMode,
) -> Result<RowVersion, Error> {
    let row = DekRow::from_record(record)?;
    let stored = record.row_version;
    let what = "data key";
    let bind_all = |q: Query<'static>, row: DekRow| {
        q.bind(row.tenant)
            .bind(row.version)
            .bind(row.state)
            .bind(row.suite)
            .bind(row.master_key_id)
            .bind(row.wrapped)
            .bind(row.encryptions_reserved)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.row_version)
    };
    let written = match mode {
        PutMode::Create => {
            let q = sqlx::query(
                "INSERT INTO credvault_deks (tenant, version, state, suite, master_key_id, wrapped, encryptions_reserved, created_at, updated_at, row_version)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, version) DO NOTHING",
            );
            let done = bind_all(q, row)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            if done.rows_affected() != 1 {
                return Err(Error::AlreadyExists { what });
            }
            true
        }
        PutMode::Update(expected) => sqlx::query(
            "UPDATE credvault_deks SET state = ?, suite = ?, master_key_id = ?, wrapped = ?, encryptions_reserved = ?,
             updated_at = ?, row_version = ?
             WHERE tenant = ? AND version = ? AND row_version = ?",
        )
        .bind(row.state)
        .bind(row.suite)
        .bind(row.master_key_id)
        .bind(row.wrapped)
        .bind(row.encryptions_reserved)
        .bind(row.updated_at)
        .bind(row.row_version)
        .bind(row.tenant)
        .bind(row.version)
        .bind(to_sql_u64(expected.0, "row version")?)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1,
        PutMode::Upsert => {
            let q = sqlx::query(
                "INSERT INTO credvault_deks (tenant, version, state, suite, master_key_id, wrapped, encryptions_reserved, created_at, updated_at, row_version)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (tenant, version) DO UPDATE SET state = excluded.state, suite = excluded.suite,
                   master_key_id = excluded.master_key_id, wrapped = excluded.wrapped,
                   encryptions_reserved = excluded.encryptions_reserved, updated_at = excluded.updated_at,
                   row_version = excluded.row_version",
            );
            bind_all(q, row)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            true
        }
    };
    if written {
        Ok(stored)
    } else {
        Err(Error::Conflict { what })
    }
}

/// The key condition of a secret write, as a SQL predicate over the written row's tenant
/// (the expression `$tenant`): it binds the sealing key's wrapped bytes (`NULL` for
/// [`KeyCondition::Unchecked`]), the written data-key version, and the wrapped bytes again.
/// (The version is bound, not read from the row: in an `UPDATE` the row's column still
/// holds the version it is being moved away from.)
macro_rules! key_condition {
    ($tenant:literal) => {
        concat!(
            "(? IS NULL OR EXISTS (SELECT 1 FROM credvault_deks d WHERE d.tenant = ",
            $tenant,
            " AND d.version = ? AND d.state = 1 AND d.wrapped = ?))"
        )
    };
}

/// The source row of a secret insert: the bound values under their column names, so that
/// the key condition can name them.
macro_rules! secret_source {
    () => {
        "SELECT * FROM (SELECT ? AS tenant, ? AS name, ? AS kind, ? AS dek_version, ? AS envelope,
           ? AS created_at, ? AS updated_at, ? AS row_version) AS v WHERE "
    };
}

/// Whether `key` holds for the secret of `tenant` under data-key `version`: why a secret
/// write that wrote nothing failed.
async fn key_holds(
    conn: &mut SqliteConnection,
    tenant: &str,
    version: i64,
    key: &KeyCondition,
) -> Result<bool, Error> {
    let Some(wrapped) = key.sealed_under() else {
        return Ok(true);
    };
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM credvault_deks
           WHERE tenant = ? AND version = ? AND state = 1 AND wrapped = ?)",
    )
    .bind(tenant)
    .bind(version)
    .bind(wrapped)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)
}

/// One conditional secret write on `conn`, with its key condition in the same statement.
async fn write_secret(
    conn: &mut SqliteConnection,
    record: SecretRecord,
    mode: PutMode,
    key: &KeyCondition,
) -> Result<RowVersion, Error> {
    let row = MetaRow::from_metadata(&record.metadata)?;
    let stored = record.metadata.row_version;
    let (tenant, version) = (row.tenant.clone(), row.dek_version);
    let sealed = key.sealed_under();
    let envelope = record.envelope;
    let what = "secret";
    let insert = |sql: &'static str| {
        sqlx::query(sql)
            .bind(row.tenant.clone())
            .bind(row.name.clone())
            .bind(row.kind)
            .bind(row.dek_version)
            .bind(envelope.clone())
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.row_version)
            .bind(sealed)
            .bind(row.dek_version)
            .bind(sealed)
    };
    let written = match mode {
        PutMode::Create => insert(concat!(
            "INSERT INTO credvault_secrets (tenant, name, kind, dek_version, envelope, created_at, updated_at, row_version) ",
            secret_source!(),
            key_condition!("v.tenant"),
            " ON CONFLICT (tenant, name) DO NOTHING"
        )),
        PutMode::Update(expected) => sqlx::query(concat!(
            "UPDATE credvault_secrets SET kind = ?, dek_version = ?, envelope = ?, updated_at = ?, row_version = ?
             WHERE tenant = ? AND name = ? AND row_version = ? AND ",
            key_condition!("credvault_secrets.tenant")
        ))
        .bind(row.kind)
        .bind(row.dek_version)
        .bind(envelope.clone())
        .bind(row.updated_at)
        .bind(row.row_version)
        .bind(row.tenant.clone())
        .bind(row.name.clone())
        .bind(to_sql_u64(expected.0, "row version")?)
        .bind(sealed)
        .bind(row.dek_version)
        .bind(sealed),
        PutMode::Upsert => insert(concat!(
            "INSERT INTO credvault_secrets (tenant, name, kind, dek_version, envelope, created_at, updated_at, row_version) ",
            secret_source!(),
            key_condition!("v.tenant"),
            " ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, dek_version = excluded.dek_version,
               envelope = excluded.envelope, updated_at = excluded.updated_at,
               row_version = excluded.row_version"
        )),
    }
    .execute(&mut *conn)
    .await
    .map_err(map_err)?
    .rows_affected()
        == 1;
    if written {
        return Ok(stored);
    }
    if !key_holds(conn, &tenant, version, key).await? {
        return Err(Error::KeyNotCurrent {
            version: record.metadata.dek_version,
        });
    }
    Err(match mode {
        PutMode::Create => Error::AlreadyExists { what },
        PutMode::Update(_) | PutMode::Upsert => Error::Conflict { what },
    })
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    /// Empties the write-ahead log into the database file, where `secure_delete` has zeroed
    /// deleted content (every destruction of a key does the same on its own; this reports
    /// whether the log is empty now).
    async fn erase_deleted(&self) -> Result<Erasure, Error> {
        let _turn = self.writes.enter().await?;
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        Ok(match checkpoint(&mut conn).await {
            Ok(()) if !self.secure_delete => Erasure::Pending(
                "the store runs over a pool passed to SqliteStore::from_pool: unless its connections set PRAGMA secure_delete = ON, deleted keys' bytes may remain in free space of the database file",
            ),
            Ok(()) => Erasure::Complete,
            Err(Error::Unavailable { .. }) => Erasure::Pending(
                "another connection to the SQLite database kept its write-ahead log from being emptied: the deleted keys' bytes stay in the log until the next checkpoint (closing every connection empties it)",
            ),
            Err(e) => return Err(e),
        })
    }

    /// Waits for the scans and writes under way, checkpoints the write-ahead log into the
    /// database file (`wal_checkpoint(TRUNCATE)`: the log is left empty), then closes every
    /// connection: the pool's (a pool passed to [`SqliteStore::from_pool`] too, with every
    /// other handle to it) and the scans' own. When no other process has the file open,
    /// SQLite then removes the `-wal` and `-shm` files.
    async fn close(&self) -> Result<(), Error> {
        if let Some(bulk) = &self.bulk {
            bulk.close().await;
        }
        // The store's own writes queued before this one finish first; those after it find
        // the pool closed. A turn that does not come within the busy timeout does not stop
        // the closing: the pool waits for the connections in use anyway.
        let turn = self.writes.enter().await;
        let settled = if let Ok(mut conn) = self.pool.acquire().await {
            // The pool refuses new work from here on; it closes once `conn` is back.
            let closing = self.pool.close();
            let settled = checkpoint(&mut conn).await;
            drop(conn);
            closing.await;
            settled
        } else {
            // Closed already (or a pool that cannot give a connection: nothing to settle).
            self.pool.close().await;
            Ok(())
        };
        drop(turn);
        settled
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            dek_columns!(),
            " FROM credvault_deks WHERE tenant = ? AND version = ?"
        );
        let row = sqlx::query(sql)
            .bind(tenant.as_str())
            .bind(i64::from(version.get()))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(dek_row).transpose()
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            dek_columns!(),
            " FROM credvault_deks WHERE tenant = ? ORDER BY version"
        );
        let rows = sqlx::query(sql)
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(dek_row).collect()
    }

    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        let _turn = self.writes.enter().await?;
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let written = write_dek(&mut conn, &record, mode).await?;
        if record.state == DekState::Destroyed {
            erase_log(&mut conn).await;
        }
        Ok(written)
    }

    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            meta_columns!(),
            ", ",
            bounded_envelope!(),
            " FROM credvault_secrets WHERE tenant = ? AND name = ?"
        );
        let row = sqlx::query(sql)
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        match row {
            Some(row) => {
                let envelope = envelope_column(&row)?;
                secret_record(meta_row(&row)?, envelope).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        let _turn = self.writes.enter().await?;
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        write_secret(&mut conn, record, mode, &key).await
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let turn = self.writes.enter().await?;
        let done = match expected {
            None => sqlx::query("DELETE FROM credvault_secrets WHERE tenant = ? AND name = ?")
                .bind(tenant.as_str())
                .bind(name.as_str())
                .execute(&self.pool)
                .await
                .map_err(map_err)?,
            Some(v) => sqlx::query(
                "DELETE FROM credvault_secrets WHERE tenant = ? AND name = ? AND row_version = ?",
            )
            .bind(tenant.as_str())
            .bind(name.as_str())
            .bind(to_sql_u64(v.0, "row version")?)
            .execute(&self.pool)
            .await
            .map_err(map_err)?,
        };
        drop(turn);
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        if expected.is_some() && self.get_secret(tenant, name).await?.is_some() {
            return Err(Error::Conflict { what: "secret" });
        }
        Ok(false)
    }

    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        n: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        let sql = concat!(
            "SELECT ",
            meta_columns!(),
            " FROM credvault_secrets WHERE tenant = ? AND name > ? ORDER BY name",
            limit_param!()
        );
        let rows = sqlx::query(sql)
            .bind(tenant.as_str())
            .bind(after.map_or("", SecretName::as_str))
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(|r| meta_row(r)?.into_metadata()).collect()
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        n: usize,
    ) -> Result<Vec<TenantId>, Error> {
        let rows: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT DISTINCT tenant FROM credvault_deks WHERE tenant > ? ORDER BY tenant",
            limit_param!()
        ))
        .bind(after.map_or("", TenantId::as_str))
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|t| {
                TenantId::new(t).map_err(|_| {
                    Error::Format(crate::FormatError::InvalidField(
                        crate::Structure::Record,
                        "tenant",
                    ))
                })
            })
            .collect()
    }

    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        n: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let (tenant, name) = after.map_or(("", ""), |(t, n)| (t.as_str(), n.as_str()));
        let sql = concat!(
            "SELECT ",
            meta_columns!(),
            ", ",
            bounded_envelope!(),
            " FROM credvault_secrets WHERE (tenant, name) > (?, ?) ORDER BY tenant, name",
            limit_param!()
        );
        if let Some(bulk) = self.bulk()? {
            let params = (tenant.to_owned(), name.to_owned(), limit(n));
            let mut last = None;
            return bulk
                .page(sql, params, n, move |row| lite::secret_row(row, &mut last))
                .await;
        }
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(name)
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        columns::secret_page(&rows, map_err)
    }

    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            dek_columns!(),
            " FROM credvault_deks WHERE (tenant, version) > (?, ?) ORDER BY tenant, version",
            limit_param!()
        );
        self.scan_deks_with(sql, after, n).await
    }

    async fn scan_live_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            dek_columns!(),
            " FROM credvault_deks WHERE (tenant, version) > (?, ?) AND state <> 3 ORDER BY tenant, version",
            limit_param!()
        );
        self.scan_deks_with(sql, after, n).await
    }

    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let turn = self.writes.enter().await?;
        let done = match expected {
            None => sqlx::query("DELETE FROM credvault_deks WHERE tenant = ? AND version = ?")
                .bind(tenant.as_str())
                .bind(i64::from(version.get()))
                .execute(&self.pool)
                .await
                .map_err(map_err)?,
            Some(v) => sqlx::query(
                "DELETE FROM credvault_deks WHERE tenant = ? AND version = ? AND row_version = ?",
            )
            .bind(tenant.as_str())
            .bind(i64::from(version.get()))
            .bind(to_sql_u64(v.0, "row version")?)
            .execute(&self.pool)
            .await
            .map_err(map_err)?,
        };
        if done.rows_affected() == 1 {
            // A record that still held a key's bytes (deleted without being destroyed first)
            // is erased from the log as a destroyed one is.
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
            erase_log(&mut conn).await;
            drop(turn);
            return Ok(true);
        }
        drop(turn);
        if expected.is_some() && self.get_dek(tenant, version).await?.is_some() {
            return Err(Error::Conflict { what: "data key" });
        }
        Ok(false)
    }

    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        n: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            meta_columns!(),
            ", ",
            bounded_envelope!(),
            " FROM credvault_secrets WHERE tenant = ? AND name > ? AND dek_version <> ? ORDER BY name",
            limit_param!()
        );
        if let Some(bulk) = self.bulk()? {
            let params = (
                tenant.as_str().to_owned(),
                after.map_or("", SecretName::as_str).to_owned(),
                i64::from(version.get()),
                limit(n),
            );
            let mut last = None;
            return bulk
                .page(sql, params, n, move |row| lite::secret_row(row, &mut last))
                .await;
        }
        let rows = sqlx::query(sql)
            .bind(tenant.as_str())
            .bind(after.map_or("", SecretName::as_str))
            .bind(i64::from(version.get()))
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        columns::secret_page(&rows, map_err)
    }

    async fn count_secrets_by_version(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<DekVersion, u64>, Error> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT dek_version, COUNT(*) FROM credvault_secrets WHERE tenant = ? GROUP BY dek_version",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(v, n)| {
                let version = u32::try_from(v).ok().and_then(DekVersion::new);
                match (version, u64::try_from(n)) {
                    (Some(version), Ok(n)) => Ok((version, n)),
                    _ => Err(Error::Format(crate::FormatError::InvalidField(
                        crate::Structure::Record,
                        "DEK version",
                    ))),
                }
            })
            .collect()
    }

    async fn count_secrets_by_tenant_version(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<(TenantId, DekVersion, u64)>, Error> {
        let (tenant, version) = after.map_or(("", 0), |(t, v)| (t.as_str(), i64::from(v.get())));
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            concat!(
                "SELECT tenant, dek_version, COUNT(*) FROM credvault_secrets WHERE (tenant, dek_version) > (?, ?)
                 GROUP BY tenant, dek_version ORDER BY tenant, dek_version",
                limit_param!()
            ),
        )
        .bind(tenant)
        .bind(version)
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let bad = |field| {
            Error::Format(crate::FormatError::InvalidField(
                crate::Structure::Record,
                field,
            ))
        };
        rows.into_iter()
            .map(|(t, v, c)| {
                let tenant = TenantId::new(&t).map_err(|_| bad("tenant"))?;
                let version = u32::try_from(v)
                    .ok()
                    .and_then(DekVersion::new)
                    .ok_or_else(|| bad("DEK version"))?;
                let count = u64::try_from(c).map_err(|_| bad("count"))?;
                Ok((tenant, version, count))
            })
            .collect()
    }

    async fn count_secrets_to_reencrypt(&self) -> Result<u64, Error> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(g.n), 0)
             FROM (SELECT tenant, dek_version, COUNT(*) AS n FROM credvault_secrets
                   GROUP BY tenant, dek_version) AS g
             JOIN (SELECT tenant, MAX(version) AS newest FROM credvault_deks WHERE state = ?
                   GROUP BY tenant) AS a ON a.tenant = g.tenant
             WHERE g.dek_version <> a.newest",
        )
        .bind(i64::from(DekState::Active.as_u8()))
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        u64::try_from(total).map_err(|_| Error::storage(BACKEND, "negative count"))
    }

    async fn count_deks_by_master_key(&self) -> Result<BTreeMap<MasterKeyId, u64>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT master_key_id, COUNT(*) FROM credvault_deks WHERE state <> 3 GROUP BY master_key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(id, n)| match (MasterKeyId::new(&id), u64::try_from(n)) {
                (Ok(id), Ok(n)) => Ok((id, n)),
                _ => Err(Error::Format(crate::FormatError::InvalidField(
                    crate::Structure::Record,
                    "master key id",
                ))),
            })
            .collect()
    }

    async fn put_secrets(
        &self,
        batch: Vec<(SecretRecord, PutMode, KeyCondition)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let batch = batch
            .into_iter()
            .map(|(record, mode, key)| (batch::SealedSecret { record, key }, mode))
            .collect();
        let _turn = self.writes.enter().await?;
        batch::write(&self.pool, batch).await
    }

    async fn put_deks(
        &self,
        batch: Vec<(DekRecord, PutMode)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let destroys = batch.iter().any(|(r, _)| r.state == DekState::Destroyed);
        let _turn = self.writes.enter().await?;
        let written = batch::write(&self.pool, batch).await?;
        if destroys {
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
            erase_log(&mut conn).await;
        }
        Ok(written)
    }
}
