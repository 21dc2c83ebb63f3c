//! Fuzz target: see `ringway_http::fuzzing::request_head` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway_http::fuzzing::request_head(data));
