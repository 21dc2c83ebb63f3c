//! The store: stored responses, shared by every worker of the process,
//! each key's variants (one per `Vary` secondary key) under one entry of
//! an S3-FIFO ([`super::s3fifo`]) bounded in bytes (with a disk tier, its
//! files' bytes, and what is held in memory for them on its own budget).
//!
//! The entries are split over shards, each behind its own mutex, held for
//! a hash lookup and a reference count's increment: a hit copies no body
//! (the body is shared [`Bytes`]) and no worker waits on another's I/O.

use std::{
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::Bytes;

use super::{control::ResponseDirectives, freshness::AgeInputs, s3fifo::S3Fifo};
use crate::head::{RequestHead, ResponseHead};

/// A cache's settings, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Its name in the configuration.
    pub name: String,
    /// Bytes held in memory: heads, bodies and keys; with a disk tier,
    /// the heads and keys of its files (the bodies are on disk).
    pub memory: u64,
    /// Responses with longer bodies pass through unstored.
    pub max_object: u64,
    /// Store responses that set cookies (off: one client's session would
    /// go to others).
    pub store_set_cookie: bool,
    /// Add `X-Cache: HIT|MISS|REVALIDATED|STALE` to responses.
    pub x_cache: bool,
    /// How long a request waits for another one fetching the same key
    /// before it goes to the upstream itself.
    pub lock_timeout: std::time::Duration,
    /// The disk tier: bodies in files under its directory, bounded by its
    /// size (the kernel's page cache keeps the used ones in memory), read
    /// back at start. Without it, bodies are in memory, bounded by
    /// `memory`.
    pub disk: Option<super::disk::DiskSettings>,
}

impl CacheSettings {
    /// A cache named `name` of `memory` bytes, objects up to `max_object`.
    pub fn new(name: &str, memory: u64, max_object: u64) -> Self {
        Self {
            name: name.to_owned(),
            memory,
            max_object,
            store_set_cookie: false,
            x_cache: false,
            lock_timeout: std::time::Duration::from_secs(5),
            disk: None,
        }
    }
}

/// One stored response.
#[derive(Debug)]
pub struct Object {
    /// The head as stored (the upstream's, updated by revalidations),
    /// parsed once.
    pub(crate) head: Arc<ResponseHead>,
    /// The whole body.
    pub(crate) body: crate::held::HeldBody,
    /// The head's status.
    pub(crate) status: u16,
    /// The secondary key: each field `Vary` names (lowercase), with the
    /// value the request that brought the response had, if any.
    pub(crate) vary: SecondaryKey,
    /// Its `Cache-Control`.
    pub(crate) directives: ResponseDirectives,
    /// Its freshness lifetime, in seconds.
    pub(crate) lifetime: u64,
    /// What its current age is computed from.
    pub(crate) age: AgeInputs,
    /// Its `ETag`, as sent.
    pub(crate) etag: Option<Bytes>,
    /// Its `Last-Modified`, as sent and as a time.
    pub(crate) last_modified: Option<(Bytes, Option<i64>)>,
}

impl Object {
    /// Whether it was stored for a request with the same values of the
    /// fields `Vary` names as `req` (RFC 9111 section 4.1; values compared
    /// with surrounding whitespace trimmed).
    pub(crate) fn matches(&self, req: &RequestHead) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| field_value(req, name).as_deref() == value.as_deref())
    }

    /// Bytes it is counted for: head, body and bookkeeping; a disk
    /// tier's file in whole blocks, as the disk holds it.
    fn size(&self, key: &[u8]) -> u64 {
        let bytes = self.index_bytes(key) + self.body.len();
        match &self.body {
            crate::held::HeldBody::File(file) if file.path().is_some() => bytes.div_ceil(4096) * 4096,
            _ => bytes,
        }
    }

    /// Bytes of it held in memory: all of it, but for a disk tier's body.
    fn resident(&self, key: &[u8]) -> u64 {
        match &self.body {
            crate::held::HeldBody::File(file) if file.path().is_some() => self.index_bytes(key),
            body => self.index_bytes(key) + body.len(),
        }
    }

    /// Its head, key and secondary key, and bookkeeping.
    fn index_bytes(&self, key: &[u8]) -> u64 {
        let vary: usize = self
            .vary
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, |v| v.len()))
            .sum();
        (self.head.raw().len() + key.len() + vary + 256) as u64
    }
}

/// The value of the request's field `name` for a secondary key: all its
/// lines, joined by `, `, each trimmed; `None` when it has none.
pub(crate) fn field_value(req: &RequestHead, name: &str) -> Option<Vec<u8>> {
    let mut lines = req
        .headers()
        .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.trim_ascii());
    let mut value = lines.next()?.to_vec();
    for line in lines {
        value.extend_from_slice(b", ");
        value.extend_from_slice(line);
    }
    Some(value)
}

/// The most variants kept under one key: past it, the oldest goes (a
/// `Vary: User-Agent` would otherwise fill a shard with one URL).
const MAX_VARIANTS: usize = 32;

/// The variants stored under one key.
pub(crate) type Variants = Arc<[Arc<Object>]>;

/// Each field `Vary` names (lowercase), with the value the request that
/// brought a response had, if any.
pub(crate) type SecondaryKey = Box<[(Box<str>, Option<Box<[u8]>>)]>;

/// One shard of the entries.
type Shard = Mutex<S3Fifo<Box<[u8]>, Variants>>;

/// The memory tier of one cache, shared by the workers.
pub struct Store {
    settings: CacheSettings,
    disk: Option<super::disk::Disk>,
    shards: Box<[Shard]>,
    hasher: std::hash::RandomState,
    stored: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("settings", &self.settings)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// What a store holds, for metrics and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys held.
    pub keys: u64,
    /// Bytes held (a disk tier's files in whole blocks).
    pub bytes: u64,
    /// Bytes of them held in memory (with a disk tier, its heads and
    /// keys; without one, all).
    pub resident: u64,
    /// Keys evicted to make room.
    pub evictions: u64,
    /// Responses stored (or updated by a revalidation).
    pub stored: u64,
}

impl Store {
    /// An empty store with `settings`: up to 16 shards, each large enough
    /// for four of the largest objects. With a disk tier, its size bounds
    /// the files and `memory` what is held in memory for them (heads,
    /// keys).
    pub fn new(settings: CacheSettings) -> Self {
        let bound = settings.disk.as_ref().map_or(settings.memory, |d| d.size);
        let per_shard = settings.max_object.saturating_mul(4).max(1 << 20);
        let shards = (bound / per_shard).clamp(1, 16);
        let each = bound / shards;
        let resident_each = match settings.disk {
            Some(_) => settings.memory / shards,
            None => u64::MAX,
        };
        Self {
            disk: settings.disk.as_ref().map(|d| super::disk::Disk::new(&d.path)),
            shards: (0..shards)
                .map(|_| Mutex::new(S3Fifo::with_resident_bound(each, resident_each)))
                .collect(),
            settings,
            hasher: std::hash::RandomState::new(),
            stored: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Its disk tier's directory, if it has one.
    pub(crate) fn disk(&self) -> Option<&super::disk::Disk> {
        self.disk.as_ref()
    }

    /// Creates the disk tier's directory if needed and takes in the
    /// responses stored there before; returns how many. Without a disk
    /// tier, does nothing.
    pub fn open_disk(&self) -> std::io::Result<usize> {
        let (Some(disk), Some(settings)) = (&self.disk, &self.settings.disk) else {
            return Ok(0);
        };
        std::fs::create_dir_all(&settings.path)?;
        let mut count = 0;
        for loaded in disk.load()? {
            let path = loaded.path.clone();
            let key = loaded.meta.key.clone();
            match super::layer::object_from_disk(loaded) {
                // One that no longer fits has its file removed.
                Some(object) => count += usize::from(self.insert(&key, Arc::new(object))),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(count)
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, S3Fifo<Box<[u8]>, Variants>> {
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        // A panic while a shard was held leaves its map whole (each step
        // is one map operation), so the poison is cleared.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The variants stored under `key`, counting an access.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Variants> {
        self.shard(key).get(key).cloned()
    }

    /// Stores `object` under `key`, in place of a variant with the same
    /// secondary key (and of every variant, when `Vary` names other
    /// fields now). Returns false when it is too large to keep.
    pub(crate) fn insert(&self, key: &[u8], object: Arc<Object>) -> bool {
        let mut shard = self.shard(key);
        let kept: Vec<Arc<Object>> = match shard.peek(key) {
            Some(variants) => variants
                .iter()
                .filter(|v| {
                    v.vary.len() == object.vary.len()
                        && v.vary.iter().zip(object.vary.iter()).all(|(a, b)| a.0 == b.0)
                        && v.vary != object.vary
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let skip = (kept.len() + 1).saturating_sub(MAX_VARIANTS);
        let kept = &kept[skip..];
        let size = kept.iter().map(|v| v.size(key)).sum::<u64>() + object.size(key);
        let resident = kept.iter().map(|v| v.resident(key)).sum::<u64>() + object.resident(key);
        let variants: Variants = kept.iter().cloned().chain([object]).collect();
        let fits = shard.insert_resident(key.into(), variants.clone(), size, resident);
        let gone: Vec<Variants> = shard.drain_evicted().collect();
        drop(shard);
        if fits {
            self.stored.fetch_add(1, Ordering::Relaxed);
        } else {
            remove_files(&variants, &[]);
        }
        for old in &gone {
            remove_files(old, &variants);
        }
        fits
    }

    /// Drops what is stored under `key` (an invalidation, a purge);
    /// returns whether anything was.
    pub fn remove(&self, key: &[u8]) -> bool {
        let removed = self.shard(key).remove(key);
        if let Some(variants) = &removed {
            remove_files(variants, &[]);
        }
        removed.is_some()
    }

    /// What it holds now.
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats {
            stored: self.stored.load(Ordering::Relaxed),
            ..StoreStats::default()
        };
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            stats.keys += shard.len() as u64;
            stats.bytes += shard.bytes();
            stats.resident += shard.resident_bytes();
            stats.evictions += shard.evictions();
        }
        stats
    }
}

/// Removes the disk files of `variants` that are not among `kept` (a
/// response being served from one keeps its open file to the end).
fn remove_files(variants: &[Arc<Object>], kept: &[Arc<Object>]) {
    for object in variants {
        // Kept, or its body is a kept one's (a 304 refreshed its head).
        if kept
            .iter()
            .any(|k| Arc::ptr_eq(k, object) || k.body.same(&object.body))
        {
            continue;
        }
        if let crate::held::HeldBody::File(file) = &object.body {
            if let Some(path) = file.path() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The key of a request's response: `s` (https) or `h` (http), the host
/// (lowercase, without the scheme's default port), NUL, and the target
/// the upstream is asked for, in origin form.
pub fn key_into(out: &mut Vec<u8>, https: bool, host: &[u8], target: &[u8]) {
    out.clear();
    let default_port: &[u8] = if https { b":443" } else { b":80" };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    out.push(if https { b's' } else { b'h' });
    out.extend(host.iter().map(u8::to_ascii_lowercase));
    out.push(0);
    out.extend_from_slice(target);
}

/// The host part of a key made by [`key_into`], and whether it is https.
pub(crate) fn key_host(key: &[u8]) -> (bool, &[u8]) {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    (key.first() == Some(&b's'), key.get(1..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(body: &str, vary: &[(&str, Option<&str>)]) -> Arc<Object> {
        let vary = vary
            .iter()
            .map(|(n, v)| ((*n).into(), v.map(|v| v.as_bytes().into())))
            .collect();
        stored(Bytes::copy_from_slice(body.as_bytes()).into(), vary)
    }

    /// A stored response with `body`.
    fn with_body(body: &crate::held::HeldBody) -> Arc<Object> {
        stored(body.clone(), Box::new([]))
    }

    fn stored(body: crate::held::HeldBody, vary: SecondaryKey) -> Arc<Object> {
        let mut head = ResponseHead::new();
        head.parse_stored(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            &Default::default(),
        )
        .expect("a head");
        Arc::new(Object {
            head: Arc::new(head),
            body,
            status: 200,
            vary,
            directives: ResponseDirectives::default(),
            lifetime: 60,
            age: AgeInputs::default(),
            etag: None,
            last_modified: None,
        })
    }

    #[test]
    fn variants_replace_their_own_secondary_key_only() {
        let store = Store::new(CacheSettings::new("t", 1 << 20, 1 << 16));
        store.insert(b"k", object("gzip", &[("accept-encoding", Some("gzip"))]));
        store.insert(b"k", object("plain", &[("accept-encoding", None)]));
        store.insert(b"k", object("gzip2", &[("accept-encoding", Some("gzip"))]));
        let variants = store.get(b"k").expect("stored");
        let bodies: Vec<_> = variants.iter().map(|v| v.body.len()).collect();
        assert_eq!(bodies, vec![5, 5], "plain, then gzip2");
        assert!(variants[1].vary[0].1.as_deref() == Some(&b"gzip"[..]));
        // Vary naming other fields now: the old variants go.
        store.insert(b"k", object("lang", &[("accept-language", Some("en"))]));
        assert_eq!(store.get(b"k").expect("stored").len(), 1);
        assert!(store.remove(b"k"));
        assert!(store.get(b"k").is_none());
    }

    #[test]
    fn keys_drop_default_ports_and_fold_host_case() {
        let mut key = Vec::new();
        key_into(&mut key, false, b"Example.COM:80", b"/a?b");
        assert_eq!(key, b"hexample.com\0/a?b");
        assert_eq!(key_host(&key), (false, &b"example.com"[..]));
        key_into(&mut key, true, b"example.com:80", b"/");
        assert_eq!(
            key, b"sexample.com:80\0/",
            "only the scheme's own default port goes"
        );
    }

    #[test]
    fn the_memory_bound_holds_across_shards() {
        let store = Store::new(CacheSettings::new("t", 8 << 20, 1 << 16));
        let body = "x".repeat(60_000);
        for i in 0..1000 {
            store.insert(format!("k{i}").as_bytes(), object(&body, &[]));
        }
        let stats = store.stats();
        assert!(stats.bytes <= 8 << 20, "{stats:?}");
        assert!(stats.evictions > 0);
        assert_eq!(stats.stored, 1000);
    }

    #[test]
    fn with_a_disk_tier_memory_bounds_what_is_held_for_the_files() {
        let dir = std::env::temp_dir().join(format!("ringway-store-resident-{}", std::process::id()));
        let mut settings = CacheSettings::new("t", 64 << 10, 1 << 20);
        settings.disk = Some(super::super::DiskSettings {
            path: dir.clone(),
            size: 1 << 30,
        });
        let store = Store::new(settings);
        for i in 0..2000 {
            let file = crate::held::FileBody::on_disk(100_000, dir.join(format!("{i}.rwc")));
            store.insert(
                format!("k{i}").as_bytes(),
                with_body(&crate::held::HeldBody::File(Arc::new(file))),
            );
        }
        let stats = store.stats();
        assert!(stats.resident <= 64 << 10, "{stats:?}");
        assert!(stats.bytes < 1 << 30, "the files are far from the disk's size");
        assert!(stats.keys < 2000 && stats.evictions > 0, "{stats:?}");
    }

    #[test]
    fn a_refreshed_entry_keeps_its_file_and_a_dropped_one_loses_it() {
        let dir = std::env::temp_dir().join(format!("ringway-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("body.rwc");
        std::fs::write(&path, b"body").expect("write");
        let body = crate::held::HeldBody::File(Arc::new(crate::held::FileBody::on_disk(4, path.clone())));
        let store = Store::new(CacheSettings::new("t", 1 << 20, 1 << 16));
        store.insert(b"k", with_body(&body));
        // A 304 refreshed its head: a new object, the same file.
        store.insert(b"k", with_body(&body));
        assert!(path.exists(), "the refreshed entry's file stays");
        assert!(store.remove(b"k"));
        assert!(!path.exists(), "an invalidated entry's file goes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
