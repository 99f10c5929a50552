//! The worked examples of `docs/format.md`, opened through the public API only.
//!
//! The master key, wrapped data keys and envelopes are read out of the document's `vectors`
//! blocks and stored as rows in a `MemoryStore`, the way another implementation (or a
//! restored backup) would have written them; a `Vault` holding only the documented master
//! key must then return the documented plaintexts, and must refuse the same bytes under any
//! other tenant or name.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use credvault::keys::{DataKey, WrapContext, WrappedDek};
use credvault::storage::{
    DekRecord, DekState, PutMode, SecretMetadata, SecretRecord, Store, Timestamp,
};
use credvault::{
    ApiKey, DekVersion, ErrorKind, ExposeSecret, LocalMasterKey, MasterKeyId, MasterKeyProvider,
    MasterKeyRing, MemoryStore, OAuthToken, RowVersion, SecretKind, SecretName, Suite, TenantId,
    Vault,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const FORMAT_MD: &str = include_str!("../docs/format.md");

/// The `name = value` lines of the document's ```` ```vectors ```` blocks (section 9).
struct Vectors(BTreeMap<String, Vec<u8>>);

impl Vectors {
    fn load() -> TestResult<Self> {
        let mut values = BTreeMap::new();
        let mut in_block = false;
        for line in FORMAT_MD.lines().map(str::trim) {
            if !in_block {
                in_block = line == "```vectors";
                continue;
            }
            if line == "```" {
                in_block = false;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or("a vector line without `=`")?;
            let value = value.trim();
            let bytes = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(text) => text.as_bytes().to_vec(),
                None => hex_decode(value).ok_or_else(|| format!("bad hex in {line}"))?,
            };
            if values.insert(name.trim().to_owned(), bytes).is_some() {
                return Err(format!("duplicate vector in {line}").into());
            }
        }
        Ok(Self(values))
    }

    fn bytes(&self, name: &str) -> TestResult<Vec<u8>> {
        Ok(self
            .0
            .get(name)
            .ok_or_else(|| format!("docs/format.md has no vector {name}"))?
            .clone())
    }

    fn text(&self, name: &str) -> TestResult<String> {
        Ok(String::from_utf8(self.bytes(name)?)?)
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// One documented example: its data key's row and its secret's row.
struct Example {
    version: DekVersion,
    suite: Suite,
    wrapped: Vec<u8>,
    name: SecretName,
    kind: SecretKind,
    envelope: Vec<u8>,
}

impl Example {
    fn load(v: &Vectors, ex: &str) -> TestResult<Self> {
        let version = <[u8; 4]>::try_from(v.bytes(&format!("{ex}.dek_version"))?.as_slice())?;
        let [suite] = <[u8; 1]>::try_from(v.bytes(&format!("{ex}.suite"))?.as_slice())?;
        let [kind] = <[u8; 1]>::try_from(v.bytes(&format!("{ex}.kind"))?.as_slice())?;
        Ok(Self {
            version: DekVersion::new(u32::from_be_bytes(version)).ok_or("DEK version 0")?,
            suite: Suite::from_u8(suite).ok_or("unknown suite")?,
            wrapped: v.bytes(&format!("{ex}.wrapped_dek"))?,
            name: SecretName::new(v.text(&format!("{ex}.secret_name"))?)?,
            kind: SecretKind::from_u8(kind).ok_or("unknown kind")?,
            envelope: v.bytes(&format!("{ex}.envelope"))?,
        })
    }
}

/// The documented master key, tenant and master key id.
struct Fixture {
    v: Vectors,
    tenant: TenantId,
    master_key_id: MasterKeyId,
}

impl Fixture {
    fn load() -> TestResult<Self> {
        let v = Vectors::load()?;
        let tenant = TenantId::new(v.text("tenant")?)?;
        let master_key_id = MasterKeyId::new(v.text("master_key_id")?)?;
        Ok(Self {
            v,
            tenant,
            master_key_id,
        })
    }

    fn master(&self) -> TestResult<LocalMasterKey> {
        Ok(LocalMasterKey::from_bytes(&self.v.bytes("master_key")?)?)
    }

    /// A vault over `store` that holds only the documented master key.
    fn vault(&self, store: MemoryStore) -> TestResult<Vault> {
        Ok(Vault::builder(store, MasterKeyRing::new(self.master()?)).build()?)
    }

    fn dek_row(&self, tenant: &TenantId, ex: &Example, wrapped: Vec<u8>) -> DekRecord {
        DekRecord {
            tenant: tenant.clone(),
            version: ex.version,
            state: DekState::Active,
            suite: ex.suite,
            wrapped: WrappedDek::new(self.master_key_id.clone(), wrapped),
            encryptions_reserved: 0,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            row_version: RowVersion(1),
        }
    }
}

fn secret_row(tenant: &TenantId, name: &SecretName, ex: &Example) -> SecretRecord {
    SecretRecord {
        metadata: SecretMetadata {
            tenant: tenant.clone(),
            name: name.clone(),
            kind: ex.kind,
            dek_version: ex.version,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            row_version: RowVersion(1),
        },
        envelope: ex.envelope.clone(),
    }
}

/// The documented rows of `ex`, stored under the tenant and name the document gives.
async fn store_example(store: &MemoryStore, f: &Fixture, ex: &Example) -> TestResult {
    store
        .put_dek(
            f.dek_row(&f.tenant, ex, ex.wrapped.clone()),
            PutMode::Create,
        )
        .await?;
    store
        .put_secret(
            secret_row(&f.tenant, &ex.name, ex),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await?;
    Ok(())
}

fn error_kind<T>(result: Result<T, credvault::Error>) -> Option<ErrorKind> {
    result.err().map(|e| e.kind())
}

#[tokio::test]
async fn documented_api_key_envelope_opens_through_the_vault() -> TestResult {
    let f = Fixture::load()?;
    let ex = Example::load(&f.v, "ex1")?;
    assert_eq!(
        f.master()?.id(),
        &f.master_key_id,
        "the documented id is derived"
    );
    let store = MemoryStore::new();
    store_example(&store, &f, &ex).await?;
    let vault = f.vault(store)?;

    let key: ApiKey = vault.get(&f.tenant, &ex.name).await?;
    assert_eq!(key.expose_secret(), f.v.text("ex1.api_key")?);
    Ok(())
}

#[tokio::test]
async fn documented_oauth_token_envelope_opens_through_the_vault() -> TestResult {
    let f = Fixture::load()?;
    let ex = Example::load(&f.v, "ex2")?;
    let store = MemoryStore::new();
    store_example(&store, &f, &ex).await?;
    let vault = f.vault(store)?;

    let token: OAuthToken = vault.get(&f.tenant, &ex.name).await?;
    assert_eq!(
        token.access_token().expose_secret(),
        f.v.text("ex2.access_token")?
    );
    let refresh = token.refresh_token().ok_or("no refresh token")?;
    assert_eq!(refresh.expose_secret(), f.v.text("ex2.refresh_token")?);
    assert_eq!(token.token_type(), f.v.text("ex2.token_type")?);
    let expires = i64::from_be_bytes(<[u8; 8]>::try_from(
        f.v.bytes("ex2.expires_at")?.as_slice(),
    )?);
    assert_eq!(
        token.expires_at(),
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(expires)?))
    );
    assert_eq!(
        token.scopes(),
        [f.v.text("ex2.scope.0")?, f.v.text("ex2.scope.1")?]
    );
    Ok(())
}

#[tokio::test]
async fn both_documented_examples_coexist_under_one_tenant() -> TestResult {
    let f = Fixture::load()?;
    let store = MemoryStore::new();
    let (ex1, ex2) = (Example::load(&f.v, "ex1")?, Example::load(&f.v, "ex2")?);
    store_example(&store, &f, &ex1).await?;
    store_example(&store, &f, &ex2).await?;
    let vault = f.vault(store)?;

    let key: ApiKey = vault.get(&f.tenant, &ex1.name).await?;
    assert_eq!(key.expose_secret(), f.v.text("ex1.api_key")?);
    let token: OAuthToken = vault.get(&f.tenant, &ex2.name).await?;
    assert_eq!(
        token.access_token().expose_secret(),
        f.v.text("ex2.access_token")?
    );
    assert_eq!(
        error_kind(vault.get::<OAuthToken>(&f.tenant, &ex1.name).await),
        Some(ErrorKind::KindMismatch),
        "the envelope's kind byte decides, before any decryption"
    );
    Ok(())
}

#[tokio::test]
async fn documented_envelope_under_another_tenant_fails_with_decryption() -> TestResult {
    let f = Fixture::load()?;
    let ex = Example::load(&f.v, "ex1")?;
    let other = TenantId::new("acme2")?;
    // The other tenant legitimately holds the same data key, wrapped for itself, so the
    // only thing wrong is the tenant bound into the envelope's associated data.
    let master = f.master()?;
    let dek = DataKey::from_slice(&f.v.bytes("ex1.dek")?)?;
    let context = WrapContext {
        tenant: &other,
        dek_version: ex.version,
        suite: ex.suite,
        master_key_id: master.id(),
    };
    let rewrapped = master.wrap(&dek, &context).await?;
    let store = MemoryStore::new();
    store
        .put_dek(
            f.dek_row(&other, &ex, rewrapped.as_bytes().to_vec()),
            PutMode::Create,
        )
        .await?;
    store
        .put_secret(
            secret_row(&other, &ex.name, &ex),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await?;
    let vault = f.vault(store)?;

    assert_eq!(
        error_kind(vault.get::<ApiKey>(&other, &ex.name).await),
        Some(ErrorKind::Decryption)
    );
    // Control: the rewrapped key itself works for the other tenant.
    let control = SecretName::new("control")?;
    vault
        .put(&other, &control, &ApiKey::new("sealed for acme2"))
        .await?;
    let key: ApiKey = vault.get(&other, &control).await?;
    assert_eq!(key.expose_secret(), "sealed for acme2");
    Ok(())
}

#[tokio::test]
async fn documented_envelope_under_another_name_fails_with_decryption() -> TestResult {
    let f = Fixture::load()?;
    let ex = Example::load(&f.v, "ex1")?;
    let other = SecretName::new("gitlab")?;
    let store = MemoryStore::new();
    store_example(&store, &f, &ex).await?;
    store
        .put_secret(
            secret_row(&f.tenant, &other, &ex),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await?;
    let vault = f.vault(store)?;

    assert_eq!(
        error_kind(vault.get::<ApiKey>(&f.tenant, &other).await),
        Some(ErrorKind::Decryption)
    );
    let key: ApiKey = vault.get(&f.tenant, &ex.name).await?;
    assert_eq!(
        key.expose_secret(),
        f.v.text("ex1.api_key")?,
        "the original row still opens"
    );
    Ok(())
}

#[tokio::test]
async fn documented_wrapped_dek_copied_to_another_tenant_fails_with_decryption() -> TestResult {
    let f = Fixture::load()?;
    let ex = Example::load(&f.v, "ex1")?;
    let other = TenantId::new("acme2")?;
    let store = MemoryStore::new();
    store
        .put_dek(f.dek_row(&other, &ex, ex.wrapped.clone()), PutMode::Create)
        .await?;
    store
        .put_secret(
            secret_row(&other, &ex.name, &ex),
            PutMode::Create,
            credvault::storage::KeyCondition::Unchecked,
        )
        .await?;
    let vault = f.vault(store)?;

    assert_eq!(
        error_kind(vault.get::<ApiKey>(&other, &ex.name).await),
        Some(ErrorKind::Decryption)
    );
    Ok(())
}
