//! Fuzz target: any text given as a configuration file is accepted or
//! refused with errors that each name the file, never a panic. Parsed
//! offline: no name is looked up and no file read.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = ringway::config::parse_offline(Path::new("fuzz.toml"), text) {
        assert!(!errors.0.is_empty(), "a refusal says why");
        for e in &errors.0 {
            assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
            assert!(!e.message.is_empty());
        }
    }
});
