//! Every key the configuration accepts appears in `examples/`, with its
//! default and a comment: the examples are the reference a new user reads
//! (the README says so). The keys are read from the configuration's serde
//! structs in `cli/src/config/` (every `pub(crate)` field of a struct that
//! derives `Deserialize`, under its `rename` if it has one), so a key added
//! there without an example fails here.

use std::path::Path;

/// Every accepted key, as (struct, key).
fn accepted_keys() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/config") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read");
        let mut derives_deserialize = false;
        let mut in_struct: Option<String> = None;
        let mut rename: Option<String> = None;
        for line in source.lines() {
            let line = line.trim();
            if line.starts_with("#[derive(") {
                derives_deserialize = line.contains("Deserialize");
                continue;
            }
            if let Some(name) = line.strip_prefix("pub(crate) struct ") {
                if derives_deserialize && line.ends_with('{') {
                    in_struct = name.split([' ', '{', '<']).next().map(str::to_owned);
                }
                derives_deserialize = false;
                continue;
            }
            let Some(structure) = &in_struct else { continue };
            if line == "}" {
                in_struct = None;
                continue;
            }
            if line.starts_with("#[serde(") {
                rename = line
                    .split("rename = \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned);
                continue;
            }
            if let Some(field) = line.strip_prefix("pub(crate) ") {
                let name = field.split(':').next().unwrap_or_default().to_owned();
                keys.push((structure.clone(), rename.take().unwrap_or(name)));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The text of every example configuration.
fn examples() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            text.push_str(&std::fs::read_to_string(&path).expect("read"));
            text.push('\n');
        }
    }
    text
}

/// Whether `key` is set somewhere in `text`, commented out or not:
/// `key = ...`, `{ key = ... }`, or a `[table.key]` / `[[table.key]]`
/// header.
fn mentions(text: &str, key: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(key).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = &text[at + key.len()..];
        let word_start = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
        let assigned = after.trim_start_matches(' ').starts_with('=');
        let header = before.is_some_and(|b| b == b'.' || b == b'[') && after.starts_with(']');
        word_start && (assigned || header)
    })
}

#[test]
fn every_accepted_key_appears_in_the_examples() {
    let keys = accepted_keys();
    assert!(
        keys.len() > 150,
        "the scan found the configuration's keys: {}",
        keys.len()
    );
    let text = examples();
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, key)| !mentions(&text, key))
        .map(|(structure, key)| format!("{key} (in {structure})"))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the configuration accepts that no file in examples/ shows (add each, with its default and a comment):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_reads_renames_and_mentions_tell_keys_from_words() {
    let keys = accepted_keys();
    assert!(
        keys.contains(&("ListenerSection".to_owned(), "route".to_owned())),
        "rename of routes"
    );
    assert!(keys.contains(&("RuntimeSection".to_owned(), "workers".to_owned())));
    assert!(mentions("# token = \"x\"", "token"));
    assert!(mentions("[[acl.corp.rule]]", "rule"));
    assert!(!mentions("tokens = 1", "token"));
    assert!(!mentions("the token is", "token"));
}
