//! [`RedisStore`]: the server backend on Redis (feature `redis`).
//!
//! - Every conditional write is one Lua script: it checks the stored row version and writes
//!   the record and its index entries atomically, so concurrent writers in any number of
//!   processes never lose an update. Batches are pipelined: one round trip per batch.
//! - Listing and scans read through sorted-set indexes with `ZRANGEBYLEX` inside a script
//!   (a consistent page per round trip); never `KEYS`, never a pattern built from an id.
//!   The key layout is documented in `layout.rs` and in `docs/operations.md`.
//! - Redis is only as durable as its configuration. Run it with `appendonly yes` and
//!   `appendfsync always` (or accept losing up to a second of acknowledged writes with
//!   `everysec`), and with `maxmemory-policy noeviction`: an `allkeys-*` policy would let
//!   Redis drop data keys, which destroys every secret sealed under them. Opening a store
//!   checks the eviction policy ([`EvictionPolicyCheck`]) and, on request, that AOF is on.

pub(crate) mod layout;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::rows::{MAX_STORED_ENVELOPE, MAX_STORED_WRAPPED_KEY, to_sql_row_version, to_sql_u64};
use super::{
    DekRecord, Erasure, KeyCondition, PutMode, SecretMetadata, SecretRecord, Store,
    keep_conditional,
};
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, RowVersion, SecretName, TenantId};
use layout::{Layout, bound, dek_member, secret_member, tenant_range};

const BACKEND: &str = "redis";
/// Most records one read script returns, and most index entries it examines: bounds how
/// long one script blocks the server.
const MAX_PER_CALL: usize = 1000;
const MAX_EXAMINE: usize = 4096;
/// Envelope and wrapped-key bytes after which one read script ends its page (it always
/// returns at least one record, so a page makes progress whatever the sizes).
const PAGE_BYTE_BUDGET: usize = 4 << 20;

/// What opening a [`RedisStore`] does when the server's `maxmemory-policy` could evict
/// credvault's keys (an `allkeys-*` policy; `noeviction` and the `volatile-*` policies are
/// safe, because credvault's keys never expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EvictionPolicyCheck {
    /// Refuse to open with [`Error::Config`] (the default); also refuse when the policy
    /// cannot be read.
    #[default]
    Refuse,
    /// Open, logging an error.
    Warn,
    /// Do not check (for a server where `INFO` is not permitted and the policy is known).
    Skip,
}

/// Key prefix and connection settings. The defaults: prefix `credvault`, eviction policy
/// refused when unsafe, AOF not required (a warning is logged without it), 5 s response and
/// connection timeouts.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    prefix: String,
    eviction: EvictionPolicyCheck,
    require_aof: bool,
    response_timeout: Duration,
    connection_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "credvault".to_owned(),
            eviction: EvictionPolicyCheck::Refuse,
            require_aof: false,
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisOptions {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The key prefix (default `credvault`): 1 to 64 bytes of `A-Z a-z 0-9 _ - . :`. Every
    /// key is `{prefix}:...`, one hash slot per prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What to do when the eviction policy could drop keys (default: refuse).
    #[must_use]
    pub fn with_eviction_policy_check(mut self, check: EvictionPolicyCheck) -> Self {
        self.eviction = check;
        self
    }

    /// Refuse to open unless the server has AOF persistence on (default `false`: only
    /// log a warning).
    #[must_use]
    pub fn with_required_aof(mut self, require: bool) -> Self {
        self.require_aof = require;
        self
    }

    /// How long one command waits for its reply (default 5 s) before failing with
    /// [`Error::Unavailable`].
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long a (re)connection attempt may take (default 5 s).
    #[must_use]
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }
}

struct Scripts {
    put_secret: Script,
    delete_secret: Script,
    put_dek: Script,
    delete_dek: Script,
    read_page: Script,
    read_one: Script,
}

/// A [`Store`] in Redis. See the module documentation.
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    layout: Arc<Layout>,
    scripts: Arc<Scripts>,
}

impl RedisStore {
    /// Connects to `url` (for example `redis://127.0.0.1:6379/0`) with the default options.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the server cannot be reached; [`Error::Config`] for a bad
    /// URL or option, or a server whose configuration could lose keys; [`Error::Storage`]
    /// otherwise. The URL never appears in an error.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to `url` with explicit options.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, Error> {
        // Options first: a bad prefix is a configuration error whether or not a server is
        // there.
        Layout::new(&options.prefix)?;
        let client =
            redis::Client::open(url).map_err(|_| Error::Config("the Redis URL is not valid"))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_err)?;
        Self::from_connection(conn, options).await
    }

    /// Uses a connection manager the caller already has.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn from_connection(
        conn: ConnectionManager,
        options: RedisOptions,
    ) -> Result<Self, Error> {
        let store = Self {
            conn: Connection(Arc::new(RwLock::new(Some(conn)))),
            layout: Arc::new(Layout::new(&options.prefix)?),
            scripts: Arc::new(Scripts {
                put_secret: Script::new(scripts::PUT_SECRET),
                delete_secret: Script::new(scripts::DELETE_SECRET),
                put_dek: Script::new(scripts::PUT_DEK),
                delete_dek: Script::new(scripts::DELETE_DEK),
                read_page: Script::new(scripts::READ_PAGE),
                read_one: Script::new(scripts::READ_ONE),
            }),
        };
        store.check_server(&options).await?;
        Ok(store)
    }

    /// The connection manager (a cheap clone sharing the connection), or `None` once the
    /// store is closed. The clone keeps the connection open until it is dropped, even past
    /// [`Store::close`].
    pub async fn connection(&self) -> Option<ConnectionManager> {
        self.conn.0.read().await.clone()
    }

    async fn check_server(&self, options: &RedisOptions) -> Result<(), Error> {
        if options.eviction != EvictionPolicyCheck::Skip {
            let info = passthrough_outage(self.info("memory").await)?;
            let policy = info
                .as_deref()
                .and_then(|i| info_field(i, "maxmemory_policy"));
            let safe = policy.is_some_and(|p| p == "noeviction" || p.starts_with("volatile-"));
            if !safe {
                if options.eviction == EvictionPolicyCheck::Refuse {
                    return Err(if policy.is_some() {
                        Error::Config(
                            "the Redis maxmemory-policy could evict credvault's keys: set it to noeviction",
                        )
                    } else {
                        Error::Config(
                            "the Redis maxmemory-policy could not be read (INFO memory); check it and use EvictionPolicyCheck::Skip",
                        )
                    });
                }
                tracing::error!(
                    policy = policy.unwrap_or("unknown"),
                    "the Redis maxmemory-policy could evict credvault's keys; set it to noeviction"
                );
            }
        }
        let info = passthrough_outage(self.info("persistence").await)?;
        let aof = info.as_deref().and_then(|i| info_field(i, "aof_enabled")) == Some("1");
        if !aof {
            if options.require_aof {
                return Err(Error::Config(
                    "the Redis server does not have AOF persistence on (appendonly yes)",
                ));
            }
            tracing::warn!(
                "the Redis server does not have AOF persistence on: acknowledged writes are lost if it restarts"
            );
        }
        Ok(())
    }

    async fn info(&self, section: &str) -> Result<String, Error> {
        let mut conn = self.conn.lease().await?;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut *conn)
            .await
            .map_err(map_err)
    }

    /// Runs scripts by hash in one pipeline; loads them and re-runs the entries the server
    /// did not know (after a restart or `SCRIPT FLUSH`). Each inner result is one reply.
    async fn eval_many(&self, calls: Vec<(&Script, Cmd)>) -> Result<Vec<Value>, Error> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.lease().await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, cmd) in &calls {
            pipe.add_command(cmd.clone());
        }
        let mut replies: Vec<Value> = pipe.query_async(&mut *conn).await.map_err(map_err)?;
        if replies.len() != calls.len() {
            return Err(Error::storage(BACKEND, "pipeline reply count mismatch"));
        }
        let missing: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| is_noscript(r))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            for i in &missing {
                if let Some((script, cmd)) = calls.get(*i) {
                    script.load_async(&mut *conn).await.map_err(map_err)?;
                    let again: Value = cmd.query_async(&mut *conn).await.map_err(map_err)?;
                    if let Some(slot) = replies.get_mut(*i) {
                        *slot = again;
                    }
                }
            }
        }
        for reply in &replies {
            if let Value::ServerError(e) = reply {
                return Err(map_err(RedisError::from(e.clone())));
            }
        }
        Ok(replies)
    }

    /// Runs one script by hash, without a pipeline; loads it and runs it again once if the
    /// server did not know it (after a restart or `SCRIPT FLUSH`).
    async fn eval(&self, script: &Script, cmd: &Cmd) -> Result<Value, Error> {
        let mut conn = self.conn.lease().await?;
        match cmd.query_async(&mut *conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut *conn).await.map_err(map_err)?;
                cmd.query_async(&mut *conn).await.map_err(map_err)
            }
            reply => reply.map_err(map_err),
        }
    }

    fn put_secret_cmd(
        &self,
        record: &SecretRecord,
        mode: PutMode,
        key: &KeyCondition,
    ) -> Result<Cmd, Error> {
        let m = &record.metadata;
        let (mode_arg, expected) = mode_args(mode)?;
        let (check, sealed) = key.sealed_under().map_or(("", &b""[..]), |w| ("k", w));
        let mut cmd = evalsha(&self.scripts.put_secret, 3);
        cmd.arg(self.layout.secret_key(&m.tenant, &m.name))
            .arg(&self.layout.secrets_index)
            .arg(self.layout.dek_key(&m.tenant, m.dek_version))
            .arg(mode_arg)
            .arg(expected)
            .arg(secret_member(&m.tenant, &m.name))
            .arg(m.kind.as_u8())
            .arg(m.dek_version.get())
            .arg(&record.envelope)
            .arg(m.created_at.as_millis())
            .arg(m.updated_at.as_millis())
            .arg(to_sql_row_version(m.row_version)?)
            .arg(check)
            .arg(sealed);
        Ok(cmd)
    }

    fn put_dek_cmd(&self, record: &DekRecord, mode: PutMode) -> Result<Cmd, Error> {
        let (mode_arg, expected) = mode_args(mode)?;
        let mut cmd = evalsha(&self.scripts.put_dek, 3);
        cmd.arg(self.layout.dek_key(&record.tenant, record.version))
            .arg(&self.layout.deks_index)
            .arg(&self.layout.tenants_index)
            .arg(mode_arg)
            .arg(expected)
            .arg(dek_member(&record.tenant, record.version))
            .arg(record.tenant.as_str())
            .arg(record.state.as_u8())
            .arg(layout::suite_field(record.suite))
            .arg(record.wrapped.master_key_id().as_str())
            .arg(record.wrapped.as_bytes())
            .arg(to_sql_u64(
                record.encryptions_reserved,
                "encryptions reserved",
            )?)
            .arg(record.created_at.as_millis())
            .arg(record.updated_at.as_millis())
            .arg(to_sql_row_version(record.row_version)?);
        Ok(cmd)
    }

    /// Reads up to `want` records from `index` after `lo` (a `ZRANGEBYLEX` bound) up to
    /// `hi`, skipping secrets under `skip`.
    async fn read(
        &self,
        index: &str,
        mut lo: Vec<u8>,
        hi: &[u8],
        want: usize,
        shape: Shape,
        skip: Option<DekVersion>,
    ) -> Result<Vec<Vec<Value>>, Error> {
        let mut out = Vec::new();
        let (record_prefix, bound_len) = match shape {
            Shape::Dek => (&self.layout.dek_prefix, MAX_STORED_WRAPPED_KEY),
            Shape::Meta | Shape::Whole => (&self.layout.secret_prefix, MAX_STORED_ENVELOPE),
        };
        let skip = skip.map(|v| v.get().to_string()).unwrap_or_default();
        while out.len() < want {
            let now = (want - out.len()).min(MAX_PER_CALL);
            let examine = if skip.is_empty() {
                now
            } else {
                (now * 4).clamp(64, MAX_EXAMINE)
            };
            let mut cmd = evalsha(&self.scripts.read_page, 1);
            cmd.arg(index)
                .arg(&lo)
                .arg(hi)
                .arg(now)
                .arg(record_prefix)
                .arg(shape.as_arg())
                .arg(bound_len)
                .arg(&skip)
                .arg(examine)
                .arg(PAGE_BYTE_BUDGET);
            let reply = self.eval(&self.scripts.read_page, &cmd).await?;
            let (last, exhausted, records) = page_reply(reply)?;
            out.extend(records);
            match last {
                Some(last) if !exhausted => lo = bound(false, &last),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn read_secrets(
        &self,
        lo: Vec<u8>,
        hi: &[u8],
        want: usize,
        skip: Option<DekVersion>,
    ) -> Result<Vec<SecretRecord>, Error> {
        let index = &self.layout.secrets_index;
        self.read(index, lo, hi, want, Shape::Whole, skip)
            .await?
            .iter()
            .map(|fields| {
                let (metadata, envelope) = layout::secret_from_reply(fields, true)?;
                Ok(SecretRecord {
                    metadata,
                    envelope: envelope.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn read_deks(
        &self,
        lo: Vec<u8>,
        hi: &[u8],
        want: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let index = &self.layout.deks_index;
        self.read(index, lo, hi, want, Shape::Dek, None)
            .await?
            .iter()
            .map(|fields| layout::dek_from_reply(fields))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Meta,
    Whole,
    Dek,
}

impl Shape {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Whole => "whole",
            Self::Dek => "dek",
        }
    }
}

fn evalsha(script: &Script, keys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
}

fn mode_args(mode: PutMode) -> Result<(&'static str, String), Error> {
    Ok(match mode {
        PutMode::Create => ("c", String::new()),
        PutMode::Update(v) => ("u", to_sql_u64(v.0, "row version")?.to_string()),
        PutMode::Upsert => ("s", String::new()),
    })
}

fn is_noscript(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

fn malformed(field: &'static str) -> Error {
    Error::Format(FormatError::InvalidField(Structure::Record, field))
}

/// A decoded `READ_PAGE` reply: the last index entry examined, whether the range is
/// exhausted, and each record's fields.
type Page = (Option<Vec<u8>>, bool, Vec<Vec<Value>>);

/// Splits a `READ_PAGE` reply into (last entry examined, exhausted, records).
fn page_reply(reply: Value) -> Result<Page, Error> {
    let Value::Array(mut parts) = reply else {
        return Err(malformed("page reply"));
    };
    if parts.len() != 3 {
        return Err(malformed("page reply"));
    }
    let records = match parts.pop() {
        Some(Value::Array(records)) => records
            .into_iter()
            .map(|r| match r {
                Value::Array(fields) => Ok(fields),
                _ => Err(malformed("page reply")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(malformed("page reply")),
    };
    let exhausted = matches!(parts.pop(), Some(Value::Int(1)));
    let last = match parts.pop() {
        Some(Value::BulkString(b)) => Some(b),
        _ => None,
    };
    Ok((last, exhausted, records))
}

/// The outcome of a conditional write script.
/// What a write script's reply says of a write that stores row version `written` (of a
/// secret sealed under data-key version `sealed`).
fn write_outcome(
    reply: &Value,
    written: RowVersion,
    sealed: Option<DekVersion>,
    what: &'static str,
) -> Result<RowVersion, Error> {
    match (reply, sealed) {
        (Value::Int(1), _) => Ok(written),
        (Value::Int(-1), _) => Err(Error::AlreadyExists { what }),
        (Value::Int(-2), _) => Err(Error::Conflict { what }),
        (Value::Int(-4), Some(version)) => Err(Error::KeyNotCurrent { version }),
        _ => Err(Error::storage(BACKEND, "unexpected script reply")),
    }
}

/// An `INFO` reply, `None` if the server refused it (for example by ACL); an outage is
/// passed through as itself, not mistaken for a configuration problem.
fn passthrough_outage(info: Result<String, Error>) -> Result<Option<String>, Error> {
    match info {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == crate::error::ErrorKind::Unavailable => Err(e),
        Err(_) => Ok(None),
    }
}

/// The value of `field:` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Maps a client error to the crate's categories; the server's text stays in `source()`.
fn map_err(e: RedisError) -> Error {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
            )
        )
        // A script still running (`BUSY`), or a server out of memory under `noeviction`
        // (`OOM`): transient.
        || matches!(e.code(), Some("BUSY" | "OOM"));
    if transient {
        Error::unavailable(BACKEND, e)
    } else {
        Error::storage(BACKEND, e)
    }
}

/// The store's connection manager, shared by its clones until [`Store::close`] drops it.
#[derive(Clone)]
struct Connection(Arc<RwLock<Option<ConnectionManager>>>);

impl Connection {
    /// The connection, lent to one operation; [`Error::Unavailable`] once the store is
    /// closed. `close` waits until every lease is returned.
    async fn lease(&self) -> Result<Lease, Error> {
        let turn = Arc::clone(&self.0).read_owned().await;
        let conn = turn
            .clone()
            .ok_or_else(|| Error::unavailable(BACKEND, "the store was closed"))?;
        Ok(Lease { conn, _turn: turn })
    }

    /// Waits for the leases out, then drops the store's handle on the connection (the last
    /// handle's drop ends the connection's task, which closes its socket).
    async fn close(&self) {
        let conn = self.0.write().await.take();
        drop(conn);
        // Let the connection's task see its end before the caller goes on.
        tokio::task::yield_now().await;
    }
}

/// A connection lent to one operation.
struct Lease {
    conn: ConnectionManager,
    _turn: OwnedRwLockReadGuard<Option<ConnectionManager>>,
}

impl std::ops::Deref for Lease {
    type Target = ConnectionManager;
    fn deref(&self) -> &ConnectionManager {
        &self.conn
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ConnectionManager {
        &mut self.conn
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.layout.root())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    /// With AOF persistence on, starts a rewrite of the append-only file (`BGREWRITEAOF`),
    /// which leaves out the deleted keys; the server finishes it in the background.
    async fn erase_deleted(&self) -> Result<Erasure, Error> {
        let info = passthrough_outage(self.info("persistence").await)?;
        let aof = info.as_deref().and_then(|i| info_field(i, "aof_enabled")) == Some("1");
        if !aof {
            return Ok(Erasure::Pending(
                "Redis keeps nothing of the deleted keys but in RDB snapshots it saved before the deletion, until a later save replaces them",
            ));
        }
        let mut conn = self.conn.lease().await?;
        match redis::cmd("BGREWRITEAOF")
            .query_async::<Value>(&mut *conn)
            .await
        {
            Ok(_) => {}
            // A rewrite already under way or scheduled includes the deletion, or the command
            // is not permitted: the sentence below says what to do either way.
            Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::ResponseError) => {}
            Err(e) => return Err(map_err(e)),
        }
        Ok(Erasure::Pending(
            "Redis rewrites its append-only file in the background (BGREWRITEAOF), which leaves the deleted keys out; until it finishes (INFO persistence: aof_rewrite_in_progress:0), and in RDB snapshots saved before, their bytes remain",
        ))
    }

    /// Waits for the operations under way, then drops the store's connection manager (a
    /// manager passed to [`RedisStore::from_connection`] too). A clone the caller took with
    /// [`RedisStore::connection`] keeps the connection open until it is dropped.
    async fn close(&self) -> Result<(), Error> {
        self.conn.close().await;
        Ok(())
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<DekRecord>, Error> {
        let mut cmd = evalsha(&self.scripts.read_one, 1);
        cmd.arg(self.layout.dek_key(tenant, version))
            .arg("dek")
            .arg(MAX_STORED_WRAPPED_KEY)
            .arg(dek_member(tenant, version));
        match self.eval(&self.scripts.read_one, &cmd).await? {
            Value::Array(fields) => layout::dek_from_reply(&fields).map(Some),
            Value::Nil => Ok(None),
            _ => Err(malformed("record reply")),
        }
    }

    async fn list_deks(&self, tenant: &TenantId) -> Result<Vec<DekRecord>, Error> {
        let (lo, hi) = tenant_range(tenant);
        self.read_deks(lo, &hi, usize::MAX).await
    }

    async fn put_dek(&self, record: DekRecord, mode: PutMode) -> Result<RowVersion, Error> {
        let cmd = self.put_dek_cmd(&record, mode)?;
        let reply = self.eval(&self.scripts.put_dek, &cmd).await?;
        write_outcome(&reply, record.row_version, None, "data key")
    }

    async fn get_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<Option<SecretRecord>, Error> {
        let mut cmd = evalsha(&self.scripts.read_one, 1);
        cmd.arg(self.layout.secret_key(tenant, name))
            .arg("whole")
            .arg(MAX_STORED_ENVELOPE)
            .arg(secret_member(tenant, name));
        match self.eval(&self.scripts.read_one, &cmd).await? {
            Value::Array(fields) => {
                let (metadata, envelope) = layout::secret_from_reply(&fields, true)?;
                Ok(Some(SecretRecord {
                    metadata,
                    envelope: envelope.unwrap_or_default(),
                }))
            }
            Value::Nil => Ok(None),
            _ => Err(malformed("record reply")),
        }
    }

    async fn put_secret(
        &self,
        record: SecretRecord,
        mode: PutMode,
        key: KeyCondition,
    ) -> Result<RowVersion, Error> {
        let cmd = self.put_secret_cmd(&record, mode, &key)?;
        let reply = self.eval(&self.scripts.put_secret, &cmd).await?;
        let m = &record.metadata;
        write_outcome(&reply, m.row_version, Some(m.dek_version), "secret")
    }

    async fn delete_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let expected = match expected {
            Some(v) => to_sql_u64(v.0, "row version")?.to_string(),
            None => String::new(),
        };
        let mut cmd = evalsha(&self.scripts.delete_secret, 2);
        cmd.arg(self.layout.secret_key(tenant, name))
            .arg(&self.layout.secrets_index)
            .arg(expected)
            .arg(secret_member(tenant, name));
        match self.eval(&self.scripts.delete_secret, &cmd).await? {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            Value::Int(-2) => Err(Error::Conflict { what: "secret" }),
            _ => Err(Error::storage(BACKEND, "unexpected script reply")),
        }
    }

    async fn list_secrets(
        &self,
        tenant: &TenantId,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, Error> {
        let (tenant_lo, hi) = tenant_range(tenant);
        let lo = after.map_or(tenant_lo, |a| bound(false, &secret_member(tenant, a)));
        let index = &self.layout.secrets_index;
        self.read(index, lo, &hi, limit, Shape::Meta, None)
            .await?
            .iter()
            .map(|fields| layout::secret_from_reply(fields, false).map(|(m, _)| m))
            .collect()
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantId>, Error> {
        let lo = after.map_or_else(|| b"-".to_vec(), |t| bound(false, t.as_str().as_bytes()));
        let count = u64::try_from(limit).unwrap_or(u64::MAX).min(1 << 62);
        let mut conn = self.conn.lease().await?;
        let names: Vec<Vec<u8>> = redis::cmd("ZRANGEBYLEX")
            .arg(&self.layout.tenants_index)
            .arg(lo)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut *conn)
            .await
            .map_err(map_err)?;
        names
            .iter()
            .map(|n| {
                std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| TenantId::new(s).ok())
                    .ok_or_else(|| malformed("tenant"))
            })
            .collect()
    }

    async fn scan_deks(
        &self,
        after: Option<(&TenantId, DekVersion)>,
        limit: usize,
    ) -> Result<Vec<DekRecord>, Error> {
        let lo = after.map_or_else(|| b"-".to_vec(), |(t, v)| bound(false, &dek_member(t, v)));
        self.read_deks(lo, b"+", limit).await
    }

    async fn scan_secrets(
        &self,
        after: Option<(&TenantId, &SecretName)>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let lo = after.map_or_else(
            || b"-".to_vec(),
            |(t, n)| bound(false, &secret_member(t, n)),
        );
        self.read_secrets(lo, b"+", limit, None).await
    }

    async fn delete_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        expected: Option<RowVersion>,
    ) -> Result<bool, Error> {
        let expected = match expected {
            Some(v) => to_sql_u64(v.0, "row version")?.to_string(),
            None => String::new(),
        };
        let (lo, hi) = tenant_range(tenant);
        let mut cmd = evalsha(&self.scripts.delete_dek, 3);
        cmd.arg(self.layout.dek_key(tenant, version))
            .arg(&self.layout.deks_index)
            .arg(&self.layout.tenants_index)
            .arg(expected)
            .arg(dek_member(tenant, version))
            .arg(tenant.as_str())
            .arg(lo)
            .arg(hi);
        match self.eval(&self.scripts.delete_dek, &cmd).await? {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            Value::Int(-2) => Err(Error::Conflict { what: "data key" }),
            _ => Err(Error::storage(BACKEND, "unexpected script reply")),
        }
    }

    async fn list_secrets_not_under(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        after: Option<&SecretName>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, Error> {
        let (tenant_lo, hi) = tenant_range(tenant);
        let lo = after.map_or(tenant_lo, |a| bound(false, &secret_member(tenant, a)));
        self.read_secrets(lo, &hi, limit, Some(version)).await
    }

    async fn put_secrets(
        &self,
        batch: Vec<(SecretRecord, PutMode, KeyCondition)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let calls = batch
            .iter()
            .map(|(r, mode, key)| {
                Ok((
                    &self.scripts.put_secret,
                    self.put_secret_cmd(r, *mode, key)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let replies = self.eval_many(calls).await?;
        replies
            .iter()
            .zip(&batch)
            .map(|(r, (record, _, _))| {
                let m = &record.metadata;
                keep_conditional(write_outcome(
                    r,
                    m.row_version,
                    Some(m.dek_version),
                    "secret",
                ))
            })
            .collect()
    }

    async fn put_deks(
        &self,
        batch: Vec<(DekRecord, PutMode)>,
    ) -> Result<Vec<Result<RowVersion, Error>>, Error> {
        let calls = batch
            .iter()
            .map(|(r, mode)| Ok((&self.scripts.put_dek, self.put_dek_cmd(r, *mode)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let replies = self.eval_many(calls).await?;
        replies
            .iter()
            .zip(&batch)
            .map(|(r, (record, _))| {
                keep_conditional(write_outcome(r, record.row_version, None, "data key"))
            })
            .collect()
    }
}
