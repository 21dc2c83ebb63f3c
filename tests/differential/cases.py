"""Generates the differential test's corpus: well-formed requests in many
spellings, the malformed and ambiguous ones request smuggling is built
from, and random mutations of both. Deterministic (a fixed seed).

Prints one case per line, tab-separated: name, the bytes (hex), then how
h11 reads those bytes as a server would: its error or "-", then each
request it read as "METHOD TARGET BODY ENDED" (the first three in hex,
"-" for an empty body). The client half-closes
after sending, so the bytes are read to their end."""

import random
import sys

from h11view import read_requests

CASES = []


def case(name, data, h11_reads=None):
    """A case; `h11_reads` is the spelling h11 is given instead, where RFC
    9112 allows what h11 refuses (the reason is noted at the call)."""
    CASES.append((name, data, h11_reads if h11_reads is not None else data))


def req(method=b"GET", target=b"/", version=b"HTTP/1.1", headers=((b"Host", b"a.test"),), body=b"", raw_headers=None):
    head = method + b" " + target + b" " + version + b"\r\n"
    if raw_headers is not None:
        head += raw_headers
    else:
        for name, value in headers:
            head += name + b": " + value + b"\r\n"
    return head + b"\r\n" + body


def chunked(pieces, trailers=b""):
    out = b""
    for p in pieces:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


FOLLOW = req(target=b"/after", headers=((b"Host", b"a.test"),))

# Well-formed requests in many spellings.
for method in [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"PROPFIND"]:
    for target in [b"/", b"/p/a%20th?q=1&r", b"http://a.test/x", b"http://A.Test:8080", b"*"]:
        if target == b"*" and method != b"OPTIONS":
            continue
        case(f"plain {method.decode()} {target.decode()}", req(method, target))
for body in [b"", b"x", b"hello world", bytes(range(256)), b"\r\n\r\n" * 10]:
    h = ((b"Host", b"a.test"), (b"Content-Length", str(len(body)).encode()))
    case(f"cl {len(body)}", req(b"POST", b"/cl", headers=h, body=body) + FOLLOW)
for pieces in [[b"a"], [b"hello", b" ", b"world"], [b"x" * 5000], [bytes(range(256))] * 3]:
    h = ((b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked"))
    case(f"chunked {len(pieces)}", req(b"POST", b"/ch", headers=h, body=chunked(pieces)) + FOLLOW)
    case(f"chunked trailers {len(pieces)}",
         req(b"POST", b"/ch", headers=h, body=chunked(pieces, b"X-Sum: 1\r\nX-More: 2\r\n")) + FOLLOW)
case("http/1.0 keep-alive", req(version=b"HTTP/1.0", headers=((b"Connection", b"keep-alive"),)) + FOLLOW)
case("http/1.0 cl", req(b"POST", version=b"HTTP/1.0", headers=((b"Content-Length", b"3"),), body=b"abc"))
case("expect", req(b"PUT", headers=((b"Host", b"a"), (b"Expect", b"100-continue"), (b"Content-Length", b"4")), body=b"data"))
case("pipelined three", req(target=b"/1") + req(target=b"/2") + req(b"POST", b"/3", headers=((b"Host", b"a"), (b"Content-Length", b"1")), body=b"z"))
case("header case", req(raw_headers=b"hOsT: a\r\ncOnTeNt-LeNgTh: 2\r\n", method=b"POST", body=b"ok") + FOLLOW)
case("ows", req(raw_headers=b"Host:a\r\nContent-Length:   2   \r\nX-A:\t1\t\r\n", method=b"POST", body=b"ok") + FOLLOW)

# What request smuggling is built from: every spelling of the framing
# fields that parsers have read differently.
TE_VALUES = [b"chunked", b" chunked", b"chunked ", b"\tchunked", b"Chunked", b"CHUNKED", b"chunked, identity",
             b"identity, chunked", b"xchunked", b"chunk", b"chunked;q=1", b"x, chunked", b"chunked, chunked",
             b"gzip, chunked", b"chunked\x0b", b"\x0bchunked", b"chunked\x00", b"\"chunked\"", b""]
TE_NAMES = [b"Transfer-Encoding", b"transfer-encoding", b"Transfer-Encoding ", b" Transfer-Encoding",
            b"Transfer_Encoding", b"Transfer-Encoding\t", b"X-Transfer-Encoding", b"Transfer-Encodings"]
CL_VALUES = [b"5", b"+5", b"-5", b"05", b" 5", b"5 ", b"5, 5", b"5,5", b"5, 6", b"0x5", b"5.0", b"", b"5\x00",
             b"99999999999999999999", b"1e1", b"\x0b5"]
SMUGGLED_BODY = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
for name in TE_NAMES:
    for value in TE_VALUES:
        raw = b"Host: a.test\r\n" + name + b": " + value + b"\r\n"
        case(f"te {name!r} {value!r}", req(b"POST", b"/te", raw_headers=raw, body=SMUGGLED_BODY) + FOLLOW)
        raw_cl = raw + b"Content-Length: 5\r\n"
        case(f"te+cl {name!r} {value!r}", req(b"POST", b"/tecl", raw_headers=raw_cl, body=SMUGGLED_BODY) + FOLLOW)
for value in CL_VALUES:
    raw = b"Host: a.test\r\nContent-Length: " + value + b"\r\n"
    case(f"cl {value!r}", req(b"POST", b"/cl", raw_headers=raw, body=b"helloGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n") + FOLLOW)
    case(f"cl twice {value!r}", req(b"POST", b"/cl2", raw_headers=raw + b"Content-Length: 5\r\n", body=b"hello") + FOLLOW)
for size in [b"5", b"5 ", b" 5", b"05", b"0x5", b"+5", b"-5", b"5;ext", b"5;e=\"v\"", b"5;e=v;f", b"5\t;e",
             b"5 ;e", b"FFFFFFFFFFFFFFFFFF", b"5\x00", b"", b"g"]:
    body = size + b"\r\nhello\r\n0\r\n\r\n"
    raw = b"Host: a.test\r\nTransfer-Encoding: chunked\r\n"
    data = req(b"POST", b"/cs", raw_headers=raw, body=body) + FOLLOW
    # RFC 9112 section 7.1.1 allows whitespace (BWS) before a chunk
    # extension's ";", and recipients must accept it; h11 does not.
    h11_reads = data.replace(b"5\t;e", b"5;e").replace(b"5 ;e", b"5;e")
    case(f"chunk size {size!r}", data, h11_reads)
for body in [b"5\nhello\n0\n\n", b"5\r\nhello0\r\n\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n",
             b"5\r\nhello\r\n0\r\nX: y\r\n", b"5\r\nhello\r\n0\r\nX y\r\n\r\n", b"3\r\nabc\r\n\r\n0\r\n\r\n",
             b"0\r\n\r\n\r\n", b"5\r\nhel", b"0\r\nContent-Length: 99\r\n\r\n"]:
    raw = b"Host: a.test\r\nTransfer-Encoding: chunked\r\n"
    case(f"chunk body {body!r}", req(b"POST", b"/cb", raw_headers=raw, body=body) + FOLLOW)

# Line endings, folding, bytes that have no place in a head.
for raw in [b"Host: a\nX: 1\n", b"Host: a\rX: 1\r\n", b"Host: a\r\nX: 1\r\n continued\r\n",
            b"Host: a\r\nX: 1\r\n\tcontinued\r\n", b"Host: a\r\n X: 1\r\n", b"Host: a\r\nX: a\x00b\r\n",
            b"Host: a\r\nX: a\x7fb\r\n", b"Host: a\r\nX Y: 1\r\n", b"Host: a\r\n: empty\r\n", b"Host: a\r\nX\x01: 1\r\n",
            b"Host: a\r\nX: \xff\xfe\r\n", b"Host: a\r\nX:\r\n", b"Host: a\r\n\r\n\r\n", b"\r\nHost: a\r\n"]:
    case(f"head bytes {raw!r}", req(raw_headers=raw) + FOLLOW)
for line in [b"GET  / HTTP/1.1", b"GET /  HTTP/1.1", b"GET\t/ HTTP/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0",
             b"GET / http/1.1", b"GET / HTTP/1.1 ", b"GET /", b"GET / HTTP/1", b"G\x00ET / HTTP/1.1",
             b"GET /a b HTTP/1.1", b"GET /\x7f HTTP/1.1", b"GET @ HTTP/1.1", b"GET a.test:80 HTTP/1.1",
             b"CONNECT a.test:443 HTTP/1.1", b"GET http://u@a.test/ HTTP/1.1", b"GET //a.test/ HTTP/1.1",
             b" GET / HTTP/1.1", b"GET / HTTP/1.1\x00"]:
    case(f"request line {line!r}", line + b"\r\nHost: a\r\n\r\n" + FOLLOW)
for raw in [b"", b"Host: a\r\nHost: a\r\n", b"Host: a\r\nHost: b\r\n", b"Host:\r\n", b"Host: a b\r\n",
            b"Host: a/b\r\n", b"Host: u@a\r\n", b"Host: a:99999\r\n", b"Host: [::1]:80\r\n", b"Host: a,b\r\n"]:
    case(f"host {raw!r}", req(raw_headers=raw) + FOLLOW)
    case(f"host 1.0 {raw!r}", req(version=b"HTTP/1.0", raw_headers=raw) + FOLLOW)

# Random mutations of well-formed requests: one byte replaced by, or one
# inserted from, the bytes framing turns on.
rng = random.Random(20261202)
ALPHABET = [b"\r", b"\n", b" ", b"\t", b"\x00", b",", b":", b";", b"0", b"5", b"a", b"-", b"\x0b", b"\x7f", b"\xff"]
bases = [data for name, data, _ in CASES[:60]] + [
    req(b"POST", b"/m", headers=((b"Host", b"a"), (b"Transfer-Encoding", b"chunked")), body=chunked([b"hello", b"w"])),
    req(b"POST", b"/m", headers=((b"Host", b"a"), (b"Content-Length", b"11")), body=b"hello world"),
]
for i in range(1200):
    data = bytearray(rng.choice(bases))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        byte = rng.choice(ALPHABET)
        if rng.random() < 0.5:
            data[at:at + 1] = byte
        else:
            data[at:at] = byte
    case(f"mutation {i}", bytes(data) + FOLLOW)


def main():
    out = sys.stdout
    for name, data, h11_reads in CASES:
        requests, error = read_requests(h11_reads)
        fields = [name.replace("\t", " ").replace("\n", " "), data.hex(), (error or "-").replace("\t", " ").replace("\n", " ")]
        for r in requests:
            method, target = r["method"].encode("latin-1").hex(), r["target"].encode("latin-1").hex()
            fields.append(f"{method} {target} {r['body'].hex() or '-'} {1 if r['ended'] else 0}")
        out.write("\t".join(fields) + "\n")


if __name__ == "__main__":
    main()
