//! Worker runtimes: which I/O driver each worker runs and how its ring is set up.
//!
//! Each worker is one thread with its own monoio runtime. io_uring is
//! preferred; its ring is created with `COOP_TASKRUN`, `SINGLE_ISSUER` and
//! `DEFER_TASKRUN` (a thread-per-core runtime is the single issuer of its
//! ring; see MONOIO-NOTES), falling back to fewer flags on older kernels and
//! to the legacy epoll driver when io_uring is unavailable or refused.

use std::{fmt, future::Future, io, str::FromStr};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// The I/O driver a configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll (with a log line).
    #[default]
    Auto,
    /// io_uring only; starting fails when it is unavailable.
    Uring,
    /// The legacy epoll driver.
    Legacy,
}

impl FromStr for DriverChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "legacy" | "epoll" => Ok(Self::Legacy),
            other => Err(format!(
                "unknown driver {other:?}: expected \"auto\", \"uring\" or \"legacy\""
            )),
        }
    }
}

/// The driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring, with the setup flags that the kernel accepted.
    Uring(RingFlags),
    /// epoll through monoio's legacy driver.
    Legacy,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverKind::Uring(flags) => write!(f, "io_uring ({flags})"),
            DriverKind::Legacy => f.write_str("epoll"),
        }
    }
}

/// Which optional io_uring setup flags a ring was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFlags {
    /// `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+).
    Deferred,
    /// `COOP_TASKRUN | SINGLE_ISSUER` (Linux 6.0+).
    Cooperative,
    /// No optional flags (older kernels).
    Plain,
}

impl fmt::Display for RingFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingFlags::Deferred => "coop_taskrun, single_issuer, defer_taskrun",
            RingFlags::Cooperative => "coop_taskrun, single_issuer",
            RingFlags::Plain => "no setup flags",
        })
    }
}

/// Worker runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of worker threads (each a runtime and a listener set).
    pub workers: usize,
    /// I/O driver.
    pub driver: DriverChoice,
    /// Pin worker `i` to the `i`-th CPU the process may run on.
    pub pin_cpus: bool,
    /// io_uring submission queue entries per worker.
    pub ring_entries: u32,
    /// Threads for blocking work shared by all workers (password hashing).
    pub blocking_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: available_cpus().len().max(1),
            driver: DriverChoice::Auto,
            pin_cpus: true,
            ring_entries: 1024,
            blocking_threads: 2,
        }
    }
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Pins the calling thread to `cpu`; returns whether the kernel accepted it.
pub(crate) fn pin_current_thread(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// The thread pool that runs blocking work (`monoio::spawn_blocking`) for
/// every worker, such as password hashing: shared, so a worker's own thread
/// never blocks.
pub(crate) type BlockingPool = monoio::blocking::DefaultThreadPool;

/// Builds a runtime with the chosen driver on the calling thread and runs the
/// future that `make` returns on it to completion.
///
/// `make` is told which driver was picked. Fails when the chosen driver
/// cannot be built (for `Auto`, only when epoll fails too).
pub(crate) fn block_on<Fut, F>(
    choice: DriverChoice,
    entries: u32,
    pool: &BlockingPool,
    make: F,
) -> io::Result<Fut::Output>
where
    F: FnOnce(DriverKind) -> Fut,
    Fut: Future,
{
    let uring_error = match choice {
        DriverChoice::Legacy => None,
        DriverChoice::Uring | DriverChoice::Auto => {
            if monoio::utils::detect_uring() {
                match build_uring(entries, pool) {
                    Ok((mut rt, flags)) => return Ok(rt.block_on(make(DriverKind::Uring(flags)))),
                    Err(e) => Some(e),
                }
            } else {
                Some(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring is not available on this kernel or is disabled",
                ))
            }
        }
    };
    if let Some(e) = uring_error {
        if choice == DriverChoice::Uring {
            return Err(io::Error::new(e.kind(), format!("driver = \"uring\": {e}")));
        }
        tracing::warn!("io_uring unavailable ({e}); falling back to the epoll driver");
    }
    let mut rt = RuntimeBuilder::<LegacyDriver>::new()
        .attach_thread_pool(Box::new(pool.clone()))
        .enable_timer()
        .build()?;
    Ok(rt.block_on(make(DriverKind::Legacy)))
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>;

/// Creates an io_uring runtime with the strongest setup flags the kernel
/// accepts: each step drops the flag that the newest kernels introduced.
fn build_uring(entries: u32, pool: &BlockingPool) -> io::Result<(UringRuntime, RingFlags)> {
    let mut last_error = None;
    for flags in [RingFlags::Deferred, RingFlags::Cooperative, RingFlags::Plain] {
        let mut ring = io_uring::IoUring::builder();
        if flags != RingFlags::Plain {
            ring.setup_coop_taskrun();
            ring.setup_single_issuer();
        }
        if flags == RingFlags::Deferred {
            ring.setup_defer_taskrun();
        }
        let built = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(ring)
            .attach_thread_pool(Box::new(pool.clone()))
            .enable_timer()
            .build();
        match built {
            Ok(rt) => return Ok((rt, flags)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_choice_parses_config_words() {
        assert_eq!("auto".parse(), Ok(DriverChoice::Auto));
        assert_eq!("uring".parse(), Ok(DriverChoice::Uring));
        assert_eq!("legacy".parse(), Ok(DriverChoice::Legacy));
        assert!("kqueue".parse::<DriverChoice>().is_err());
    }

    #[test]
    fn legacy_runtime_runs_a_future() {
        let pool = BlockingPool::new(1);
        let out = block_on(DriverChoice::Legacy, 256, &pool, |kind| async move { kind }).unwrap();
        assert_eq!(out, DriverKind::Legacy);
    }

    #[test]
    fn blocking_work_runs_off_the_worker() {
        let pool = BlockingPool::new(1);
        let worker = std::thread::current().id();
        let ran_on = block_on(DriverChoice::Legacy, 256, &pool, |_| async move {
            monoio::spawn_blocking(|| std::thread::current().id())
                .await
                .unwrap()
        })
        .unwrap();
        assert_ne!(ran_on, worker);
    }

    #[test]
    fn auto_prefers_uring_when_the_kernel_has_it() {
        let pool = BlockingPool::new(1);
        let out = block_on(DriverChoice::Auto, 256, &pool, |kind| async move { kind }).unwrap();
        if monoio::utils::detect_uring() {
            assert!(matches!(out, DriverKind::Uring(_)), "{out}");
        } else {
            assert_eq!(out, DriverKind::Legacy);
        }
    }
}
