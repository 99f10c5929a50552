//! Secret handles cannot be serialized: credvault has no `serde` dependency, so (by the
//! orphan rule) no `Serialize` impl for `ApiKey`, `OAuthToken` or `SecretBytes` can exist.
//! This test fails if `serde` is ever added to the library's dependencies, so that doing so
//! means revisiting the promise of `src/secret.rs`. The `Display` and `Clone` halves of the
//! promise are compile-fail doctests in `src/secret.rs`.
#![allow(clippy::unwrap_used, reason = "test code: failing loudly is the point")]

#[test]
fn library_has_no_serde_dependency_so_secret_handles_cannot_implement_serialize() {
    let manifest = include_str!("../Cargo.toml");
    let mut section = "";
    let mut checked = 0;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        // Normal and target-specific dependencies of the library; dev-dependencies are not
        // linked into it.
        let library_deps = section == "[dependencies]"
            || (section.starts_with("[target.") && section.ends_with(".dependencies]"));
        if !library_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        checked += 1;
        let name = line.split(['=', ' ', '.']).next().unwrap();
        assert!(
            !name.starts_with("serde"),
            "the library depends on {name}: decide whether secret handles may be serialized"
        );
        assert!(
            !line.contains("\"serde\""),
            "a dependency enables its serde feature: {line}"
        );
    }
    assert!(checked > 0, "no [dependencies] found in Cargo.toml");
}
