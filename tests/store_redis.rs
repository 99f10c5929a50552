//! `RedisStore` against a real server (`CREDVAULT_TEST_REDIS_URL`): the conformance suite,
//! the key layout, the eviction-policy check, and configuration errors.
#![cfg(feature = "redis")]
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
use credvault::storage::{EvictionPolicyCheck, PutMode, RedisOptions, Store, conformance};
use credvault::{ErrorKind, RedisStore, SecretName};

/// One prefix for the conformance run of this process (the checks use unique tenants).
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("cvtest:{}", servers::unique_suffix()))
}

async fn shared() -> Option<Arc<RedisStore>> {
    let url = servers::url("CREDVAULT_TEST_REDIS_URL")?;
    Some(Arc::new(servers::redis_under(&url, prefix()).await))
}

credvault::store_conformance_tests!(shared());

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key the store writes starts with its hash-tagged prefix, and a secret's key holds
/// its tenant and name literally.
#[tokio::test]
async fn keys_stay_under_the_prefix_in_one_hash_slot() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("cvtest:{}", servers::unique_suffix());
    let store = servers::redis_under(&url, &prefix).await;
    let t = conformance::unique_tenant("layout");
    let n = SecretName::new("a/b:c@d").unwrap();
    store
        .put_dek(conformance::dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    store
        .put_secret(
            conformance::secret_record(&t, &n, vec![1, 2]),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    let mut conn = raw(&url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let root = format!("{{{prefix}}}:");
    assert_eq!(
        keys,
        vec![
            format!("{root}d:{t}:0000000001"),
            format!("{root}deks"),
            format!("{root}s:{t}:a/b:c@d"),
            format!("{root}secrets"),
            format!("{root}tenants"),
        ]
    );
}

/// Two prefixes on one server are two independent stores.
#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let a = servers::redis_under(&url, &format!("cvtest:{}", servers::unique_suffix())).await;
    let b = servers::redis_under(&url, &format!("cvtest:{}", servers::unique_suffix())).await;
    let t = conformance::unique_tenant("apart");
    a.put_dek(conformance::dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(a.list_tenants(None, 10).await.unwrap(), vec![t.clone()]);
    assert!(b.list_tenants(None, 10).await.unwrap().is_empty());
    assert!(b.list_deks(&t).await.unwrap().is_empty());
}

/// An `allkeys-*` eviction policy is refused by default, logged under `Warn`, and a safe
/// policy opens (on a private server: the shared one is never reconfigured).
#[tokio::test]
async fn an_eviction_policy_that_could_drop_keys_is_refused() {
    let Some(server) = common::PrivateRedis::start() else {
        return;
    };
    let url = server.url();
    let mut conn = raw(&url).await;
    let mut set = async |policy: &str| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    set("allkeys-lru").await;
    let refused = RedisStore::connect(&url).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Config);
    RedisStore::connect_with(
        &url,
        RedisOptions::new().with_eviction_policy_check(EvictionPolicyCheck::Warn),
    )
    .await
    .unwrap();
    set("volatile-lru").await;
    RedisStore::connect(&url).await.unwrap();
    set("noeviction").await;
    RedisStore::connect(&url).await.unwrap();
}

/// `with_required_aof(true)` refuses a server without AOF and accepts one with it.
#[tokio::test]
async fn required_aof_is_enforced() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let Some(private) = common::PrivateRedis::start() else {
        return;
    };
    let mut conn = raw(&url).await;
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut conn)
        .await
        .unwrap();
    let shared = RedisStore::connect_with(&url, RedisOptions::new().with_required_aof(true)).await;
    if info.contains("aof_enabled:1") {
        shared.unwrap();
    } else {
        assert_eq!(shared.unwrap_err().kind(), ErrorKind::Config);
    }
    // The private server runs with AOF on.
    RedisStore::connect_with(&private.url(), RedisOptions::new().with_required_aof(true))
        .await
        .unwrap();
}

/// A bad prefix or URL is a configuration error; an unreachable server is `Unavailable`;
/// neither quotes the URL.
#[tokio::test]
async fn configuration_errors_and_unreachable_servers() {
    let err = RedisStore::connect_with(
        "redis://127.0.0.1:6379",
        RedisOptions::new().with_prefix("a{b}"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = RedisStore::connect("not a url hunter2").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    let err = RedisStore::connect("redis://:hunter2@127.0.0.1:1/")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

/// Records edited directly in Redis — copied to another tenant, a bit flipped, truncated,
/// a field made invalid, the row version removed (a record with a field missing is
/// reported, not skipped as absent), an oversized envelope — fail to open with the
/// documented error kind, and nothing panics.
#[tokio::test]
async fn records_edited_in_redis_fail_to_open() {
    use credvault::ApiKey;
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("cvtest:{}", servers::unique_suffix());
    let store: Arc<dyn Store> = Arc::new(servers::redis_under(&url, &prefix).await);
    let vault = common::vault_over(&store);
    let (a, b) = (common::tenant("alpha"), common::tenant("beta"));
    vault.create_tenant(&a).await.unwrap();
    vault.create_tenant(&b).await.unwrap();
    for n in ["copied-from", "flip", "cut", "kind", "gone", "huge"] {
        vault
            .put(&a, &common::name(n), &ApiKey::new(format!("secret-{n}")))
            .await
            .unwrap();
    }
    let root = format!("{{{prefix}}}:");
    let key = |t: &str, n: &str| format!("{root}s:{t}:{n}");
    let mut conn = raw(&url).await;
    let envelope = |conn: &mut redis::aio::MultiplexedConnection, n: &'static str| {
        let (mut conn, key) = (conn.clone(), key("alpha", n));
        async move {
            let e: Vec<u8> = redis::cmd("HGET")
                .arg(&key)
                .arg("e")
                .query_async(&mut conn)
                .await
                .unwrap();
            e
        }
    };
    let shared = conn.clone();
    let hset = |k: String, field: &'static str, value: Vec<u8>| {
        let mut conn = shared.clone();
        async move {
            let _: i64 = redis::cmd("HSET")
                .arg(k)
                .arg(field)
                .arg(value)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    // Copy alpha/copied-from to beta/copied (record and index entry).
    let _: i64 = redis::cmd("COPY")
        .arg(key("alpha", "copied-from"))
        .arg(key("beta", "copied"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{root}secrets"))
        .arg(0)
        .arg(b"beta\0copied".to_vec())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut flipped = envelope(&mut conn, "flip").await;
    flipped[40] ^= 1;
    hset(key("alpha", "flip"), "e", flipped).await;
    let cut = envelope(&mut conn, "cut").await;
    hset(key("alpha", "cut"), "e", cut[..20].to_vec()).await;
    hset(key("alpha", "kind"), "k", b"abc".to_vec()).await;
    let _: i64 = redis::cmd("HDEL")
        .arg(key("alpha", "gone"))
        .arg("r")
        .query_async(&mut conn)
        .await
        .unwrap();
    hset(key("alpha", "huge"), "e", vec![0; 16_777_281]).await;
    let expect = [
        (&b, "copied", ErrorKind::Decryption),
        (&a, "flip", ErrorKind::Decryption),
        (&a, "cut", ErrorKind::Malformed),
        (&a, "kind", ErrorKind::Malformed),
        (&a, "gone", ErrorKind::Malformed),
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
    // A row version edited to something that is not a number: the row reads as malformed,
    // a conditional write over it fails, and a put replaces the row whole.
    hset(key("alpha", "flip"), "r", b"abc".to_vec()).await;
    let err = vault
        .get::<ApiKey>(&a, &common::name("flip"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    let err = vault
        .update(
            &a,
            &common::name("flip"),
            &ApiKey::new("secret-new"),
            credvault::RowVersion(1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    vault
        .put(&a, &common::name("flip"), &ApiKey::new("secret-new"))
        .await
        .unwrap();
    let read: ApiKey = vault.get(&a, &common::name("flip")).await.unwrap();
    assert_eq!(read.expose_secret(), "secret-new");
}

/// After `SCRIPT FLUSH` (what a restart does), single calls and pipelined batches load the
/// scripts again and succeed, each write once (on a private server: the shared one's
/// scripts are left alone).
#[tokio::test]
async fn scripts_flushed_from_the_server_are_loaded_again() {
    let Some(server) = common::PrivateRedis::start() else {
        return;
    };
    let url = server.url();
    let store = RedisStore::connect(&url).await.unwrap();
    let mut conn = raw(&url).await;
    let mut flush = async || {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    let t = conformance::unique_tenant("flush");
    let (a, b) = (SecretName::new("a").unwrap(), SecretName::new("b").unwrap());
    let record = |n: &SecretName, fill: u8| conformance::secret_record(&t, n, vec![fill; 8]);
    flush().await;
    let first = record(&a, 1);
    let v = store
        .put_secret(
            first.clone(),
            PutMode::Upsert,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await;
    assert_eq!(v.unwrap(), first.metadata.row_version);
    flush().await;
    let second = record(&a, 2);
    let v = store
        .put_secret(
            second.clone(),
            PutMode::Update(first.metadata.row_version),
            credvault::storage::KeyCondition::Unchecked,
        )
        .await;
    assert_eq!(v.unwrap(), second.metadata.row_version, "written once");
    flush().await;
    let got = store.get_secret(&t, &a).await.unwrap().unwrap();
    assert_eq!(
        (got.envelope, got.metadata.row_version),
        (vec![2; 8], second.metadata.row_version)
    );
    flush().await;
    let batch = vec![
        (record(&a, 3), PutMode::Upsert),
        (record(&b, 4), PutMode::Create),
    ];
    let carried: Vec<_> = batch.iter().map(|(r, _)| r.metadata.row_version).collect();
    let versions: Vec<_> = store
        .put_secrets(conformance::unchecked(batch))
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, carried);
    flush().await;
    assert!(store.delete_secret(&t, &b, None).await.unwrap());
}

/// Row versions are kept as the plain decimal a write carries and compared as such, whatever
/// their size (a Lua number is exact only below 2^53, so the scripts never count with
/// them): versions near and past 2^53, and the largest, round trip exactly and satisfy an
/// update that expects them; a version one away does not.
#[tokio::test]
async fn row_versions_are_kept_and_compared_exactly() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("cvtest:{}", servers::unique_suffix());
    let store = servers::redis_under(&url, &prefix).await;
    let tenant = conformance::unique_tenant("exact");
    let name = SecretName::new("n").unwrap();
    let key = format!("{{{prefix}}}:s:{tenant}:n");
    let mut conn = raw(&url).await;
    let record = |fill: u8, v: u64| {
        let mut r = conformance::secret_record(&tenant, &name, vec![fill; 8]);
        r.metadata.row_version = credvault::RowVersion(v);
        r
    };
    let versions = [
        9_007_199_254_740_991,
        9_007_199_254_740_992,
        9_007_199_254_740_993,
        i64::MAX as u64 - 1,
        i64::MAX as u64,
    ];
    let mut current = store
        .put_secret(
            record(0, 1),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await
        .unwrap();
    for (fill, v) in (1..).zip(versions) {
        let near = credvault::RowVersion(current.0 ^ 1);
        assert_eq!(
            store
                .put_secret(
                    record(fill, v),
                    PutMode::Update(near),
                    credvault::storage::KeyCondition::Unchecked
                )
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict,
            "{v}: a version one bit away does not match"
        );
        current = store
            .put_secret(
                record(fill, v),
                PutMode::Update(current),
                credvault::storage::KeyCondition::Unchecked,
            )
            .await
            .unwrap();
        assert_eq!(current.0, v);
        let row: String = redis::cmd("HGET")
            .arg(&key)
            .arg("r")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(row, v.to_string(), "stored as plain decimal");
        let read = store.get_secret(&tenant, &name).await.unwrap().unwrap();
        assert_eq!(read.metadata.row_version.0, v);
        assert_eq!(read.envelope, vec![fill; 8]);
    }
}

/// Whether the server lists the client with `id`.
async fn listed(raw: &mut redis::aio::MultiplexedConnection, id: i64) -> bool {
    let listed: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("ID")
        .arg(id)
        .query_async(raw)
        .await
        .unwrap();
    !listed.trim().is_empty()
}

/// Waits (up to 10 s) until the server no longer lists the client with `id`.
async fn gone(raw: &mut redis::aio::MultiplexedConnection, id: i64) -> bool {
    for _ in 0..100 {
        if !listed(raw, id).await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// `close` drops the store's connection: the server sees the client go, and the store and
/// its clones refuse what follows as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_connection_on_the_server() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let mut manager =
        redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
            .await
            .unwrap();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut manager)
        .await
        .unwrap();
    let options = RedisOptions::new().with_prefix(format!("cvtest:{}", servers::unique_suffix()));
    let store = RedisStore::from_connection(manager, options).await.unwrap();
    let clone = store.clone();
    let t = conformance::unique_tenant("close");
    store
        .put_dek(conformance::dek_record(&t, 1, 1), PutMode::Create)
        .await
        .unwrap();
    let mut raw = raw(&url).await;
    assert!(listed(&mut raw, id).await, "the store's connection is open");
    store.close().await.unwrap();
    assert!(store.connection().await.is_none());
    assert!(
        gone(&mut raw, id).await,
        "the server still lists the store's connection"
    );
    assert_eq!(
        clone.list_deks(&t).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}
