#!/bin/bash
# The public HTTP caching test suite (http-tests/cache-tests) behind
# ringway: its Node origin on 127.0.0.1:18000, ringway (one worker, a
# [cache.main] on its one route) on 127.0.0.1:18002, the suite's client
# against ringway. Prints the summary beside the published results of the
# same checkout.
#
#   benches/cache-tests/run.sh CHECKOUT [RINGWAY_BINARY]
#
# CHECKOUT: a clone of https://github.com/http-tests/cache-tests with
# `npm i` done. Its server is made to listen on 127.0.0.1 only. Writes
# /tmp/cache-tests-ringway.json (the raw results).
set -euo pipefail
CHECKOUT=$(cd "$1" && pwd)
BIN=${2:-target/release/ringway}
HERE=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/ct-XXXX)
sed -i "s/server.listen(port)$/server.listen(port, '127.0.0.1')/" "$CHECKOUT/test-engine/server/server.mjs"
cat > "$tmp/ringway.toml" <<TOML
[runtime]
workers = 1
pin_cpus = false

[log]
access_log = false

[cache.main]
memory = "64MiB"
max_object = "8MiB"

[[upstream]]
name = "origin"
servers = ["127.0.0.1:18000"]

[[listener]]
name = "web"
listen = "127.0.0.1:18002"
mode = "reverse"

[[listener.route]]
upstream = "origin"
cache = "main"
TOML
# In a session of its own, so that npm and node stop together.
setsid bash -c "cd '$CHECKOUT' && exec npm run --silent server --port=18000" > "$tmp/server.log" 2>&1 & SERVER=$!
"$BIN" run "$tmp/ringway.toml" > "$tmp/ringway.log" 2>&1 & PROXY=$!
trap 'kill $PROXY 2>/dev/null; kill -- -$SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18002) 2>/dev/null && break; sleep 0.2; done
(cd "$CHECKOUT" && npm run --silent cli --base=http://127.0.0.1:18002) > /tmp/cache-tests-ringway.json
node "$HERE/summary.mjs" "$CHECKOUT" /tmp/cache-tests-ringway.json
