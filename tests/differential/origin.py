"""The differential test's origin: every connection is read with h11, a
strict parser independent of ringway's; each request is logged and
answered, and anything h11 refuses is logged as an error.

Prints its port on the first line of stdout, then serves until killed.
`GET /__log?since=N` on a direct connection returns the log entries from
index N on, as JSON (method, target and body in hex). Listens on
127.0.0.1 only."""

import json
import socket
import sys
import threading

import h11

LOG = []
LOCK = threading.Lock()


def record(entry):
    with LOCK:
        entry["index"] = len(LOG)
        LOG.append(entry)


def respond(conn, sock, status, body, head_request=False):
    headers = [("content-length", str(len(body))), ("x-origin", "h11")]
    sock.sendall(conn.send(h11.Response(status_code=status, headers=headers)))
    if not head_request:
        sock.sendall(conn.send(h11.Data(data=body)))
    sock.sendall(conn.send(h11.EndOfMessage()))


def serve(sock):
    conn = h11.Connection(h11.SERVER)
    request = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                if not data and request is not None:
                    record({"kind": "partial", "method": request.method.decode("latin-1"),
                            "target": request.target.decode("latin-1"), "body_so_far": len(body)})
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if request.target.startswith(b"/__log"):
                    since = int(request.target.split(b"since=")[1]) if b"since=" in request.target else 0
                    with LOCK:
                        payload = json.dumps(LOG[since:]).encode()
                    respond(conn, sock, 200, payload)
                else:
                    record({
                        "kind": "request",
                        "method": request.method.hex(),
                        "target": request.target.hex(),
                        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
                        "body": body.hex(),
                    })
                    respond(conn, sock, 200, b"ok", head_request=request.method == b"HEAD")
                request, body = None, b""
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # h11 says this connection must close
                conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        record({"kind": "error", "error": str(e) or repr(e)})
    except h11.LocalProtocolError as e:
        record({"kind": "error", "error": "origin: " + (str(e) or repr(e))})
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
