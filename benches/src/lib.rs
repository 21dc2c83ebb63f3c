//! ringway-benches: fixtures shared by ringway's criterion benchmarks.
//!
//! The benchmarks themselves live in `benches/hot_paths.rs` (run with
//! `cargo bench -p ringway-benches`); the side-by-side comparison with
//! nginx, HAProxy and Squid lives in `compare/` (see the README).
#![forbid(unsafe_code)]

/// A request head as a browser sends it (about 500 bytes, 11 fields).
pub const BROWSER_REQUEST: &[u8] = b"GET /static/app/main.js?v=20261122 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
Accept: */*\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/\r\n\
Cookie: session=4f1c2d3e5a6b7c8d9e0f; theme=dark; consent=1\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Connection: keep-alive\r\n\
\r\n";

/// The request wrk sends by default.
pub const WRK_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A typical small upstream response head.
pub const ORIGIN_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Sun, 22 Nov 2026 16:00:00 GMT\r\n\
Content-Type: text/plain\r\n\
Content-Length: 16\r\n\
Connection: keep-alive\r\n\
\r\n";
