//! Blocking HTTP/1.1 reading and writing over `std::net`, for tests: a
//! client that sends exact bytes, and the request reader the origins use.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::Seen;

/// A response as a test client received it.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name` (case ignored).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection with its read buffer.
pub struct TestClient {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl TestClient {
    /// Connects to `addr` with a 20 s read timeout.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// `GET path` with `Host: test`, returning the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.response()
    }

    /// Reads one response to a request that was not HEAD.
    pub fn response(&mut self) -> Response {
        self.read_response(false).expect("a response")
    }

    /// Reads one response; `head` means the request was HEAD (no body).
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let (status, headers, consumed) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = resp
                .parse(&self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (resp.code.unwrap_or(0), headers, n);
            }
            if fill(&mut self.stream, &mut self.buf, None)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended before a whole response head",
                ));
            }
        };
        self.buf.drain(..consumed);
        let mut response = Response {
            status,
            headers,
            ..Response::default()
        };
        if head || status < 200 || status == 204 || status == 304 {
            return Ok(response);
        }
        let te = response.header("transfer-encoding").map(str::to_owned);
        let cl = response.header("content-length").map(str::to_owned);
        if te.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            response.chunked = true;
            let chunked = read_chunked(&mut self.stream, &mut self.buf, None)?;
            response.body = chunked.body;
            response.trailers = chunked.trailers;
        } else if let Some(cl) = cl {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| io::Error::other("bad content-length"))?;
            while self.buf.len() < n {
                if fill(&mut self.stream, &mut self.buf, None)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            response.body = self.buf.drain(..n).collect();
        } else {
            while fill(&mut self.stream, &mut self.buf, None)? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// Takes the bytes read past the last response (e.g. tunnel data that
    /// arrived together with a `200 Connection established`).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Whether the server closes the connection within `wait` (reads
    /// return end of stream; data still buffered counts as not closed).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(wait));
        let mut b = [0u8; 1];
        let closed = match self.stream.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        };
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(20)));
        closed
    }
}

/// The first value of `name` (case ignored) among `headers`.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, counter: Option<&AtomicUsize>) -> io::Result<usize> {
    let mut chunk = [0u8; 16384];
    let n = loop {
        match stream.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    buf.extend_from_slice(&chunk[..n]);
    if let Some(c) = counter {
        c.fetch_add(n, Ordering::SeqCst);
    }
    Ok(n)
}

fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>, counter: Option<&AtomicUsize>) -> io::Result<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if fill(stream, buf, counter)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A chunked body as read: decoded, its trailer fields, and the bytes as
/// they came on the wire (sizes, extensions, trailers and all).
pub(crate) struct Chunked {
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Vec<(String, String)>,
    pub(crate) wire: Vec<u8>,
}

fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    counter: Option<&AtomicUsize>,
) -> io::Result<Chunked> {
    let mut out = Chunked {
        body: Vec::new(),
        trailers: Vec::new(),
        wire: Vec::new(),
    };
    loop {
        let line = read_line(stream, buf, counter)?;
        out.wire.extend_from_slice(line.as_bytes());
        out.wire.extend_from_slice(b"\r\n");
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let field = read_line(stream, buf, counter)?;
                out.wire.extend_from_slice(field.as_bytes());
                out.wire.extend_from_slice(b"\r\n");
                if field.is_empty() {
                    return Ok(out);
                }
                if let Some((name, value)) = field.split_once(':') {
                    out.trailers
                        .push((name.trim().to_owned(), value.trim().to_owned()));
                }
            }
        }
        while buf.len() < size + 2 {
            if fill(stream, buf, counter)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        out.body.extend_from_slice(&buf[..size]);
        out.wire.extend_from_slice(&buf[..size + 2]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(io::Error::other("chunk without CRLF"));
        }
        buf.drain(..size + 2);
    }
}

/// Reads one request from an origin's connection (`raw` counts the
/// bytes read); `Ok(None)` at a clean close.
pub fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    raw: &AtomicUsize,
) -> io::Result<Option<Seen>> {
    let (mut seen, consumed) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut fields);
        if let httparse::Status::Complete(n) = req
            .parse(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let seen = Seen {
                method: req.method.unwrap_or("").to_owned(),
                target: req.path.unwrap_or("").to_owned(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
                ..Seen::default()
            };
            break (seen, n);
        }
        if fill(stream, buf, Some(raw))? == 0 {
            return Ok(None);
        }
    };
    buf.drain(..consumed);
    if seen.header("transfer-encoding").is_some() {
        seen.chunked = true;
        let chunked = read_chunked(stream, buf, Some(raw))?;
        seen.body = chunked.body;
        seen.trailers = chunked.trailers;
        seen.wire_body = chunked.wire;
    } else if let Some(cl) = seen.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| io::Error::other("bad content-length"))?;
        while buf.len() < n {
            if fill(stream, buf, Some(raw))? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        seen.body = buf.drain(..n).collect();
    }
    Ok(Some(seen))
}
