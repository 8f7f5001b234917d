#!/usr/bin/env python3
"""Measures the findings of issue 11 (items 2, 3, 4, 5 and 6) against one server binary, so a
build before and a build after can be compared with the same command:

    python3 -m venv /tmp/fv && /tmp/fv/bin/pip install websockets==13.1
    /tmp/fv/bin/python scripts/issue11-findings.py OLD_BINARY
    /tmp/fv/bin/python scripts/issue11-findings.py target/debug/cartstream

Each finding starts its own server (embedded store, fresh data dir, random port) with the
configuration the issue used, and prints one line per measurement. It measures; it does not
judge (the black-box tests in tests/api/security.rs and ws.rs do that).
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import http.client
import urllib.parse
import urllib.request
import uuid

import websockets

BIN = sys.argv[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, **env):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        e = {
            "PATH": os.environ["PATH"],
            "CARTSTREAM_DATA_DIR": self.dir.name,
            "CARTSTREAM_LISTEN": f"127.0.0.1:{self.port}",
            "CARTSTREAM_LOG": "warn",
        }
        e.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen([BIN], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.exit = self.proc.returncode
                self.output = self.proc.stdout.read().decode(errors="replace")
                return
            try:
                urllib.request.urlopen(self.url("/health"), timeout=1)
                self.exit = None
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def hwm_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def request(url, method="GET", body=None, headers=None):
    """(status, headers, body); a server that answers before reading the whole body (413)
    still has its answer read."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        c.request(method, u.path + ("?" + u.query if u.query else ""), body=body, headers=headers or {})
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.getresponse()
    out = r.status, r.headers, r.read()
    c.close()
    return out


def event():
    return {
        "eventId": str(uuid.uuid4()),
        "userId": "user-1",
        "sessionId": "sess-1",
        "eventType": "item_added",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metadata": {"productId": "sku-1", "quantity": 1, "price": 29.99, "currency": "USD"},
    }


def finding2():
    s = Server()
    try:
        before = s.hwm_kb()
        ids = list(range(1_000_000, 2_000_000))  # dead-letter ids are int64
        body = json.dumps({"ids": ids}).encode()
        status, _, _ = request(s.url("/dead-letters/replay"), "POST", body, {"Content-Type": "application/json"})
        print(f"2 replay body {len(body) / 1e6:.1f} MB: status {status}, peak RSS {before // 1024} -> {s.hwm_kb() // 1024} MB")
    finally:
        s.stop()


async def ws_flood(port, connections, events, key=None):
    """`connections` sockets each pipelining `events` single events; counts the acks."""
    q = f"?apiKey={key}" if key else ""

    async def one():
        counts = {}
        async with websockets.connect(f"ws://127.0.0.1:{port}/events/stream{q}", max_size=None) as ws:
            await ws.recv()  # welcome
            for i in range(events):
                await ws.send(json.dumps({"type": "cart_event", "requestId": str(i), "data": event()}))
            for _ in range(events):
                m = json.loads(await ws.recv())
                k = m.get("status") or m.get("code")
                counts[k] = counts.get(k, 0) + 1
        return counts

    total = {}
    for c in await asyncio.gather(*[one() for _ in range(connections)]):
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def finding3():
    s = Server(CARTSTREAM_RATE_LIMIT_PER_SECOND=50, CARTSTREAM_RATE_LIMIT_BURST=500)
    try:
        t = time.time()
        counts = asyncio.run(ws_flood(s.port, 4, 450))
        print(f"3a WS 4 connections x 450 events, 50/s burst 500: {counts} in {time.time() - t:.2f}s")
    finally:
        s.stop()

    s = Server(CARTSTREAM_RATE_LIMIT_PER_SECOND=50, CARTSTREAM_RATE_LIMIT_BURST=50)
    try:
        if s.exit is not None:
            line = next((l for l in s.output.splitlines() if "BURST" in l), s.output.strip()[-200:])
            print(f"3b burst 50: startup refused (exit {s.exit}): {line.strip()[:200]}")
        else:
            t = time.time()
            codes = {}
            for _ in range(120):
                st, _, _ = request(s.url("/events"), "POST", json.dumps(event()).encode(), {"Content-Type": "application/json"})
                codes[st] = codes.get(st, 0) + 1
            print(f"3b burst 50: 120 POST /events in {time.time() - t:.2f}s: {codes}")
    finally:
        s.stop()

    s = Server(CARTSTREAM_API_KEYS="the-ingest-key-01", CARTSTREAM_ADMIN_KEY="the-admin-key-001")
    try:
        t = time.time()
        codes = {}
        for _ in range(500):
            st, _, _ = request(s.url("/events"), "POST", json.dumps(event()).encode(),
                               {"Content-Type": "application/json", "X-API-Key": "wrong-key"})
            codes[st] = codes.get(st, 0) + 1
        print(f"3c 500 wrong keys in {time.time() - t:.2f}s: {codes}")
    finally:
        s.stop()
    s = Server()  # no keys: reads are open on every build, so the read limit is what differs
    try:
        t = time.time()
        codes = {}
        for _ in range(200):
            st, _, _ = request(s.url("/events?limit=1"))
            codes[st] = codes.get(st, 0) + 1
        print(f"3d 200 GET /events in {time.time() - t:.2f}s, default settings: {codes}")
    finally:
        s.stop()


def finding4():
    s = Server(CARTSTREAM_API_KEYS="the-ingest-key-01")
    try:
        st, _, _ = request(s.url("/events?limit=1"), headers={"X-API-Key": "the-ingest-key-01"})
        print(f"4a GET /events with an ingest key: {st}")
    finally:
        s.stop()
    s = Server()
    try:
        st, _, _ = request(s.url("/events?limit=1"))
        print(f"4b GET /events with no keys configured: {st}")
    finally:
        s.stop()


def finding5():
    origin = "https://shop.example"
    s = Server(CARTSTREAM_CORS_ORIGINS=origin, CARTSTREAM_API_KEYS="the-ingest-key-01")
    try:
        st, h, _ = request(s.url("/events"), "OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key"})
        print(f"5a preflight: {st}, Allow-Origin {h.get('Access-Control-Allow-Origin')}")
        body = json.dumps({"events": [event(), event()]}).encode()
        st, _, _ = request(s.url("/events/beacon?apiKey=the-ingest-key-01"), "POST", body,
                           {"Content-Type": "text/plain;charset=UTF-8", "Origin": origin})
        print(f"5b text/plain beacon from {origin}: {st}")

        async def upgrade(o):
            try:
                async with websockets.connect(f"ws://127.0.0.1:{s.port}/events/stream?apiKey=the-ingest-key-01", origin=o):
                    return 101
            except websockets.exceptions.InvalidStatusCode as e:
                return e.status_code
        print(f"5c WS upgrade from https://evil.example: {asyncio.run(upgrade('https://evil.example'))}")
    finally:
        s.stop()


def finding6():
    s = Server()
    try:
        async def close_after(n, code):
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/events/stream", max_size=None) as ws:
                await ws.recv()
                for i in range(n):
                    await ws.send(json.dumps({"type": "cart_event", "requestId": str(i), "data": event()}))
                # A raw close frame, so invalid codes can be sent too.
                payload = code.to_bytes(2, "big") if code is not None else b""
                ws.transport.write(bytes([0x88, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                acks = 0
                reply = None
                try:
                    while True:
                        m = await asyncio.wait_for(ws.recv(), 5)
                        acks += 1
                except websockets.exceptions.ConnectionClosed as e:
                    reply = e.rcvd.code if e.rcvd else "no close frame (connection dropped)"
                except asyncio.TimeoutError:
                    reply = "timeout"
                return acks, reply

        acks, reply = asyncio.run(close_after(200, 1000))
        print(f"6a 200 pipelined events then Close 1000: {acks} acks, server close: {reply}")
        for code in (999, 1005, 5000):
            acks, reply = asyncio.run(close_after(0, code))
            print(f"6b Close {code}: server close: {reply}")
    finally:
        s.stop()


for f in (finding2, finding3, finding4, finding5, finding6):
    try:
        f()
    except Exception as e:  # a finding that cannot be measured on this build says so
        print(f"{f.__name__}: {type(e).__name__}: {e}")
