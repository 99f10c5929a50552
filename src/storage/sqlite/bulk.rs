//! The store's paged scans, read on connections of their own, outside sqlx.
//!
//! sqlx runs every SQLite statement on its connection's worker thread and hands each result
//! row to the calling task through a channel: it copies every column of the row
//! (`sqlite3_value_dup`, an allocation under SQLite's memory mutex), wakes the task for
//! it, and frees the copies when the task drops the row. The rotation sweeps read every
//! record of the store, and for them that hand-over costs several times SQLite's own
//! work: a scan of 100,000 secrets took about 1 s of CPU through sqlx and 0.2 s read as
//! here ("Rotation jobs" in `BENCHMARKS.md`). On a small machine that CPU is taken from
//! the writes the sweep issues beside its reads.
//!
//! A page read here runs on tokio's blocking pool, on a rusqlite connection that this
//! reader opened to the store's file, and is decoded into records while SQLite steps
//! through it (`rows::lite`). rusqlite links the same SQLite library as sqlx (one
//! `libsqlite3-sys`), so the two drivers' connections share SQLite's own file locks, and
//! the file is opened with the flags sqlx uses. Each page is one statement, so one
//! consistent snapshot, as through sqlx; the statement is reset when its rows are read
//! (or their reading fails), so an idle connection holds no snapshot that would keep the
//! WAL from being checkpointed.
//!
//! The connection is opened read-write and then set `query_only`: a read-only connection
//! cannot create the WAL's shared-memory file when it is the first to open the database,
//! and `query_only` refuses any statement that would change it. (When the last connection
//! to the file closes, SQLite checkpoints the WAL, whichever connection that is.)
//!
//! At most as many pages are read at once as the store's pool has connections, and up to
//! [`IDLE`] connections are kept for [`IDLE_LIFETIME`] for the next pages. A store over a
//! database in memory (private to sqlx's single connection) or over a pool the caller
//! supplied has no reader, and reads its scans through sqlx.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, Params, Row};
use tokio::sync::Semaphore;

use super::BACKEND;
use crate::error::Error;

/// Idle connections kept for the next page. A sweep reads one page at a time from each of
/// its two scans.
const IDLE: usize = 2;

/// How long an idle connection is kept. A connection opened later sees the file at the
/// store's path as it is then, should it have been replaced.
const IDLE_LIFETIME: Duration = Duration::from_secs(30);

/// Rows a page reserves room for up front (it grows beyond, up to its limit).
const PREALLOCATE: usize = 1024;

/// Reads pages of the store's file on connections of its own. Clones share them.
#[derive(Clone)]
pub(super) struct BulkReader(Arc<Shared>);

struct Shared {
    path: PathBuf,
    busy_timeout: Duration,
    /// One permit per page being read: as many as the store's pool has connections.
    /// Closed by [`BulkReader::close`].
    reading: Arc<Semaphore>,
    /// How many permits `reading` was given.
    readers: u32,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

impl BulkReader {
    /// A reader of the database file at `path` (absolute), reading at most `readers` pages
    /// at once.
    pub(super) fn new(path: PathBuf, busy_timeout: Duration, readers: u32) -> Self {
        let readers = readers.max(1);
        Self(Arc::new(Shared {
            path,
            busy_timeout,
            reading: Arc::new(Semaphore::new(usize::try_from(readers).unwrap_or(1))),
            readers,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// The rows of `sql` (a query with `params` that returns at most `limit` rows), each
    /// decoded by `decode` as SQLite steps to it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the file cannot be opened, stays locked past the busy
    /// timeout, or as many pages as the pool has connections are being read for longer
    /// than that; [`Error::Storage`] for other driver errors; what `decode` returns.
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
        let permit = tokio::time::timeout(
            shared.busy_timeout,
            Arc::clone(&shared.reading).acquire_owned(),
        )
        .await
        .map_err(|elapsed| Error::unavailable(BACKEND, elapsed))?
        .map_err(|closed| Error::unavailable(BACKEND, closed))?;
        let read = move |conn: &Connection| {
            let mut statement = conn.prepare_cached(sql).map_err(map_err)?;
            let mut rows = statement.query(params).map_err(map_err)?;
            let mut out = Vec::with_capacity(limit.min(PREALLOCATE));
            // The SQL's limit bounds the page; the loop does not rely on it.
            while out.len() < limit {
                let Some(row) = rows.next().map_err(map_err)? else {
                    break;
                };
                out.push(decode(row)?);
            }
            Ok(out)
        };
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            shared.read(read)
        })
        .await;
        match joined {
            Ok(page) => page,
            // A decoder bug must surface as one, not as a failure worth retrying.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(cancelled) => Err(Error::unavailable(BACKEND, cancelled)),
        }
    }

    /// Waits for the pages being read, then closes every connection this reader holds;
    /// pages asked for afterwards fail with [`Error::Unavailable`]. Calling it again does
    /// nothing.
    pub(super) async fn close(&self) {
        // The semaphore is fair: the pages already waiting are read first.
        if let Ok(all) = self.0.reading.acquire_many(self.0.readers).await {
            self.0.reading.close();
            drop(all);
        }
        let idle = std::mem::take(&mut *self.0.idle());
        if !idle.is_empty() {
            // Closing a connection touches the file (the last one to close checkpoints).
            let closed = tokio::task::spawn_blocking(move || drop(idle)).await;
            if let Err(e) = closed
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

impl Shared {
    /// Runs `read` on an idle connection, or a new one, and keeps the connection for the
    /// next read unless the driver failed (it may no longer be usable).
    fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let idle = {
            let mut idle = self.idle();
            idle.retain(|(_, since)| since.elapsed() < IDLE_LIFETIME);
            idle.pop()
        };
        let conn = match idle {
            Some((conn, _)) => conn,
            None => self.open()?,
        };
        let out = read(&conn);
        if !matches!(out, Err(Error::Storage { .. } | Error::Unavailable { .. })) {
            let mut idle = self.idle();
            if idle.len() < IDLE {
                idle.push((conn, Instant::now()));
            }
        }
        out
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(Connection, Instant)>> {
        // The list holds no invariant a panic could break.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection to the store's file (which the store created and migrated), with the
    /// flags sqlx opens it with, less `CREATE`: a file that is gone is an error, not a new
    /// empty database.
    fn open(&self) -> Result<Connection, Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE,
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

#[cfg(test)]
#[allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test assertions, and a decoder that panics on purpose"
)]
mod tests {
    use std::time::Duration;

    use super::{BulkReader, map_err};
    use crate::ErrorKind;

    fn one(reader: &BulkReader) -> impl Future<Output = Result<Vec<i64>, crate::Error>> {
        reader.page("SELECT 1", (), 1, |row| row.get(0).map_err(map_err))
    }

    #[tokio::test]
    async fn a_page_waits_for_a_reader_no_longer_than_the_busy_timeout() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bulk.db");
        drop(rusqlite::Connection::open(&path).expect("a database file"));
        let reader = BulkReader::new(path, Duration::from_millis(20), 1);

        let busy = reader
            .0
            .reading
            .clone()
            .acquire_owned()
            .await
            .expect("the only reader is free");
        assert_eq!(
            one(&reader).await.map_err(|e| e.kind()),
            Err(ErrorKind::Unavailable),
            "a page beyond the pool's size waits its turn, then gives up"
        );
        drop(busy);
        assert_eq!(one(&reader).await.expect("the reader is free"), vec![1]);
    }

    #[tokio::test]
    #[should_panic(expected = "a decoder bug")]
    async fn a_decoder_that_panics_panics_the_caller_instead_of_failing_as_unavailable() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bulk.db");
        drop(rusqlite::Connection::open(&path).expect("a database file"));
        let reader = BulkReader::new(path, Duration::from_millis(20), 1);
        let page: Result<Vec<()>, _> = reader
            .page("SELECT 1", (), 1, |_| -> Result<(), crate::Error> {
                panic!("a decoder bug")
            })
            .await;
        drop(page);
    }
}
