//! [`PostgresStore`]: the server backend for many service instances sharing one database
//! (feature `postgres`).
//!
//! - Every conditional write is a single SQL statement (`INSERT .. ON CONFLICT DO
//!   NOTHING`, `UPDATE .. WHERE row_version = $n`, `INSERT .. ON CONFLICT DO UPDATE`), atomic
//!   under PostgreSQL's default `READ COMMITTED` isolation: a concurrent writer blocks on the
//!   row lock and then re-checks the condition against the committed row.
//! - Batches run in one transaction, in key order (so two batches touching the same rows
//!   cannot deadlock each other).
//! - Identifiers are stored as `TEXT COLLATE "C"`: comparison and ordering are byte by
//!   byte, as the [`Store`] contract requires, whatever the database's default collation.
//! - The schema is created by the crate under a transaction-scoped advisory lock, so any
//!   number of instances may start at once; a database written by a newer schema version is
//!   refused.
//! - TLS: this crate enables no TLS backend of its own. Build the pool yourself with sqlx's
//!   TLS feature enabled in your `Cargo.toml` and pass it to [`PostgresStore::from_pool`].

mod sql;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};

use super::rows::{DekRow, MetaRow, secret_record, sql as columns, to_sql_u64};
use super::{
    DekRecord, DekState, Erasure, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store,
    keep_conditional,
};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use sql::Statements;

const BACKEND: &str = "postgres";

/// Where the tables live and how to connect. The defaults: schema `public`, table prefix
/// `credvault_`, at most 16 connections, a 10 s acquire timeout, migrations on.
#[derive(Clone)]
pub struct PostgresOptions {
    schema: String,
    table_prefix: String,
    max_connections: u32,
    acquire_timeout: Duration,
    migrate: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "public".to_owned(),
            table_prefix: "credvault_".to_owned(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            migrate: true,
        }
    }
}

impl PostgresOptions {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the tables (default `public`; created if missing). 1 to 40 bytes
    /// of `a-z 0-9 _`, starting with a letter or `_`; checked when the store opens.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The prefix of every table and index name (default `credvault_`). 1 to 40 bytes of
    /// `a-z 0-9 _`, starting with a letter or `_`; checked when the store opens.
    #[must_use]
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// Pool size when the store opens its own pool (default 16).
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long an operation waits for a pooled connection (default 10 s) before failing
    /// with [`Error::Unavailable`]; this is also how long it waits while the server is down.
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Whether opening the store creates or upgrades the schema (default `true`). Turn it
    /// off when a deployment step runs [`PostgresStore::migrate`] with more privileges.
    #[must_use]
    pub fn with_migrations(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("table_prefix", &self.table_prefix)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("migrate", &self.migrate)
            .finish()
    }
}

/// A [`Store`] in a PostgreSQL database. See the module documentation.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
}

impl PostgresStore {
    /// Connects to `url` (for example `postgres://user@host/db`) with the default options.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the server cannot be reached; [`Error::Config`] for a bad
    /// option or a database written by a newer schema; [`Error::Storage`] otherwise. The URL
    /// never appears in an error.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url` with explicit options.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, Error> {
        let sql = Statements::new(&options.schema, &options.table_prefix)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => {
                    Error::Config("the PostgreSQL URL or its options are not valid")
                }
                e => map_err(e),
            })?;
        Self::open(pool, sql, options.migrate).await
    }

    /// Uses a pool the caller already has (its size, timeouts and TLS settings are kept).
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn from_pool(pool: PgPool, options: PostgresOptions) -> Result<Self, Error> {
        let sql = Statements::new(&options.schema, &options.table_prefix)?;
        Self::open(pool, sql, options.migrate).await
    }

    async fn open(pool: PgPool, sql: Statements, migrate: bool) -> Result<Self, Error> {
        let store = Self {
            pool,
            sql: Arc::new(sql),
        };
        if migrate {
            store.migrate().await?;
        } else {
            store.check_schema_version().await?;
        }
        Ok(store)
    }

    /// The underlying pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A data-key scan page: `sql` binds (tenant, version) after which to start, then the
    /// limit (`scan_deks` and `scan_live_deks`).
    async fn scan_deks_with(
        &self,
        sql: sqlx::SqlStr,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let (tenant, version) = after.map_or(("", 0), |(t, v)| (t.as_str(), i64::from(v.get())));
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(version)
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(dek_record).collect()
    }

    /// Creates or upgrades the schema. Idempotent, and safe when many instances run it at
    /// once: it holds a transaction-scoped advisory lock derived from the schema and prefix.
    ///
    /// # Errors
    /// [`Error::Config`] if the database was written by a newer schema version;
    /// [`Error::Unavailable`] or [`Error::Storage`].
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Schema first, then schema + prefix: every store takes them in this order.
        for key in [self.sql.schema_lock_key, self.sql.lock_key] {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        for statement in self.sql.bootstrap() {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let current: Option<i64> = sqlx::query_scalar(self.sql.schema_version.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        match current {
            Some(v) if v > sql::SCHEMA_VERSION => return Err(newer_schema()),
            Some(v) if v == sql::SCHEMA_VERSION => {}
            _ => {
                for statement in self.sql.migration_v1() {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                sqlx::query(self.sql.set_schema_version.clone())
                    .bind(sql::SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
        }
        tx.commit().await.map_err(map_err)
    }

    async fn check_schema_version(&self) -> Result<(), Error> {
        let current: Option<i64> = match sqlx::query_scalar(self.sql.schema_version.clone())
            .fetch_optional(&self.pool)
            .await
        {
            Ok(v) => v,
            // 42P01 undefined table, 3F000 undefined schema: never migrated.
            Err(sqlx::Error::Database(db))
                if db.code().is_some_and(|c| matches!(&*c, "42P01" | "3F000")) =>
            {
                None
            }
            Err(e) => return Err(map_err(e)),
        };
        match current {
            Some(v) if v == sql::SCHEMA_VERSION => Ok(()),
            Some(v) if v > sql::SCHEMA_VERSION => Err(newer_schema()),
            _ => Err(Error::Config(
                "the PostgreSQL schema is missing or older than this build: run PostgresStore::migrate",
            )),
        }
    }
}

fn newer_schema() -> Error {
    Error::Config("the PostgreSQL database was written by a newer credvault schema")
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.sql.schema)
            .field("table_prefix", &self.sql.prefix)
            .finish_non_exhaustive()
    }
}

/// Maps a driver error to the crate's categories; the server's text stays in `source()`.
fn map_err(e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P0x: shutting down / cannot connect now;
            // 53300: too many connections; 40001 / 40P01: serialization failure /
            // deadlock (retrying succeeds); 55P03: lock not available; 57014: cancelled
            // (statement timeout); 25006: read-only transaction (a standby after failover).
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(
                    &*code,
                    "53300" | "40001" | "40P01" | "55P03" | "57014" | "25006"
                )
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    };
    if transient {
        Error::unavailable(BACKEND, e)
    } else {
        Error::storage(BACKEND, e)
    }
}

fn bad(field: &'static str) -> Error {
    Error::Format(FormatError::InvalidField(Structure::Record, field))
}

fn dek_record(row: &PgRow) -> Result<DekRecord, Error> {
    columns::dek_row(row).map_err(map_err)??.into_record()
}

fn whole_secret(row: &PgRow) -> Result<SecretRecord, Error> {
    let envelope = columns::envelope(row).map_err(map_err)??;
    secret_record(columns::meta_row(row).map_err(map_err)?, envelope)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One conditional data-key write on `conn`.
async fn write_dek(
    conn: &mut PgConnection,
    sql: &Statements,
    record: &DekRecord,
    mode: PutMode,
) -> Result<RowVersion, Error> {
    let row = DekRow::from_record(record)?;
    let what = "data key";
    let query = match mode {
        PutMode::Create | PutMode::Upsert => {
            let statement = if mode == PutMode::Create {
                sql.create_dek.clone()
            } else {
                sql.upsert_dek.clone()
            };
            sqlx::query(statement)
                .bind(row.tenant)
                .bind(row.version)
                .bind(row.state)
                .bind(row.suite)
                .bind(row.master_key_id)
                .bind(row.wrapped)
                .bind(row.encryptions_reserved)
                .bind(row.created_at)
                .bind(row.updated_at)
                .bind(row.row_version)
        }
        PutMode::Update(expected) => sqlx::query(sql.update_dek.clone())
            .bind(row.tenant)
            .bind(row.version)
            .bind(row.state)
            .bind(row.suite)
            .bind(row.master_key_id)
            .bind(row.wrapped)
            .bind(row.encryptions_reserved)
            .bind(row.updated_at)
            .bind(to_sql_u64(expected.0, "row version")?)
            .bind(row.row_version),
    };
    let written: Option<i64> = query
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(map_err)?;
    written_version(written, mode, what)
}

/// One conditional secret write on `conn`, with its key condition in the same statement.
async fn write_secret(
    conn: &mut PgConnection,
    sql: &Statements,
    record: SecretRecord,
    mode: PutMode,
    key: &KeyCondition,
) -> Result<RowVersion, Error> {
    let row = MetaRow::from_metadata(&record.metadata)?;
    let sealed = key.sealed_under();
    let (tenant, version) = (row.tenant.clone(), row.dek_version);
    let query = match mode {
        PutMode::Create | PutMode::Upsert => {
            let statement = if mode == PutMode::Create {
                sql.create_secret.clone()
            } else {
                sql.upsert_secret.clone()
            };
            sqlx::query(statement)
                .bind(row.tenant)
                .bind(row.name)
                .bind(row.kind)
                .bind(row.dek_version)
                .bind(record.envelope)
                .bind(row.created_at)
                .bind(row.updated_at)
                .bind(row.row_version)
                .bind(sealed)
        }
        PutMode::Update(expected) => sqlx::query(sql.update_secret.clone())
            .bind(row.tenant)
            .bind(row.name)
            .bind(row.kind)
            .bind(row.dek_version)
            .bind(record.envelope)
            .bind(row.updated_at)
            .bind(to_sql_u64(expected.0, "row version")?)
            .bind(row.row_version)
            .bind(sealed),
    };
    let written: Option<i64> = query
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(map_err)?;
    if written.is_none()
        && let Some(wrapped) = sealed
    {
        let current: bool = sqlx::query_scalar(sql.key_current.clone())
            .bind(&tenant)
            .bind(version)
            .bind(wrapped)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        if !current {
            return Err(Error::KeyNotCurrent {
                version: record.metadata.dek_version,
            });
        }
    }
    written_version(written, mode, "secret")
}

/// The row version a `RETURNING row_version` write produced, or the lost condition.
fn written_version(
    written: Option<i64>,
    mode: PutMode,
    what: &'static str,
) -> Result<RowVersion, Error> {
    match written {
        Some(v) => u64::try_from(v)
            .map(RowVersion)
            .map_err(|_| bad("row version")),
        None if mode == PutMode::Create => Err(Error::AlreadyExists { what }),
        None => Err(Error::Conflict { what }),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    /// PostgreSQL keeps deleted rows in the table file (as dead tuples, and in free space
    /// after a plain `VACUUM`) and in its write-ahead log; the store cannot rewrite the table
    /// without taking an exclusive lock on it, so it says what the operator must do.
    async fn erase_deleted(&self) -> Result<Erasure, Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(Erasure::Pending(
            "PostgreSQL keeps the deleted rows' bytes in the data-key table file until VACUUM FULL rewrites it, and in its write-ahead log until the segments are recycled: run VACUUM FULL on the data-key table, then CHECKPOINT; archived WAL, replicas and backups keep them as they are",
        ))
    }

    /// Closes the pool (a pool passed to [`PostgresStore::from_pool`] too, with every
    /// other handle to it): waits for the connections in use to be returned, then closes
    /// each one.
    async fn close(&self) -> Result<(), Error> {
        self.pool.close().await;
        Ok(())
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        let row = sqlx::query(self.sql.get_dek.clone())
            .bind(tenant.as_str())
            .bind(i64::from(version.get()))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(dek_record).transpose()
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        let rows = sqlx::query(self.sql.list_deks.clone())
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(dek_record).collect()
    }

    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        write_dek(&mut conn, &self.sql, &record, mode).await
    }

    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        let row = sqlx::query(self.sql.get_secret.clone())
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(whole_secret).transpose()
    }

    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        write_secret(&mut conn, &self.sql, record, mode, &key).await
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let expected = expected
            .map(|v| to_sql_u64(v.0, "row version"))
            .transpose()?;
        let deleted = sqlx::query(self.sql.delete_secret.clone())
            .bind(tenant.as_str())
            .bind(name.as_str())
            .bind(expected)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .is_some();
        // Nothing deleted: without a condition the record is simply gone (perhaps deleted
        // by a concurrent caller). With one, a record that exists now (a fresh statement,
        // so the latest committed state) means the condition was lost.
        if deleted || expected.is_none() {
            return Ok(deleted);
        }
        let exists: bool = sqlx::query_scalar(self.sql.secret_exists.clone())
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        if exists {
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
        let rows = sqlx::query(self.sql.list_secrets.clone())
            .bind(tenant.as_str())
            .bind(after.map_or("", SecretName::as_str))
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| columns::meta_row(r).map_err(map_err)?.into_metadata())
            .collect()
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        n: usize,
    ) -> Result<Vec<TenantId>, Error> {
        let rows: Vec<String> = sqlx::query_scalar(self.sql.list_tenants.clone())
            .bind(after.map_or("", TenantId::as_str))
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|t| TenantId::new(t).map_err(|_| bad("tenant")))
            .collect()
    }

    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let (tenant, version) = after.map_or(("", 0), |(t, v)| (t.as_str(), i64::from(v.get())));
        let rows = sqlx::query(self.sql.scan_deks.clone())
            .bind(tenant)
            .bind(version)
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(dek_record).collect()
    }

    async fn scan_live_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        self.scan_deks_with(self.sql.scan_live_deks.clone(), after, n)
            .await
    }

    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        n: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let (tenant, name) = after.map_or(("", ""), |(t, n)| (t.as_str(), n.as_str()));
        let rows = sqlx::query(self.sql.scan_secrets.clone())
            .bind(tenant)
            .bind(name)
            .bind(limit(n))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        columns::secret_page(&rows, map_err)
    }

    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let expected = expected
            .map(|v| to_sql_u64(v.0, "row version"))
            .transpose()?;
        let deleted = sqlx::query(self.sql.delete_dek.clone())
            .bind(tenant.as_str())
            .bind(i64::from(version.get()))
            .bind(expected)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .is_some();
        if deleted || expected.is_none() {
            return Ok(deleted);
        }
        let exists: bool = sqlx::query_scalar(self.sql.dek_exists.clone())
            .bind(tenant.as_str())
            .bind(i64::from(version.get()))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        if exists {
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
        let rows = sqlx::query(self.sql.list_secrets_not_under.clone())
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
        let rows: Vec<(i64, i64)> = sqlx::query_as(self.sql.count_by_version.clone())
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.into_iter()
            .map(|(v, n)| Ok((dek_version(v)?, count(n)?)))
            .collect()
    }

    async fn count_secrets_by_tenant_version(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        n: usize,
    ) -> Result<Vec<(TenantId, DekVersion, u64)>, Error> {
        let (tenant, version) = after.map_or(("", 0), |(t, v)| (t.as_str(), i64::from(v.get())));
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as(self.sql.count_by_tenant_version.clone())
                .bind(tenant)
                .bind(version)
                .bind(limit(n))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(t, v, c)| {
                let tenant = TenantId::new(&t).map_err(|_| bad("tenant"))?;
                Ok((tenant, dek_version(v)?, count(c)?))
            })
            .collect()
    }

    async fn count_secrets_to_reencrypt(&self) -> Result<u64, Error> {
        let total: i64 = sqlx::query_scalar(self.sql.count_to_reencrypt.clone())
            .bind(i64::from(DekState::Active.as_u8()))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        count(total)
    }

    async fn count_deks_by_master_key(&self) -> Result<BTreeMap<MasterKeyId, u64>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(self.sql.count_by_master_key.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.into_iter()
            .map(|(id, n)| {
                let id = MasterKeyId::new(&id).map_err(|_| bad("master key id"))?;
                Ok((id, count(n)?))
            })
            .collect()
    }

    async fn put_secrets(
        &self,
        batch: Vec<(SecretRecord, PutMode, KeyCondition)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        // Key order, so that two batches over the same rows lock them in the same order
        // (and the data-key rows their key conditions share-lock in tenant order, as a
        // batch of data-key writes locks them).
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                batch
                    .get(i)
                    .map(|(r, _, _)| (&r.metadata.tenant, &r.metadata.name))
            };
            key(a).cmp(&key(b))
        });
        let mut slots: Vec<Option<(SecretRecord, PutMode, KeyCondition)>> =
            batch.into_iter().map(Some).collect();
        let mut results: Vec<Option<Result<RowVersion, Error>>> =
            std::iter::repeat_with(|| None).take(slots.len()).collect();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for i in order {
            let Some((record, mode, key)) = slots.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let outcome =
                keep_conditional(write_secret(&mut tx, &self.sql, record, mode, &key).await)?;
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Conflict { what: "secret" })))
            .collect())
    }

    async fn put_deks(
        &self,
        batch: Vec<(DekRecord, PutMode)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| batch.get(i).map(|(r, _)| (&r.tenant, r.version));
            key(a).cmp(&key(b))
        });
        let mut results: Vec<Option<Result<RowVersion, Error>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for i in order {
            let Some((record, mode)) = batch.get(i) else {
                continue;
            };
            let outcome = keep_conditional(write_dek(&mut tx, &self.sql, record, *mode).await)?;
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Conflict { what: "data key" })))
            .collect())
    }
}

fn dek_version(v: i64) -> Result<DekVersion, Error> {
    u32::try_from(v)
        .ok()
        .and_then(DekVersion::new)
        .ok_or_else(|| bad("DEK version"))
}

fn count(n: i64) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| bad("count"))
}
