//! ringway as a library: the configuration file ([`config`]: parsing and
//! validation into the runtime types, with file, line and key for every
//! error) and the wiring from a validated configuration to running workers
//! ([`factory`]), and the admin listener ([`admin`]). The binary, `src/main.rs`, adds the command line and
//! signals; tests and fuzzing use the same code.

pub mod admin;
pub mod config;
pub mod factory;
mod locate;
