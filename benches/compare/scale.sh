#!/bin/bash
# Multi-core scaling on a 16-CPU machine: ringway and nginx as reverse
# proxies with N workers (1, 2, 4, 8, 12) pinned to CPUs 0..N-1; the origin
# (nginx, 4 workers) on CPUs 12-15 and wrk (4 threads) on CPUs 8-11, so for
# N <= 8 the proxy has its CPUs to itself (at 12 they overlap wrk's).
# Reports req/s and the proxy's CPU µs/request, two rounds each, and wrk
# straight at the origin as the ceiling.
#
# TOOLS is a folder with bin/wrk, bin/nginx and bin/ringway (and lib/ for
# their shared libraries if the machine lacks them); results go to
# $OUT/scale.txt. Only 127.0.0.1 is contacted.
#
#   TOOLS=/path/to/tools OUT=/tmp/out benches/compare/scale.sh
set -u
D=${TOOLS:-$(cd "$(dirname "$0")" && pwd)}
export LD_LIBRARY_PATH=$D/lib
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T=$(mktemp -d); chmod 755 $T; mkdir -p $T/www /var/lib/nginx; chmod 755 $T/www
ulimit -n 65536 2>/dev/null
printf '0123456789abcdef' > $T/www/16B; chmod 644 $T/www/16B
cat > $T/origin.conf <<C
worker_processes 4;
worker_cpu_affinity 0001000000000000 0010000000000000 0100000000000000 1000000000000000;
worker_rlimit_nofile 65536;
daemon off; pid $T/origin.pid; error_log $T/origin.log warn;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18000 reuseport backlog=4096;
    location = /16B { default_type text/plain; return 200 "0123456789abcdef"; } } }
C
$D/bin/nginx -c $T/origin.conf -e $T/origin.log &
sleep 1
nginx_proxy() { # $1 workers
  local mask=""; local n=$1; local i
  local affinity=""
  for ((i=0;i<n;i++)); do affinity="$affinity $(python3 -c "print(format(1<<$i,'016b'))")"; done
  cat > $T/proxy.conf <<C
worker_processes $n;
worker_cpu_affinity$affinity;
worker_rlimit_nofile 65536;
daemon off; pid $T/proxy.pid; error_log $T/proxy.log warn;
events { worker_connections 16384; multi_accept on; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:18000; keepalive 1024; keepalive_requests 10000000; }
  server { listen 127.0.0.1:18081 reuseport backlog=4096;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
  $D/bin/nginx -c $T/proxy.conf -e $T/proxy.log &
}
cpu_of() { # pids...
  local t=0; for p in "$@"; do local s=($(awk '{print $14, $15}' /proc/$p/stat 2>/dev/null)); t=$((t + ${s[0]:-0} + ${s[1]:-0})); done; echo $t; }
children() { echo $1 $(pgrep -P $1); }
run() { # name port pids conns
  local name=$1 port=$2 conns=$4; local pids=($3)
  local a=$(cpu_of ${pids[@]})
  local out=$(taskset -c 8-11 $D/bin/wrk -t4 -c$conns -d8s http://127.0.0.1:$port/16B)
  local b=$(cpu_of ${pids[@]})
  local req=$(echo "$out" | awk '/requests in/{print $1}'); local rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  local err=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ')
  python3 -c "print(f'$name workers=$W conns=$conns rps={float($rps):.0f} cpu_us_per_req={($b-$a)*1e4/$req:.2f} $err')"
}
echo "machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee $OUT/scale.txt
for W in 1 2 4 8 12; do
  C=$((64*W)); [ $C -gt 1024 ] && C=1024
  taskset -c 0-$((W-1)) $D/bin/ringway reverse --listen 127.0.0.1:18080 --upstream 127.0.0.1:18000 --workers $W 2>$T/rw.log &
  RW=$!
  nginx_proxy $W; sleep 1.5
  NG=$(cat $T/proxy.pid)
  taskset -c 8-11 $D/bin/wrk -t4 -c$C -d2s http://127.0.0.1:18080/16B >/dev/null; taskset -c 8-11 $D/bin/wrk -t4 -c$C -d2s http://127.0.0.1:18081/16B >/dev/null
  for round in 1 2; do
    run ringway 18080 "$RW" $C | tee -a $OUT/scale.txt
    run nginx 18081 "$(children $NG)" $C | tee -a $OUT/scale.txt
  done
  kill $RW; kill $NG; sleep 1.5
done
echo "wrk direct to origin (ceiling, 4 threads, c256):" | tee -a $OUT/scale.txt
taskset -c 8-11 $D/bin/wrk -t4 -c256 -d8s http://127.0.0.1:18000/16B | grep -E "Requests/sec" | tee -a $OUT/scale.txt
kill $(cat $T/origin.pid)
