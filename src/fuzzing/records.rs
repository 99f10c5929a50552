//! The stored-record target: the decoders that turn persisted column values back into
//! records, fed arbitrary column values.

use arbitrary::{Arbitrary, Unstructured};

use super::Outcome;
use crate::error::{Error, FormatError, Structure};
use crate::storage::rows::{DekRow, MetaRow, secret_record};

/// Which persisted format a [`record_decode`] input holds: its first byte. Values are
/// fixed, so that adding a format never changes what existing corpus files mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordFormat {
    /// `0x00`: a SQL data-key row (`credvault_deks`), decoded by `DekRow::into_record`
    /// (SQLite and PostgreSQL share it).
    SqlDek = 0,
    /// `0x01`: a SQL secret row (`credvault_secrets`), decoded by `MetaRow` and
    /// `secret_record`.
    SqlSecret = 1,
    /// `0x02`: a Redis record as the read scripts return it (an array of reply values:
    /// the index member, then the hash fields), decoded by the Redis backend's
    /// `secret_from_reply` / `dek_from_reply`. Needs feature `redis`; without it the input
    /// is rejected unread.
    Redis = 2,
}

/// The column values of a data-key row, as a SQL backend reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekColumns {
    /// `tenant`
    pub tenant: String,
    /// `version`
    pub version: i64,
    /// `state`
    pub state: i64,
    /// `suite`
    pub suite: i64,
    /// `master_key_id`
    pub master_key_id: String,
    /// `wrapped`
    pub wrapped: Vec<u8>,
    /// `encryptions_reserved`
    pub encryptions_reserved: i64,
    /// `created_at`
    pub created_at: i64,
    /// `updated_at`
    pub updated_at: i64,
    /// `row_version`
    pub row_version: i64,
}

/// The column values of a secret row, as a SQL backend reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretColumns {
    /// `tenant`
    pub tenant: String,
    /// `name`
    pub name: String,
    /// `kind`
    pub kind: i64,
    /// `dek_version`
    pub dek_version: i64,
    /// `created_at`
    pub created_at: i64,
    /// `updated_at`
    pub updated_at: i64,
    /// `row_version`
    pub row_version: i64,
    /// `envelope`: the rest of the input.
    pub envelope: Vec<u8>,
}

// The fuzz input layout, chosen so that seeds can be written exactly (`to_fuzz_bytes`):
// integers are 8 bytes big-endian, text and blobs a big-endian u16 length then the bytes
// (cut short at the end of the input; text that is not UTF-8 is read lossily, as a SQL
// driver never hands out invalid text), and the last blob runs to the end.

fn int(u: &mut Unstructured<'_>) -> arbitrary::Result<i64> {
    let bytes = <[u8; 8]>::try_from(u.bytes(8)?).map_err(|_| arbitrary::Error::NotEnoughData)?;
    Ok(i64::from_be_bytes(bytes))
}

fn blob(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let len = <[u8; 2]>::try_from(u.bytes(2)?).map_err(|_| arbitrary::Error::NotEnoughData)?;
    let len = usize::from(u16::from_be_bytes(len)).min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(String::from_utf8_lossy(&blob(u)?).into_owned())
}

fn put_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("seed fields are short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl<'a> Arbitrary<'a> for DekColumns {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self {
            tenant: text(u)?,
            version: int(u)?,
            state: int(u)?,
            suite: int(u)?,
            master_key_id: text(u)?,
            wrapped: blob(u)?,
            encryptions_reserved: int(u)?,
            created_at: int(u)?,
            updated_at: int(u)?,
            row_version: int(u)?,
        })
    }
}

impl DekColumns {
    /// The [`record_decode`] input that decodes to these columns.
    ///
    /// # Panics
    /// If a text or blob is longer than 65,535 bytes.
    #[must_use]
    pub fn to_fuzz_bytes(&self) -> Vec<u8> {
        let mut out = vec![RecordFormat::SqlDek as u8];
        put_blob(&mut out, self.tenant.as_bytes());
        put_int(&mut out, self.version);
        put_int(&mut out, self.state);
        put_int(&mut out, self.suite);
        put_blob(&mut out, self.master_key_id.as_bytes());
        put_blob(&mut out, &self.wrapped);
        put_int(&mut out, self.encryptions_reserved);
        put_int(&mut out, self.created_at);
        put_int(&mut out, self.updated_at);
        put_int(&mut out, self.row_version);
        out
    }

    fn into_row(self) -> DekRow {
        DekRow {
            tenant: self.tenant,
            version: self.version,
            state: self.state,
            suite: self.suite,
            master_key_id: self.master_key_id,
            wrapped: self.wrapped,
            encryptions_reserved: self.encryptions_reserved,
            created_at: self.created_at,
            updated_at: self.updated_at,
            row_version: self.row_version,
        }
    }
}

impl<'a> Arbitrary<'a> for SecretColumns {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self {
            tenant: text(u)?,
            name: text(u)?,
            kind: int(u)?,
            dek_version: int(u)?,
            created_at: int(u)?,
            updated_at: int(u)?,
            row_version: int(u)?,
            envelope: u.bytes(u.len())?.to_vec(),
        })
    }
}

impl SecretColumns {
    /// The [`record_decode`] input that decodes to these columns.
    ///
    /// # Panics
    /// If a text is longer than 65,535 bytes.
    #[must_use]
    pub fn to_fuzz_bytes(&self) -> Vec<u8> {
        let mut out = vec![RecordFormat::SqlSecret as u8];
        put_blob(&mut out, self.tenant.as_bytes());
        put_blob(&mut out, self.name.as_bytes());
        put_int(&mut out, self.kind);
        put_int(&mut out, self.dek_version);
        put_int(&mut out, self.created_at);
        put_int(&mut out, self.updated_at);
        put_int(&mut out, self.row_version);
        out.extend_from_slice(&self.envelope);
        out
    }
}

/// Decodes `data[1..]` as the column values of the persisted format `data[0]` names
/// ([`RecordFormat`]) and runs that format's decoder. Checks that a row is accepted exactly
/// when every column is in the range `docs/format.md` section 6 documents, that a rejection
/// is a record [`FormatError`] (which quotes no value), and that an accepted row encodes
/// back to exactly the same column values.
///
/// # Panics
/// If any of these properties fails.
#[must_use]
pub fn record_decode(data: &[u8]) -> Outcome {
    let Some((&format, rest)) = data.split_first() else {
        return Outcome::Rejected;
    };
    let mut u = Unstructured::new(rest);
    match format {
        0 => DekColumns::arbitrary(&mut u).map_or(Outcome::Rejected, dek_row),
        1 => SecretColumns::arbitrary(&mut u).map_or(Outcome::Rejected, secret_row),
        #[cfg(feature = "redis")]
        2 => redis_reply(rest),
        _ => Outcome::Rejected,
    }
}

fn dek_row(columns: DekColumns) -> Outcome {
    let documented = tenant_ok(&columns.tenant)
        && version_ok(columns.version)
        && (1..=5).contains(&columns.state)
        && (1..=2).contains(&columns.suite)
        && crate::ids::MasterKeyId::new(&columns.master_key_id).is_ok()
        && columns.encryptions_reserved >= 0
        && columns.row_version >= 1;
    let row = columns.into_row();
    match row.clone().into_record() {
        Ok(record) => {
            assert!(
                documented,
                "a data-key row out of the documented ranges was accepted"
            );
            assert!(
                DekRow::from_record(&record).ok().as_ref() == Some(&row),
                "an accepted data-key row must encode back to the same columns"
            );
            Outcome::Accepted
        }
        Err(e) => {
            assert!(
                !documented,
                "a data-key row within the documented ranges was rejected"
            );
            assert_record_error(&e);
            Outcome::Rejected
        }
    }
}

fn secret_row(columns: SecretColumns) -> Outcome {
    let documented = tenant_ok(&columns.tenant)
        && crate::ids::SecretName::new(&columns.name).is_ok()
        && (1..=3).contains(&columns.kind)
        && version_ok(columns.dek_version)
        && columns.row_version >= 1;
    let meta = MetaRow {
        tenant: columns.tenant,
        name: columns.name,
        kind: columns.kind,
        dek_version: columns.dek_version,
        created_at: columns.created_at,
        updated_at: columns.updated_at,
        row_version: columns.row_version,
    };
    match secret_record(meta.clone(), columns.envelope.clone()) {
        Ok(record) => {
            assert!(
                documented,
                "a secret row out of the documented ranges was accepted"
            );
            assert!(
                MetaRow::from_metadata(&record.metadata).ok().as_ref() == Some(&meta),
                "an accepted secret row must encode back to the same columns"
            );
            assert!(
                record.envelope == columns.envelope,
                "the envelope must be kept as stored"
            );
            Outcome::Accepted
        }
        Err(e) => {
            assert!(
                !documented,
                "a secret row within the documented ranges was rejected"
            );
            assert_record_error(&e);
            Outcome::Rejected
        }
    }
}

/// One value of a Redis reply, for writing [`RecordFormat::Redis`] seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisField {
    /// A nil reply (a missing hash field).
    Nil,
    /// An integer reply (`0` stands for a field longer than the read's bound).
    Int(i64),
    /// A bulk string.
    Blob(Vec<u8>),
}

/// The [`record_decode`] input for a Redis reply of `shape` (0 whole secret, 1 metadata
/// only, 2 data key) with these values, in the layout `redis_reply` reads.
///
/// # Panics
/// If a blob is longer than 65,535 bytes.
#[must_use]
pub fn redis_fuzz_bytes(shape: u8, fields: &[RedisField]) -> Vec<u8> {
    let mut out = vec![RecordFormat::Redis as u8, shape];
    for field in fields {
        match field {
            RedisField::Nil => out.push(0),
            RedisField::Int(n) => {
                out.push(1);
                put_int(&mut out, *n);
            }
            RedisField::Blob(b) => {
                out.push(2);
                put_blob(&mut out, b);
            }
        }
    }
    out
}

/// A Redis read-script reply: a shape byte (0 whole secret, 1 metadata only, 2 data key),
/// then up to 12 values, each a tag byte (0 nil, 1 an 8-byte big-endian integer, anything
/// else a blob with a big-endian u16 length). Whatever the values, decoding never panics,
/// fails only with a record format error, and an accepted record names the tenant (and
/// name) of its index member.
#[cfg(feature = "redis")]
fn redis_reply(data: &[u8]) -> Outcome {
    use ::redis::Value;
    let mut u = Unstructured::new(data);
    let Ok(shape) = u.arbitrary::<u8>() else {
        return Outcome::Rejected;
    };
    let mut fields = Vec::new();
    while !u.is_empty() && fields.len() < 12 {
        let value = match u.arbitrary::<u8>() {
            Ok(0) => Value::Nil,
            Ok(1) => match int(&mut u) {
                Ok(n) => Value::Int(n),
                Err(_) => break,
            },
            Ok(_) => match blob(&mut u) {
                Ok(b) => Value::BulkString(b),
                Err(_) => break,
            },
            Err(_) => break,
        };
        fields.push(value);
    }
    let member_tenant = match fields.first() {
        Some(Value::BulkString(m)) => m
            .iter()
            .position(|&b| b == 0)
            .and_then(|i| m.get(..i))
            .map(<[u8]>::to_vec),
        _ => None,
    };
    let decoded = match shape % 3 {
        0 | 1 => crate::storage::redis::layout::secret_from_reply(&fields, shape % 3 == 0)
            .map(|(meta, _)| meta.tenant),
        _ => crate::storage::redis::layout::dek_from_reply(&fields).map(|r| r.tenant),
    };
    match decoded {
        Ok(tenant) => {
            assert!(
                member_tenant.as_deref() == Some(tenant.as_str().as_bytes()),
                "an accepted Redis record must belong to its index member's tenant"
            );
            Outcome::Accepted
        }
        Err(e) => {
            assert_record_error(&e);
            Outcome::Rejected
        }
    }
}

fn tenant_ok(tenant: &str) -> bool {
    crate::ids::TenantId::new(tenant).is_ok()
}

fn version_ok(version: i64) -> bool {
    (1..=i64::from(u32::MAX)).contains(&version)
}

fn assert_record_error(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Format(
                FormatError::InvalidField(Structure::Record, _)
                    | FormatError::UnsupportedSuite(Structure::Record, _)
            )
        ),
        "a bad stored row must be a record format error, got {:?}",
        e.kind()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_bytes_decode_to_the_columns_they_were_written_from() {
        let dek = DekColumns {
            tenant: "acme".into(),
            version: 1,
            state: -2,
            suite: i64::MAX,
            master_key_id: "k".into(),
            wrapped: vec![0, 1, 2],
            encryptions_reserved: 5,
            created_at: i64::MIN,
            updated_at: 0,
            row_version: 9,
        };
        let bytes = dek.to_fuzz_bytes();
        let decoded = bytes
            .split_first()
            .map(|(_, rest)| DekColumns::arbitrary(&mut Unstructured::new(rest)));
        assert_eq!(decoded.and_then(Result::ok), Some(dek));
        let secret = SecretColumns {
            tenant: "acme".into(),
            name: "n/1".into(),
            kind: 3,
            dek_version: 7,
            created_at: 1,
            updated_at: 2,
            row_version: 3,
            envelope: b"CVSE...".to_vec(),
        };
        let bytes = secret.to_fuzz_bytes();
        let decoded = bytes
            .split_first()
            .map(|(_, rest)| SecretColumns::arbitrary(&mut Unstructured::new(rest)));
        assert_eq!(decoded.and_then(Result::ok), Some(secret));
    }
}
