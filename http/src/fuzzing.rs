//! The checks behind the fuzz targets in `fuzz/` (feature `fuzzing`; also
//! built for this crate's tests, which run each on seed inputs so that the
//! checks stay compiled and true).
//!
//! Each takes arbitrary bytes and panics when an invariant breaks:
//!
//! - [`request_head`]: a head the parser accepts is re-serialised for the
//!   upstream as exactly one head, with the same framing, that this parser
//!   and httparse both read back whole;
//! - [`response_head`]: the same for what goes back to the client;
//! - [`chunked`]: a chunked body decodes the same whether it arrives at
//!   once or in two pieces, and never to more bytes than it came in;
//! - [`forward_target`]: a forward destination, once normalised, parses
//!   to itself again, and the ACL decides the same for both spellings;
//! - [`pipeline`]: the whole engine, serving the bytes as one client
//!   connection over an in-memory stream, forwards only well-framed
//!   requests to a strict loopback origin and answers with well-framed
//!   responses.
//!
//! Fuzzing only ever talks to 127.0.0.1.

// The in-memory client stream implements monoio's unsafe buffer traits.
#![allow(unsafe_code)]

use std::{
    cell::RefCell,
    future::Future,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    rc::Rc,
    sync::OnceLock,
};

use bytes::BytesMut;
use monoio::{
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut},
    io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, Split},
    BufResult,
};
use ringway_core::{ConnCtx, Side};

use crate::{
    chunked::{ChunkedDecoder, Decoded},
    engine::{client_framing, ClientInfo, ClientStream, Engine},
    forward::{
        acl::{Acl, AclRequest},
        split_target,
    },
    head::{BodyFraming, Method, RequestHead, ResponseHead, Version},
    hooks::{Peer, ProxyHooks, Route},
    limits::{EngineSettings, HttpLimits, ProxyHeaders},
    pool::{PoolSettings, UpstreamPool},
    reply::LocalReply,
    splice::SpliceSocket,
    write::{end_head, request_head as write_request_head, response_head as write_response_head},
    write::{ClientResponse, UpstreamRequest, NO_EDITS},
};

/// Limits generous enough for any head ringway itself writes from one
/// that passed the default limits (it adds a few fields).
fn roomy() -> HttpLimits {
    HttpLimits {
        max_header_bytes: 1 << 20,
        max_headers: 1024,
        max_uri_bytes: 1 << 20,
        ..HttpLimits::default()
    }
}

/// Checks request head parsing and the upstream head built from it.
pub fn request_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut head = RequestHead::new();
    if !matches!(head.parse(&mut buf, &HttpLimits::default()), Ok(true)) {
        return;
    }
    let consumed = head.raw().len();
    assert_eq!(
        consumed + buf.len(),
        data.len(),
        "the head and the rest are the input"
    );
    assert_eq!(&head.raw()[..], &data[..consumed]);
    if head.method() == Method::Connect {
        return; // tunnelled or refused, never serialised
    }
    let mut out = Vec::new();
    let req = UpstreamRequest {
        head: &head,
        client_ip: IpAddr::from([192, 0, 2, 7]),
        scheme: "http",
        framing: head.body(),
        upgrade: head.upgrade(),
        upstream: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        edits: &NO_EDITS,
    };
    write_request_head(&mut out, &req, &ProxyHeaders::default());
    end_head(&mut out);

    let mut again = BytesMut::from(&out[..]);
    let mut reparsed = RequestHead::new();
    match reparsed.parse(&mut again, &roomy()) {
        Ok(true) => {}
        other => panic!(
            "ringway's own upstream head does not parse ({:?}): {:?}",
            other.map_err(|e| e.to_string()),
            String::from_utf8_lossy(&out)
        ),
    }
    assert!(
        again.is_empty(),
        "one head, nothing after it: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(reparsed.body(), head.body(), "the framing survives");
    assert_eq!(reparsed.method_bytes(), head.method_bytes());
    assert_eq!(reparsed.upgrade().is_some(), head.upgrade().is_some());

    let mut fields = vec![httparse::EMPTY_HEADER; 1100];
    let mut other = httparse::Request::new(&mut fields);
    assert_eq!(
        other.parse(&out).ok(),
        Some(httparse::Status::Complete(out.len())),
        "httparse reads the same one head: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// Checks response head parsing and the head written to clients from it.
pub fn response_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut resp = ResponseHead::new();
    if !matches!(resp.parse(&mut buf, &HttpLimits::default()), Ok(true)) {
        return;
    }
    if resp.status() == 101 {
        return; // an upgrade, written only for upgrade requests
    }
    for (method, version) in [
        (Method::Get, Version::Http11),
        (Method::Get, Version::Http10),
        (Method::Head, Version::Http11),
    ] {
        let (framing, _) = if resp.status() < 200 {
            (BodyFraming::None, ())
        } else {
            (client_framing(resp.body(method), version).0, ())
        };
        let mut out = Vec::new();
        let to_client = ClientResponse {
            head: &resp,
            framing,
            close: false,
            client_version: version,
            upgrade: None,
            edits: &NO_EDITS,
        };
        write_response_head(&mut out, &to_client, &ProxyHeaders::default());
        end_head(&mut out);
        let mut again = BytesMut::from(&out[..]);
        let mut reparsed = ResponseHead::new();
        match reparsed.parse(&mut again, &roomy()) {
            Ok(true) => {}
            other => panic!(
                "ringway's own response head does not parse ({:?}): {:?}",
                other.map_err(|e| e.to_string()),
                String::from_utf8_lossy(&out)
            ),
        }
        assert!(again.is_empty(), "one head: {:?}", String::from_utf8_lossy(&out));
        assert_eq!(reparsed.status(), resp.status());
        if resp.status() >= 200 {
            assert_eq!(
                reparsed.body(method),
                framing,
                "the client reads the body as it is sent: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}

/// What decoding a chunked body gave.
#[derive(Debug, PartialEq, Eq)]
enum Chunks {
    Complete {
        data: Vec<u8>,
        trailers: Option<Vec<u8>>,
    },
    NeedMore {
        data: Vec<u8>,
    },
    Invalid,
}

fn decode_in_pieces(pieces: &[&[u8]]) -> Chunks {
    let mut decoder = ChunkedDecoder::new(Side::Upstream, 4096);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::End { trailers }) => {
                    return Chunks::Complete {
                        data,
                        trailers: trailers.map(|t| t.to_vec()),
                    }
                }
                Err(_) => return Chunks::Invalid,
            }
        }
    }
    Chunks::NeedMore { data }
}

/// Checks the chunked decoder: `data[0]` picks where the body is cut.
pub fn chunked(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) % (body.len() + 1);
    let whole = decode_in_pieces(&[body]);
    let split = decode_in_pieces(&[&body[..cut], &body[cut..]]);
    match (&whole, &split) {
        // Where the cut falls, a decoder that needs more may already have
        // handed out some data: compare what both complete with.
        (Chunks::NeedMore { .. }, Chunks::NeedMore { .. }) => {}
        _ => assert_eq!(whole, split, "cut at {cut}"),
    }
    if let Chunks::Complete { data, .. } | Chunks::NeedMore { data } = &whole {
        assert!(data.len() <= body.len());
    }
}

/// Checks the canonical path that rules and routes read (a deny rule
/// must not be stepped around by a spelling): it never panics; it is a
/// fixed point once nothing is left to decode; it holds no empty or
/// dot segment and no byte that spells a separator; the rules' fast path
/// agrees with it; and a target with `..` never climbs above the root.
pub fn canonical_path(data: &[u8]) {
    use crate::{matching::canonical_target, rules::with_canonical};
    let mut target = b"/".to_vec();
    target.extend_from_slice(data);
    let mut once = Vec::new();
    let len = canonical_target(&mut once, &target);
    let path = &once[..len];
    assert!(path.starts_with(b"/"), "{:?}", String::from_utf8_lossy(path));
    for segment in path[1..].split(|&b| b == b'/') {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        assert!(
            name != b"." && name != b"..",
            "dot segment in {:?}",
            String::from_utf8_lossy(path)
        );
    }
    assert!(
        !path.windows(2).any(|w| w == b"//"),
        "{:?}",
        String::from_utf8_lossy(path)
    );
    assert!(!path.contains(&b'\\') && !path.contains(&b'#') && !path.contains(&b'?'));
    // Decoding is done once, as an origin does (`%2%44` is `%2D`, not
    // `-`): without a '%' left, a second pass changes nothing.
    if !path.contains(&b'%') {
        let mut twice = Vec::new();
        let len2 = canonical_target(&mut twice, &once);
        assert_eq!(&twice[..len2], path, "not a fixed point");
    }
    with_canonical(&target, |fast_path, query, _| {
        assert_eq!(
            fast_path,
            path,
            "the fast path reads {:?} otherwise",
            String::from_utf8_lossy(&target)
        );
        assert_eq!(query, once.get(len + 1..).unwrap_or_default());
    });
}

/// Checks forward-proxy destinations and the ACL on them: the input is a
/// CONNECT target (`data[0]` odd) or an absolute-form URL.
pub fn forward_target(data: &[u8]) {
    let Some((&flag, target)) = data.split_first() else {
        return;
    };
    let connect = flag % 2 == 1;
    let Ok((dest, path)) = split_target(target, connect) else {
        return;
    };
    let host = dest.host.to_string();
    assert!(!host.is_empty());
    assert!(!host.ends_with('.'), "no trailing dot: {host}");
    assert_eq!(host, host.to_ascii_lowercase(), "lowercase");
    // The normalised form is a fixed point.
    let normal = match &dest.host {
        crate::forward::host::Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", dest.port),
        _ => format!("{host}:{}", dest.port),
    };
    let (again, _) = split_target(normal.as_bytes(), true)
        .unwrap_or_else(|e| panic!("the normalised {normal:?} does not parse: {e}"));
    assert_eq!(again.host.to_string(), host);
    assert_eq!(again.port, dest.port);
    // And the ACL decides the same for both spellings.
    let acl = Acl::builtin();
    let request = |dest| AclRequest {
        src: IpAddr::from([127, 0, 0, 1]),
        dest,
        method: b"GET",
        connect,
        path,
        user: None,
        groups: &[],
        head: None,
    };
    let first = format!("{:?}", acl.decide(&request(&dest), None));
    let second = format!("{:?}", acl.decide(&request(&again), None));
    assert_eq!(first, second, "{normal}");
}

/// Routes every request to the strict origin; CONNECT is refused.
struct ToOrigin(SocketAddr);

impl ProxyHooks for ToOrigin {
    type Ctx = ();

    fn route(&self, req: &RequestHead, _client: &ClientInfo, _cx: &mut ()) -> impl Future<Output = Route> {
        let route = if req.method() == Method::Connect {
            Route::Reply(LocalReply::status(405))
        } else {
            Route::Peer(Peer::new(self.0))
        };
        std::future::ready(route)
    }
}

thread_local! {
    static PIPELINE: RefCell<Option<Pipeline>> = const { RefCell::new(None) };
}

struct Pipeline {
    runtime: monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>,
    engine: Rc<Engine<ToOrigin>>,
}

/// Checks the whole engine: `data[0]` sets the client's read sizes, the
/// rest is what the client sends before it closes.
pub fn pipeline(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = 1 + usize::from(step) * 7;
    PIPELINE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let pipeline = cell.get_or_insert_with(|| {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("a runtime for fuzzing");
            let settings = EngineSettings {
                buffer_size: 4096,
                ..EngineSettings::default()
            };
            let pool = Rc::new(UpstreamPool::new(PoolSettings::default()));
            let engine = Engine::new("fuzz", ToOrigin(strict_origin()), settings, pool);
            Pipeline {
                runtime,
                engine: Rc::new(engine),
            }
        });
        let engine = Rc::clone(&pipeline.engine);
        let stream = MemoryStream::new(input.to_vec(), step);
        let output = Rc::clone(&stream.output);
        pipeline.runtime.block_on(async move {
            let client = ClientInfo::new(
                SocketAddr::from(([127, 0, 0, 1], 40000)),
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            );
            let conn = ConnCtx::detached();
            engine.serve(stream, client, conn).await;
        });
        let output = output.borrow();
        check_responses(&output);
    });
}

/// What the engine wrote to the client must be whole responses, one after
/// another, each framed so that a client can find where it ends.
fn check_responses(mut out: &[u8]) {
    while !out.is_empty() {
        let mut fields = vec![httparse::EMPTY_HEADER; 1100];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not a whole response head ({other:?}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(400)])
            ),
        };
        let code = resp.code.unwrap_or(0);
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
            });
        let chunked = resp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        out = &out[head_len..];
        if (100..200).contains(&code) || code == 204 || code == 304 {
            continue;
        }
        if chunked {
            match decode_in_pieces(&[out]) {
                Chunks::Complete { .. } => {
                    out = chunked_end(out);
                }
                // A body cut short by the upstream ends the connection.
                _ => return,
            }
        } else if let Some(length) = length {
            let length = length.expect("a numeric Content-Length");
            // The answer to a HEAD has a Content-Length and no body. No
            // body here (the origin's `ok`, a local reply's text) starts
            // like a response, so a response right after the head means
            // this one answered a HEAD.
            if !out.starts_with(b"HTTP/1.") {
                out = &out[length.min(out.len())..];
            }
        } else {
            return; // delimited by the close
        }
    }
}

/// The bytes after a complete chunked body at the front of `body`.
fn chunked_end(body: &[u8]) -> &[u8] {
    let mut decoder = ChunkedDecoder::new(Side::Upstream, 4096);
    let mut buf = BytesMut::from(body);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::End { .. }) => return &body[body.len() - buf.len()..],
            Ok(Decoded::Data(_)) => {}
            _ => return &[],
        }
    }
}

/// A loopback origin (started once) that reads what ringway forwards with
/// its own strict reading of HTTP/1.1 framing, and aborts the process on
/// anything that is not a sequence of whole, well-framed requests (a body
/// cut short by a closed connection is allowed: the close tells).
fn strict_origin() -> SocketAddr {
    static ORIGIN: OnceLock<SocketAddr> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fuzzing origin");
        let addr = listener.local_addr().expect("origin address");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_strictly(stream));
            }
        });
        addr
    })
}

/// Requests the strict origin has answered (for the seed test: the
/// pipeline does reach it).
static ORIGIN_ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn serve_strictly(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let violation = |what: &str, bytes: &[u8]| -> ! {
        eprintln!(
            "fuzzing origin: {what}: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
        );
        std::process::abort();
    };
    loop {
        // A head.
        let (head_len, body) = loop {
            let mut fields = vec![httparse::EMPTY_HEADER; 1100];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let value = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok());
                            if value.is_none() || length.is_some() {
                                violation("a bad or repeated Content-Length", &buf);
                            }
                            length = value;
                        }
                        if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            if !h.value.eq_ignore_ascii_case(b"chunked") || chunked {
                                violation("a Transfer-Encoding other than one chunked", &buf);
                            }
                            chunked = true;
                        }
                    }
                    if chunked && length.is_some() {
                        violation("Content-Length with Transfer-Encoding", &buf);
                    }
                    break (n, if chunked { None } else { Some(length.unwrap_or(0)) });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => violation(&format!("not a request head ({e})"), &buf),
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        violation("a head cut short", &buf);
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_len);
        // Its body.
        match body {
            Some(length) => {
                let length = length as usize;
                while buf.len() < length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return, // cut short by a close: allowed
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..length);
            }
            None => loop {
                match decode_in_pieces(&[&buf]) {
                    Chunks::Complete { .. } => {
                        let rest = chunked_end(&buf).len();
                        let used = buf.len() - rest;
                        buf.drain(..used);
                        break;
                    }
                    Chunks::Invalid => violation("a malformed chunked body", &buf),
                    Chunks::NeedMore { .. } => match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    },
                }
            },
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
        ORIGIN_ANSWERED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client connection in memory: reads hand out `input` at most `step`
/// bytes at a time, then end of stream; writes are collected.
struct MemoryStream {
    input: Vec<u8>,
    pos: usize,
    step: usize,
    output: Rc<RefCell<Vec<u8>>>,
}

impl MemoryStream {
    fn new(input: Vec<u8>, step: usize) -> Self {
        Self {
            input,
            pos: 0,
            step,
            output: Rc::default(),
        }
    }

    fn fill(&mut self, ptr: *mut u8, room: usize) -> usize {
        let n = room.min(self.step).min(self.input.len() - self.pos);
        // SAFETY: the buffer's owner said `room` bytes from `ptr` are
        // writable; `n` is at most that, and `input` has `n` bytes left.
        unsafe { std::ptr::copy_nonoverlapping(self.input.as_ptr().add(self.pos), ptr, n) };
        self.pos += n;
        n
    }
}

impl AsyncReadRent for MemoryStream {
    fn read<T: IoBufMut>(&mut self, mut buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let n = self.fill(buf.write_ptr(), buf.bytes_total());
        // SAFETY: `fill` initialised `n` bytes from the start of the buffer.
        unsafe { buf.set_init(n) };
        std::future::ready((Ok(n), buf))
    }

    fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // Only the first slice is filled, as a short read may.
        let (ptr, len) = if buf.write_iovec_len() > 0 {
            // SAFETY: the owner says `write_iovec_len` iovecs start here.
            let first = unsafe { &*buf.write_iovec_ptr() };
            (first.iov_base.cast::<u8>(), first.iov_len)
        } else {
            (std::ptr::null_mut(), 0)
        };
        let n = if ptr.is_null() { 0 } else { self.fill(ptr, len) };
        // SAFETY: `n` bytes of the first slice were written.
        unsafe { buf.set_init(n) };
        std::future::ready((Ok(n), buf))
    }
}

impl CancelableAsyncReadRent for MemoryStream {
    fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        self.read(buf)
    }

    fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        self.readv(buf)
    }
}

impl AsyncWriteRent for MemoryStream {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // SAFETY: the owner says `bytes_init` bytes from `read_ptr` are
        // initialised, and keeps them alive for this call.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        self.output.borrow_mut().extend_from_slice(bytes);
        let n = bytes.len();
        std::future::ready((Ok(n), buf))
    }

    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let mut n = 0;
        // SAFETY: the owner says `read_iovec_len` valid iovecs start at
        // `read_iovec_ptr`, each describing initialised bytes.
        unsafe {
            let iovecs = std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len());
            for iov in iovecs {
                let bytes = std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len);
                self.output.borrow_mut().extend_from_slice(bytes);
                n += iov.iov_len;
            }
        }
        std::future::ready((Ok(n), buf))
    }

    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

// SAFETY: reads touch only `input` and `pos`, writes only `output`: the
// two halves of a split stream never touch the same state.
unsafe impl Split for MemoryStream {}

impl SpliceSocket for MemoryStream {}

impl ClientStream for MemoryStream {
    type ReadHalf = monoio::io::OwnedReadHalf<MemoryStream>;
    type WriteHalf = monoio::io::OwnedWriteHalf<MemoryStream>;

    fn into_halves(self) -> (Self::ReadHalf, Self::WriteHalf) {
        monoio::io::Splitable::into_split(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_path_checks_hold_on_tricky_spellings() {
        for path in [
            &b"admin"[..],
            b"x/../admin",
            b"x\\..\\admin",
            b"x%2F..%2Fadmin",
            b"x/..;/admin",
            b"admin#/../x",
            b"a//b/./c/../?q=%2e%2e&r=/../",
            b"%2e%2e/%2E./..%2f..",
            b"a/..",
            b"",
            b"?",
            b".;/..;/%00/\xff",
        ] {
            canonical_path(path);
        }
    }

    #[test]
    fn the_checks_hold_on_seed_inputs() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /p?q HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: x-a\r\nX-A: 1\r\n\r\nabc",
            b"GET http://b.test:81/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /old HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            request_head(head);
        }
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        ] {
            response_head(head);
        }
        for body in [
            &b"\x05a\r\nxxxxxxxxxx\r\n0\r\n\r\n"[..],
            b"\x033\r\nab",
            b"\x00zz\r\n",
        ] {
            chunked(body);
        }
        for target in [
            &b"\x01Example.TEST.:443"[..],
            b"\x00http://A.test/x",
            b"\x01[::1]:8443",
        ] {
            forward_target(target);
        }
        for input in [
            &b"\x03GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"\x00POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"\x10GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x01CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\x02garbage\r\n\r\n",
            // Found by the fuzzer: the checker read the answer to a HEAD
            // as if its body were there.
            b"\x03HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            pipeline(input);
        }
        // Every committed pipeline seed, the fuzzer's finds among them.
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/pipeline");
        for entry in std::fs::read_dir(seeds).expect("the pipeline seeds") {
            let path = entry.expect("a seed").path();
            pipeline(&std::fs::read(&path).expect("a readable seed"));
        }
        // At least the two keep-alive requests, the chunked POST, the HEAD
        // and the GET after it (the seeds add their own).
        assert!(ORIGIN_ANSWERED.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    }
}
