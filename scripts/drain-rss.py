#!/usr/bin/env python3
"""RSS across repeated large drains (issue 15): is memory after a big backlog a high-water mark
or a leak?

Each cycle cuts ClickHouse (the TCP proxy of soak.py), sends --events events over WebSocket with
cartstream-bench so they wait in the journal, restores ClickHouse, waits until the journal is
empty, idles 20 s and samples RSS for 10 s. A leak rises from cycle to cycle; a high-water mark
does not.

    cargo build --release --bin cartstream --example cartstream-bench
    scripts/drain-rss.py --bin target/release/cartstream \
        --bench target/release/examples/cartstream-bench --cycles 4 --events 300000

Needs Redis and ClickHouse (scripts/ensure-services.sh); cleans up its database and keys.
"""
import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/cartstream")
    p.add_argument("--bench", default="target/release/examples/cartstream-bench")
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--events", type=int, default=300000, help="events sent while cut, per cycle")
    args = p.parse_args()

    ports = {"server": soak.free_port(), "proxy": soak.free_port()}
    proxy = soak.Proxy(ports["proxy"])
    proxy.up()
    work, tag = tempfile.mkdtemp(), secrets.token_hex(4)
    server = soak.start_server(args, work, tag, ports)
    rss = lambda: soak.proc_status(server.pid, "VmRSS") / 1e6  # noqa: E731
    entries = lambda: soak.metrics(ports["server"])["journal_entries"]  # noqa: E731
    idles = []
    try:
        print(f"start: RSS {rss():.1f} MB", flush=True)
        for cycle in range(1, args.cycles + 1):
            proxy.cut()
            subprocess.run([args.bench, "ws", "--url", f"http://127.0.0.1:{ports['server']}",
                            "--connections", "4", "--window", "64", "--events", str(args.events)],
                           stdout=subprocess.DEVNULL, check=True)
            backlog, at_backlog = entries(), rss()
            proxy.up()
            began = time.time()
            while entries() > 0:
                if time.time() - began > 300:
                    raise SystemExit("the journal did not drain in 300 s")
                time.sleep(0.5)
            drained, took = rss(), time.time() - began
            time.sleep(20)
            samples = []
            for _ in range(10):
                samples.append(rss())
                time.sleep(1)
            idles.append(statistics.median(samples))
            print(f"cycle {cycle}: backlog {backlog:,.0f} entries, RSS {at_backlog:.1f} MB; drained "
                  f"in {took:.0f} s, RSS {drained:.1f} MB; idle 20 s later, median {idles[-1]:.1f} MB",
                  flush=True)
        print(f"idle medians: first {idles[0]:.1f} MB, last {idles[-1]:.1f} MB "
              f"({idles[-1] / idles[0]:.2f}x), max {max(idles):.1f} MB")
    finally:
        server.terminate()
        server.wait()
        proxy.cut()
        soak.clickhouse(f"DROP DATABASE IF EXISTS soak_{tag}")
        soak.delete_redis_keys(f"soak:{tag}:*")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
