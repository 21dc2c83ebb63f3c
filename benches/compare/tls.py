#!/usr/bin/env python3
"""TLS termination, ringway against nginx, one worker each, same certificate.

Scenarios, per key type (ECDSA P-256 and RSA 2048):
  - full handshakes: 8 `openssl s_time -new` clients at once, each making
    connection after connection with a full handshake and one request
    (wrk is no use here: with `Connection: close` it resumes its TLS
    sessions, so its "new connections" are resumed handshakes);
  - resumed handshakes: 8 `openssl s_time -reuse` clients, each resuming
    its first session on every later connection;
  - keep-alive requests over TLS: wrk over HTTPS, 64 connections, 16 B;
  - bulk: wrk over HTTPS, 8 keep-alive connections fetching 1 MiB each
    (the provider's AES-GCM and ringway's copies).

As in compare.py, the proxies run interleaved for several rounds, and the
figure that matters is each proxy's own CPU time (utime + stime from /proc)
per handshake or per request: on a 2-CPU machine the load generator is the
bottleneck, so a rate alone would say more about wrk than about the proxy.
The rate a proxy would reach on its CPU is 1 / (CPU per operation).

    apt-get install -y wrk nginx openssl
    benches/compare/tls.py                       # builds ringway --release first
    benches/compare/tls.py --ringway-b /tmp/awslc-target/release/ringway --label-b aws-lc-rs

The second form adds another ringway binary (another crypto provider, say)
as a third peer. Results go to benches/results/tls-<stamp>.md.
"""

import argparse
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as c  # noqa: E402

PORTS = {"ringway": 18443, "nginx": 18444, "ringway-b": 18445}


def make_certs(tmp):
    """A CA-less self-signed certificate per key type, for `bench.test`."""
    out = {}
    for kind, args in [
        ("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("rsa", ["-newkey", "rsa:2048"]),
    ]:
        cert, key = tmp / f"{kind}.pem", tmp / f"{kind}.key"
        subprocess.run(
            ["openssl", "req", "-x509", *args, "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30",
             "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test"],
            check=True, capture_output=True,
        )
        cert.chmod(0o644)
        key.chmod(0o644)
        out[kind] = (cert, key)
    return out


def write_ringway(tmp, name, cert, key):
    conf = f"""# ringway terminating TLS for tls.py
[runtime]
workers = 1
pin_cpus = true

[log]
level = "warn"
access_log = false

[http]
upstream_keepalive = 256

[[listener]]
name = "tls"
listen = "127.0.0.1:{PORTS[name]}"
mode = "reverse"

[listener.tls]
certs = [ {{ cert = "{cert}", key = "{key}" }} ]

[[listener.route]]
upstream = "origin"

[[upstream]]
name = "origin"
servers = ["127.0.0.1:{c.ORIGIN_PORT}"]
"""
    path = tmp / f"{name}.toml"
    path.write_text(conf)
    (c.PEERS / "ringway-tls.toml").write_text(conf.replace(str(tmp), "$TMP"))
    return path


def write_nginx(tmp, cpus, cert, key):
    conf = f"""# nginx terminating TLS for tls.py: the same certificate, one worker,
# a shared session cache and tickets (resumption both ways), upstream keepalive.
worker_processes 1;
worker_cpu_affinity {c.cpu_mask(cpus)};
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $TMP/nginx-tls.pid;
error_log $TMP/nginx-tls-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream origin {{
        server 127.0.0.1:{c.ORIGIN_PORT};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']} ssl reuseport backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    (c.PEERS / "nginx-tls.conf").write_text(conf.replace(str(tmp), "$TMP"))
    real = tmp / "nginx-tls.conf"
    real.write_text(conf.replace("$TMP", str(tmp)))
    return real


def start(name, tmp, cpus, binary, cert, key):
    if name.startswith("ringway"):
        conf = write_ringway(tmp, name, cert, key)
        return c.Proc(name, [str(binary), "run", "--config", str(conf)], cpus, PORTS[name])
    conf = write_nginx(tmp, cpus, cert, key)
    return c.Proc(name, [c.tool("nginx"), "-c", str(conf), "-e", str(tmp / "nginx-tls-error.log")], cpus, PORTS[name])


S_TIME_CLIENTS = 8


def s_time(port, seconds, load_cpus, mode):
    """Handshakes by S_TIME_CLIENTS `openssl s_time` clients at once, each
    one connection at a time (`mode`: -new for full handshakes, -reuse for
    resumed ones): how many completed, and at what rate."""
    argv = ["taskset", "-c", ",".join(map(str, load_cpus)), "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
            mode, "-time", str(seconds), "-www", "/16B"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(S_TIME_CLIENTS)]
    count, rate = 0, 0.0
    for p in procs:
        out = p.communicate(timeout=seconds + 60)[0]
        m = re.findall(r"(\d+) connections in ([\d.]+) real seconds", out)
        if not m:
            c.die("could not read openssl s_time's output:\n" + out)
        n, secs = m[-1]
        count += int(n)
        rate += int(n) / float(secs)
    return {"ops": count, "rate": rate}, f"{S_TIME_CLIENTS} x " + " ".join(argv[3:])


def measure(peer, scenario, seconds, load_cpus):
    label, kind = scenario
    path, conns = ("/1MiB", 8) if kind == "bulk" else ("/16B", 64)
    url = f"https://127.0.0.1:{peer.port}{path}"
    before = peer.cpu_seconds()
    if kind in ("full", "resumed"):
        result, cmd = s_time(peer.port, seconds, load_cpus, "-new" if kind == "full" else "-reuse")
    else:
        wrk, cmd = c.run_wrk(url, conns, seconds, load_cpus)
        if wrk["bad_status"]:
            c.die(f"{peer.name}: {wrk['bad_status']} non-2xx answers in {label}")
        result = {"ops": wrk["requests"], "rate": wrk["rps"]}
    after = peer.cpu_seconds()
    result["cpu_us"] = (after - before) * 1e6 / max(result["ops"], 1)
    result["cmd"] = cmd
    return result


SCENARIOS = [
    ("full handshake + request (s_time -new x8)", "full"),
    ("resumed handshake + request (s_time -reuse x8)", "resumed"),
    ("keep-alive request over TLS (16 B, wrk c64)", "keepalive"),
    ("bulk: 1 MiB responses over TLS (wrk c8)", "bulk"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ringway", default=str(c.ROOT / "target" / "release" / "ringway"))
    ap.add_argument("--ringway-b", default="", help="a second ringway binary to add as a peer")
    ap.add_argument("--label-b", default="ringway-b", help="its name in the report")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--keys", default="ecdsa,rsa")
    ap.add_argument("--only", default="", help="comma-separated scenario kinds: full, resumed, keepalive, bulk")
    args = ap.parse_args()
    c.check_tools(["wrk", "nginx"])
    if not shutil.which("openssl"):
        c.die("openssl is missing (apt-get install openssl)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "ringway"], cwd=c.ROOT, check=True)
    proxy_cpus, load_cpus = c.cpu_split(1)
    tmp = Path(tempfile.mkdtemp(prefix="ringway-tls-"))
    tmp.chmod(0o755)
    certs = make_certs(tmp)
    origin = c.Proc("origin", [c.tool("nginx"), "-c", str(c.write_origin(tmp, load_cpus)), "-e",
                               str(tmp / "origin-error.log")], load_cpus[-1:], c.ORIGIN_PORT)
    names = ["ringway", "nginx"] + (["ringway-b"] if args.ringway_b else [])
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    scenarios = [sc for sc in SCENARIOS if not only or sc[1] in only]
    binaries = {"ringway": args.ringway, "ringway-b": args.ringway_b}
    labels = {"ringway": "ringway", "nginx": "nginx", "ringway-b": args.label_b}
    results = {}
    try:
        for kind in [k.strip() for k in args.keys.split(",") if k.strip()]:
            cert, key = certs[kind]
            peers = {n: start(n, tmp, proxy_cpus, binaries.get(n), cert, key) for n in names}
            try:
                for _ in range(args.rounds):
                    for sc in scenarios:
                        for n in names:
                            r = measure(peers[n], sc, args.seconds, load_cpus)
                            results.setdefault((kind, sc[0], n), []).append(r)
                            print(f"{kind:5} {sc[0][:40]:40} {labels[n]:10} {r['rate']:9.0f}/s "
                                  f"{r['cpu_us']:8.1f} us CPU/op", flush=True)
            finally:
                for p in peers.values():
                    p.stop()
    finally:
        origin.stop()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    lines = [
        f"# TLS termination: ringway against nginx ({stamp})",
        "",
        "Machine: {cpu}, {cpus} CPUs, Linux {kernel}, {date}.".format(**c.machine()),
        f"One worker each, pinned to CPU {proxy_cpus}; wrk, openssl and the",
        f"origin (nginx) on {load_cpus}. {args.rounds} interleaved rounds of {args.seconds} s; medians.",
        "CPU is the proxy's utime + stime per operation (handshake + request, or request).",
        f"Command: `benches/compare/tls.py {' '.join(sys.argv[1:])}`",
        "",
        "| key | scenario | peer | ops/s (load-bound) | CPU µs/op | vs nginx (CPU) | rate on one CPU |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for kind in certs:
        for sc in scenarios:
            base = results.get((kind, sc[0], "nginx"))
            if not base:
                continue
            base_cpu = c.median([r["cpu_us"] for r in base])
            for n in names:
                rs = results[(kind, sc[0], n)]
                cpu = c.median([r["cpu_us"] for r in rs])
                rate = c.median([r["rate"] for r in rs])
                lines.append(f"| {kind} | {sc[0]} | {labels[n]} | {rate:.0f} | {cpu:.1f} | "
                             f"{cpu / base_cpu:.2f}x | {1e6 / cpu:.0f}/s |")
    lines += ["", "Commands (load generator side):", ""]
    seen = set()
    for (kind, scn, n), rs in results.items():
        cmd = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", rs[0]["cmd"])
        if (scn, cmd) not in seen:
            seen.add((scn, cmd))
            lines.append(f"- {scn}: `{cmd}`")
    report = "\n".join(lines) + "\n"
    out = c.RESULTS / f"tls-{stamp}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
