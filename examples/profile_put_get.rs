//! A profiling harness for the hot path: `N` rounds of `vault.put` + `vault.get::<SecretBytes>`
//! of one secret over `MemoryStore` with a warm data-key cache, inside one `block_on` (as
//! criterion's `to_async` does). Not a benchmark: run it under callgrind and divide.
//!
//! ```sh
//! cargo build --release --example profile_put_get
//! valgrind --tool=callgrind target/release/examples/profile_put_get 10000 32
//! ```
//!
//! Arguments: rounds (default 10,000) and secret size in bytes (default 32).

#![expect(
    clippy::expect_used,
    reason = "a harness whose setup fails has nothing to profile"
)]

use std::hint::black_box;

use credvault::{
    LocalMasterKey, MasterKeyRing, MemoryStore, SecretBytes, SecretName, TenantId, Vault,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(10_000, |a| a.parse().expect("rounds"));
    let size: usize = args.next().map_or(32, |a| a.parse().expect("size"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let vault = Vault::new(
        MemoryStore::new(),
        MasterKeyRing::new(LocalMasterKey::generate().expect("master key")),
    );
    let tenant = TenantId::new("tenant-0001").expect("tenant id");
    let name = SecretName::new("stripe/live").expect("secret name");
    let secret = SecretBytes::new(vec![0x5a; size]);
    rt.block_on(async {
        vault.create_tenant(&tenant).await.expect("create tenant");
        for _ in 0..rounds {
            vault
                .put(&tenant, &name, black_box(&secret))
                .await
                .expect("put");
            let back: SecretBytes = vault.get(&tenant, &name).await.expect("get");
            black_box(back);
        }
    });
}
