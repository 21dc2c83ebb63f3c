//! `[cache.NAME]`: the HTTP caches routes and forward listeners use
//! (`cache = "NAME"`): the memory they hold, the largest object stored,
//! whether responses that set cookies are stored, `X-Cache`, how long a
//! request waits for another fetching the same response, and the disk
//! tier (a directory and its size).

use ringway_http::cache::{CacheSettings, DiskSettings, Store};

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSection {
    pub(crate) memory: Option<SizeValue>,
    pub(crate) max_object: Option<SizeValue>,
    pub(crate) store_set_cookie: Option<bool>,
    pub(crate) x_cache: Option<bool>,
    pub(crate) lock_timeout: Option<String>,
    pub(crate) disk: Option<DiskSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskSection {
    pub(crate) path: Option<String>,
    pub(crate) size: Option<SizeValue>,
}

/// The memory tier's size when none is given.
const DEFAULT_MEMORY: u64 = 256 << 20;

/// The least `memory` a cache with a disk tier may have: it holds the
/// index of the files, split over up to 16 shards.
const MIN_INDEX_MEMORY: u64 = 1 << 20;

/// The largest object stored when none is given.
const DEFAULT_MAX_OBJECT: u64 = 64 << 20;

impl Validator {
    /// A size in bytes at `at`: `default` when absent, an error (and the
    /// default) when zero or unreadable.
    fn cache_size(&mut self, at: KeyPath, value: Option<&SizeValue>, default: u64) -> u64 {
        let parsed = match value {
            None => return default,
            Some(SizeValue::Bytes(n)) => Ok(*n),
            Some(SizeValue::Text(text)) => parse_size(text),
        };
        self.positive(at, parsed, default)
    }

    /// Each cache's store, by name, in name order.
    pub(super) fn caches(
        &mut self,
        sections: &BTreeMap<String, CacheSection>,
        path: &KeyPath,
    ) -> Vec<Arc<Store>> {
        let mut stores = Vec::new();
        for (name, section) in sections {
            let at = path.key(name);
            let memory = self.cache_size(at.key("memory"), section.memory.as_ref(), DEFAULT_MEMORY);
            // With a disk tier bodies are not held in memory.
            let default_max_object = match section.disk {
                Some(_) => DEFAULT_MAX_OBJECT,
                None => DEFAULT_MAX_OBJECT.min(memory),
            };
            let max_object = self.cache_size(
                at.key("max_object"),
                section.max_object.as_ref(),
                default_max_object,
            );
            let disk = section
                .disk
                .as_ref()
                .and_then(|disk| self.disk(disk, max_object, &at.key("disk")));
            if max_object > memory && disk.is_none() {
                self.problem(
                    at.key("max_object"),
                    format!("{max_object} bytes is more than the cache's memory ({memory} bytes)"),
                );
            }
            if disk.is_some() && memory < MIN_INDEX_MEMORY {
                self.problem(
                    at.key("memory"),
                    format!(
                        "with a disk tier, memory holds the heads and keys of its files (about 0.5 to 2 KiB \
                         each): {memory} bytes would hold almost none; give at least 1MiB"
                    ),
                );
            }
            let mut settings = CacheSettings::new(name, memory, max_object);
            settings.store_set_cookie = section.store_set_cookie.unwrap_or(false);
            settings.x_cache = section.x_cache.unwrap_or(false);
            settings.lock_timeout = self.duration(
                at.key("lock_timeout"),
                section.lock_timeout.as_ref(),
                settings.lock_timeout,
            );
            settings.disk = disk;
            stores.push(Arc::new(Store::new(settings)));
        }
        stores
    }

    /// A cache serves reverse routes or forward listeners, not both: their
    /// keys name hosts alike, and a forward client must not be answered
    /// with a reverse route's response for the same name. Two disk tiers
    /// never share a directory.
    pub(super) fn caches_used_once_per_kind(
        &mut self,
        listeners: &[Listener],
        caches: &[Arc<Store>],
        at: &KeyPath,
    ) {
        let by_reverse: Vec<usize> = listeners
            .iter()
            .filter_map(|l| match &l.mode {
                ListenerMode::Reverse { route_caches, .. } => Some(route_caches.iter().flatten().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        for (i, l) in listeners.iter().enumerate() {
            if let ListenerMode::Forward { settings } = &l.mode {
                if let Some(cache) = settings.cache.filter(|c| by_reverse.contains(c)) {
                    let name = caches.get(cache).map_or("", |c| c.settings().name.as_str());
                    self.problem(
                        at.index(i).key("cache"),
                        format!("[cache.{name}] serves reverse routes too: give forward listeners a cache of their own"),
                    );
                }
            }
        }
        for (i, cache) in caches.iter().enumerate() {
            let Some(disk) = &cache.settings().disk else {
                continue;
            };
            let earlier = caches[..i]
                .iter()
                .find(|c| c.settings().disk.as_ref().is_some_and(|d| d.path == disk.path));
            if let Some(other) = earlier {
                self.problem(
                    KeyPath::root()
                        .key("cache")
                        .key(&cache.settings().name)
                        .key("disk")
                        .key("path"),
                    format!("[cache.{}] keeps its files there already", other.settings().name),
                );
            }
        }
    }

    /// A disk tier: a directory (made at start if its parent exists;
    /// relative to the file's) and a size.
    fn disk(&mut self, disk: &DiskSection, max_object: u64, at: &KeyPath) -> Option<DiskSettings> {
        let Some(path) = disk.path.as_deref() else {
            self.problem(at.key("path"), "the disk tier needs a path (a directory)");
            return None;
        };
        let path = self.base.join(path);
        if path.exists() && !path.is_dir() {
            self.problem(at.key("path"), format!("{} is not a directory", path.display()));
            return None;
        }
        if !path.exists() && !path.parent().is_some_and(Path::is_dir) {
            self.problem(
                at.key("path"),
                format!("{}: its parent directory does not exist", path.display()),
            );
            return None;
        }
        let Some(value) = disk.size.as_ref() else {
            self.problem(at.key("size"), "the disk tier needs a size, such as \"10GiB\"");
            return None;
        };
        let size = self.cache_size(at.key("size"), Some(value), 0);
        if size == 0 {
            return None;
        }
        if max_object > size {
            self.problem(
                at.key("size"),
                format!("{size} bytes is less than max_object ({max_object} bytes)"),
            );
        }
        Some(DiskSettings { path, size })
    }
}
