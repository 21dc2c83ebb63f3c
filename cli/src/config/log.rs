//! `[log]` and each listener's `access_log`: where access-log lines go
//! and in which format. `[log] access_log` is every HTTP listener's
//! default; a listener's own `access_log` replaces it (`false` turns it
//! off there).

use ringway_http::access_log::{LogFormat, LogPath};

use super::*;

/// `access_log = true`, `false`, or `{ path = "...", format = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "true, false, or a table such as { path = \"/var/log/ringway/access.log\", format = \"combined\" } (keys: path, format)"
)]
pub(crate) enum AccessLogValue {
    On(bool),
    Table(AccessLogTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogTable {
    pub(crate) path: Option<String>,
    pub(crate) format: Option<String>,
}

/// A validated access log: its file (or standard error) and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    /// Where lines go.
    pub path: LogPath,
    /// How each is written.
    pub format: Arc<LogFormat>,
}

impl AccessLogSpec {
    /// `access_log = true`: standard error, combined.
    pub fn stderr() -> Self {
        Self {
            path: LogPath::Stderr,
            format: Arc::new(LogFormat::Combined),
        }
    }
}

impl Validator {
    /// The access log `value` asks for; `inherited` is what applies when
    /// it is not set.
    pub(super) fn access_log(
        &mut self,
        value: Option<&AccessLogValue>,
        inherited: Option<&AccessLogSpec>,
        at: &KeyPath,
    ) -> Option<AccessLogSpec> {
        let table = match value {
            None => return inherited.cloned(),
            Some(AccessLogValue::On(false)) => return None,
            Some(AccessLogValue::On(true)) => return Some(AccessLogSpec::stderr()),
            Some(AccessLogValue::Table(table)) => table,
        };
        let format = match table.format.as_deref() {
            None => LogFormat::Combined,
            Some(text) => match LogFormat::parse(text) {
                Ok(format) => format,
                Err(e) => {
                    self.problem(at.key("format"), e.0);
                    return None;
                }
            },
        };
        let path = match table.path.as_deref() {
            None | Some("-") => LogPath::Stderr,
            Some("") => {
                self.problem(
                    at.key("path"),
                    "an empty path: give a file, or \"-\" for standard error",
                );
                return None;
            }
            Some(file) => {
                let path = self.base.join(file);
                if self.outside {
                    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                        self.problem(
                            at.key("path"),
                            format!("the directory {} does not exist (ringway creates the file, not its directory)", dir.display()),
                        );
                        return None;
                    }
                }
                LogPath::File(path)
            }
        };
        Some(AccessLogSpec {
            path,
            format: Arc::new(format),
        })
    }
}
