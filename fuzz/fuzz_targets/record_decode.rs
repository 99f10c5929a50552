//! What this target checks: the docs of `credvault::__fuzz::record_decode` (and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = credvault::__fuzz::record_decode(data);
});
