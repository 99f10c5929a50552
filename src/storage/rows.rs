//! Conversion between records and the flat column values SQL backends store, with every
//! stored value validated on the way back in (a row edited in the database is rejected
//! with a [`FormatError`], never a panic).

use super::{DekRecord, DekState, SecretMetadata, SecretRecord, Timestamp};
use crate::crypto::Suite;
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, MasterKeyId, RowVersion, SecretName, TenantId};
use crate::keys::WrappedDek;
use crate::secret::SecretKind;

const S: Structure = Structure::Record;

fn bad(field: &'static str) -> Error {
    Error::Format(FormatError::InvalidField(S, field))
}

fn small(value: i64, field: &'static str) -> Result<u8, Error> {
    u8::try_from(value).map_err(|_| bad(field))
}

fn version(value: i64, field: &'static str) -> Result<DekVersion, Error> {
    u32::try_from(value)
        .ok()
        .and_then(DekVersion::new)
        .ok_or_else(|| bad(field))
}

fn unsigned(value: i64, field: &'static str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| bad(field))
}

/// A stored row version: 1 to [`RowVersion::MAX`] (no write stores another).
fn stored_row_version(value: i64) -> Result<RowVersion, Error> {
    match unsigned(value, "row version")? {
        0 => Err(bad("row version")),
        v => Ok(RowVersion(v)),
    }
}

/// A stored integer column for a `u64` (SQL integers are signed 64-bit).
pub(crate) fn to_sql_u64(value: u64, field: &'static str) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::invalid(field, "exceeds the range of a stored integer"))
}

/// The row version a write stores, as a SQL integer: 1 to [`RowVersion::MAX`].
pub(crate) fn to_sql_row_version(v: RowVersion) -> Result<i64, Error> {
    match to_sql_u64(v.0, "row version")? {
        0 => Err(Error::invalid(
            "row version",
            "exceeds the range of a stored integer",
        )),
        n => Ok(n),
    }
}

/// The columns of a data-key row. `Debug` leaves out the wrapped key bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DekRow {
    pub(crate) tenant: String,
    pub(crate) version: i64,
    pub(crate) state: i64,
    pub(crate) suite: i64,
    pub(crate) master_key_id: String,
    pub(crate) wrapped: Vec<u8>,
    pub(crate) encryptions_reserved: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) row_version: i64,
}

impl std::fmt::Debug for DekRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekRow")
            .field("tenant", &self.tenant)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("master_key_id", &self.master_key_id)
            .field("wrapped_len", &self.wrapped.len())
            .finish_non_exhaustive()
    }
}

/// The validated record of a data-key row, from its column values (the strings borrowed,
/// so that a decoder can check them before copying them).
#[allow(clippy::too_many_arguments, reason = "one argument per stored column")]
fn dek_record(
    tenant: &str,
    dek_version: i64,
    state: i64,
    suite: i64,
    master_key_id: &str,
    wrapped: Vec<u8>,
    encryptions_reserved: i64,
    created_at: i64,
    updated_at: i64,
    row_version: i64,
) -> Result<DekRecord, Error> {
    let suite_byte = small(suite, "suite")?;
    Ok(DekRecord {
        tenant: TenantId::new(tenant).map_err(|_| bad("tenant"))?,
        version: version(dek_version, "version")?,
        state: DekState::from_u8(small(state, "state")?).ok_or_else(|| bad("state"))?,
        suite: Suite::from_u8(suite_byte)
            .ok_or(Error::Format(FormatError::UnsupportedSuite(S, suite_byte)))?,
        wrapped: WrappedDek::new(
            MasterKeyId::new(master_key_id).map_err(|_| bad("master key id"))?,
            wrapped,
        ),
        encryptions_reserved: unsigned(encryptions_reserved, "encryptions reserved")?,
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        row_version: stored_row_version(row_version)?,
    })
}

impl DekRow {
    pub(crate) fn into_record(self) -> Result<DekRecord, Error> {
        dek_record(
            &self.tenant,
            self.version,
            self.state,
            self.suite,
            &self.master_key_id,
            self.wrapped,
            self.encryptions_reserved,
            self.created_at,
            self.updated_at,
            self.row_version,
        )
    }

    pub(crate) fn from_record(r: &DekRecord) -> Result<Self, Error> {
        Ok(Self {
            tenant: r.tenant.as_str().to_owned(),
            version: i64::from(r.version.get()),
            state: i64::from(r.state.as_u8()),
            suite: i64::from(r.suite.as_u8()),
            master_key_id: r.wrapped.master_key_id().as_str().to_owned(),
            wrapped: r.wrapped.as_bytes().to_vec(),
            encryptions_reserved: to_sql_u64(r.encryptions_reserved, "encryptions reserved")?,
            created_at: r.created_at.as_millis(),
            updated_at: r.updated_at.as_millis(),
            row_version: to_sql_row_version(r.row_version)?,
        })
    }
}

/// The metadata columns of a secret row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaRow {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) kind: i64,
    pub(crate) dek_version: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) row_version: i64,
}

/// The validated metadata of a secret row, given its tenant (already validated).
#[allow(clippy::too_many_arguments, reason = "one argument per stored column")]
fn metadata(
    tenant: TenantId,
    name: &str,
    kind: i64,
    dek_version: i64,
    created_at: i64,
    updated_at: i64,
    row_version: i64,
) -> Result<SecretMetadata, Error> {
    Ok(SecretMetadata {
        tenant,
        name: SecretName::new(name).map_err(|_| bad("name"))?,
        kind: SecretKind::from_u8(small(kind, "kind")?).ok_or_else(|| bad("kind"))?,
        dek_version: version(dek_version, "DEK version")?,
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        row_version: stored_row_version(row_version)?,
    })
}

impl MetaRow {
    pub(crate) fn into_metadata(self) -> Result<SecretMetadata, Error> {
        let tenant = TenantId::new(&self.tenant).map_err(|_| bad("tenant"))?;
        metadata(
            tenant,
            &self.name,
            self.kind,
            self.dek_version,
            self.created_at,
            self.updated_at,
            self.row_version,
        )
    }

    pub(crate) fn from_metadata(m: &SecretMetadata) -> Result<Self, Error> {
        Ok(Self {
            tenant: m.tenant.as_str().to_owned(),
            name: m.name.as_str().to_owned(),
            kind: i64::from(m.kind.as_u8()),
            dek_version: i64::from(m.dek_version.get()),
            created_at: m.created_at.as_millis(),
            updated_at: m.updated_at.as_millis(),
            row_version: to_sql_row_version(m.row_version)?,
        })
    }
}

/// A secret row: metadata columns plus the envelope.
pub(crate) fn secret_record(meta: MetaRow, envelope: Vec<u8>) -> Result<SecretRecord, Error> {
    Ok(SecretRecord {
        metadata: meta.into_metadata()?,
        envelope,
    })
}

/// Reading the flat columns out of a SQL result row, for every sqlx backend: the column
/// order is that of the `dek_columns!` / `meta_columns!` lists of each backend.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql {
    use sqlx::{ColumnIndex, Decode, Row, Type};

    use super::{DekRow, LONG_WRAPPED_KEY, MetaRow};

    /// The data-key columns, in `dek_columns!` order, the wrapped key bounded: `NULL`
    /// stands for a wrapped key longer than any credvault writes, which is refused unread.
    pub(crate) fn dek_row<R>(row: &R) -> Result<Result<DekRow, crate::Error>, sqlx::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let wrapped: Option<Vec<u8>> = row.try_get(5)?;
        let Some(wrapped) = wrapped else {
            return Ok(Err(super::bad(LONG_WRAPPED_KEY)));
        };
        Ok(Ok(DekRow {
            tenant: row.try_get(0)?,
            version: row.try_get(1)?,
            state: row.try_get(2)?,
            suite: row.try_get(3)?,
            master_key_id: row.try_get(4)?,
            wrapped,
            encryptions_reserved: row.try_get(6)?,
            created_at: row.try_get(7)?,
            updated_at: row.try_get(8)?,
            row_version: row.try_get(9)?,
        }))
    }

    /// The secret metadata columns, in `meta_columns!` order.
    pub(crate) fn meta_row<R>(row: &R) -> Result<MetaRow, sqlx::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(MetaRow {
            tenant: row.try_get(0)?,
            name: row.try_get(1)?,
            kind: row.try_get(2)?,
            dek_version: row.try_get(3)?,
            created_at: row.try_get(4)?,
            updated_at: row.try_get(5)?,
            row_version: row.try_get(6)?,
        })
    }

    /// A page of secret rows (the `meta_columns!` then the bounded envelope), decoded with
    /// the same checks as [`meta_row`] and [`envelope`] but reading the strings in place,
    /// and sharing one tenant id among consecutive rows of the same tenant (scans are
    /// ordered by tenant): a page of 500 rows costs a few tenant allocations, not 1,000
    /// string copies. `map_err` is the backend's mapping of driver errors.
    pub(crate) fn secret_page<R>(
        rows: &[R],
        map_err: fn(sqlx::Error) -> crate::Error,
    ) -> Result<Vec<crate::storage::SecretRecord>, crate::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let mut out = Vec::with_capacity(rows.len());
        let mut last: Option<crate::ids::TenantId> = None;
        for row in rows {
            let tenant: &str = row.try_get(0).map_err(map_err)?;
            let tenant = match last.take() {
                Some(id) if id.as_str() == tenant => id,
                _ => crate::ids::TenantId::new(tenant).map_err(|_| super::bad("tenant"))?,
            };
            last = Some(tenant.clone());
            let name: &str = row.try_get(1).map_err(map_err)?;
            let metadata = super::metadata(
                tenant,
                name,
                row.try_get(2).map_err(map_err)?,
                row.try_get(3).map_err(map_err)?,
                row.try_get(4).map_err(map_err)?,
                row.try_get(5).map_err(map_err)?,
                row.try_get(6).map_err(map_err)?,
            )?;
            let envelope = envelope(row).map_err(map_err)??;
            out.push(crate::storage::SecretRecord { metadata, envelope });
        }
        Ok(out)
    }

    /// The bounded envelope column (index 7, after the metadata columns): `NULL` stands for
    /// an envelope longer than any credvault writes, which is refused unread.
    pub(crate) fn envelope<R>(row: &R) -> Result<Result<Vec<u8>, crate::Error>, sqlx::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let envelope: Option<Vec<u8>> = row.try_get(7)?;
        Ok(envelope.ok_or(super::bad("envelope longer than any credvault writes")))
    }
}

/// The longest envelope credvault writes: the largest plaintext limit plus 64 bytes of
/// framing. A stored envelope longer than this was not written by credvault and is refused
/// before it is loaded.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) const MAX_STORED_ENVELOPE: usize = crate::vault::MAX_SECRET_SIZE_LIMIT + 64;

/// The longest wrapped data key a store returns (credvault writes about a hundred bytes; a
/// KMS's wrapping may add a few hundred). A longer stored value is refused before it is
/// loaded.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) const MAX_STORED_WRAPPED_KEY: usize = 64 * 1024;

/// How a wrapped key over [`MAX_STORED_WRAPPED_KEY`] is refused.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const LONG_WRAPPED_KEY: &str = "wrapped key longer than any credvault writes";

/// Reading the same columns out of a rusqlite row, for the SQLite store's paged scans
/// (`sqlite/bulk.rs`): the same column order, the same bounds and the same checks as
/// [`sql`], strings checked where SQLite holds them before they are copied. A value of a
/// SQL type that the column never holds is refused as malformed, as [`sql`] refuses it
/// (through the store's error mapping); text in a blob column is read as its bytes, as sqlx
/// reads it.
#[cfg(feature = "sqlite")]
pub(crate) mod lite {
    use rusqlite::Row;
    use rusqlite::types::ValueRef;

    use super::{LONG_WRAPPED_KEY, MAX_STORED_WRAPPED_KEY, bad, dek_record, metadata};
    use crate::error::Error;
    use crate::ids::TenantId;
    use crate::storage::{DekRecord, SecretRecord};

    fn value<'r>(row: &'r Row<'_>, i: usize) -> Result<ValueRef<'r>, Error> {
        row.get_ref(i)
            .map_err(|e| Error::storage(crate::storage::sqlite::BACKEND, e))
    }

    fn text<'r>(row: &'r Row<'_>, i: usize, field: &'static str) -> Result<&'r str, Error> {
        match value(row, i)? {
            ValueRef::Text(bytes) => std::str::from_utf8(bytes).map_err(|_| bad(field)),
            _ => Err(bad(field)),
        }
    }

    fn integer(row: &Row<'_>, i: usize, field: &'static str) -> Result<i64, Error> {
        match value(row, i)? {
            ValueRef::Integer(v) => Ok(v),
            _ => Err(bad(field)),
        }
    }

    /// A blob column (or text, as its bytes), or `None` for SQL `NULL`.
    fn blob<'r>(
        row: &'r Row<'_>,
        i: usize,
        field: &'static str,
    ) -> Result<Option<&'r [u8]>, Error> {
        match value(row, i)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Ok(Some(bytes)),
            ValueRef::Null => Ok(None),
            _ => Err(bad(field)),
        }
    }

    /// A data-key row, in `dek_columns!` order (the wrapped key bounded: `NULL` when longer
    /// than any credvault writes).
    pub(crate) fn dek_row(row: &Row<'_>) -> Result<DekRecord, Error> {
        let wrapped = blob(row, 5, "wrapped key")?
            .filter(|w| w.len() <= MAX_STORED_WRAPPED_KEY)
            .ok_or_else(|| bad(LONG_WRAPPED_KEY))?;
        dek_record(
            text(row, 0, "tenant")?,
            integer(row, 1, "version")?,
            integer(row, 2, "state")?,
            integer(row, 3, "suite")?,
            text(row, 4, "master key id")?,
            wrapped.to_vec(),
            integer(row, 6, "encryptions reserved")?,
            integer(row, 7, "created at")?,
            integer(row, 8, "updated at")?,
            integer(row, 9, "row version")?,
        )
    }

    /// A secret row: the `meta_columns!` then the bounded envelope (`NULL` when longer than
    /// any envelope credvault writes). Consecutive rows of one tenant share its id: `last`
    /// holds the previous row's.
    pub(crate) fn secret_row(
        row: &Row<'_>,
        last: &mut Option<TenantId>,
    ) -> Result<SecretRecord, Error> {
        let tenant = text(row, 0, "tenant")?;
        let tenant = match last.take() {
            Some(id) if id.as_str() == tenant => id,
            _ => TenantId::new(tenant).map_err(|_| bad("tenant"))?,
        };
        *last = Some(tenant.clone());
        let metadata = metadata(
            tenant,
            text(row, 1, "name")?,
            integer(row, 2, "kind")?,
            integer(row, 3, "DEK version")?,
            integer(row, 4, "created at")?,
            integer(row, 5, "updated at")?,
            integer(row, 6, "row version")?,
        )?;
        let envelope = blob(row, 7, "envelope")?
            .filter(|e| e.len() <= super::MAX_STORED_ENVELOPE)
            .ok_or_else(|| bad("envelope longer than any credvault writes"))?
            .to_vec();
        Ok(SecretRecord { metadata, envelope })
    }
}
