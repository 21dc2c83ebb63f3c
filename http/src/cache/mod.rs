//! The HTTP cache (RFC 9111), first its rules: `Cache-Control` read for
//! requests and responses ([`control`]), HTTP dates ([`date`]), and what a
//! shared cache may store, for how long, and when a stored response may
//! answer ([`freshness`]). They are pure functions of the heads and the
//! clock, tested one RFC rule at a time; and the memory tier's eviction,
//! S3-FIFO ([`s3fifo`]), which a scan does not flush. The store around it
//! (objects, `Vary`, a disk tier) and the engine's response phase that
//! fills it come next, with issue 13.

pub mod control;
pub mod date;
pub mod freshness;
pub mod s3fifo;

pub use control::{RequestDirectives, ResponseDirectives};
pub use freshness::{current_age, lifetime, storable, verdict, AgeInputs, NotStored, Stored, Times, Verdict};
