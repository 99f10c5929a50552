//! What this target checks: the docs of `credvault::__fuzz::secret_plaintext` (and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = credvault::__fuzz::secret_plaintext(data);
});
