//! `[cache.NAME]`: the HTTP caches routes use (`cache = "NAME"` on a
//! `[[listener.route]]`): the memory tier's size, the largest object
//! stored, whether responses that set cookies are stored, `X-Cache`, and
//! how long a request waits for another fetching the same response.

use ringway_http::cache::{CacheSettings, Store};

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSection {
    pub(crate) memory: Option<SizeValue>,
    pub(crate) max_object: Option<SizeValue>,
    pub(crate) store_set_cookie: Option<bool>,
    pub(crate) x_cache: Option<bool>,
    pub(crate) lock_timeout: Option<String>,
}

/// The memory tier's size when none is given.
const DEFAULT_MEMORY: u64 = 256 << 20;

/// The largest object stored when none is given.
const DEFAULT_MAX_OBJECT: u64 = 64 << 20;

impl Validator {
    /// Each cache's store, by name, in name order.
    pub(super) fn caches(
        &mut self,
        sections: &BTreeMap<String, CacheSection>,
        path: &KeyPath,
    ) -> Vec<Arc<Store>> {
        let mut stores = Vec::new();
        for (name, section) in sections {
            let at = path.key(name);
            let mut size = |key: &str, value: &Option<SizeValue>, default: u64| -> u64 {
                let parsed = match value {
                    None => return default,
                    Some(SizeValue::Bytes(n)) => Ok(*n),
                    Some(SizeValue::Text(text)) => parse_size(text),
                };
                match parsed {
                    Ok(0) => {
                        self.problem(at.key(key), "must be greater than zero");
                        default
                    }
                    Ok(n) => n,
                    Err(e) => {
                        self.problem(at.key(key), e);
                        default
                    }
                }
            };
            let memory = size("memory", &section.memory, DEFAULT_MEMORY);
            let max_object = size("max_object", &section.max_object, DEFAULT_MAX_OBJECT.min(memory));
            if max_object > memory {
                self.problem(
                    at.key("max_object"),
                    format!("{max_object} bytes is more than the cache's memory ({memory} bytes)"),
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
            stores.push(Arc::new(Store::new(settings)));
        }
        stores
    }
}
