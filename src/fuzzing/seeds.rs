//! The seed corpus generator: every file under `fuzz/corpus/<target>/seed-*` comes from
//! here (`UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` rewrites them, and the plain
//! test fails if the directory and this list differ).
//!
//! Valid seeds are built with the crate's own encoders from the worked examples' keys;
//! malformed ones by changing one thing in a valid one, as `docs/format.md` section 9.3
//! does.

use super::fixture::{self, counting, deks, known_envelopes, known_wrapped};
use super::model::Op;
use super::records::{DekColumns, SecretColumns};
use crate::crypto::Suite;
use crate::ids::DekVersion;
use crate::keys::MasterKeyProvider;
use crate::secret::sealed::Sealed;
use crate::secret::{ApiKey, OAuthToken, SecretBytes};

/// One file of the seed corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target whose corpus directory holds it.
    pub target: &'static str,
    /// Its file name. `seed-valid-*` inputs must be accepted and `seed-invalid-*` ones
    /// rejected (the replay test checks both).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// Collects seeds for one target.
struct Corpus<'a> {
    target: &'static str,
    out: &'a mut Vec<Seed>,
}

impl Corpus<'_> {
    fn valid(&mut self, label: &str, bytes: Vec<u8>) {
        self.push("valid", label, bytes);
    }

    fn invalid(&mut self, label: &str, bytes: Vec<u8>) {
        self.push("invalid", label, bytes);
    }

    fn push(&mut self, expect: &str, label: &str, bytes: Vec<u8>) {
        self.out.push(Seed {
            target: self.target,
            name: format!("seed-{expect}-{label}"),
            bytes,
        });
    }
}

/// `bytes` with `f` applied.
fn edit(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    f(&mut out);
    out
}

fn set(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
    edit(bytes, |b| {
        if let Some(slot) = b.get_mut(at) {
            *slot = value;
        }
    })
}

/// The whole seed corpus, in a fixed order.
#[must_use]
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    envelope_seeds(&mut out);
    wrapped_seeds(&mut out);
    record_seeds(&mut out);
    plaintext_seeds(&mut out);
    id_seeds(&mut out);
    model_seeds(&mut out);
    out
}

fn envelope_seeds(out: &mut Vec<Seed>) {
    let ex1 = known_envelopes()
        .first()
        .map(|k| k.bytes.clone())
        .unwrap_or_default();
    let len = ex1.len();
    let malformed = [
        ("bad_magic", set(&ex1, 3, b'F')),
        ("unsupported_version", set(&ex1, 4, 2)),
        ("unsupported_suite", set(&ex1, 5, 3)),
        ("kind", set(&ex1, 6, 4)),
        ("dek_version_zero", set(&ex1, 10, 0)),
        (
            "short_sealed_length",
            edit(&ex1, |b| {
                b.truncate(27 + 15);
                if let Some(l) = b.get_mut(26) {
                    *l = 15;
                }
            }),
        ),
        ("truncated", edit(&ex1, |b| b.truncate(len - 1))),
        ("truncated_header", edit(&ex1, |b| b.truncate(7))),
        ("trailing_bytes", edit(&ex1, |b| b.push(0))),
        ("empty", Vec::new()),
    ];
    for target in ["envelope_parse", "envelope_open"] {
        let mut c = Corpus { target, out };
        for known in known_envelopes() {
            c.valid(known.label, known.bytes.clone());
        }
        for (label, bytes) in &malformed {
            c.invalid(label, bytes.clone());
        }
    }
    // Well-formed envelopes that must not open.
    let [v1, _] = deks();
    let mut c = Corpus {
        target: "envelope_open",
        out,
    };
    c.invalid(
        "tag_flipped",
        edit(&ex1, |b| {
            if let Some(last) = b.last_mut() {
                *last ^= 1;
            }
        }),
    );
    c.invalid("kind_relabelled", set(&ex1, 6, 3));
    c.invalid("dek_version_relabelled", set(&ex1, 10, 2));
    c.invalid("dek_version_missing", set(&ex1, 10, 3));
    let gitlab = fixture::seal_as(
        "other-name",
        "gitlab",
        &v1,
        &counting::<12>(0xc0),
        &ApiKey::new("ghp_example_0123456789"),
    );
    c.invalid("other_name", gitlab.bytes);
}

fn wrapped_seeds(out: &mut Vec<Seed>) {
    let mut c = Corpus {
        target: "wrapped_dek_unwrap",
        out,
    };
    for known in known_wrapped() {
        c.valid(known.label, known.bytes.clone());
    }
    let ex1 = known_wrapped()
        .first()
        .map(|k| k.bytes.clone())
        .unwrap_or_default();
    let [_, v2] = deks();
    c.invalid(
        "ex2_other_context",
        fixture::wrap(&v2.key, v2.version, v2.suite, &v2.wrap_nonce),
    );
    c.invalid(
        "other_suite_context",
        fixture::wrap(
            &v2.key,
            DekVersion::FIRST,
            Suite::XChaCha20Poly1305,
            &v2.wrap_nonce,
        ),
    );
    c.invalid(
        "tag_flipped",
        edit(&ex1, |b| {
            if let Some(last) = b.last_mut() {
                *last ^= 1;
            }
        }),
    );
    c.invalid("bad_magic", set(&ex1, 0, b'D'));
    c.invalid("unsupported_version", set(&ex1, 4, 2));
    c.invalid("unsupported_suite", set(&ex1, 5, 1));
    c.invalid("truncated", edit(&ex1, |b| b.truncate(77)));
    c.invalid("trailing_bytes", edit(&ex1, |b| b.push(0)));
    c.invalid("empty", Vec::new());
}

fn record_seeds(out: &mut Vec<Seed>) {
    let master_id = fixture::master().id().as_str().to_owned();
    let wrapped = known_wrapped()
        .first()
        .map(|k| k.bytes.clone())
        .unwrap_or_default();
    let dek = DekColumns {
        tenant: fixture::TENANT.to_owned(),
        version: 1,
        state: 1,
        suite: 1,
        master_key_id: master_id,
        wrapped,
        encryptions_reserved: 1024,
        created_at: 1_767_225_600_000,
        updated_at: 1_767_225_600_000,
        row_version: 3,
    };
    let envelope = known_envelopes()
        .first()
        .map(|k| k.bytes.clone())
        .unwrap_or_default();
    let secret = SecretColumns {
        tenant: fixture::TENANT.to_owned(),
        name: fixture::NAME.to_owned(),
        kind: 1,
        dek_version: 1,
        created_at: 1_767_225_600_000,
        updated_at: 1_767_225_600_000,
        row_version: 1,
        envelope,
    };
    let mut c = Corpus {
        target: "record_decode",
        out,
    };
    let dek_with = |f: fn(&mut DekColumns)| {
        let mut d = dek.clone();
        f(&mut d);
        d.to_fuzz_bytes()
    };
    let secret_with = |f: fn(&mut SecretColumns)| {
        let mut s = secret.clone();
        f(&mut s);
        s.to_fuzz_bytes()
    };
    c.valid("dek_row", dek.to_fuzz_bytes());
    c.valid(
        "dek_row_destroyed",
        dek_with(|d| {
            d.state = 3;
            d.suite = 2;
            d.wrapped.clear();
        }),
    );
    c.valid("secret_row", secret.to_fuzz_bytes());
    c.valid(
        "secret_row_oauth_v4294967295",
        secret_with(|s| {
            s.kind = 2;
            s.dek_version = i64::from(u32::MAX);
            "google/oauth".clone_into(&mut s.name);
        }),
    );
    c.invalid("dek_version_zero", dek_with(|d| d.version = 0));
    c.invalid("dek_state", dek_with(|d| d.state = 9));
    c.invalid("dek_suite", dek_with(|d| d.suite = 7));
    c.invalid("dek_suite_wide", dek_with(|d| d.suite = 257));
    c.invalid(
        "dek_negative_count",
        dek_with(|d| d.encryptions_reserved = -1),
    );
    c.invalid(
        "dek_tenant",
        dek_with(|d| ".hidden".clone_into(&mut d.tenant)),
    );
    c.invalid(
        "dek_master_key_id",
        dek_with(|d| "a b".clone_into(&mut d.master_key_id)),
    );
    c.invalid("secret_kind", secret_with(|s| s.kind = 4));
    c.invalid("secret_name", secret_with(|s| "a*".clone_into(&mut s.name)));
    c.invalid(
        "secret_dek_version_wide",
        secret_with(|s| s.dek_version = i64::from(u32::MAX) + 1),
    );
    c.invalid("secret_row_version", secret_with(|s| s.row_version = -1));
    // No write stores row version 0 (found by the fuzzer once decoding accepted it).
    c.invalid(
        "secret_row_version_zero",
        secret_with(|s| s.row_version = 0),
    );
    c.invalid("dek_row_version_zero", dek_with(|d| d.row_version = 0));
    redis_seeds(&mut c, &secret.envelope);
    c.invalid("unknown_format", vec![0x7f]);
    c.invalid("short", edit(&dek.to_fuzz_bytes(), |b| b.truncate(20)));
}

fn encoded<S: Sealed>(kind: u8, secret: &S) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + secret.encoded_len());
    out.push(kind);
    secret.encode(&mut out);
    out
}

fn plaintext_seeds(out: &mut Vec<Seed>) {
    let ex2 = encoded(2, &fixture::example_token());
    let mut c = Corpus {
        target: "secret_plaintext",
        out,
    };
    c.valid(
        "api_key",
        encoded(1, &ApiKey::new("ghp_example_0123456789")),
    );
    c.valid("api_key_empty", encoded(1, &ApiKey::new("")));
    c.valid("oauth_token", ex2.clone());
    c.valid("oauth_token_minimal", encoded(2, &OAuthToken::new("")));
    c.valid(
        "secret_bytes",
        encoded(3, &SecretBytes::from_slice(&[0x00, 0x01, 0xfe, 0xff])),
    );
    c.invalid("api_key_truncated", vec![1]);
    c.invalid("api_key_unsupported_version", vec![1, 2, b'k']);
    c.invalid("api_key_not_utf8", vec![1, 1, 0xff]);
    c.invalid("oauth_unsupported_version", set(&ex2, 1, 2));
    // The refresh flag follows the version byte and the 4 + 25 bytes of access token.
    c.invalid("oauth_refresh_flag", set(&ex2, 31, 2));
    c.invalid("oauth_truncated", edit(&ex2, |b| b.truncate(b.len() - 1)));
    c.invalid("oauth_trailing_bytes", edit(&ex2, |b| b.push(0)));
    c.invalid(
        "oauth_scope_count",
        encoded(2, &OAuthToken::new("a"))
            .into_iter()
            .take(17)
            .chain([0xff, 0xff])
            .collect(),
    );
    c.invalid("unknown_kind", vec![4, 1]);
}

fn id_seeds(out: &mut Vec<Seed>) {
    let mut c = Corpus { target: "ids", out };
    let text = |selector: u8, s: &str| [&[selector][..], s.as_bytes()].concat();
    c.valid("tenant", text(0, "acme"));
    c.valid("tenant_all_classes", text(0, "Acme-corp_1.eu"));
    c.valid("tenant_longest", text(0, &"a".repeat(128)));
    c.valid("secret_name", text(1, "stripe/live:key@v2"));
    c.valid("master_key_id", text(2, "local-8db647c93e01a236"));
    c.valid(
        "master_key_id_arn",
        text(2, "arn:aws:kms:eu-west-1:1:key/a+b="),
    );
    c.valid("dek_version_one", vec![3, 0, 0, 0, 1]);
    c.valid("dek_version_max", vec![3, 0xff, 0xff, 0xff, 0xff]);
    c.invalid("tenant_empty", text(0, ""));
    c.invalid("tenant_dot", text(0, ".hidden"));
    c.invalid("tenant_space", text(0, "a b"));
    c.invalid("tenant_slash", text(0, "a/b"));
    c.invalid("tenant_non_ascii", text(0, "\u{e9}"));
    c.invalid("tenant_too_long", text(0, &"a".repeat(129)));
    c.invalid("secret_name_glob", text(1, "a?"));
    c.invalid("master_key_id_space", text(2, "a b"));
    c.invalid("dek_version_zero", vec![3, 0, 0, 0, 0]);
    c.invalid("dek_version_short", vec![3, 0, 1]);
    c.invalid("not_utf8", vec![0, 0xff]);
    c.invalid("unknown_type", vec![9, b'a']);
}

#[expect(clippy::too_many_lines, reason = "one table of operation sequences")]
fn model_seeds(out: &mut Vec<Seed>) {
    use Op::{CreateTenant, Delete, DeleteTenant, Get, Put, Reencrypt, Restart, RotateTenantKey};
    let crash = |crash_at: u8, after_write: bool| Restart {
        crash_at,
        after_write,
        xchacha: false,
    };
    let clean = crash(0, false);
    let sequences: Vec<(&str, Vec<Op>)> = vec![
        (
            "basic",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                Get { tenant: 0, name: 0 },
                Put { tenant: 0, name: 1 },
                Put { tenant: 0, name: 0 },
                Get { tenant: 0, name: 0 },
                Delete { tenant: 0, name: 1 },
                Get { tenant: 0, name: 1 },
                Get { tenant: 0, name: 2 },
            ],
        ),
        (
            "rotation",
            vec![
                CreateTenant { tenant: 0 },
                CreateTenant { tenant: 1 },
                Put { tenant: 0, name: 0 },
                Put { tenant: 1, name: 0 },
                RotateTenantKey { tenant: 0 },
                Get { tenant: 0, name: 0 },
                Put { tenant: 0, name: 1 },
                Reencrypt { tenant: Some(0) },
                Get { tenant: 0, name: 0 },
                RotateTenantKey { tenant: 1 },
                Reencrypt { tenant: None },
                Get { tenant: 1, name: 0 },
            ],
        ),
        (
            "delete_tenant",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                Put { tenant: 0, name: 2 },
                DeleteTenant { tenant: 0 },
                Get { tenant: 0, name: 0 },
                Put { tenant: 0, name: 0 },
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                Get { tenant: 0, name: 0 },
            ],
        ),
        (
            "missing_tenant",
            vec![
                Put { tenant: 1, name: 0 },
                Get { tenant: 1, name: 0 },
                RotateTenantKey { tenant: 1 },
                Reencrypt { tenant: Some(1) },
                Delete { tenant: 1, name: 0 },
                DeleteTenant { tenant: 1 },
            ],
        ),
        (
            "roll_over",
            [CreateTenant { tenant: 0 }]
                .into_iter()
                .chain((0..12).map(|i| Put {
                    tenant: 0,
                    name: i % 3,
                }))
                .chain((0..3).map(|i| Get { tenant: 0, name: i }))
                .collect(),
        ),
        (
            "crash_put_lost",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                crash(1, false),
                Put { tenant: 0, name: 0 },
                Get { tenant: 0, name: 0 },
                clean,
                Get { tenant: 0, name: 0 },
            ],
        ),
        (
            "crash_put_applied",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                crash(1, true),
                Put { tenant: 0, name: 0 },
                clean,
                Get { tenant: 0, name: 0 },
            ],
        ),
        (
            "crash_rotation",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                Put { tenant: 0, name: 1 },
                crash(2, true),
                RotateTenantKey { tenant: 0 },
                clean,
                Get { tenant: 0, name: 0 },
                Put { tenant: 0, name: 2 },
                crash(1, false),
                Reencrypt { tenant: Some(0) },
                clean,
                Get { tenant: 0, name: 1 },
                Get { tenant: 0, name: 2 },
            ],
        ),
        (
            "crash_delete_tenant",
            vec![
                CreateTenant { tenant: 0 },
                Put { tenant: 0, name: 0 },
                Put { tenant: 0, name: 1 },
                crash(2, false),
                DeleteTenant { tenant: 0 },
                Get { tenant: 0, name: 1 },
                clean,
                Get { tenant: 0, name: 1 },
                CreateTenant { tenant: 0 },
                Get { tenant: 0, name: 0 },
            ],
        ),
        (
            "crash_create_tenant_xchacha",
            vec![
                Restart {
                    crash_at: 1,
                    after_write: true,
                    xchacha: true,
                },
                CreateTenant { tenant: 1 },
                Restart {
                    crash_at: 0,
                    after_write: false,
                    xchacha: true,
                },
                Put { tenant: 1, name: 2 },
                Get { tenant: 1, name: 2 },
            ],
        ),
    ];
    let mut c = Corpus {
        target: "vault_model",
        out,
    };
    for (label, ops) in sequences {
        c.valid(label, ops.into_iter().flat_map(Op::encode).collect());
    }
    c.invalid("empty", Vec::new());
}

/// Redis replies (`RecordFormat::Redis`): valid records of each shape and one of each way
/// a stored record can be malformed. Named `redis_*`: without feature `redis` the decoder
/// is not built and the corpus test expects nothing of them.
fn redis_seeds(c: &mut Corpus<'_>, envelope: &[u8]) {
    use super::records::{RedisField as F, redis_fuzz_bytes};
    let text = |s: &str| F::Blob(s.as_bytes().to_vec());
    let mut member = fixture::TENANT.as_bytes().to_vec();
    member.push(0);
    let mut secret_member = member.clone();
    secret_member.extend_from_slice(fixture::NAME.as_bytes());
    let mut dek_member = member;
    dek_member.extend_from_slice(b"0000000001");
    let secret = vec![
        F::Blob(secret_member.clone()),
        text("1"),
        text("1"),
        text("1767225600000"),
        text("1767225600000"),
        text("1"),
        F::Blob(envelope.to_vec()),
    ];
    let dek = vec![
        F::Blob(dek_member),
        text("1"),
        text("1"),
        text("local-0123456789abcdef"),
        F::Blob(vec![7; 78]),
        text("1024"),
        text("1767225600000"),
        text("1767225600000"),
        text("3"),
    ];
    let with = |fields: &[F], at: usize, value: F| {
        let mut f = fields.to_vec();
        if let Some(slot) = f.get_mut(at) {
            *slot = value;
        }
        f
    };
    c.valid("redis_secret", redis_fuzz_bytes(0, &secret));
    c.valid(
        "redis_secret_metadata",
        redis_fuzz_bytes(1, secret.get(..6).unwrap_or_default()),
    );
    c.valid("redis_dek", redis_fuzz_bytes(2, &dek));
    c.invalid(
        "redis_secret_oversize",
        redis_fuzz_bytes(0, &with(&secret, 6, F::Int(0))),
    );
    c.invalid(
        "redis_secret_no_row_version",
        redis_fuzz_bytes(0, &with(&secret, 5, F::Nil)),
    );
    c.invalid(
        "redis_secret_kind_text",
        redis_fuzz_bytes(0, &with(&secret, 1, text("abc"))),
    );
    c.invalid(
        "redis_secret_signed_integer",
        redis_fuzz_bytes(0, &with(&secret, 2, text("+1"))),
    );
    c.invalid(
        "redis_member_without_separator",
        redis_fuzz_bytes(0, &with(&secret, 0, text("tenant-name"))),
    );
    c.invalid(
        "redis_dek_short_version",
        redis_fuzz_bytes(2, &with(&dek, 0, F::Blob(b"acme\x001".to_vec()))),
    );
    c.invalid(
        "redis_dek_bad_master_key_id",
        redis_fuzz_bytes(2, &with(&dek, 3, text("a b"))),
    );
}
