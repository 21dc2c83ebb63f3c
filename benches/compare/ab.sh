#!/usr/bin/env bash
# Interleaved A/B of two ringway binaries (or two configurations) on one
# scenario: the way a change is judged on a noisy machine, where whole
# runs of compare.py drift.
#
#   benches/compare/ab.sh OLD_BINARY NEW_BINARY [options]
#     --path /16B          what wrk fetches (/16B, /4KiB, /64KiB, /1MiB)
#     --conns 64           wrk connections
#     --rounds 3           A/B pairs
#     --seconds 5          length of each run
#     --close              a new connection per request
#     --config-a FILE      ringway config for A (default: peers/ringway.toml)
#     --config-b FILE      ringway config for B (default: the same as A)
#
# The proxy runs pinned to the first CPU, wrk and the nginx origin to the
# last; each run prints requests and the proxy's user and system CPU time
# per request (from /proc/PID/stat), then the medians. Traffic stays on
# 127.0.0.1. Needs wrk and nginx (apt-get install -y wrk nginx).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { sed -n '2,18p' "$0"; exit 2; }
bin_a=$1 bin_b=$2
shift 2
path=/16B conns=64 rounds=3 seconds=5 close= config_a=$here/peers/ringway.toml config_b=
while [ $# -gt 0 ]; do
    case $1 in
        --path) path=$2; shift ;;
        --conns) conns=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --close) close=1 ;;
        --config-a) config_a=$2; shift ;;
        --config-b) config_b=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
config_b=${config_b:-$config_a}
for tool in wrk nginx taskset; do
    command -v $tool >/dev/null || { echo "needs $tool: apt-get install -y wrk nginx" >&2; exit 1; }
done

cpus=$(nproc)
proxy_cpu=0
load_cpu=$((cpus - 1))
port=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$config_a" | head -1)

tmp=$(mktemp -d /tmp/ringway-ab-XXXXXX)
chmod 755 "$tmp"
mkdir -m 755 "$tmp/www"
for spec in 4096:4KiB 65536:64KiB 1048576:1MiB; do
    head -c "${spec%%:*}" /dev/zero | tr '\0' x >"$tmp/www/${spec#*:}"
done
chmod 644 "$tmp"/www/*
sed "s#\$TMP#$tmp#g; /^worker_cpu_affinity/d" \
    "$here/peers/origin-nginx.conf" >"$tmp/origin.conf"
taskset -c $load_cpu nginx -c "$tmp/origin.conf" &
origin=$!
proxy=
cleanup() {
    [ -n "$proxy" ] && kill "$proxy" 2>/dev/null || true
    kill "$origin" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
sleep 0.5

wrk_args=(-t1 -c"$conns")
[ -n "$close" ] && wrk_args+=(-H "Connection: close")

# One run: prints "requests user_us sys_us total_us".
run_one() {
    local bin=$1 config=$2
    taskset -c $proxy_cpu "$bin" run --config "$config" >"$tmp/proxy.log" 2>&1 &
    proxy=$!
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.1
    done
    taskset -c $load_cpu wrk "${wrk_args[@]}" -d1s "http://127.0.0.1:$port$path" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$proxy/stat)
    local out
    out=$(taskset -c $load_cpu wrk "${wrk_args[@]}" -d"${seconds}s" "http://127.0.0.1:$port$path")
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$proxy/stat)
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
    proxy=
    # An io_uring listener can stay bound a moment after its process
    # exits: wait until the port is free, or the next start fails.
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null || break
        sleep 0.1
    done
    local n tick
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    tick=$(getconf CLK_TCK)
    awk -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$tick" \
        'BEGIN { printf "%d %.2f %.2f %.2f\n", n, u * 1e6 / t / n, s * 1e6 / t / n, (u + s) * 1e6 / t / n }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "A: $bin_a ($config_a)"
echo "B: $bin_b ($config_b)"
echo "wrk ${wrk_args[*]} -d${seconds}s http://127.0.0.1:$port$path; proxy on CPU $proxy_cpu, load on CPU $load_cpu"
: >"$tmp/a" && : >"$tmp/b"
for round in $(seq "$rounds"); do
    a=$(run_one "$bin_a" "$config_a")
    echo "round $round A: requests, user, system, total CPU µs/req: $a"
    echo "$a" >>"$tmp/a"
    b=$(run_one "$bin_b" "$config_b")
    echo "round $round B: requests, user, system, total CPU µs/req: $b"
    echo "$b" >>"$tmp/b"
done
for side in a b; do
    reqs=$(awk '{print $1}' "$tmp/$side" | median)
    cpu=$(awk '{print $4}' "$tmp/$side" | median)
    echo "median ${side^^}: $reqs requests, $cpu CPU µs/req"
done
