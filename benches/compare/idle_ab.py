#!/usr/bin/env python3
"""Interleaved A/B of the RSS an idle keep-alive client connection costs.

    benches/compare/idle_ab.py OLD_BINARY NEW_BINARY [--conns 5000] [--rounds 3]

Each round starts each binary in turn as compare.py's reverse proxy (one
worker, the nginx origin behind it), opens `--conns` connections, sends one
request on each and reads its response, idles 2 s, and reports the growth
of the proxy's RSS per connection (compare.py's `idle_memory`). Prints each
round and the medians. Traffic stays on 127.0.0.1. Needs nginx.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    compare.check_tools(["nginx", "taskset"])
    proxy_cpus, load_cpus = compare.cpu_split(1)
    results = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="ringway-idle-") as d:
        tmp = Path(d)
        origin_conf = compare.write_origin(tmp, load_cpus)
        origin = compare.Proc("origin", [compare.tool("nginx"), "-c", str(origin_conf)], load_cpus, compare.ORIGIN_PORT)
        try:
            for rnd in range(1, args.rounds + 1):
                for side, binary in (("A", args.old), ("B", args.new)):
                    peer = compare.start_peer("ringway", tmp, 1, proxy_cpus, Path(binary).resolve())
                    try:
                        per_conn = compare.idle_memory(peer, args.conns)
                    finally:
                        peer.stop()
                    results[side].append(per_conn)
                    print(f"round {rnd} {side}: {per_conn:,.0f} bytes per idle connection ({binary})", flush=True)
        finally:
            origin.stop()
    for side in ("A", "B"):
        print(f"median {side}: {compare.median(results[side]):,.0f} bytes per idle connection")


if __name__ == "__main__":
    main()
