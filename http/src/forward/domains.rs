//! Sets of domain names for ACLs, sized for blocklists of millions of names.
//!
//! Names live back to back in one byte buffer; a `hashbrown::HashTable`
//! holds 8-byte entries (offset, length, kind) pointing into it, so a
//! million names cost their bytes plus about 20 bytes each. An entry is
//! either exact (`blocked.test`: that name only) or a subtree
//! (`.ads.test`: that name and every name below it). A lookup hashes the
//! host and then each of its parent domains (one per label), with no
//! allocation: a handful of hash probes, well under a microsecond.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// What an entry covers.
const EXACT: u8 = 1;
const SUBTREE: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u32,
    len: u8,
    kinds: u8,
}

/// A set of exact names and domain subtrees.
#[derive(Debug, Clone, Default)]
pub struct DomainSet {
    names: Vec<u8>,
    table: HashTable<Entry>,
    hasher: RandomState,
}

/// Why a name could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDomain(pub String);

impl DomainSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Adds `pattern`: `name` (exact) or `.name` (the name and its
    /// subdomains). Case and one trailing dot are ignored; non-ASCII names
    /// are converted with IDNA.
    pub fn insert(&mut self, pattern: &str) -> Result<(), BadDomain> {
        let (kind, name) = match pattern.strip_prefix('.') {
            Some(rest) => (SUBTREE, rest),
            None => (EXACT, pattern),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let ascii;
        let name = if name.is_ascii() {
            name
        } else {
            ascii = idna::domain_to_ascii_strict(name).map_err(|_| BadDomain(pattern.to_owned()))?;
            &ascii
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(BadDomain(pattern.to_owned()));
        }
        let mut lower = [0u8; 253];
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        let hash = self.hasher.hash_one(&*lower);
        let names = &self.names;
        if let Some(entry) = self.table.find_mut(hash, |e| entry_bytes(names, e) == &*lower) {
            entry.kinds |= kind;
            return Ok(());
        }
        let offset = u32::try_from(self.names.len()).map_err(|_| BadDomain(pattern.to_owned()))?;
        self.names.extend_from_slice(lower);
        let entry = Entry {
            offset,
            len: lower.len() as u8,
            kinds: kind,
        };
        let (names, hasher) = (&self.names, &self.hasher);
        self.table
            .insert_unique(hash, entry, |e| hasher.hash_one(entry_bytes(names, e)));
        Ok(())
    }

    /// Adds every name of a list file's text: one pattern per line, `#`
    /// comments, blank lines, and hosts-file lines (`0.0.0.0 name...`) whose
    /// names are taken. Returns the 1-based line numbers and text of lines
    /// that were not valid names.
    pub fn extend_from_list(&mut self, text: &str) -> Vec<(usize, String)> {
        // Reading from memory cannot fail.
        self.extend_from_reader(text.as_bytes()).unwrap_or_default()
    }

    /// Like [`DomainSet::extend_from_list`], reading line by line (a large
    /// list is never held in memory whole).
    pub fn extend_from_reader(
        &mut self,
        reader: impl std::io::BufRead,
    ) -> std::io::Result<Vec<(usize, String)>> {
        let mut bad = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            let is_ip = first.parse::<std::net::IpAddr>().is_ok();
            if is_ip && words.clone().next().is_none() {
                // An address alone: not a name, and not a hosts-file line.
                bad.push((i + 1, line.to_owned()));
                continue;
            }
            if !is_ip {
                // A plain list: one name per line.
                if words.next().is_some() || self.insert(first).is_err() {
                    bad.push((i + 1, line.to_owned()));
                }
                continue;
            }
            for name in words {
                // Hosts files list "localhost" and friends for the machine itself.
                if matches!(
                    name,
                    "localhost" | "localhost.localdomain" | "local" | "broadcasthost"
                ) {
                    continue;
                }
                if self.insert(name).is_err() {
                    bad.push((i + 1, name.to_owned()));
                }
            }
        }
        self.names.shrink_to_fit();
        Ok(bad)
    }

    /// Whether `host` (lowercase, no trailing dot) is in the set: as an
    /// exact name, or at or below a subtree.
    pub fn matches(&self, host: &str) -> bool {
        let mut suffix = host.as_bytes();
        let mut is_host = true;
        loop {
            let hash = self.hasher.hash_one(suffix);
            if let Some(e) = self.table.find(hash, |e| entry_bytes(&self.names, e) == suffix) {
                if e.kinds & SUBTREE != 0 || (is_host && e.kinds & EXACT != 0) {
                    return true;
                }
            }
            match memchr::memchr(b'.', suffix) {
                Some(dot) => {
                    suffix = &suffix[dot + 1..];
                    is_host = false;
                }
                None => return false,
            }
        }
    }

    /// Bytes held: names and table.
    pub fn memory_bytes(&self) -> usize {
        self.names.capacity() + self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
    }
}

fn entry_bytes<'a>(names: &'a [u8], e: &Entry) -> &'a [u8] {
    let start = e.offset as usize;
    &names[start..start + e.len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_subtree_entries() {
        let mut set = DomainSet::new();
        set.insert("blocked.test").unwrap();
        set.insert(".ads.test").unwrap();
        set.insert("Mixed.Case.TEST.").unwrap();
        assert!(set.matches("blocked.test"));
        assert!(!set.matches("www.blocked.test"), "exact only");
        assert!(set.matches("ads.test"));
        assert!(set.matches("x.y.ads.test"));
        assert!(!set.matches("notads.test"));
        assert!(!set.matches("test"));
        assert!(set.matches("mixed.case.test"));
        set.insert("blocked.test").unwrap();
        set.insert(".blocked.test").unwrap();
        assert_eq!(set.len(), 3, "duplicates merge");
        assert!(set.matches("www.blocked.test"), "now a subtree too");
    }

    #[test]
    fn idna_and_invalid_names() {
        let mut set = DomainSet::new();
        set.insert("bücher.example").unwrap();
        assert!(set.matches("xn--bcher-kva.example"));
        for bad in ["", ".", "a..b", "a b", "*.x", "a/b"] {
            assert!(set.insert(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_files_with_comments_and_hosts_lines() {
        let mut set = DomainSet::new();
        let bad = set.extend_from_list(
            "# a blocklist\n\nblocked.test\n.ads.test # trailing comment\n0.0.0.0 tracker.test other.test\n127.0.0.1 localhost\nnot valid!\n",
        );
        assert_eq!(bad, vec![(7, "not valid!".to_owned())]);
        assert_eq!(set.len(), 4);
        assert!(set.matches("tracker.test"));
        assert!(set.matches("other.test"));
        assert!(!set.matches("localhost"));
    }
}
