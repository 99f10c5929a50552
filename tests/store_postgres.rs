//! `PostgresStore` against a real server (`CREDVAULT_TEST_POSTGRES_URL`): the conformance
//! suite, concurrent migrations, rows edited in the database, and configuration checks.
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::print_stdout,
    reason = "test code: failing loudly is the point"
)]

mod common;

use std::sync::{Arc, OnceLock};

use common::servers;
use credvault::storage::PostgresOptions;
use credvault::{ErrorKind, PostgresStore};

/// One schema for the whole conformance run of this process (the checks use unique
/// tenants, so they share it; every test also runs the migration, concurrently).
fn schema() -> &'static str {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    SCHEMA.get_or_init(|| format!("cvtest_{}", servers::unique_suffix()))
}

async fn shared() -> Option<Arc<PostgresStore>> {
    let url = servers::url("CREDVAULT_TEST_POSTGRES_URL")?;
    Some(Arc::new(servers::postgres_in(&url, schema()).await))
}

credvault::store_conformance_tests!(shared());

/// Sixteen instances opening one new schema at once (half of them with another table
/// prefix, which migrates under another lock) all succeed, and the schema is created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_instances_migrate_one_schema_at_once() {
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("cvtest_{}", servers::unique_suffix());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (url, schema) = (url.clone(), schema.clone());
        tasks.push(tokio::spawn(async move {
            let options = PostgresOptions::new()
                .with_schema(schema)
                .with_table_prefix(if i % 2 == 0 { "credvault_" } else { "other_" })
                .with_max_connections(1);
            PostgresStore::connect_with(&url, options).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let store = servers::postgres_in(&url, &schema).await;
    let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".credvault_schema"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(version, 1);
}

/// A table prefix keeps two stores in one schema apart.
#[tokio::test]
async fn table_prefixes_keep_stores_apart() {
    use credvault::storage::{PutMode, Store, conformance};
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("cvtest_{}", servers::unique_suffix());
    let open = |prefix: &'static str| {
        let (url, schema) = (url.clone(), schema.clone());
        async move {
            PostgresStore::connect_with(
                &url,
                PostgresOptions::new()
                    .with_schema(schema)
                    .with_table_prefix(prefix),
            )
            .await
            .unwrap()
        }
    };
    let (a, b) = (open("app_a_").await, open("app_b_").await);
    let t = conformance::unique_tenant("prefix");
    a.put_dek(conformance::dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(a.list_deks(&t).await.unwrap().len(), 1);
    assert!(b.list_deks(&t).await.unwrap().is_empty());
}

/// A schema name or prefix outside the identifier alphabet is a configuration error, not
/// SQL.
#[tokio::test]
async fn names_that_could_inject_sql_are_refused() {
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    for schema in ["public\"; DROP TABLE x; --", "Upper", ""] {
        let err = PostgresStore::connect_with(&url, PostgresOptions::new().with_schema(schema))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}

/// Without migrations, a store over an empty schema refuses to open; a database written
/// by a newer schema version is refused too.
#[tokio::test]
async fn missing_or_newer_schemas_are_refused() {
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("cvtest_{}", servers::unique_suffix());
    let store = servers::postgres_in(&url, &schema).await;
    let err = PostgresStore::connect_with(
        &url,
        PostgresOptions::new()
            .with_schema(format!("{schema}_none"))
            .with_migrations(false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".credvault_schema SET version = 99"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let err = PostgresStore::connect_with(&url, PostgresOptions::new().with_schema(schema))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// An unreachable server is `Unavailable`, and the error does not quote the URL (which
/// may hold a password).
#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_the_url_stays_secret() {
    let url = "postgres://user:hunter2-password@127.0.0.1:1/db";
    let err = PostgresStore::connect_with(
        url,
        PostgresOptions::new().with_acquire_timeout(std::time::Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    // A URL that does not parse: not quoted either, even in the source chain.
    let err = PostgresStore::connect("postgres://user:hunter2@[::1/db?sslmode=bogus")
        .await
        .unwrap_err();
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text = format!("{text} {s} {s:?}");
        source = s.source();
    }
    assert!(!text.contains("hunter2"), "{text}");
}

/// Rows edited directly in the database — copied to another tenant, a bit flipped,
/// truncated, a column set out of range, an oversized envelope or wrapped key — fail to
/// open with the documented error kind, and nothing panics.
#[tokio::test]
async fn rows_edited_in_the_database_fail_to_open() {
    use credvault::ApiKey;
    use credvault::storage::Store as _;
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("cvtest_{}", servers::unique_suffix());
    let store = Arc::new(servers::postgres_in(&url, &schema).await);
    let vault = common::vault_over(&(store.clone() as Arc<dyn credvault::storage::Store>));
    let (a, b) = (common::tenant("alpha"), common::tenant("beta"));
    vault.create_tenant(&a).await.unwrap();
    vault.create_tenant(&b).await.unwrap();
    for n in ["copied-from", "flip", "cut", "kind", "version", "huge"] {
        vault
            .put(&a, &common::name(n), &ApiKey::new(format!("secret-{n}")))
            .await
            .unwrap();
    }
    let secrets = format!("\"{schema}\".credvault_secrets");
    let edits = [
        format!(
            "INSERT INTO {secrets} SELECT 'beta', 'copied', kind, dek_version, envelope, created_at, updated_at, 1
             FROM {secrets} WHERE tenant = 'alpha' AND name = 'copied-from'"
        ),
        format!(
            "UPDATE {secrets} SET envelope = set_byte(envelope, 40, get_byte(envelope, 40) # 1)
             WHERE tenant = 'alpha' AND name = 'flip'"
        ),
        format!(
            "UPDATE {secrets} SET envelope = substring(envelope from 1 for 20)
             WHERE tenant = 'alpha' AND name = 'cut'"
        ),
        format!("UPDATE {secrets} SET kind = 99 WHERE tenant = 'alpha' AND name = 'kind'"),
        format!(
            "UPDATE {secrets} SET dek_version = -1 WHERE tenant = 'alpha' AND name = 'version'"
        ),
        format!(
            "UPDATE {secrets} SET envelope = envelope || decode(repeat('00', 16777281), 'hex')
             WHERE tenant = 'alpha' AND name = 'huge'"
        ),
    ];
    for edit in edits {
        sqlx::query(sqlx::AssertSqlSafe(edit))
            .execute(store.pool())
            .await
            .unwrap();
    }
    let expect = [
        (&b, "copied", ErrorKind::Decryption),
        (&a, "flip", ErrorKind::Decryption),
        (&a, "cut", ErrorKind::Malformed),
        (&a, "kind", ErrorKind::Malformed),
        (&a, "version", ErrorKind::Malformed),
        (&a, "huge", ErrorKind::Malformed),
    ];
    for (t, n, kind) in expect {
        let err = vault.get::<ApiKey>(t, &common::name(n)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{t}/{n}: {err}");
        assert!(
            !format!("{err:?}").contains("secret-"),
            "no plaintext in errors"
        );
    }
    // A wrapped key truncated in the database: a secret that opened before fails after,
    // and the other tenant's secrets still open.
    vault
        .put(&b, &common::name("fine"), &ApiKey::new("secret-fine"))
        .await
        .unwrap();
    let before = common::vault_over(&(store.clone() as Arc<dyn credvault::storage::Store>));
    assert_eq!(
        before
            .get::<ApiKey>(&b, &common::name("fine"))
            .await
            .unwrap()
            .expose_secret(),
        "secret-fine"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".credvault_deks SET wrapped = substring(wrapped from 1 for 10) WHERE tenant = 'beta'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let fresh = common::vault_over(&(store.clone() as Arc<dyn credvault::storage::Store>));
    let err = fresh
        .get::<ApiKey>(&b, &common::name("fine"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Decryption | ErrorKind::Malformed),
        "a truncated wrapped key: {err}"
    );
    assert_eq!(
        fresh
            .get::<ApiKey>(&a, &common::name("copied-from"))
            .await
            .unwrap()
            .expose_secret(),
        "secret-copied-from",
        "the other tenant is untouched"
    );
    // A wrapped key longer than any credvault writes is refused unread, by every read.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".credvault_deks SET wrapped = decode(repeat('00', 65537), 'hex') WHERE tenant = 'alpha'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let first = credvault::DekVersion::FIRST;
    let reads = [
        store.get_dek(&a, first).await.map(|_| ()),
        store.list_deks(&a).await.map(|_| ()),
        store.scan_deks(None, 10).await.map(|_| ()),
        store.scan_live_deks(None, 10).await.map(|_| ()),
    ];
    for read in reads {
        assert_eq!(read.unwrap_err().kind(), ErrorKind::Malformed);
    }
}

/// `close` closes every connection of the pool: the pool is empty and the server lists
/// none of its sessions; the store refuses what follows as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_session_on_the_server() {
    use credvault::storage::{PutMode, Store, conformance};
    let Some(url) = servers::url("CREDVAULT_TEST_POSTGRES_URL") else {
        return;
    };
    let app = format!("cvtest_close_{}", servers::unique_suffix());
    let connect: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect_with(connect.application_name(&app))
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool, PostgresOptions::new().with_schema(schema()))
        .await
        .unwrap();
    let t = conformance::unique_tenant("close");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12u32 {
        let (store, t) = (store.clone(), t.clone());
        tasks.spawn(async move {
            store
                .put_dek(conformance::dek_record(&t, i + 1, 1), PutMode::Create)
                .await
                .unwrap();
        });
    }
    tasks.join_all().await;
    let watcher = servers::postgres_in(&url, schema()).await;
    let sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(watcher.pool())
        .await
        .unwrap()
    };
    assert!(sessions().await > 1, "the pool holds several sessions");
    store.close().await.unwrap();
    assert!(store.pool().is_closed());
    assert_eq!(
        store.pool().size(),
        0,
        "every connection of the pool is closed"
    );
    let mut left = sessions().await;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = sessions().await;
    }
    assert_eq!(left, 0, "the server still lists the store's sessions");
    assert_eq!(
        store.list_deks(&t).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    watcher.close().await.unwrap();
}
