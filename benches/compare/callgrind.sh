#!/bin/bash
# Instructions per request, whole process, under callgrind: 20,000
# keep-alive `GET /16B` over 8 connections through ringway to an nginx
# origin (the epoll driver: valgrind does not follow io_uring).
#
#   benches/compare/callgrind.sh BIN NAME [CONFIG]
#
# CONFIG defaults to peers/ringway.toml with the legacy driver; it must
# listen on 127.0.0.1:18080 and send to 127.0.0.1:18000. Writes
# /tmp/cg.NAME.out; divide its "summary" by 20,000. Differences under
# about 200 instructions a request are noise (start-up, event-loop wakes).
set -euo pipefail
BIN=$1; NAME=$2
HERE=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/rw-XXXX); chmod 755 "$tmp"; mkdir -m 755 "$tmp/www"
CFG=${3:-$tmp/ringway.toml}
if [ -z "${3:-}" ]; then
  sed 's/^driver = .*/driver = "legacy"/; s/^pin_cpus = .*/pin_cpus = false/' "$HERE/peers/ringway.toml" > "$CFG"
fi
sed "s#\$TMP#$tmp#g; /^worker_cpu_affinity/d" "$HERE/peers/origin-nginx.conf" > "$tmp/origin.conf"
taskset -c 1 nginx -c "$tmp/origin.conf" & sleep 0.5
valgrind --tool=callgrind --callgrind-out-file="/tmp/cg.$NAME.out" "$BIN" run --config "$CFG" > "/tmp/cg.$NAME.log" 2>&1 & P=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.2; done
python3 - <<'PY'
import socket
socks = [socket.create_connection(("127.0.0.1", 18080)) for _ in range(8)]
for _ in range(2500):
    for s in socks:
        s.sendall(b"GET /16B HTTP/1.1\r\nHost: bench\r\n\r\n")
    for s in socks:
        d = b""
        while not d.endswith(b"0123456789abcdef"):
            d += s.recv(4096)
PY
kill -INT $P; wait $P 2>/dev/null || true
nginx -c "$tmp/origin.conf" -s stop 2>/dev/null || true; sleep 0.3; rm -rf "$tmp"
echo "$NAME: $(grep -m1 summary "/tmp/cg.$NAME.out" | awk '{printf "%.0f instructions a request\n", $2/20000}')"
