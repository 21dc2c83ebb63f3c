#!/usr/bin/env bash
# Cache hits: ringway's [cache] against nginx's proxy_cache on the same
# object, one worker each, interleaved runs. The proxy is pinned to the
# first CPU, wrk and the nginx origin (which sends Cache-Control:
# max-age=3600) to the last; each run warms the object first, then prints
# requests/s and the proxy's CPU time per request (user and system, from
# /proc/PID/stat). Traffic stays on 127.0.0.1.
#
#   benches/compare/cache.sh RINGWAY_BINARY [--paths "/16B /64KiB /1MiB"] [--rounds 3] [--seconds 5] [--conns 64] [--disk] [--floor]
#
# --disk: ringway's cache with a disk tier (bodies in files under a
# temporary directory, as nginx keeps its cache files).
# --floor: also runs floor.c (built with gcc), a server that does nothing
# but send one head and one file (from the page cache) per request with
# sendfile: close to the kernel's cost of a hit on this machine. Its
# columns are its requests/s and its CPU µs per request, and that CPU's
# ratio to nginx's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1; shift
paths="/16B /64KiB /1MiB" rounds=3 seconds=5 conns=64 disk= floor=
while [ $# -gt 0 ]; do
    case $1 in
        --paths) paths=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --conns) conns=$2; shift ;;
        --disk) disk=1 ;;
        --floor) floor=1 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cpus=$(nproc); proxy_cpu=0; load_cpu=$((cpus - 1))
tmp=$(mktemp -d /tmp/ringway-cache-XXXXXX); chmod 755 "$tmp"; mkdir -m 755 "$tmp/www"
for spec in 16:16B 65536:64KiB 1048576:1MiB; do
    head -c "${spec%%:*}" /dev/zero | tr '\0' x >"$tmp/www/${spec#*:}"
done
chmod 644 "$tmp"/www/*
sed "s#\$TMP#$tmp#g; /^worker_cpu_affinity/d; s#^    server {#    add_header Cache-Control \"max-age=3600\" always;\n    server {#" \
    "$here/peers/origin-nginx.conf" >"$tmp/origin.conf"
sed "s#\$TMP#$tmp#g" "$here/peers/nginx-cache.conf" >"$tmp/nginx.conf"
cp "$here/peers/ringway-cache.toml" "$tmp/ringway.toml"
if [ -n "$floor" ]; then
    gcc -O2 -o "$tmp/floor" "$here/floor.c"
    for p in $paths; do
        [ -f "$tmp/www$p" ] || { echo "--floor serves only /16B /64KiB /1MiB, not $p" >&2; exit 2; }
    done
fi
if [ -n "$disk" ]; then
    sed -i "s#^max_object = .*#&\ndisk = { path = \"$tmp/ringway-cache\", size = \"1GiB\" }#" "$tmp/ringway.toml"
fi
taskset -c $load_cpu nginx -c "$tmp/origin.conf" & origin=$!
proxy=
cleanup() {
    [ -n "$proxy" ] && kill "$proxy" 2>/dev/null || true
    kill "$origin" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
sleep 0.5

# One run of `name` on `path`: prints "requests/s user_us sys_us total_us".
run_one() {
    local name=$1 path=$2 port
    if [ "$name" = ringway ]; then
        port=18080
        rm -rf "$tmp/ringway-cache"
        taskset -c $proxy_cpu "$bin" run --config "$tmp/ringway.toml" >"$tmp/proxy.log" 2>&1 & proxy=$!
    elif [ "$name" = floor ]; then
        port=18090
        taskset -c $proxy_cpu "$tmp/floor" $port "$tmp/www${path}" >"$tmp/proxy.log" 2>&1 & proxy=$!
    else
        port=18081
        rm -rf "$tmp/nginx-cache"
        taskset -c $proxy_cpu nginx -c "$tmp/nginx.conf" >"$tmp/proxy.log" 2>&1 & proxy=$!
    fi
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    # The master's pid for nginx; its one worker does the work.
    local pid=$proxy
    if [ "$name" = nginx ]; then sleep 0.2; pid=$(pgrep -P "$proxy" | head -1); fi
    curl -s -o /dev/null "http://127.0.0.1:$port$path"; sleep 0.2
    taskset -c $load_cpu wrk -t1 -c"$conns" -d1s "http://127.0.0.1:$port$path" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
    local out
    out=$(taskset -c $load_cpu wrk -t1 -c"$conns" -d"${seconds}s" "http://127.0.0.1:$port$path")
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
    local origin_hits
    kill "$proxy"; wait "$proxy" 2>/dev/null || true; proxy=
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null || break; sleep 0.1; done
    local n tick
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    tick=$(getconf CLK_TCK)
    awk -v n="$n" -v d="$seconds" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$tick" \
        'BEGIN { printf "%d %.2f %.2f %.2f\n", n / d, u * 1e6 / t / n, s * 1e6 / t / n, (u + s) * 1e6 / t / n }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "wrk -t1 -c$conns -d${seconds}s; proxy on CPU $proxy_cpu, wrk and origin on CPU $load_cpu; $rounds rounds"
if [ -n "$floor" ]; then
    echo "| object | ringway req/s | nginx req/s | ratio | ringway CPU µs/req | nginx CPU µs/req | ratio | floor req/s | floor CPU µs/req | floor / nginx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
else
    echo "| object | ringway req/s | nginx req/s | ratio | ringway CPU µs/req | nginx CPU µs/req | ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
fi
for path in $paths; do
    : >"$tmp/r"; : >"$tmp/n"; : >"$tmp/f"
    for _ in $(seq "$rounds"); do
        run_one ringway "$path" >>"$tmp/r"
        run_one nginx "$path" >>"$tmp/n"
        if [ -n "$floor" ]; then run_one floor "$path" >>"$tmp/f"; fi
    done
    cat "$tmp/r" "$tmp/n" "$tmp/f" >&2
    rr=$(awk '{print $1}' "$tmp/r" | median); nr=$(awk '{print $1}' "$tmp/n" | median)
    rc=$(awk '{print $4}' "$tmp/r" | median); nc=$(awk '{print $4}' "$tmp/n" | median)
    line=$(awk -v p="$path" -v rr="$rr" -v nr="$nr" -v rc="$rc" -v nc="$nc" \
        'BEGIN { printf "| %s | %d | %d | %.2fx | %.2f | %.2f | %.2fx |", p, rr, nr, rr / nr, rc, nc, rc / nc }')
    if [ -n "$floor" ]; then
        fr=$(awk '{print $1}' "$tmp/f" | median); fc=$(awk '{print $4}' "$tmp/f" | median)
        line+=$(awk -v fr="$fr" -v fc="$fc" -v nc="$nc" 'BEGIN { printf " %d | %.2f | %.2fx |", fr, fc, fc / nc }')
    fi
    echo "$line"
done
