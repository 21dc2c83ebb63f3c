//! ringway-http: the HTTP/1.1 codec and the connection engine.
//!
//! - [`head`]: request and response heads parsed by httparse over the read
//!   buffer, zero-copy, with RFC 9112 framing rules enforced.
//! - [`Engine`]: serves one client connection (keep-alive, pipelining,
//!   bodies streamed both ways, upgrades), calling [`ProxyHooks`] at each
//!   phase of an exchange (where it goes, how each attempt went).
//! - [`HeadEdits`]: changes to a head that the serialiser applies.
//! - [`ReverseHandler`] and [`RouteTable`]: reverse proxy mode.
//! - [`ForwardHandler`] ([`forward`]): forward proxy mode, with ACLs,
//!   proxy authentication, safe destination parsing and the PAC file.
//! - [`UpstreamPool`]: the worker's idle upstream connections.
//! - [`EngineSettings`]: limits, timeouts and proxy headers.
//! - [`access_log`]: the access-log formats and the writer thread.
//! - [`metrics`]: per-worker counters, summed when scraped.
//! - [`cache`]: RFC 9111's rules (what to store, freshness, age, reuse).
// Four modules use unsafe code: gather implements monoio's unsafe IoVecBuf
// trait, splice calls splice(2) and pipe2(2), proxy_protocol peeks with
// recv(2), and fuzzing (tests and fuzz targets only) implements an
// in-memory stream; the rest has none.
#![deny(unsafe_code)]

pub mod access_log;
mod body;
mod buffers;
pub mod cache;
mod chunked;
mod edits;
mod engine;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod gather;
mod guard;
pub mod head;
mod health;
mod held;
mod hooks;
mod io;
mod l4;
mod limits;
pub mod matching;
pub mod metrics;
mod pool;
pub mod proxy_protocol;
mod recycle;
mod reply;
mod request_id;
mod reverse;
pub mod rules;
mod splice;
mod tls;
mod tunnel;
mod write;

pub use edits::{is_token, EditError, HeadEdits};
pub use engine::{ClientInfo, ClientStream, Engine, TunnelOptions};
pub use forward::{ForwardCtx, ForwardHandler, ForwardSettings};
pub use head::{BodyFraming, HeaderField, HeaderKind, Method, RequestHead, ResponseHead, Version};
pub use health::{HealthCheck, Probe, Prober};
pub use held::{FileBody, HeldBody, FILE_BODY_ABOVE};
pub use hooks::{
    Attempt, AttemptResult, BodyPlan, HeldResponse, Observed, Peer, ProxyHooks, Retry, Route, Summary,
};
pub use l4::TcpBalancer;
pub use limits::{
    BodyRate, EngineSettings, ForwardedStyle, HttpLimits, ProxyHeaders, Timeouts, ViaName,
    DEFAULT_BUFFER_SIZE, MAX_HEADERS_CAP,
};
pub use pool::{PoolSettings, UpstreamPool};
pub use reply::{reason_phrase, LocalReply, Text};
pub use request_id::RequestId;
pub use reverse::{
    Decision, ReverseCtx, ReverseHandler, RouteError, RouteField, RouteRules, RouteSpec, RouteTable,
};
pub use splice::SpliceSocket;
pub use tls::{PeerTls, TlsClient, UpstreamStream};
pub use tunnel::TunnelBytes;
pub use write::{origin_form, write_upstream_head};

/// Frees what this worker's free lists hold that no request took since the
/// last call (read buffers, the connections' slots with their heads and
/// buffers, the blocks exchanges ran in, TLS ciphertext buffers):
/// after a flood they would keep it all. Returns whether anything was
/// freed, so that the caller hands the memory back to the system. Meant to
/// run about once a second per worker.
pub fn release_unused_buffers() -> bool {
    let buffers = buffers::release_unused();
    let slots = engine::release_unused_slots();
    let blocks = recycle::release_unused();
    let tls = ringway_tls::release_unused_buffers();
    buffers || slots || blocks || tls
}
