"""How h11, an independent strict HTTP/1.1 parser, reads request bytes.

Shared by the case generator (what a client sent) and, for its framing
checks, the origin (what ringway forwarded).

Two readings of RFC 9112 that h11 does not make are applied here, so that
ringway's compliance with them is not counted as a disagreement: empty
lines (CRLF) before a request line are ignored (section 2.2: a server
"SHOULD ignore at least one empty line"), and a request after an HTTP/1.0
request that asked for keep-alive is read (h11 closes there). Each
request is read by a fresh h11 connection, from where the last one ended.
"""

import h11


def _one_request(data, eof):
    """Reads one request from the front of `data` with a fresh h11
    connection: (request or None, the bytes after it, error or None)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(bytes(data))
    if eof:
        conn.receive_data(b"")
    current = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            if current is not None:
                current["ended"] = False
            return current, b"", None
        if isinstance(event, h11.Request):
            current = {
                "method": event.method.decode("latin-1"),
                "target": event.target.decode("latin-1"),
                "version": event.http_version.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in event.headers],
                "body": b"",
                "ended": False,
            }
        elif isinstance(event, h11.Data):
            current["body"] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            current["ended"] = True
            rest, _closed = conn.trailing_data
            return current, bytes(rest), None


def read_requests(data, eof=True):
    """The requests h11 reads from `data`, in order, and the error that
    stopped it (None when the bytes ended cleanly between messages).

    Each request is a dict: method, target, version, headers (lowercased
    names), body (bytes) and whether it ended (False: the bytes ran out in
    the middle of it). Reading stops after a CONNECT or an upgrade: what
    follows would be another protocol's bytes."""
    requests = []
    rest = bytes(data)
    while True:
        while rest.startswith(b"\r\n"):
            rest = rest[2:]
        if not rest:
            return requests, None
        try:
            request, rest, _ = _one_request(rest, eof)
        except h11.RemoteProtocolError as e:
            return requests, str(e) or repr(e)
        if request is None:
            return requests, None
        requests.append(request)
        if not request["ended"]:
            return requests, None
        if request["method"] == "CONNECT" or any(n == "upgrade" for n, _ in request["headers"]):
            return requests, None
