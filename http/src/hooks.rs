//! The proxy's phases: the seam every mode and module plugs into.
//!
//! [`ProxyHooks`] is called by the engine at each phase of an exchange, in
//! the manner of pingora's `ProxyHttp` but statically dispatched (native
//! `async fn` in traits, no box per request), with a per-request context
//! and defaults for everything but the routing decision:
//!
//! 1. [`ProxyHooks::request`]: may answer the request itself (auth,
//!    redirects, preflights, cache hits).
//! 2. [`ProxyHooks::route`]: where it goes: a [`Peer`], forward-proxy
//!    addresses, a tunnel, or a local answer.
//! 3. [`ProxyHooks::upstream_request`]: edits to the head sent upstream.
//! 4. [`ProxyHooks::attempt_done`]: how an attempt on a peer went (a
//!    response head, or the error that ended it); may send the request
//!    again to another peer.
//! 5. [`ProxyHooks::response`]: edits to the head sent to the client, and
//!    what becomes of the body ([`BodyPlan`]: passed on, observed as it
//!    streams, or replaced by a response the hooks hold).
//! 6. [`ProxyHooks::observed`]: the whole body of an observed response.
//! 7. [`ProxyHooks::finish`]: the exchange is over (logs, metrics).
//!
//! A response the hooks hold ([`HeldResponse`]: a cache's stored one) can
//! answer at `route` ([`Route::Held`]), in place of the upstream's
//! ([`BodyPlan::Replace`]), or when the upstream failed
//! ([`ProxyHooks::fallback`]).
//!
//! [`ProxyHooks::local_reply`] dresses the answers the proxy gives itself;
//! [`ProxyHooks::log_facts`] tells the access log what the mode decided.

use std::{future::Future, net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use ringway_core::Error;

pub use crate::body::Observed;

use crate::{
    access_log::LogFacts,
    edits::HeadEdits,
    engine::ClientInfo,
    head::{RequestHead, ResponseHead},
    reply::LocalReply,
    tls::PeerTls,
};

/// A server an attempt goes to, with the settings of its upstream.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Connect timeout; `None`: the listener's.
    pub connect_timeout: Option<Duration>,
    /// Time allowed for the response head once the request is sent;
    /// `None`: the listener's.
    pub response_timeout: Option<Duration>,
    /// Idle connections to it kept by each worker (0: none, the
    /// connection closes after its response); `None`: the pool's setting.
    pub keepalive: Option<usize>,
    /// How long an idle connection to it is kept; `None`: the pool's.
    pub keepalive_timeout: Option<Duration>,
    /// TLS to it, when its upstream speaks TLS.
    pub tls: Option<Rc<PeerTls>>,
    /// Start each new connection to it with a PROXY protocol v2 header
    /// naming the client.
    pub proxy_protocol: bool,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.connect_timeout == other.connect_timeout
            && self.response_timeout == other.response_timeout
            && self.keepalive == other.keepalive
            && self.keepalive_timeout == other.keepalive_timeout
            && self.tls.as_ref().map(|t| t.identity()) == other.tls.as_ref().map(|t| t.identity())
            && self.proxy_protocol == other.proxy_protocol
    }
}

impl Eq for Peer {}

impl Peer {
    /// A peer at `addr` with the listener's timeouts.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connect_timeout: None,
            response_timeout: None,
            keepalive: None,
            keepalive_timeout: None,
            tls: None,
            proxy_protocol: false,
        }
    }
}

/// Where a request goes, as the hooks decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Forward to this server (reverse proxy).
    Peer(Peer),
    /// Forward to the first of these addresses that accepts a connection
    /// (forward proxy: the destination's permitted addresses).
    Forward(Rc<[SocketAddr]>),
    /// CONNECT: open a tunnel to the first of these addresses that accepts.
    Connect(Rc<[SocketAddr]>),
    /// Answer directly.
    Reply(LocalReply),
    /// Answer with a response the hooks hold (a cache hit).
    Held(Box<HeldResponse>),
}

/// A response the hooks hold and the engine sends as if it came from an
/// upstream: its head goes through [`ProxyHooks::response`] for edits.
#[derive(Debug)]
pub struct HeldResponse {
    /// The head, parsed once when it was kept (a hit parses nothing). Its
    /// framing fields are ignored.
    pub head: Arc<ResponseHead>,
    /// The whole body.
    pub body: crate::held::HeldBody,
    /// Answer with this status instead of the head's (a 304 to a
    /// conditional request, a 206 or 416 to a range).
    pub status: Option<u16>,
    /// Send only these bytes of the body (`start..end`, a range).
    pub range: Option<(u64, u64)>,
    /// Refresh it: the engine sends the request again in the background
    /// (the answer is dropped), holding the slot until that ends.
    pub refresh: Option<crate::cache::RefreshSlot>,
}

impl Clone for HeldResponse {
    /// A copy of the answer; the refresh, if any, stays with the original.
    fn clone(&self) -> Self {
        Self {
            head: Arc::clone(&self.head),
            body: self.body.clone(),
            status: self.status,
            range: self.range,
            refresh: None,
        }
    }
}

impl PartialEq for HeldResponse {
    fn eq(&self, other: &Self) -> bool {
        self.head.raw() == other.head.raw()
            && self.body.same(&other.body)
            && self.status == other.status
            && self.range == other.range
    }
}

impl Eq for HeldResponse {}

/// What the engine does with the body of the response being relayed.
#[derive(Debug, Default)]
pub enum BodyPlan {
    /// Relay it.
    #[default]
    Pass,
    /// Relay it, and hand a copy of the whole body to
    /// [`ProxyHooks::observed`] once it is through, unless it is longer
    /// than `max` bytes (it is then relayed only). It is not spliced.
    Observe {
        /// The longest body kept.
        max: u64,
        /// Write the copy to this file as it goes, instead of memory.
        file: Option<std::fs::File>,
    },
    /// Answer with this held response instead (its upstream's answer had
    /// no body: a 304 that revalidated it), or a 5xx that a stored one
    /// stands in for.
    Replace(Box<HeldResponse>),
}

/// How one attempt on a peer ended.
#[derive(Debug, Clone, Copy)]
pub enum AttemptResult<'a> {
    /// A final response head came back (interim ones are not reported).
    Response(&'a ResponseHead),
    /// The attempt failed before a response head: no connection, a reset,
    /// a close, a timeout, a malformed head.
    Failed(&'a Error),
}

/// One attempt on a peer, as [`ProxyHooks::attempt_done`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The peer it went to.
    pub peer: &'a Peer,
    /// How it ended.
    pub result: AttemptResult<'a>,
    /// Whether any byte of the request may have reached the peer (false
    /// when the connection could not be made).
    pub sent: bool,
    /// Whether the engine can still send the request elsewhere: its body
    /// (if any) is all in hand and nothing of an answer went to the client.
    pub replayable: bool,
    /// The worker's coarse clock, in milliseconds.
    pub now_ms: u64,
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Keep the result: the response goes to the client, or the error is
    /// answered.
    No,
    /// Send the request again, to this peer (honoured only while the
    /// attempt was replayable).
    Another(Peer),
}

/// An exchange that is over, as [`ProxyHooks::finish`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The status sent (0: none could be; 499: the client left first).
    pub status: u16,
    /// The last peer tried, if any.
    pub upstream: Option<SocketAddr>,
}

/// A mode's logic at each phase of an exchange; the engine does the rest.
pub trait ProxyHooks: 'static {
    /// State of one request, fresh for each (reset to its default).
    type Ctx: Default;

    /// Called first, once the head passed every framing rule: a reply
    /// answers the request without routing it. The default goes on.
    fn request(
        &self,
        req: &RequestHead,
        client: &ClientInfo,
        cx: &mut Self::Ctx,
    ) -> impl Future<Output = Option<LocalReply>> {
        let _ = (req, client, cx);
        std::future::ready(None)
    }

    /// Decides where `req` goes, or answers it.
    fn route(
        &self,
        req: &RequestHead,
        client: &ClientInfo,
        cx: &mut Self::Ctx,
    ) -> impl Future<Output = Route>;

    /// Edits the head sent upstream, before each attempt: to `peer` on a
    /// [`Route::Peer`], to the next address (`None`) on a
    /// [`Route::Forward`]. The default sends it as the engine writes it.
    fn upstream_request(
        &self,
        req: &RequestHead,
        peer: Option<&Peer>,
        edits: &mut HeadEdits,
        cx: &mut Self::Ctx,
    ) {
        let _ = (req, peer, edits, cx);
    }

    /// Reports how an attempt on a [`Route::Peer`] ended, and decides
    /// whether the request goes again elsewhere. The default keeps the
    /// result.
    fn attempt_done(&self, req: &RequestHead, attempt: &Attempt<'_>, cx: &mut Self::Ctx) -> Retry {
        let _ = (req, attempt, cx);
        Retry::No
    }

    /// Edits the final response head sent to the client, and says what
    /// becomes of its body. Called for held responses too (their plan is
    /// ignored). The default sends it as the engine writes it.
    fn response(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        edits: &mut HeadEdits,
        cx: &mut Self::Ctx,
    ) -> BodyPlan {
        let _ = (req, resp, edits, cx);
        BodyPlan::Pass
    }

    /// The body of a response [`BodyPlan::Observe`] asked for, once all of
    /// it reached the client; not called when it was longer than asked,
    /// or the exchange failed.
    fn observed(&self, req: &RequestHead, body: Observed, cx: &mut Self::Ctx) {
        let _ = (req, body, cx);
    }

    /// The upstream could not be reached, or failed before a response
    /// head: a held response may answer instead of the error (a stale one
    /// that `stale-if-error` allows). The default answers the error.
    fn fallback(&self, req: &RequestHead, error: &Error, cx: &mut Self::Ctx) -> Option<HeldResponse> {
        let _ = (req, error, cx);
        None
    }

    /// Dresses an answer the proxy gives `req` itself (a refusal, a
    /// redirect, a failed upstream, a malformed request): a configured
    /// error page in place of the stock text, the fields CORS needs. The
    /// default sends it as it is.
    fn local_reply(&self, req: &RequestHead, reply: LocalReply, cx: &Self::Ctx) -> LocalReply {
        let _ = (req, cx);
        reply
    }

    /// What the mode knows about the exchange for its log line: the user,
    /// the access decision, the route. Called only where a line is
    /// written. The default knows nothing.
    fn log_facts<'a>(&'a self, cx: &'a Self::Ctx) -> LogFacts<'a> {
        let _ = cx;
        LogFacts::default()
    }

    /// The exchange is over, whatever its end (not called for requests
    /// whose head failed to parse, nor when the connection is dropped
    /// mid-exchange: the context's drop sees those).
    fn finish(&self, req: &RequestHead, summary: &Summary, cx: &mut Self::Ctx) {
        let _ = (req, summary, cx);
    }
}
