//! Fuzz target: see `ringway_http::fuzzing::canonical_path` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway_http::fuzzing::canonical_path(data));
