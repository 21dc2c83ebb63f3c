#!/usr/bin/env bash
# A normal request's latency through ringway while 2,000 slowloris
# connections (heads that never end) are held open, next to the same
# without them, interleaved:
#
#   benches/compare/slowloris.sh [BINARY] [--conns 2000] [--rounds 3] [--seconds 5]
#
# ringway (benches/compare/peers/ringway.toml) runs on the first CPU, the
# nginx origin, wrk and the slowloris client on the last. Each round
# prints wrk's p50 and p99 latency and requests/s, idle then under
# slowloris; the medians and the loaded/idle ratios close the report.
# Traffic stays on 127.0.0.1. Needs wrk and nginx.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/ringway}
[ $# -gt 0 ] && shift
conns=2000 rounds=3 seconds=5
while [ $# -gt 0 ]; do
    case $1 in
        --conns) conns=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
config=$here/peers/ringway.toml
port=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$config" | head -1)
load_cpu=$(($(nproc) - 1))

tmp=$(mktemp -d /tmp/ringway-slowloris-XXXXXX)
chmod 755 "$tmp"
mkdir -m 755 "$tmp/www"
sed "s#\$TMP#$tmp#g; /^worker_cpu_affinity/d" "$here/peers/origin-nginx.conf" >"$tmp/origin.conf"
taskset -c "$load_cpu" nginx -c "$tmp/origin.conf" &
origin=$!
ulimit -n 20000 2>/dev/null || true
taskset -c 0 "$bin" run --config "$config" >"$tmp/proxy.log" 2>&1 &
proxy=$!
loris=
cleanup() {
    [ -n "$loris" ] && kill "$loris" 2>/dev/null || true
    kill "$proxy" "$origin" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
done

# One wrk run: "p50_ms p99_ms requests_per_s".
measure() {
    taskset -c "$load_cpu" wrk -t1 -c8 -d"${seconds}s" --latency "http://127.0.0.1:$port/16B" |
        awk '
            function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
            $1 == "50%" { p50 = ms($2) }
            $1 == "99%" { p99 = ms($2) }
            /Requests\/sec/ { rps = $2 }
            END { printf "%.3f %.3f %.0f\n", p50, p99, rps }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "ringway: $bin ($config), $conns slowloris connections, wrk -t1 -c8 -d${seconds}s, proxy on CPU 0, load on CPU $load_cpu"
taskset -c "$load_cpu" wrk -t1 -c8 -d1s "http://127.0.0.1:$port/16B" >/dev/null
: >"$tmp/idle" && : >"$tmp/loaded"
for round in $(seq "$rounds"); do
    idle=$(measure)
    echo "round $round idle:   p50 ms, p99 ms, req/s: $idle"
    echo "$idle" >>"$tmp/idle"
    taskset -c "$load_cpu" python3 "$here/slowloris.py" "$port" "$conns" 5 >"$tmp/loris.log" &
    loris=$!
    # Until all are open.
    for _ in $(seq 100); do
        open=$(awk '/^slowloris:/ {n = $2} END {print n + 0}' "$tmp/loris.log")
        [ "$open" -ge "$conns" ] && break
        sleep 0.2
    done
    sleep 1
    loaded=$(measure)
    echo "round $round loaded: p50 ms, p99 ms, req/s: $loaded ($(tail -1 "$tmp/loris.log"))"
    echo "$loaded" >>"$tmp/loaded"
    kill "$loris"; wait "$loris" 2>/dev/null || true
    loris=
    sleep 2
done
for side in idle loaded; do
    p50=$(awk '{print $1}' "$tmp/$side" | median)
    p99=$(awk '{print $2}' "$tmp/$side" | median)
    rps=$(awk '{print $3}' "$tmp/$side" | median)
    echo "median $side: p50 $p50 ms, p99 $p99 ms, $rps req/s"
    eval "${side}_p50=$p50 ${side}_p99=$p99"
done
awk -v a="$idle_p50" -v b="$loaded_p50" -v c="$idle_p99" -v d="$loaded_p99" \
    'BEGIN { printf "loaded/idle: p50 %.2fx, p99 %.2fx\n", b / a, d / c }'
