//! The SQL text of [`PostgresStore`](super::PostgresStore), built once per store from its
//! validated schema name and table prefix.
//!
//! Values always travel as bind parameters; the only text spliced into a statement is the
//! schema name and the table prefix, each checked against `[a-z_][a-z0-9_]*` and quoted.

use sqlx::{AssertSqlSafe, SqlStr};

use crate::error::Error;
use crate::storage::rows::MAX_STORED_ENVELOPE;

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Longest accepted schema name or table prefix (PostgreSQL identifiers are at most 63
/// bytes, and the longest table name adds 20 bytes to the prefix).
const MAX_NAME: usize = 40;

const DEK_COLUMNS: &str = "tenant, version, state, suite, master_key_id, wrapped, \
                           encryptions_reserved, created_at, updated_at, row_version";
/// [`DEK_COLUMNS`] as read, the wrapped key bounded as the envelope is: `NULL` for a wrapped
/// key longer than any credvault writes (`rows::MAX_STORED_WRAPPED_KEY`), refused unread.
const DEK_READ: &str = "tenant, version, state, suite, master_key_id, \
                        CASE WHEN octet_length(wrapped) <= 65536 THEN wrapped END, \
                        encryptions_reserved, created_at, updated_at, row_version";
const _: () = assert!(crate::storage::rows::MAX_STORED_WRAPPED_KEY == 65_536);
const META_COLUMNS: &str = "tenant, name, kind, dek_version, created_at, updated_at, row_version";

/// Every statement the store runs, prepared as shareable SQL strings.
pub(super) struct Statements {
    pub(super) schema: String,
    pub(super) prefix: String,
    /// The advisory-lock key that serialises migrations of this schema and prefix.
    pub(super) lock_key: i64,
    /// The advisory-lock key that serialises creating this schema (stores with other
    /// prefixes may create it at the same time).
    pub(super) schema_lock_key: i64,
    deks: String,
    secrets: String,
    meta: String,
    pub(super) schema_version: SqlStr,
    pub(super) set_schema_version: SqlStr,
    pub(super) get_dek: SqlStr,
    pub(super) list_deks: SqlStr,
    pub(super) create_dek: SqlStr,
    pub(super) update_dek: SqlStr,
    pub(super) upsert_dek: SqlStr,
    pub(super) delete_dek: SqlStr,
    pub(super) dek_exists: SqlStr,
    pub(super) scan_deks: SqlStr,
    pub(super) scan_live_deks: SqlStr,
    pub(super) list_tenants: SqlStr,
    pub(super) count_by_master_key: SqlStr,
    pub(super) get_secret: SqlStr,
    pub(super) create_secret: SqlStr,
    pub(super) update_secret: SqlStr,
    pub(super) upsert_secret: SqlStr,
    pub(super) delete_secret: SqlStr,
    /// Whether a data key is still the one a secret write was sealed under (why a write
    /// that wrote nothing failed).
    pub(super) key_current: SqlStr,
    pub(super) secret_exists: SqlStr,
    pub(super) list_secrets: SqlStr,
    pub(super) scan_secrets: SqlStr,
    pub(super) list_secrets_not_under: SqlStr,
    pub(super) count_by_version: SqlStr,
    pub(super) count_by_tenant_version: SqlStr,
    pub(super) count_to_reencrypt: SqlStr,
}

fn sql(text: String) -> SqlStr {
    // Audited: `text` splices in only names checked by `check_name`.
    AssertSqlSafe(text).into_sql_str()
}

use sqlx::SqlSafeStr as _;

/// Checks a schema name or table prefix: 1 to 40 bytes of `a-z 0-9 _`, not starting with
/// a digit.
fn check_name(value: &str, what: &'static str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !value.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if ok { Ok(()) } else { Err(Error::Config(what)) }
}

/// FNV-1a, 64-bit: a stable advisory-lock key (the same in every process and build).
fn lock_key(schema: &str, prefix: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "credvault-migrate\0"
        .bytes()
        .chain(schema.bytes())
        .chain([0])
        .chain(prefix.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

impl Statements {
    #[allow(
        clippy::too_many_lines,
        reason = "one statement per line of the struct: splitting it would scatter the SQL"
    )]
    pub(super) fn new(schema: &str, prefix: &str) -> Result<Self, Error> {
        check_name(
            schema,
            "the PostgreSQL schema name must be 1 to 40 bytes of a-z, 0-9 and _, not starting with a digit",
        )?;
        check_name(
            prefix,
            "the PostgreSQL table prefix must be 1 to 40 bytes of a-z, 0-9 and _, not starting with a digit",
        )?;
        let deks = format!("\"{schema}\".\"{prefix}deks\"");
        let secrets = format!("\"{schema}\".\"{prefix}secrets\"");
        let meta = format!("\"{schema}\".\"{prefix}schema\"");
        let envelope =
            format!("CASE WHEN octet_length(envelope) <= {MAX_STORED_ENVELOPE} THEN envelope END");
        // A secret write's key condition ($9: the sealing key's wrapped bytes, NULL for
        // none), over the written tenant ($1) and data-key version ($4). `FOR SHARE` makes
        // it atomic with the write: a concurrent change of the key row (a demotion, a
        // destruction, a rewrap) either waits for this write to commit, or commits first and
        // is what the condition sees (read committed re-checks a locked row's new version).
        let key_condition = format!(
            "($9::BYTEA IS NULL OR EXISTS (SELECT 1 FROM {deks} d WHERE d.tenant = $1
               AND d.version = $4 AND d.state = 1 AND d.wrapped = $9 FOR SHARE))"
        );
        Ok(Self {
            lock_key: lock_key(schema, prefix),
            schema_lock_key: lock_key(schema, ""),
            schema_version: sql(format!("SELECT version FROM {meta} WHERE id = 1")),
            set_schema_version: sql(format!(
                "INSERT INTO {meta} (id, version) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version"
            )),
            get_dek: sql(format!(
                "SELECT {DEK_READ} FROM {deks} WHERE tenant = $1 AND version = $2"
            )),
            list_deks: sql(format!(
                "SELECT {DEK_READ} FROM {deks} WHERE tenant = $1 ORDER BY version"
            )),
            create_dek: sql(format!(
                "INSERT INTO {deks} ({DEK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (tenant, version) DO NOTHING RETURNING row_version"
            )),
            update_dek: sql(format!(
                "UPDATE {deks} SET state = $3, suite = $4, master_key_id = $5, wrapped = $6,
                   encryptions_reserved = $7, updated_at = $8, row_version = $10
                 WHERE tenant = $1 AND version = $2 AND row_version = $9
                 RETURNING row_version"
            )),
            upsert_dek: sql(format!(
                "INSERT INTO {deks} AS cur ({DEK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (tenant, version) DO UPDATE SET state = EXCLUDED.state,
                   suite = EXCLUDED.suite, master_key_id = EXCLUDED.master_key_id,
                   wrapped = EXCLUDED.wrapped, encryptions_reserved = EXCLUDED.encryptions_reserved,
                   updated_at = EXCLUDED.updated_at, row_version = EXCLUDED.row_version
                 RETURNING row_version"
            )),
            delete_dek: sql(format!(
                "DELETE FROM {deks} WHERE tenant = $1 AND version = $2
                   AND ($3::BIGINT IS NULL OR row_version = $3) RETURNING 1"
            )),
            dek_exists: sql(format!(
                "SELECT EXISTS (SELECT 1 FROM {deks} WHERE tenant = $1 AND version = $2)"
            )),
            scan_deks: sql(format!(
                "SELECT {DEK_READ} FROM {deks} WHERE (tenant, version) > ($1, $2)
                 ORDER BY tenant, version LIMIT $3"
            )),
            scan_live_deks: sql(format!(
                "SELECT {DEK_READ} FROM {deks} WHERE (tenant, version) > ($1, $2) AND state <> 3
                 ORDER BY tenant, version LIMIT $3"
            )),
            list_tenants: sql(format!(
                "SELECT DISTINCT tenant FROM {deks} WHERE tenant > $1 ORDER BY tenant LIMIT $2"
            )),
            count_by_master_key: sql(format!(
                "SELECT master_key_id, COUNT(*) FROM {deks} WHERE state <> 3 GROUP BY master_key_id"
            )),
            get_secret: sql(format!(
                "SELECT {META_COLUMNS}, {envelope} FROM {secrets} WHERE tenant = $1 AND name = $2"
            )),
            create_secret: sql(format!(
                "INSERT INTO {secrets} (tenant, name, kind, dek_version, envelope, created_at, updated_at, row_version)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE {key_condition}
                 ON CONFLICT (tenant, name) DO NOTHING RETURNING row_version"
            )),
            update_secret: sql(format!(
                "UPDATE {secrets} SET kind = $3, dek_version = $4, envelope = $5, updated_at = $6,
                   row_version = $8
                 WHERE tenant = $1 AND name = $2 AND row_version = $7 AND {key_condition}
                 RETURNING row_version"
            )),
            upsert_secret: sql(format!(
                "INSERT INTO {secrets} AS cur (tenant, name, kind, dek_version, envelope, created_at, updated_at, row_version)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE {key_condition}
                 ON CONFLICT (tenant, name) DO UPDATE SET kind = EXCLUDED.kind,
                   dek_version = EXCLUDED.dek_version, envelope = EXCLUDED.envelope,
                   updated_at = EXCLUDED.updated_at, row_version = EXCLUDED.row_version
                 RETURNING row_version"
            )),
            delete_secret: sql(format!(
                "DELETE FROM {secrets} WHERE tenant = $1 AND name = $2
                   AND ($3::BIGINT IS NULL OR row_version = $3) RETURNING 1"
            )),
            key_current: sql(format!(
                "SELECT EXISTS (SELECT 1 FROM {deks}
                   WHERE tenant = $1 AND version = $2 AND state = 1 AND wrapped = $3)"
            )),
            secret_exists: sql(format!(
                "SELECT EXISTS (SELECT 1 FROM {secrets} WHERE tenant = $1 AND name = $2)"
            )),
            list_secrets: sql(format!(
                "SELECT {META_COLUMNS} FROM {secrets} WHERE tenant = $1 AND name > $2
                 ORDER BY name LIMIT $3"
            )),
            scan_secrets: sql(format!(
                "SELECT {META_COLUMNS}, {envelope} FROM {secrets} WHERE (tenant, name) > ($1, $2)
                 ORDER BY tenant, name LIMIT $3"
            )),
            list_secrets_not_under: sql(format!(
                "SELECT {META_COLUMNS}, {envelope} FROM {secrets}
                 WHERE tenant = $1 AND name > $2 AND dek_version <> $3 ORDER BY name LIMIT $4"
            )),
            count_by_version: sql(format!(
                "SELECT dek_version, COUNT(*) FROM {secrets} WHERE tenant = $1 GROUP BY dek_version"
            )),
            count_by_tenant_version: sql(format!(
                "SELECT tenant, dek_version, COUNT(*) FROM {secrets}
                 WHERE (tenant, dek_version) > ($1, $2)
                 GROUP BY tenant, dek_version ORDER BY tenant, dek_version LIMIT $3"
            )),
            count_to_reencrypt: sql(format!(
                "SELECT COALESCE(SUM(g.n), 0)::BIGINT
                 FROM (SELECT tenant, dek_version, COUNT(*) AS n FROM {secrets}
                       GROUP BY tenant, dek_version) AS g
                 JOIN (SELECT tenant, MAX(version) AS newest FROM {deks} WHERE state = $1
                       GROUP BY tenant) AS a ON a.tenant = g.tenant
                 WHERE g.dek_version <> a.newest"
            )),
            schema: schema.to_owned(),
            prefix: prefix.to_owned(),
            deks,
            secrets,
            meta,
        })
    }

    /// Statements run before the schema version is read: the schema and the version table.
    pub(super) fn bootstrap(&self) -> Vec<SqlStr> {
        let schema = &self.schema;
        let meta = &self.meta;
        let mut out = Vec::new();
        if schema != "public" {
            out.push(sql(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")));
        }
        out.push(sql(format!(
            "CREATE TABLE IF NOT EXISTS {meta} (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version BIGINT NOT NULL
            )"
        )));
        out
    }

    /// Schema version 1.
    pub(super) fn migration_v1(&self) -> Vec<SqlStr> {
        let (deks, secrets, prefix) = (&self.deks, &self.secrets, &self.prefix);
        vec![
            sql(format!(
                "CREATE TABLE IF NOT EXISTS {deks} (
                    tenant TEXT COLLATE \"C\" NOT NULL,
                    version BIGINT NOT NULL,
                    state BIGINT NOT NULL,
                    suite BIGINT NOT NULL,
                    master_key_id TEXT COLLATE \"C\" NOT NULL,
                    wrapped BYTEA NOT NULL,
                    encryptions_reserved BIGINT NOT NULL,
                    created_at BIGINT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    row_version BIGINT NOT NULL,
                    PRIMARY KEY (tenant, version)
                )"
            )),
            sql(format!(
                "CREATE TABLE IF NOT EXISTS {secrets} (
                    tenant TEXT COLLATE \"C\" NOT NULL,
                    name TEXT COLLATE \"C\" NOT NULL,
                    kind BIGINT NOT NULL,
                    dek_version BIGINT NOT NULL,
                    envelope BYTEA NOT NULL,
                    created_at BIGINT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    row_version BIGINT NOT NULL,
                    PRIMARY KEY (tenant, name)
                )"
            )),
            // Ciphertext does not compress: store large envelopes out of line uncompressed
            // instead of trying.
            sql(format!(
                "ALTER TABLE {secrets} ALTER COLUMN envelope SET STORAGE EXTERNAL"
            )),
            sql(format!(
                "CREATE INDEX IF NOT EXISTS \"{prefix}secrets_by_dek\" ON {secrets} (tenant, dek_version)"
            )),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_identifier_alphabet_are_refused() {
        for bad in [
            "",
            "Public",
            "a-b",
            "a\"b",
            "a;drop",
            "1abc",
            "x y",
            &"a".repeat(41),
        ] {
            assert!(Statements::new(bad, "credvault_").is_err(), "{bad:?}");
            assert!(Statements::new("public", bad).is_err(), "{bad:?}");
        }
        assert!(Statements::new("tenant_data", "cv_").is_ok());
        assert!(Statements::new(&"a".repeat(40), &"b".repeat(40)).is_ok());
    }

    #[test]
    fn the_migration_lock_key_is_stable_and_depends_on_schema_and_prefix() {
        assert_eq!(
            lock_key("public", "credvault_"),
            lock_key("public", "credvault_")
        );
        assert_ne!(
            lock_key("public", "credvault_"),
            lock_key("public", "other_")
        );
        assert_ne!(lock_key("a", "bc"), lock_key("ab", "c"));
    }
}
