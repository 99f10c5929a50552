//! How records are laid out in Redis, and the strict decoding of what comes back.
//!
//! With prefix `P` (validated: `A-Z a-z 0-9 _ - . :`, so it holds no hash-tag brace):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:s:<tenant>:<name>` | hash | a secret: `k` kind, `v` DEK version, `e` envelope, `c` / `u` created / updated (ms), `r` row version |
//! | `{P}:d:<tenant>:<version>` | hash | a data key: `st` state, `su` suite, `m` master key id, `w` wrapped key, `n` encryptions reserved, `c`, `u`, `r` |
//! | `{P}:secrets` | sorted set | one member `<tenant> NUL <name>` per secret |
//! | `{P}:deks` | sorted set | one member `<tenant> NUL <version>` per data key |
//! | `{P}:tenants` | sorted set | one member per tenant with a data key |
//!
//! `<version>` is written as 10 decimal digits, so byte order is numeric order. Tenant ids
//! cannot contain `:` or NUL, so a key names exactly one (tenant, name) pair, and no
//! identifier can be read as a pattern: keys are only ever used literally, never in `KEYS`
//! or `SCAN MATCH`. All members of an index have score 0 and are ordered by their bytes
//! (`ZRANGEBYLEX`); NUL sorts below every identifier byte, so the member order is the
//! (tenant, name) order.

use redis::Value;

use crate::crypto::Suite;
use crate::error::{Error, FormatError, Structure};
use crate::ids::{DekVersion, SecretName, TenantId};
use crate::storage::rows::{DekRow, MetaRow, secret_record};
use crate::storage::{DekRecord, SecretMetadata, SecretRecord};

/// Longest accepted key prefix.
const MAX_PREFIX: usize = 64;

fn bad(field: &'static str) -> Error {
    Error::Format(FormatError::InvalidField(Structure::Record, field))
}

/// The key names of one store.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// `{P}:`
    root: String,
    pub(super) secrets_index: String,
    pub(super) deks_index: String,
    pub(super) tenants_index: String,
    /// `{P}:s:`
    pub(super) secret_prefix: String,
    /// `{P}:d:`
    pub(super) dek_prefix: String,
}

impl Layout {
    pub(super) fn new(prefix: &str) -> Result<Self, Error> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            return Err(Error::Config(
                "the Redis key prefix must be 1 to 64 bytes of A-Z, a-z, 0-9, _, -, . and :",
            ));
        }
        let root = format!("{{{prefix}}}:");
        Ok(Self {
            secrets_index: format!("{root}secrets"),
            deks_index: format!("{root}deks"),
            tenants_index: format!("{root}tenants"),
            secret_prefix: format!("{root}s:"),
            dek_prefix: format!("{root}d:"),
            root,
        })
    }

    /// The `{P}:` part every key starts with.
    pub(super) fn root(&self) -> &str {
        &self.root
    }

    pub(super) fn secret_key(&self, tenant: &TenantId, name: &SecretName) -> String {
        format!(
            "{}{}:{}",
            self.secret_prefix,
            tenant.as_str(),
            name.as_str()
        )
    }

    pub(super) fn dek_key(&self, tenant: &TenantId, version: DekVersion) -> String {
        format!(
            "{}{}:{:010}",
            self.dek_prefix,
            tenant.as_str(),
            version.get()
        )
    }
}

pub(super) fn secret_member(tenant: &TenantId, name: &SecretName) -> Vec<u8> {
    member(tenant.as_str(), name.as_str())
}

pub(super) fn dek_member(tenant: &TenantId, version: DekVersion) -> Vec<u8> {
    member(tenant.as_str(), &format!("{:010}", version.get()))
}

fn member(tenant: &str, rest: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(tenant.len() + 1 + rest.len());
    m.extend_from_slice(tenant.as_bytes());
    m.push(0);
    m.extend_from_slice(rest.as_bytes());
    m
}

/// A `ZRANGEBYLEX` bound: `(` exclusive or `[` inclusive, then the member bytes.
pub(super) fn bound(inclusive: bool, member: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(member.len() + 1);
    b.push(if inclusive { b'[' } else { b'(' });
    b.extend_from_slice(member);
    b
}

/// The index range of one tenant's entries: everything after `tenant NUL` and before
/// `tenant \x01`.
pub(super) fn tenant_range(tenant: &TenantId) -> (Vec<u8>, Vec<u8>) {
    let t = tenant.as_str().as_bytes();
    let mut lo = Vec::with_capacity(t.len() + 2);
    lo.push(b'(');
    lo.extend_from_slice(t);
    let mut hi = lo.clone();
    lo.push(0);
    hi.push(1);
    (lo, hi)
}

/// One reply field as bytes; `None` when absent.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text<'a>(v: Option<&'a Value>, field: &'static str) -> Result<&'a str, Error> {
    v.and_then(bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| bad(field))
}

/// A stored integer: an optional `-` and 1 to 19 decimal digits, nothing else.
pub(super) fn integer(v: Option<&Value>, field: &'static str) -> Result<i64, Error> {
    match v {
        Some(Value::Int(n)) => Ok(*n),
        other => {
            let s = text(other, field)?;
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad(field));
            }
            s.parse().map_err(|_| bad(field))
        }
    }
}

/// A bounded binary field: the integer `0` stands for one longer than the bound.
fn blob(v: Option<&Value>, field: &'static str) -> Result<Vec<u8>, Error> {
    match v {
        Some(Value::BulkString(b)) => Ok(b.clone()),
        // `0`: longer than the bound; anything else: missing or of the wrong type.
        _ => Err(bad(field)),
    }
}

/// Splits an index member into (tenant, rest) at its NUL.
fn split_member(v: Option<&Value>) -> Result<(&str, &str), Error> {
    let m = v.and_then(bytes).ok_or_else(|| bad("index entry"))?;
    let sep = m
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("index entry"))?;
    let (tenant, rest) = m.split_at(sep);
    let rest = rest.get(1..).ok_or_else(|| bad("index entry"))?;
    match (std::str::from_utf8(tenant), std::str::from_utf8(rest)) {
        (Ok(t), Ok(r)) => Ok((t, r)),
        _ => Err(bad("index entry")),
    }
}

/// Decodes a `meta` or `whole` record reply of `READ_PAGE`:
/// `{member, kind, dek version, created, updated, row version [, envelope]}`.
pub(crate) fn secret_from_reply(
    fields: &[Value],
    whole: bool,
) -> Result<(SecretMetadata, Option<Vec<u8>>), Error> {
    let (tenant, name) = split_member(fields.first())?;
    let meta = MetaRow {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        kind: integer(fields.get(1), "kind")?,
        dek_version: integer(fields.get(2), "DEK version")?,
        created_at: integer(fields.get(3), "created at")?,
        updated_at: integer(fields.get(4), "updated at")?,
        row_version: integer(fields.get(5), "row version")?,
    };
    if whole {
        let envelope = blob(fields.get(6), "envelope")?;
        let record: SecretRecord = secret_record(meta, envelope)?;
        Ok((record.metadata, Some(record.envelope)))
    } else {
        Ok((meta.into_metadata()?, None))
    }
}

/// Decodes a `dek` record reply of `READ_PAGE`:
/// `{member, state, suite, master key id, wrapped, reserved, created, updated, row version}`.
pub(crate) fn dek_from_reply(fields: &[Value]) -> Result<DekRecord, Error> {
    let (tenant, version) = split_member(fields.first())?;
    if version.len() != 10 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("version"));
    }
    DekRow {
        tenant: tenant.to_owned(),
        version: version.parse().map_err(|_| bad("version"))?,
        state: integer(fields.get(1), "state")?,
        suite: integer(fields.get(2), "suite")?,
        master_key_id: text(fields.get(3), "master key id")?.to_owned(),
        wrapped: blob(fields.get(4), "wrapped key")?,
        encryptions_reserved: integer(fields.get(5), "encryptions reserved")?,
        created_at: integer(fields.get(6), "created at")?,
        updated_at: integer(fields.get(7), "updated at")?,
        row_version: integer(fields.get(8), "row version")?,
    }
    .into_record()
}

/// The suite byte as stored.
pub(super) fn suite_field(suite: Suite) -> String {
    suite.as_u8().to_string()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test assertions"
)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn prefixes_that_could_break_the_hash_tag_or_the_key_grammar_are_refused() {
        for bad in ["", "a{b", "a}b", "a b", "a*", "a\0", &"p".repeat(65)] {
            assert!(Layout::new(bad).is_err(), "{bad:?}");
        }
        let l = Layout::new("cv:test").unwrap();
        assert_eq!(l.secrets_index, "{cv:test}:secrets");
        assert_eq!(
            l.secret_key(&tenant("t"), &SecretName::new("a:b").unwrap()),
            "{cv:test}:s:t:a:b"
        );
        assert_eq!(
            l.dek_key(&tenant("t"), DekVersion::new(7).unwrap()),
            "{cv:test}:d:t:0000000007"
        );
    }

    #[test]
    fn member_order_is_tenant_then_name_order() {
        let pairs = [
            ("a", "z"),
            ("a.b", "a"),
            ("a0", "a"),
            ("a_", "a"),
            ("ab", "a"),
        ];
        let mut members: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(t, n)| secret_member(&tenant(t), &SecretName::new(n).unwrap()))
            .collect();
        let expected = members.clone();
        members.sort();
        assert_eq!(members, expected, "byte order of members = tuple order");
    }

    #[test]
    fn stored_integers_are_parsed_strictly() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(integer(Some(&v("42")), "x").unwrap(), 42);
        assert_eq!(integer(Some(&v("-7")), "x").unwrap(), -7);
        for bad in [
            "",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "1e3",
            "-",
            "99999999999999999999",
        ] {
            assert!(integer(Some(&v(bad)), "x").is_err(), "{bad:?}");
        }
        assert!(integer(None, "x").is_err());
    }

    #[test]
    fn a_tenant_range_covers_exactly_that_tenants_members() {
        let (lo, hi) = tenant_range(&tenant("ab"));
        assert_eq!(lo, b"(ab\0");
        assert_eq!(hi, b"(ab\x01");
        let inside = secret_member(&tenant("ab"), &SecretName::new("x").unwrap());
        let longer = secret_member(&tenant("abc"), &SecretName::new("x").unwrap());
        assert!(inside.as_slice() > &lo[1..] && inside.as_slice() < &hi[1..]);
        assert!(longer.as_slice() > &hi[1..]);
    }
}
