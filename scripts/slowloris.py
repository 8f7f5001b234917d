#!/usr/bin/env python3
"""Slowloris check: a server under 200 head dribblers, 50 slow bodies and 50 silent
connections must close every one of them within 15 s of its deadline, keep /health fast,
serve fresh clients, and give its file descriptors back.

    scripts/slowloris.py target/debug/cartstream            # exits non-zero on any failure
    scripts/slowloris.py /path/to/old/cartstream --hold 75  # the "before": hold 75 s, report

Starts the binary on a random loopback port with short deadlines (head, body idle and
keep-alive: --timeout, default 4 s), its own data directory, and the default caps. Attackers
connect from 127.0.0.10-13 (Linux routes all of 127/8 to lo) so no address reaches the
per-address cap; probes come from 127.0.0.1. Python standard library only; bounded in time.
"""

import argparse
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# Phase 2 (not with --hold): the same server with 64 file descriptors and 100 silent
# connections, so accept fails with EMFILE until deadlines free descriptors.

HEAD_DRIBBLERS = 200
SLOW_BODIES = 50
SILENT = 50
GRACE = 15.0  # how long after its deadline a connection may still be open
P99_BUDGET_MS = 50.0
ATTACK_SOURCES = ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def get_health(port, timeout=5.0):
    """One /health request over a fresh connection: (ok, seconds)."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.startswith(b"HTTP/1.1 200"), time.monotonic() - start
    except OSError:
        return False, time.monotonic() - start


def wait_ready(port, proc, limit=30.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"FAIL: the server exited with {proc.returncode} before it was ready")
        if get_health(port, timeout=1.0)[0]:
            return
        time.sleep(0.1)
    sys.exit("FAIL: the server did not answer /health within 30 s")


class Attacker:
    """One attacking connection, driven by the attack loop."""

    def __init__(self, kind, port, index, interval):
        self.kind = kind
        self.opened = time.monotonic()
        self.closed = None
        self.next_send = self.opened
        self.interval = interval
        if kind == "head":
            self.pending = (b"GET /health HTTP/1.1\r\nHost: x\r\n"
                            + b"X-Padding: " + b"a" * 4000 + b"\r\n\r\n")
        elif kind == "body":
            self.pending = b"a" * 10_000
        else:
            self.pending = b""
        self.sock = socket.socket()
        self.sock.bind((ATTACK_SOURCES[index % len(ATTACK_SOURCES)], 0))
        self.sock.connect(("127.0.0.1", port))
        if kind == "body":
            self.sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
        self.sock.setblocking(False)

    def tick(self, now, sel):
        """Sends the next byte when it is due."""
        if self.closed is None and self.pending and now >= self.next_send:
            try:
                self.sock.send(self.pending[:1])
                self.pending = self.pending[1:]
            except OSError:
                self.mark_closed(now, sel)
            self.next_send = now + self.interval

    def mark_closed(self, now, sel=None):
        if self.closed is None:
            self.closed = now
            if sel is not None:
                sel.unregister(self.sock)
            self.sock.close()


def attack(port, attackers, stop, byte_interval):
    sel = selectors.DefaultSelector()
    for kind, n in (("head", HEAD_DRIBBLERS), ("body", SLOW_BODIES), ("silent", SILENT)):
        for i in range(n):
            a = Attacker(kind, port, len(attackers), byte_interval)
            attackers.append(a)
            sel.register(a.sock, selectors.EVENT_READ, a)
    while not stop.is_set() and any(a.closed is None for a in attackers):
        for key, _ in sel.select(timeout=0.05):
            a = key.data
            try:
                data = a.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                a.mark_closed(time.monotonic(), sel)
        now = time.monotonic()
        for a in attackers:
            a.tick(now, sel)
    for a in attackers:
        if a.closed is None:
            a.sock.close()


def probe(port, stop, latencies, failures):
    while not stop.is_set():
        ok, took = get_health(port)
        latencies.append(took)
        if not ok:
            failures.append(took)
        time.sleep(0.02)


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


def start(binary, port, timeout, nofile=None):
    data_dir = tempfile.mkdtemp(prefix="slowloris-")
    t = f"{timeout}s"
    env = dict(os.environ,
               CARTSTREAM_LISTEN=f"127.0.0.1:{port}", CARTSTREAM_DATA_DIR=data_dir,
               CARTSTREAM_LOG="warn", CARTSTREAM_HTTP_HEAD_TIMEOUT=t,
               CARTSTREAM_HTTP_BODY_IDLE_TIMEOUT=t, CARTSTREAM_HTTP_KEEP_ALIVE_TIMEOUT=t,
               CARTSTREAM_WS_HANDSHAKE_TIMEOUT=t, CARTSTREAM_HTTP_BODY_MIN_RATE="500")
    for k in ("CARTSTREAM_CONFIG", "CARTSTREAM_REDIS_URL", "CARTSTREAM_CLICKHOUSE_URL"):
        env.pop(k, None)
    limit = None
    if nofile is not None:
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=limit)
    proc.data_dir = data_dir
    return proc


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(proc.data_dir, ignore_errors=True)


def out_of_files(binary, timeout):
    """With 64 file descriptors and 100 silent connections, accept fails with EMFILE until the
    deadlines free descriptors; the server must keep accepting and then serve fresh clients."""
    failures = []
    port = free_port()
    proc = start(binary, port, timeout, nofile=64)
    try:
        wait_ready(port, proc)
        socks = []
        for i in range(100):
            s = socket.socket()
            s.bind((ATTACK_SOURCES[i % len(ATTACK_SOURCES)], 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            socks.append(s)
        started = time.monotonic()
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        open_ = len(socks)
        end = started + 100 / 30 * timeout + GRACE
        while open_ and time.monotonic() < end:
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    open_ -= 1
        took = time.monotonic() - started
        served = 0
        for _ in range(20):
            if not get_health(port)[0]:
                break  # a server that cannot take fresh clients would stall each probe 5 s
            served += 1
        errors = None
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                body = b""
                while chunk := s.recv(65536):
                    body += chunk
            for line in body.decode(errors="replace").splitlines():
                if line.startswith("cartstream_accept_errors_total "):
                    errors = float(line.split()[1])
        except OSError:
            pass
        print(f"out of files (nofile 64, 100 silent connections): all closed: {open_ == 0} "
              f"after {took:.1f} s, accept errors {errors}, fresh clients {served}/20 served, "
              f"server running: {proc.poll() is None}")
        if open_:
            failures.append(f"{open_} connections still open with 64 file descriptors")
        if served < 20:
            failures.append(f"only {served}/20 fresh clients served once descriptors were back")
        if not errors:
            failures.append("no accept error was counted: the EMFILE phase did not exercise it")
        for s in socks:
            s.close()
    finally:
        stop_server(proc)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--timeout", type=float, default=4.0, help="head, body idle and keep-alive deadlines, s")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="keep the attack running at least this long and report what is still open")
    ap.add_argument("--byte-interval", type=float, default=2.0, help="seconds between dribbled bytes")
    ap.add_argument("--out-of-files-only", action="store_true",
                    help="run only the out-of-files phase")
    args = ap.parse_args()
    # A hard bound on the whole run: a server that hangs fails the check, it does not stall CI.
    budget = int(args.hold) + 60 if args.hold else 115

    def out_of_time(*_):
        raise TimeoutError(f"the check did not finish within {budget} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(budget)
    try:
        return run(args)
    except TimeoutError as e:
        print(f"FAIL: {e}")
        return 1


def run(args):
    if args.out_of_files_only:
        failures = out_of_files(args.binary, args.timeout)
        for f in failures:
            print(f"FAIL: {f}")
        return 1 if failures else 0

    port = free_port()
    proc = start(args.binary, port, args.timeout)
    failures = []
    try:
        wait_ready(port, proc)
        for _ in range(20):
            get_health(port)
        time.sleep(0.5)
        baseline = fd_count(proc.pid)

        # Before the attack: what /health costs on this build and machine, for comparison.
        quiet = [get_health(port)[1] for _ in range(100)]

        stop = threading.Event()
        attackers, latencies, probe_failures = [], [], []
        attack_started = time.monotonic()
        attacker = threading.Thread(target=attack, args=(port, attackers, stop, args.byte_interval), daemon=True)
        prober = threading.Thread(target=probe, args=(port, stop, latencies, probe_failures), daemon=True)
        attacker.start()
        prober.start()
        time.sleep(1.0)
        peak_fds = fd_count(proc.pid)
        limit = args.timeout + GRACE
        end = attack_started + max(limit + 2.0, args.hold)
        while time.monotonic() < end:
            if args.hold == 0 and attackers and all(a.closed is not None for a in attackers):
                break
            peak_fds = max(peak_fds, fd_count(proc.pid))
            time.sleep(0.25)
        fds_at_end_of_attack = fd_count(proc.pid)
        stop.set()
        attacker.join()
        prober.join()
        elapsed = time.monotonic() - attack_started

        # After the attack: the server must give its descriptors back.
        settle_end = time.monotonic() + 10.0
        fds_after = fd_count(proc.pid)
        while fds_after > baseline and time.monotonic() < settle_end:
            time.sleep(0.2)
            fds_after = fd_count(proc.pid)
        fresh_ok = 0
        for _ in range(20):
            if not get_health(port)[0]:
                break
            fresh_ok += 1

        print(f"attack: {len(attackers)} connections ({HEAD_DRIBBLERS} head dribblers, {SLOW_BODIES} slow "
              f"bodies, {SILENT} silent), deadlines {args.timeout:g} s, one byte every {args.byte_interval:g} s")
        print(f"observed for {elapsed:.1f} s")
        for kind in ("head", "body", "silent"):
            group = [a for a in attackers if a.kind == kind]
            closed = [a.closed - a.opened for a in group if a.closed is not None]
            still_open = len(group) - len(closed)
            late = [c for c in closed if c > limit]
            span = f"closed after {min(closed):.1f}-{max(closed):.1f} s" if closed else "none closed"
            print(f"  {kind:6}: {len(group)} opened, {still_open} still open, {span}")
            if still_open:
                failures.append(f"{still_open} {kind} connections still open after {elapsed:.0f} s")
            if late:
                failures.append(f"{len(late)} {kind} connections closed later than {limit:g} s")
        print(f"open files: baseline {baseline}, peak {peak_fds}, at end of attack {fds_at_end_of_attack}, "
              f"after {fds_after}")
        if fds_after > baseline:
            failures.append(f"open files did not return to the baseline ({fds_after} > {baseline})")
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        print(f"/health without attack: p50 {percentile(quiet, 50) * 1000:.1f} ms, "
              f"p99 {percentile(quiet, 99) * 1000:.1f} ms")
        print(f"/health during attack ({len(latencies)} fresh connections): p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms, max {max(latencies, default=0) * 1000:.1f} ms, {len(probe_failures)} failed")
        print(f"fresh clients after the attack: {fresh_ok}/20 served")
        if p99 > P99_BUDGET_MS:
            failures.append(f"/health p99 {p99:.1f} ms during the attack exceeds {P99_BUDGET_MS:g} ms")
        if probe_failures:
            failures.append(f"{len(probe_failures)} /health probes failed during the attack")
        if fresh_ok < 20:
            failures.append(f"only {fresh_ok}/20 fresh clients served after the attack")
        if proc.poll() is not None:
            failures.append(f"the server exited with {proc.returncode}")
    finally:
        stop_server(proc)
    if args.hold == 0:
        failures += out_of_files(args.binary, args.timeout)
    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
