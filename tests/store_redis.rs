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
    // A row version edited to something that is not a number: a write over it is refused
    // before anything is stored (the envelope stays what it was).
    let before = envelope(&mut conn, "flip").await;
    hset(key("alpha", "flip"), "r", b"abc".to_vec()).await;
    let err = vault
        .put(&a, &common::name("flip"), &ApiKey::new("secret-new"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    assert_eq!(
        envelope(&mut conn, "flip").await,
        before,
        "nothing was written"
    );
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
    let v = store.put_secret(record(&a, 1), PutMode::Upsert).await;
    assert_eq!(v.unwrap().0, 1);
    flush().await;
    let v = store.put_secret(record(&a, 2), PutMode::Upsert).await;
    assert_eq!(v.unwrap().0, 2, "written once");
    flush().await;
    let got = store.get_secret(&t, &a).await.unwrap().unwrap();
    assert_eq!((got.envelope, got.metadata.row_version.0), (vec![2; 8], 2));
    flush().await;
    let batch = vec![
        (record(&a, 3), PutMode::Upsert),
        (record(&b, 4), PutMode::Create),
    ];
    let versions: Vec<u64> = store
        .put_secrets(batch)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(versions, vec![3, 1]);
    flush().await;
    assert!(store.delete_secret(&t, &b, None).await.unwrap());
}

/// The row version a write stores is the stored one plus one, written as plain decimal
/// (no exponent, whatever its size); one that Lua cannot count exactly (2^53 or more) or
/// that is not decimal is refused before anything is written.
#[tokio::test]
async fn row_versions_are_counted_exactly_or_refused() {
    let Some(url) = servers::url("CREDVAULT_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("cvtest:{}", servers::unique_suffix());
    let store = servers::redis_under(&url, &prefix).await;
    let tenant = conformance::unique_tenant("count");
    let name = SecretName::new("n").unwrap();
    let key = format!("{{{prefix}}}:s:{tenant}:n");
    let mut conn = raw(&url).await;
    let record = |fill: u8| conformance::secret_record(&tenant, &name, vec![fill; 8]);
    store.put_secret(record(0), PutMode::Create).await.unwrap();
    let cases: [(&str, Option<u64>); 7] = [
        ("99999999999999", Some(100_000_000_000_000)),
        ("9007199254740991", Some(9_007_199_254_740_992)),
        ("0007", Some(8)),
        ("9007199254740992", None),
        ("18446744073709551616", None),
        ("-1", None),
        ("1e3", None),
    ];
    for (fill, (stored, expected)) in (1..).zip(cases) {
        let _: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg("r")
            .arg(stored)
            .query_async(&mut conn)
            .await
            .unwrap();
        let result = store.put_secret(record(fill), PutMode::Upsert).await;
        let row: String = redis::cmd("HGET")
            .arg(&key)
            .arg("r")
            .query_async(&mut conn)
            .await
            .unwrap();
        let envelope: Vec<u8> = redis::cmd("HGET")
            .arg(&key)
            .arg("e")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(v) = expected {
            assert_eq!(result.unwrap().0, v, "{stored}");
            assert_eq!(row, v.to_string(), "{stored}");
            assert_eq!(envelope, vec![fill; 8], "{stored}");
        } else {
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Malformed, "{stored}");
            assert_eq!(row, stored, "{stored}: nothing written");
            assert_ne!(envelope, vec![fill; 8], "{stored}: nothing written");
        }
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
