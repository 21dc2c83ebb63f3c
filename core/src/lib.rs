//! ringway-core: the base of ringway's connection engine.
//!
//! It owns everything below HTTP: the worker-per-core monoio runtimes
//! ([`runtime`]: io_uring with single-issuer ring flags, epoll fallback, CPU
//! pinning), the `SO_REUSEPORT` listener sockets of every worker, per-worker
//! connection limits and counters, graceful drain and shutdown ([`start`],
//! [`ServerHandle`], [`ConnCtx`]), and the one error type every ringway
//! library returns ([`Error`]).
//!
//! The HTTP engine plugs in as a [`WorkerApp`], built on each worker thread.

pub mod dns;
mod error;
pub mod free_list;
pub mod handover;
mod listener;
mod per_ip;
pub mod rlimit;
pub mod runtime;
mod server;
pub mod socket;
mod worker;

pub use error::{Error, ErrorKind, OrErr, Result, Side};
pub use free_list::FreeList;
pub use listener::{ListenerSpec, OwnAddresses};
pub use per_ip::PerIpConnections;
pub use rlimit::monotonic_micros;
pub use runtime::{DriverChoice, DriverKind, RuntimeConfig};
pub use server::{start, start_inheriting, ServerConfig, ServerHandle, WorkerApp, WorkerInfo};
pub use worker::{ClientWatch, ConnCtx, Deadline, Ending, Rejected, Wait, WorkerStats};
