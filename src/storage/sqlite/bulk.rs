//! The store's paged scans, read on connections of their own, outside sqlx.
//!
//! sqlx runs every SQLite statement on its connection's worker thread and hands each result
//! row to the calling task through a channel: it copies every column of the row
//! (`sqlite3_value_dup`, an allocation under SQLite's memory mutex), wakes the task for
//! it, and frees the copies when the task drops the row. The rotation sweeps read every
//! record of the store, and for them that hand-over costs several times SQLite's own
//! work: a scan of 100,000 secrets took about 1 s of CPU through sqlx and 0.25 s read as
//! here ("Rotation jobs" in `BENCHMARKS.md`). On a small machine that CPU is taken from
//! the writes the sweep issues beside its reads.
//!
//! A page read here runs on tokio's blocking pool, on a rusqlite connection that this
//! reader opened to the store's file, and is decoded into records while SQLite steps
//! through it, each value read in place. rusqlite links the same SQLite library as sqlx
//! (one `libsqlite3-sys`), so the two drivers' connections share SQLite's own file locks.
//! The connection only reads (`query_only`); in WAL mode it reads beside the writer, as
//! any connection of the pool does, and each page is one statement, so one consistent
//! snapshot, as before. Up to [`IDLE`] connections are kept for the next pages.
//!
//! A store over a database in memory (private to sqlx's single connection) or over a pool
//! the caller supplied has no reader, and reads its scans through sqlx.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Params, Row};

use super::BACKEND;
use crate::error::Error;

/// Idle connections kept for the next page. A sweep reads one page at a time from each of
/// its two scans.
const IDLE: usize = 2;

/// Rows a page reserves room for up front (it grows beyond, up to its limit).
const PREALLOCATE: usize = 1024;

/// Reads pages of the store's file on connections of its own. Clones share them.
#[derive(Clone)]
pub(super) struct BulkReader(Arc<Shared>);

struct Shared {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl BulkReader {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self(Arc::new(Shared {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// The rows of `sql` (a query with `params`, which returns at most `limit` rows), each
    /// decoded by `decode` as SQLite steps to it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the file cannot be opened or stays locked past the busy
    /// timeout; [`Error::Storage`] for other driver errors; what `decode` returns.
    pub(super) async fn page<P, T, D>(
        &self,
        sql: &'static str,
        params: P,
        limit: usize,
        mut decode: D,
    ) -> Result<Vec<T>, Error>
    where
        P: Params + Send + 'static,
        T: Send + 'static,
        D: FnMut(&Row<'_>) -> Result<T, Error> + Send + 'static,
    {
        let shared = Arc::clone(&self.0);
        let read = move |conn: &Connection| {
            let mut statement = conn.prepare_cached(sql).map_err(map_err)?;
            let mut rows = statement.query(params).map_err(map_err)?;
            let mut out = Vec::with_capacity(limit.min(PREALLOCATE));
            while let Some(row) = rows.next().map_err(map_err)? {
                out.push(decode(row)?);
            }
            Ok(out)
        };
        tokio::task::spawn_blocking(move || shared.read(read))
            .await
            .map_err(|e| Error::storage(BACKEND, e))?
    }
}

impl Shared {
    /// Runs `read` on an idle connection, or a new one, and keeps the connection for the
    /// next read unless the driver failed (it may no longer be usable).
    fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let idle = self.idle().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let out = read(&conn);
        if !matches!(out, Err(Error::Storage { .. } | Error::Unavailable { .. })) {
            let mut idle = self.idle();
            if idle.len() < IDLE {
                idle.push(conn);
            }
        }
        out
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // The list holds no invariant a panic could break.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read-only connection to the store's file (which the store created and migrated).
    fn open(&self) -> Result<Connection, Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        conn.busy_timeout(self.busy_timeout).map_err(map_err)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(map_err)?;
        Ok(conn)
    }
}

/// Maps a driver error to the crate's categories, as the store's `map_err` does for sqlx;
/// the driver's text stays in `source()`.
fn map_err(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            Error::unavailable(BACKEND, e)
        }
        _ => Error::storage(BACKEND, e),
    }
}
