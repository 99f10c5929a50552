//! What this target checks: the docs of `credvault::__fuzz::envelope_parse` (and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = credvault::__fuzz::envelope_parse(data);
});
