//! The HTTP cache (RFC 9111) for both modes.
//!
//! - [`control`], [`date`], [`freshness`]: the RFC's rules as pure
//!   functions of the heads and the clock: `Cache-Control`, HTTP dates,
//!   what a shared cache may store, for how long, and when a stored
//!   response may answer.
//! - [`s3fifo`]: the memory tier's eviction, which a scan does not flush.
//! - [`store`]: the memory tier, shared by the workers: each key's
//!   variants (`Vary`) under an S3-FIFO bounded in bytes.
//! - [`layer`]: the cache at each phase of an exchange, for the modes'
//!   hooks: lookup, revalidation, storing as the body streams, ranges and
//!   304s from the store, invalidation, coalescing of misses per worker.

pub mod control;
pub mod date;
pub mod disk;
pub mod freshness;
pub mod layer;
pub mod s3fifo;
pub mod store;

pub use control::{RequestDirectives, ResponseDirectives};
pub use disk::DiskSettings;
pub use freshness::{current_age, lifetime, storable, verdict, AgeInputs, NotStored, Stored, Times, Verdict};
pub use layer::{CacheCounters, CacheCtx, CacheLayer, CacheLayers, CacheStatus, Lookup, RefreshSlot};
pub use store::{CacheSettings, Store, StoreStats};
