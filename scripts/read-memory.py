#!/usr/bin/env python3
"""Memory bound of GET /events: ten parallel 1,000-event reads of 16 KB events.

Starts the binary on a random loopback port with the embedded store and default settings,
stores 1,000+ events with about 16 KB of metadata each, then runs ten readers at once, each
reading `GET /events?limit=1000` and following `nextCursor` to the end of the listing (a
server without paging answers one page). Measures the server's peak RSS during the reads
over its RSS just before them, from /proc, and fails when that is above the limit
(100 MB by default, the requirement of issue 11), when a reader does not see every event,
or when the whole run takes longer than --timeout.

A reader answered `503` waits its `Retry-After` and asks again, as a client should; those
answers are counted and reported.

Python 3 standard library only. Linux only (/proc).

    scripts/read-memory.py --bin target/release/cartstream --timeout 300
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MB = 1_000_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak(pid):
    """Resets VmHWM so it measures the reads only (Linux 4.0+); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Server:
    def __init__(self, binary, deadline):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="read-memory-")
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("CARTSTREAM_"):
                del env[k]
        env.update(
            CARTSTREAM_LISTEN=f"127.0.0.1:{self.port}",
            CARTSTREAM_DATA_DIR=self.dir,
            CARTSTREAM_LOG="warn",
            # Memory is measured here, not the read rate: ten readers following cursors make
            # 40 reads in a few seconds, past the default 10/s per client.
            CARTSTREAM_READ_RATE_LIMIT_PER_SECOND="0",
        )
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([binary], env=env, stdout=self.log, stderr=self.log)
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"FAIL: the server exited with {self.proc.returncode} at startup")
            try:
                status, _, _ = self.request("GET", "/health", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("FAIL: the server did not answer /health in time")
            time.sleep(0.05)

    def request(self, method, path, body=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def store_events(server, count, metadata_bytes, deadline):
    """Stores `count` events of about `metadata_bytes` of metadata, 50 per batch (under 1 MiB)."""
    now_ms = int(time.time() * 1000)
    pad = "x" * (metadata_bytes - 40)
    ids = []
    for start in range(0, count, 50):
        events = []
        for i in range(start, min(start + 50, count)):
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((now_ms - i * 1000) / 1000))
            event_id = f"mem-{i:05d}"
            ids.append(event_id)
            events.append({
                "eventId": event_id,
                "userId": f"user-{i % 7}",
                "eventType": "cart_viewed",
                "timestamp": ts + ".000Z",
                "metadata": {"productId": "sku-1", "pad": pad},
            })
        status, _, body = server.request("POST", "/events/batch", json.dumps({"events": events}))
        answer = json.loads(body) if status == 200 else None
        if not answer or answer.get("rejected", 1) != 0:
            sys.exit(f"FAIL: storing a batch answered {status}: {body[:300]!r}")
        if time.monotonic() > deadline:
            sys.exit("FAIL: storing the events took past the timeout")
    return set(ids)


def reader(server, limit, deadline, out, index):
    seen, pages, busy, cursor, largest = [], 0, 0, None, 0
    while time.monotonic() < deadline:
        path = f"/events?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, headers, body = server.request("GET", path, timeout=max(1, deadline - time.monotonic()))
        if status == 503:
            busy += 1
            time.sleep(float(headers.get("Retry-After", "1")))
            continue
        if status != 200:
            out[index] = {"error": f"{status}: {body[:200]!r}"}
            return
        largest = max(largest, len(body))
        page = json.loads(body)
        del body
        pages += 1
        seen.extend(e["eventId"] for e in page["events"])
        cursor = page.get("nextCursor")
        if not cursor:
            out[index] = {"seen": seen, "pages": pages, "busy": busy, "largest": largest}
            return
    out[index] = {"error": "timed out"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="the cartstream binary")
    p.add_argument("--timeout", type=float, default=300, help="seconds for the whole run")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--metadata-bytes", type=int, default=16_000)
    p.add_argument("--readers", type=int, default=10)
    p.add_argument("--limit-mb", type=float, default=100, help="most extra RSS allowed, MB")
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout

    server = Server(args.bin, deadline)
    try:
        t0 = time.monotonic()
        ids = store_events(server, args.events, args.metadata_bytes, deadline)
        stored_s = time.monotonic() - t0
        time.sleep(1)  # let the committer and the allocator settle
        pid = server.proc.pid
        baseline = rss_bytes(pid)
        hwm_reset = reset_peak(pid)

        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], rss_bytes(pid))
                except (OSError, RuntimeError):
                    return
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = [None] * args.readers
        threads = [
            threading.Thread(target=reader, args=(server, 1000, deadline, results, i), daemon=True)
            for i in range(args.readers)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        read_s = time.monotonic() - t0
        done.set()
        sampler.join(1)
        if hwm_reset:
            peak[0] = max(peak[0], rss_bytes(pid, "VmHWM"))
        after = rss_bytes(pid)
    finally:
        server.stop()

    extra = peak[0] - baseline
    print(f"binary:            {args.bin}")
    print(f"stored:            {len(ids)} events, {args.metadata_bytes} B metadata, in {stored_s:.1f} s")
    print(f"readers:           {args.readers} in parallel, limit=1000, following nextCursor")
    print(f"reads took:        {read_s:.1f} s")
    print(f"RSS before reads:  {baseline / MB:.1f} MB")
    print(f"peak RSS in reads: {peak[0] / MB:.1f} MB (sampled every 5 ms"
          + (", and VmHWM)" if hwm_reset else ")"))
    print(f"RSS after reads:   {after / MB:.1f} MB")
    print(f"extra RSS:         {extra / MB:.1f} MB (limit {args.limit_mb:.0f} MB)")
    failed = False
    for i, r in enumerate(results):
        if r is None or "error" in r:
            print(f"reader {i}: FAILED: {r and r['error'] or 'did not finish in time'}")
            failed = True
            continue
        missing = len(ids - set(r["seen"]))
        dup = len(r["seen"]) - len(set(r["seen"]))
        print(f"reader {i}: {len(r['seen'])} events in {r['pages']} pages "
              f"(largest {r['largest'] / MB:.1f} MB), {r['busy']} answers 503, "
              f"{missing} missing, {dup} repeated")
        if missing or dup:
            failed = True
    if extra > args.limit_mb * MB:
        print(f"FAIL: extra RSS {extra / MB:.1f} MB is above {args.limit_mb:.0f} MB")
        failed = True
    if time.monotonic() > deadline:
        print(f"FAIL: the run took longer than {args.timeout:.0f} s")
        failed = True
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
