#!/usr/bin/env python3
"""Side-by-side benchmark of ringway against nginx and HAProxy (and, for
forward proxying, Squid and tinyproxy), on one machine, in one run.

Every proxy gets the same number of workers pinned to the same CPUs; the
origin (nginx) and wrk run on the other CPUs. Proxies run interleaved
(A B C A B C ...) for several rounds and the report gives medians of
requests/s, p50 and p99 latency, and the proxy's own CPU time per request
(utime + stime of its processes from /proc, divided by requests completed),
plus wrk straight at the origin as the ceiling.

Nothing is installed: missing tools are named with the command that
installs them. Only 127.0.0.1 is ever contacted.

    benches/compare/compare.py              # full run
    benches/compare/compare.py --quick      # one short keep-alive round
    benches/compare/compare.py --help
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
RESULTS = ROOT / "benches" / "results"

ORIGIN_PORT = 18000
PORTS = {
    "ringway": 18080,
    "nginx": 18081,
    "haproxy": 18082,
    "squid": 18083,
    "tinyproxy": 18084,
    "ringway-forward": 18085,
}
SIZES = {"16B": 16, "4KiB": 4096, "64KiB": 65536, "1MiB": 1 << 20, "256MiB": 256 << 20}
TICK = os.sysconf("SC_CLK_TCK")

TOOLS = {
    "wrk": "wrk",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "squid": "squid",
    "tinyproxy": "tinyproxy",
    "curl": "curl",
}

# Which proxies each suite compares.
SUITES = {
    "reverse": ["ringway", "nginx", "haproxy"],
    "forward": ["ringway-forward", "squid", "tinyproxy"],
    "connect": ["ringway-forward", "squid"],
}


def die(msg):
    print(f"compare: {msg}", file=sys.stderr)
    sys.exit(1)


def check_tools(needed):
    missing = [t for t in needed if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        die(
            "missing tools: "
            + ", ".join(missing)
            + "\ninstall them with:  apt-get install -y "
            + " ".join(TOOLS[t] for t in missing)
        )


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def port_free(port):
    with socket.socket() as s:
        # SO_REUSEADDR: connections in TIME_WAIT from an earlier run do not
        # count, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    die(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def cpu_split(workers):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        die("needs at least 2 CPUs: the proxy on some, wrk and the origin on the others")
    proxy = cpus[: min(workers, len(cpus) - 1)]
    rest = [c for c in cpus if c not in proxy]
    return proxy, rest


# ---------------------------------------------------------------- configs


def write_origin(tmp, load_cpus):
    """nginx as the origin: `return 200` with a fixed 16-byte body, static
    files for the larger sizes (a config token cannot hold a 4 KiB body)."""
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    # nginx's workers run unprivileged: the files must be readable by all.
    tmp.chmod(0o755)
    www.chmod(0o755)
    for name, size in SIZES.items():
        (www / name).write_bytes(b"x" * size)
        (www / name).chmod(0o644)
    conf = f"""# Origin for the comparison: answers fixed bodies as fast as nginx can.
worker_processes 1;
worker_cpu_affinity {cpu_mask(load_cpus[-1:])};
daemon off;
master_process on;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=100 inactive=600s;
    open_file_cache_valid 600s;
    server {{
        listen 127.0.0.1:{ORIGIN_PORT} reuseport backlog=4096;
        location = /16B {{ default_type text/plain; return 200 "0123456789abcdef"; }}
        location / {{ root {www}; default_type application/octet-stream; }}
    }}
}}
"""
    path = PEERS / "origin-nginx.conf"
    path.write_text(conf.replace(str(tmp), "$TMP"))
    real = tmp / "origin.conf"
    real.write_text(conf)
    return real


def cpu_mask(cpus):
    width = max(cpus) + 1
    return " ".join("".join("1" if width - 1 - i == c else "0" for i in range(width)) for c in cpus)


def write_ringway(tmp, workers):
    conf = f"""# ringway as a reverse proxy for the comparison (see compare.py).
[runtime]
workers = {workers}
driver = "auto"
pin_cpus = true          # the harness runs it under taskset: pinned within those CPUs

[log]
level = "warn"
access_log = false       # like the peers

[http]
upstream_keepalive = 256

[[listener]]
name = "bench"
listen = "127.0.0.1:{PORTS['ringway']}"
mode = "reverse"

[[listener.route]]
upstream = "origin"

[[upstream]]
name = "origin"
servers = ["127.0.0.1:{ORIGIN_PORT}"]
"""
    path = PEERS / "ringway.toml"
    path.write_text(conf)
    return path


def write_ringway_forward(tmp, workers):
    conf = f"""# ringway as a forward proxy for the comparison (see compare.py).
[runtime]
workers = {workers}
pin_cpus = true

[log]
level = "warn"
access_log = false       # like the peers

[[listener]]
name = "outbound"
listen = "127.0.0.1:{PORTS['ringway-forward']}"
mode = "forward"
acl = "bench"

[acl.bench]
default = "deny"
block_private = true
private_allow = ["127.0.0.1/32"]     # the origin is on loopback
connect_ports = [{ORIGIN_PORT}]

[[acl.bench.rule]]
action = "allow"
src = ["127.0.0.0/8"]
"""
    path = PEERS / "ringway-forward.toml"
    path.write_text(conf)
    return path


def write_squid(tmp, workers, cpus):
    run = tmp / "squid"
    run.mkdir(exist_ok=True)
    run.chmod(0o777)
    smp = f"workers {workers}\ncpu_affinity_map process_numbers={','.join(str(i + 1) for i in range(workers))} cores={','.join(str(c + 1) for c in cpus)}\n" if workers > 1 else ""
    conf = f"""# Squid as a forward proxy for the comparison: no cache (proxying is
# what is compared), no access log, persistent connections both sides.
http_port 127.0.0.1:{PORTS['squid']}
{smp}acl localnet src 127.0.0.0/8
acl origin_port port {ORIGIN_PORT}
acl CONNECT method CONNECT
http_access deny CONNECT !origin_port
http_access allow localnet
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_log $TMP/squid/cache.log
pid_filename $TMP/squid/squid.pid
coredump_dir $TMP/squid
shutdown_lifetime 1 seconds
client_persistent_connections on
server_persistent_connections on
"""
    (PEERS / "squid.conf").write_text(conf)
    real = tmp / "squid.conf"
    real.write_text(conf.replace("$TMP", str(tmp)))
    return real


def write_tinyproxy(tmp):
    conf = f"""# tinyproxy as a forward proxy for the comparison.
Port {PORTS['tinyproxy']}
Listen 127.0.0.1
Timeout 600
MaxClients 1000
Allow 127.0.0.1
ConnectPort {ORIGIN_PORT}
LogLevel Critical
PidFile "$TMP/tinyproxy.pid"
"""
    (PEERS / "tinyproxy.conf").write_text(conf)
    real = tmp / "tinyproxy.conf"
    real.write_text(conf.replace("$TMP", str(tmp)))
    return real


def write_nginx(tmp, workers, cpus):
    conf = f"""# nginx as a reverse proxy for the comparison, fairly tuned:
# upstream keepalive, HTTP/1.1 upstream, no access log, pinned workers.
worker_processes {workers};
worker_cpu_affinity {cpu_mask(cpus)};
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream origin {{
        server 127.0.0.1:{ORIGIN_PORT};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']} reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            # Buffers that hold a 64 KiB response, and no temporary files:
            # nginx's defaults spill larger responses to disk.
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_busy_buffers_size 32k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""
    (PEERS / "nginx.conf").write_text(conf)
    real = tmp / "nginx.conf"
    real.write_text(conf.replace("$TMP", str(tmp)))
    return real


def write_haproxy(tmp, workers, cpus):
    cpu_map = f"cpu-map auto:1/1-{workers} {','.join(map(str, cpus))}"
    conf = f"""# HAProxy as a reverse proxy for the comparison, fairly tuned:
# connection reuse always, threads = workers, pinned, no logging.
global
    nbthread {workers}
    {cpu_map}
    maxconn 8000
    tune.bufsize 16384

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend bench
    bind 127.0.0.1:{PORTS['haproxy']}
    default_backend origin

backend origin
    server origin 127.0.0.1:{ORIGIN_PORT}
"""
    path = PEERS / "haproxy.cfg"
    path.write_text(conf)
    return path


# ---------------------------------------------------------------- processes


class Proc:
    def __init__(self, name, argv, cpus, port):
        self.name = name
        self.port = port
        prefix = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        self.p = subprocess.Popen(
            prefix + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_port(port)
        except SystemExit:
            err = self.p.stderr.read(4000).decode(errors="replace") if self.p.poll() is not None else ""
            self.stop()
            die(f"{name} did not start: {err}")

    def pids(self):
        """The process and its descendants."""
        found = {self.p.pid}
        changed = True
        while changed:
            changed = False
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid in found and int(entry) not in found:
                    found.add(int(entry))
                    changed = True
        return found

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / TICK

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def start_peer(name, tmp, workers, cpus, ringway_bin):
    if name == "ringway":
        conf = write_ringway(tmp, workers)
        return Proc(name, [str(ringway_bin), "run", "--config", str(conf)], cpus, PORTS[name])
    if name == "nginx":
        conf = write_nginx(tmp, workers, cpus)
        return Proc(name, [tool("nginx"), "-c", str(conf), "-e", str(tmp / "nginx-error.log")], cpus, PORTS[name])
    if name == "haproxy":
        conf = write_haproxy(tmp, workers, cpus)
        return Proc(name, [tool("haproxy"), "-db", "-f", str(conf)], cpus, PORTS[name])
    if name == "ringway-forward":
        conf = write_ringway_forward(tmp, workers)
        return Proc(name, [str(ringway_bin), "run", "--config", str(conf)], cpus, PORTS[name])
    if name == "squid":
        conf = write_squid(tmp, workers, cpus)
        return Proc(name, [tool("squid"), "-N", "-f", str(conf)], cpus, PORTS[name])
    if name == "tinyproxy":
        conf = write_tinyproxy(tmp)
        return Proc(name, [tool("tinyproxy"), "-d", "-c", str(conf)], cpus, PORTS[name])
    die(f"unknown peer {name}")


# ---------------------------------------------------------------- wrk

LAT_RE = re.compile(r"^\s+(50|99)\.000%\s+([\d.]+)(us|ms|s)\s*$")


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for line in out.splitlines():
        lm = re.match(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", line)
        if lm:
            scale = {"us": 1, "ms": 1000, "s": 1_000_000}[lm.group(3)]
            lat[lm.group(1)] = float(lm.group(2)) * scale
    if not m or not total:
        die("could not read wrk's output:\n" + out)
    bad_status = int(errors.group(1)) if errors else 0
    socket_errors = sum(int(x) for x in sock.groups()[:3]) if sock else 0
    return {
        "rps": float(m.group(1)),
        "requests": int(total.group(1)),
        "p50_us": lat.get("50"),
        "p99_us": lat.get("99"),
        # Non-2xx answers make a run meaningless; socket errors (a proxy
        # closing keep-alive connections, as tinyproxy does) are reported.
        "bad_status": bad_status,
        "errors": bad_status + socket_errors,
    }


def run_wrk(url, conns, seconds, load_cpus, close=False, script=None):
    argv = ["taskset", "-c", ",".join(map(str, load_cpus)), tool("wrk"), "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    if script:
        argv += ["-s", str(script)]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out), " ".join(argv[3:])


# ---------------------------------------------------------------- scenarios


def scenarios(suite, quick):
    if suite == "reverse":
        if quick:
            return [("keep-alive 16B c64", "/16B", 64, False)]
        return [
            ("keep-alive 16B c64", "/16B", 64, False),
            ("keep-alive 16B c8", "/16B", 8, False),
            ("keep-alive 4KiB c64", "/4KiB", 64, False),
            ("keep-alive 64KiB c64", "/64KiB", 64, False),
            ("keep-alive 1MiB c8", "/1MiB", 8, False),
            ("new connection per request 16B c64", "/16B", 64, True),
        ]
    if suite == "forward":
        return [("forward absolute-form 16B c64", "/16B", 64, False)]
    return []


def absolute_form_script(tmp, path):
    """A wrk script that sends absolute-form requests, as browsers do to a proxy."""
    script = tmp / "absolute-form.lua"
    script.write_text(f'wrk.path = "http://127.0.0.1:{ORIGIN_PORT}{path}"\n')
    return script


def measure(peer, scenario, seconds, load_cpus, script=None):
    name, path, conns, close = scenario
    url = f"http://127.0.0.1:{peer.port}{path}"
    before = peer.cpu_seconds()
    result, cmd = run_wrk(url, conns, seconds, load_cpus, close, script)
    after = peer.cpu_seconds()
    result["cpu_us_per_req"] = (after - before) * 1e6 / max(result["requests"], 1)
    result["cmd"] = cmd
    return result


def idle_memory(peer, count):
    """Bytes of the proxy's RSS per idle keep-alive client connection: open
    `count` connections, send one request on each and read its response (so
    each is a real keep-alive connection that served a request), then idle."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    before = peer.rss_kib()
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", peer.port))
            socks.append(s)
        # One request at a time: the origin then needs one connection, not
        # one per client.
        for s in socks:
            s.sendall(b"GET /16B HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = b""
            while not data.endswith(b"0123456789abcdef"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"{peer.name} closed an idle-test connection")
                data += chunk
        time.sleep(2)
        after = peer.rss_kib()
    finally:
        for s in socks:
            s.close()
    return (after - before) * 1024 / count


def curl_rate(url, load_cpus, proxy=None, tunnel=False):
    """Bytes per second of one download with curl (through a CONNECT tunnel
    when `tunnel`)."""
    argv = ["taskset", "-c", ",".join(map(str, load_cpus)), tool("curl"), "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}"]
    if proxy:
        argv += ["-x", proxy]
    if tunnel:
        argv.append("-p")
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout.split()
    if len(out) != 2 or int(float(out[1])) != SIZES["256MiB"]:
        die(f"download failed: {' '.join(argv)} -> {out}")
    return float(out[0]), " ".join(argv[3:])


def measure_connect_bulk(peers, running, rounds, load_cpus):
    """CONNECT tunnel bulk throughput, interleaved with the direct download."""
    url = f"http://127.0.0.1:{ORIGIN_PORT}/256MiB"
    rates = {p: [] for p in peers}
    cpu = {p: [] for p in peers}
    direct = []
    cmd = ""
    for rnd in range(rounds):
        for p in peers:
            before = running[p].cpu_seconds()
            rate, cmd = curl_rate(url, load_cpus, f"http://127.0.0.1:{running[p].port}", tunnel=True)
            cpu[p].append((running[p].cpu_seconds() - before) / (SIZES["256MiB"] / 2**30))
            rates[p].append(rate)
            print(f"[CONNECT bulk 256MiB] round {rnd + 1} {p}: {rate / 2**20:.0f} MiB/s", flush=True)
        rate, _ = curl_rate(url, load_cpus)
        direct.append(rate)
        print(f"[CONNECT bulk 256MiB] round {rnd + 1} direct: {rate / 2**20:.0f} MiB/s", flush=True)
    return {p: (median(rates[p]), median(cpu[p])) for p in peers}, median(direct), cmd


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def versions(ringway_bin):
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    return {
        "ringway": first_line([str(ringway_bin), "--version"]),
        "nginx": first_line([tool("nginx"), "-v"]),
        "haproxy": first_line([tool("haproxy"), "-v"]),
        "squid": first_line([tool("squid"), "-v"]) if shutil.which("squid") or Path("/usr/sbin/squid").exists() else "-",
        "tinyproxy": first_line([tool("tinyproxy"), "-v"]) if shutil.which("tinyproxy") else "-",
        "wrk": first_line([tool("wrk"), "-v"]),
    }


def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "kernel": platform.release(),
        "cpu": model,
        "cpus": len(os.sched_getaffinity(0)),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------- report


def fmt(v, digits=1):
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def report(args, tables, direct, connect, vers, mach, proxy_cpus, load_cpus, stamp, memory):
    lines = [
        f"# ringway side by side: {args.workers} worker(s) per proxy",
        "",
        f"- date: {mach['date']}",
        f"- machine: {mach['cpu']}, {mach['cpus']} CPUs, Linux {mach['kernel']}",
        f"- proxies pinned to CPU {','.join(map(str, proxy_cpus))}; wrk (1 thread), curl and the origin (nginx, 1 worker) on CPU {','.join(map(str, load_cpus))}",
        f"- {args.rounds} rounds of {args.seconds}s per proxy and scenario, interleaved; medians shown",
        "- versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items()),
        f"- command: `benches/compare/compare.py {' '.join(sys.argv[1:])}`",
        "- configs: `benches/compare/peers/`",
        "",
        "CPU µs/req is the proxy's own CPU time (utime+stime of all its processes) per completed request: "
        "the figure that stays honest when wrk or the origin, not the proxy, is the bottleneck. "
        "Errors are socket errors seen by wrk (tinyproxy closes every client connection after one "
        "response, so each of its requests counts one); a run with any non-2xx answer is refused.",
        "",
    ]
    for scenario, rows in tables.items():
        others = [p for p in rows if not p.startswith("ringway")]
        lines.append(f"## {scenario}")
        lines.append("")
        header = "| proxy | req/s | p50 µs | p99 µs | CPU µs/req | " + " | ".join(f"CPU vs {o}" for o in others) + " | req/s vs best peer | errors |"
        lines.append(header)
        lines.append("|" + "---|" * (header.count("|") - 1))
        best = max((rows[o]["rps"] for o in others if rows[o]["rps"]), default=None)
        for peer, r in rows.items():
            ratios = [fmt(r["cpu"] / rows[o]["cpu"], 2) if rows[o]["cpu"] else "-" for o in others]
            vs_best = r["rps"] / best if best else None
            lines.append(
                f"| {peer} | {fmt(r['rps'])} | {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['cpu'], 2)} | "
                + " | ".join(ratios)
                + f" | {fmt(vs_best, 2)} | {r['errors']} |"
            )
        d = direct.get(scenario)
        if d:
            lines.append(
                f"| direct (wrk → origin) | {fmt(d['rps'])} | {fmt(d['p50'])} | {fmt(d['p99'])} | - | "
                + " | ".join("-" for _ in others)
                + f" | - | {d['errors']} |"
            )
        lines.append("")
        lines.append(f"wrk: `{rows[next(iter(rows))]['cmd']}`")
        lines.append("")
    if connect:
        rates, direct_rate, cmd = connect
        lines.append("## CONNECT tunnel bulk throughput (256 MiB download through the tunnel)")
        lines.append("")
        lines.append("| proxy | MiB/s | vs direct | proxy CPU s per GiB |")
        lines.append("|---|---|---|---|")
        for peer, (rate, cpu) in rates.items():
            lines.append(f"| {peer} | {rate / 2**20:,.0f} | {rate / direct_rate:.2f} | {cpu:.3f} |")
        lines.append(f"| direct (curl → origin) | {direct_rate / 2**20:,.0f} | 1.00 | - |")
        lines.append("")
        lines.append(f"curl: `{cmd}`")
        lines.append("")
    if memory:
        lines.append(f"## Memory: {args.idle_connections:,} idle keep-alive client connections")
        lines.append("")
        lines.append("| proxy | RSS per idle connection |")
        lines.append("|---|---|")
        for peer, per_conn in memory.items():
            lines.append(f"| {peer} | {per_conn / 1024:.2f} KiB |")
        lines.append("")
    md = "\n".join(lines) + "\n"
    base = RESULTS / f"compare-{stamp}"
    if tables:
        base.with_suffix(".svg").write_text(chart(tables))
        md += f"\n![chart]({base.name}.svg)\n"
    base.with_suffix(".md").write_text(md)
    return base.with_suffix(".md"), md


def chart(table):
    """A grouped bar chart of CPU µs per request, one group per scenario."""
    colors = {
        "ringway": "#d9480f",
        "ringway-forward": "#d9480f",
        "nginx": "#2b8a3e",
        "haproxy": "#1c7ed6",
        "squid": "#7048e8",
        "tinyproxy": "#868e96",
    }
    scen = list(table)
    peers = []
    for rows in table.values():
        peers += [p for p in rows if p not in peers]
    vmax = max(r["cpu"] or 0 for rows in table.values() for r in rows.values()) or 1
    bar, gap, group_gap, left, top, height = 26, 4, 40, 60, 40, 260
    group_w = len(peers) * (bar + gap) + group_gap
    width = left + group_w * len(scen) + 160
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 110}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="20" font-size="14">Proxy CPU time per request (µs, lower is better)</text>',
        f'<line x1="{left}" y1="{top + height}" x2="{width - 150}" y2="{top + height}" stroke="#333"/>',
    ]
    for i, s in enumerate(scen):
        x0 = left + i * group_w
        for j, p in enumerate(peers):
            if p not in table[s]:
                continue
            v = table[s][p]["cpu"] or 0
            h = v / vmax * height
            x = x0 + j * (bar + gap)
            out.append(f'<rect x="{x}" y="{top + height - h:.1f}" width="{bar}" height="{h:.1f}" fill="{colors.get(p, "#888")}"/>')
            out.append(f'<text x="{x + bar / 2}" y="{top + height - h - 3:.1f}" text-anchor="middle">{v:.1f}</text>')
        label_x = x0 + (len(peers) * (bar + gap)) / 2
        out.append(
            f'<text x="{label_x}" y="{top + height + 14}" text-anchor="end" transform="rotate(-30 {label_x} {top + height + 14})">{s}</text>'
        )
    for j, p in enumerate(peers):
        y = top + 10 + j * 18
        out.append(f'<rect x="{width - 140}" y="{y}" width="12" height="12" fill="{colors.get(p, "#888")}"/>')
        out.append(f'<text x="{width - 122}" y="{y + 10}">{p}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


def run_suite(suite, args, running, load_cpus, tmp):
    """Runs a wrk suite; returns {scenario: {peer: medians}} and the direct figures."""
    peers = [p for p in SUITES[suite] if p in running]
    tables, direct = {}, {}
    chosen = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    for scenario in scenarios(suite, args.quick):
        name, path = scenario[0], scenario[1]
        if chosen and not any(c in name for c in chosen):
            continue
        script = absolute_form_script(tmp, path) if suite == "forward" else None
        samples = {p: [] for p in peers}
        direct_samples = []
        for rnd in range(args.rounds):
            for p in peers:
                r = measure(running[p], scenario, args.seconds, load_cpus, script)
                if r["bad_status"] or (p.startswith("ringway") and r["errors"]):
                    die(f"{p} had {r['errors']} errors in [{name}]: not a valid measurement")
                samples[p].append(r)
                print(
                    f"[{name}] round {rnd + 1} {p}: {r['rps']:.0f} req/s, {r['cpu_us_per_req']:.2f} CPU µs/req, p99 {fmt(r['p99_us'])} µs",
                    flush=True,
                )
            d, _ = run_wrk(f"http://127.0.0.1:{ORIGIN_PORT}{path}", scenario[2], args.seconds, load_cpus, scenario[3])
            direct_samples.append(d)
        tables[name] = {
            p: {
                "rps": median([x["rps"] for x in samples[p]]),
                "p50": median([x["p50_us"] for x in samples[p]]),
                "p99": median([x["p99_us"] for x in samples[p]]),
                "cpu": median([x["cpu_us_per_req"] for x in samples[p]]),
                "errors": sum(x["errors"] for x in samples[p]),
                "cmd": samples[p][0]["cmd"],
            }
            for p in peers
        }
        direct[name] = {
            "rps": median([x["rps"] for x in direct_samples]),
            "p50": median([x["p50_us"] for x in direct_samples]),
            "p99": median([x["p99_us"] for x in direct_samples]),
            "errors": sum(x["errors"] for x in direct_samples),
        }
    return tables, direct


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short round of the reverse keep-alive scenario")
    ap.add_argument("--suites", default="reverse,forward,connect", help="reverse, forward (absolute-form), connect (bulk)")
    ap.add_argument("--workers", type=int, default=1, help="workers for every proxy (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--ringway", default=str(ROOT / "target" / "release" / "ringway"), help="the ringway binary")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    ap.add_argument("--idle-connections", type=int, default=10000, help="connections for the idle-memory scenario (0: skip)")
    ap.add_argument("--scenarios", default="", help="comma-separated parts of scenario names to run (default: all)")
    args = ap.parse_args()
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    if args.quick:
        args.rounds, args.seconds, suites, args.idle_connections = 1, 5, ["reverse"], 0
    for suite in suites:
        if suite not in SUITES:
            die(f"unknown suite {suite!r}: expected one of {', '.join(SUITES)}")
    # Each proxy fits its connection limit to its descriptors (two per
    # client connection, with the upstream's): fewer idle connections than
    # the limit allows, or the test fails after everything else has run.
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and args.idle_connections > (hard - 1000) // 2:
        fitted = max(0, (hard - 1000) // 2 // 1000 * 1000)
        print(f"note: the descriptor limit is {hard}: idle connections lowered from "
              f"{args.idle_connections:,} to {fitted:,}", flush=True)
        args.idle_connections = fitted
    peers = sorted({p for s in suites for p in SUITES[s]}, key=list(PORTS).index)
    check_tools(sorted({"wrk", "nginx", "curl"} | {p for p in peers if p in TOOLS}))
    for port in [ORIGIN_PORT] + [PORTS[p] for p in peers]:
        if not port_free(port):
            die(f"127.0.0.1:{port} is in use; stop whatever listens there")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "ringway"], cwd=ROOT, check=True)
    ringway_bin = Path(args.ringway)
    if not ringway_bin.exists():
        die(f"{ringway_bin} not found (build with cargo build --release)")

    proxy_cpus, load_cpus = cpu_split(args.workers)
    PEERS.mkdir(exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="ringway-compare-"))
    origin_conf = write_origin(tmp, load_cpus)
    origin = Proc("origin", [tool("nginx"), "-c", str(origin_conf), "-e", str(tmp / "origin-error.log")], load_cpus[-1:], ORIGIN_PORT)
    for path in sorted({sc[1] for s in suites for sc in scenarios(s, args.quick)}):
        check, _ = run_wrk(f"http://127.0.0.1:{ORIGIN_PORT}{path}", 1, 1, load_cpus)
        if check["bad_status"] or not check["requests"]:
            origin.stop()
            die(f"the origin does not answer {path} with 2xx; see {tmp}/origin-error.log")
    running = {}
    try:
        for p in peers:
            running[p] = start_peer(p, tmp, args.workers, proxy_cpus, ringway_bin)
        tables, direct, connect = {}, {}, None
        for suite in suites:
            if suite == "connect":
                connect = measure_connect_bulk(SUITES["connect"], running, args.rounds, load_cpus)
                continue
            t, d = run_suite(suite, args, running, load_cpus, tmp)
            tables.update(t)
            direct.update(d)
        memory = {}
        if "reverse" in suites and args.idle_connections:
            for p in ["ringway", "nginx"]:
                memory[p] = idle_memory(running[p], args.idle_connections)
                print(f"[idle memory] {p}: {memory[p]:.0f} bytes per idle keep-alive connection", flush=True)
        path, md = report(args, tables, direct, connect, versions(ringway_bin), machine(), proxy_cpus, load_cpus, stamp, memory)
        print(md)
        print(f"written: {path}")
    finally:
        for p in running.values():
            p.stop()
        origin.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
