//! `[runtime]`: workers, the I/O driver, CPU pinning, connection limits
//! and the drain's timeout.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a number of workers or \"auto\"")]
pub(crate) enum Workers {
    Count(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeSection {
    pub(crate) workers: Option<Workers>,
    pub(crate) driver: Option<String>,
    pub(crate) pin_cpus: Option<bool>,
    pub(crate) ring_entries: Option<u32>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_ip: Option<u32>,
    pub(crate) shutdown_timeout: Option<String>,
    pub(crate) upgrade_socket: Option<String>,
}

/// The most workers a configuration or the command line may ask for.
pub const MAX_WORKERS: usize = 1024;

/// `[runtime]`, validated.
pub(super) struct Runtime {
    pub(super) config: RuntimeConfig,
    pub(super) max_connections: usize,
    pub(super) max_connections_set: bool,
    pub(super) max_connections_per_ip: Option<u32>,
    pub(super) shutdown_timeout: Duration,
    pub(super) upgrade_socket: Option<PathBuf>,
}

impl Validator {
    pub(super) fn runtime(&mut self, rt: &RuntimeSection, path: &KeyPath) -> Runtime {
        let mut config = RuntimeConfig::default();
        match &rt.workers {
            None => {}
            Some(Workers::Word(w)) if w == "auto" => {}
            Some(Workers::Count(n)) if (1..=MAX_WORKERS as i64).contains(n) => config.workers = *n as usize,
            Some(_) => self.problem(
                path.key("workers"),
                format!("expected a number from 1 to {MAX_WORKERS}, or \"auto\""),
            ),
        }
        if let Some(driver) = &rt.driver {
            match driver.parse::<DriverChoice>() {
                Ok(d) => config.driver = d,
                Err(e) => self.problem(path.key("driver"), e),
            }
        }
        if let Some(pin) = rt.pin_cpus {
            config.pin_cpus = pin;
        }
        if let Some(entries) = rt.ring_entries {
            if !(256..=32768).contains(&entries) || !entries.is_power_of_two() {
                self.problem(
                    path.key("ring_entries"),
                    "expected a power of two from 256 to 32768",
                );
            } else {
                config.ring_entries = entries;
            }
        }
        let max_connections = match rt.max_connections {
            Some(0) => {
                self.problem(path.key("max_connections"), "must be at least 1");
                1
            }
            Some(n) => n,
            None => 100_000,
        };
        let shutdown_timeout = self.duration(
            path.key("shutdown_timeout"),
            rt.shutdown_timeout.as_ref(),
            Duration::from_secs(30),
        );
        Runtime {
            config,
            max_connections,
            max_connections_set: rt.max_connections.is_some(),
            max_connections_per_ip: rt.max_connections_per_ip.filter(|&n| n > 0),
            shutdown_timeout,
            upgrade_socket: rt.upgrade_socket.as_ref().map(|p| self.base.join(p)),
        }
    }
}
