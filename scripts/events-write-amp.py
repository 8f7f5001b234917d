#!/usr/bin/env python3
"""Bytes the embedded store's `events` table writes per row, by index: a model of what the
forwarder does (batches of random-UUID events inserted in one transaction each, WAL mode,
synchronous=FULL, 16 MiB page cache), counted in the bytes this process sent to the disk
(/proc/self/io write_bytes: the WAL, then the checkpoints into the database file). A count,
not a time: it comes out the same on a busy machine.

The schema is the embedded store's (src/adapters/outbound/embedded/mod.rs, SCHEMA); the rows
look like cartstream-bench's (1,000 users, four event types). Vary what it builds to see what
each part costs:
  scripts/events-write-amp.py [--rows-per-batch 20000] [--batches 25] [--indexes pk,l,u,t]
      [--page-size 4096] [--prefill 0] [--unsorted] [--pragma 'mmap_size=268435456' ...]
  pk: the primary key on event_id; l: the listing's (occurred_at, received_at, event_id);
  u: the same by user_id; t: by event_type. --prefill N first fills the table with N rows (in
  batches of 100,000, not counted), to measure the writes into a table already that large.
  Each batch is sorted by event id, as the forwarder sorts it, unless --unsorted. Each --pragma
  runs after the store's own (so it can replace one, such as cache_size). Prints bytes
  written per row, this process's CPU per row over the inserts and commits (binding the
  parameters included), and the file's size.
"""
import argparse
import os
import random
import re
import sqlite3
import tempfile
import time
import uuid

INDEXES = {
    "l": "CREATE INDEX l ON events (occurred_at, received_at, event_id)",
    "u": "CREATE INDEX u ON events (user_id, occurred_at, received_at, event_id)",
    "t": "CREATE INDEX t ON events (event_type, occurred_at, received_at, event_id)",
}
TYPES = ["item_added", "cart_viewed", "checkout_started", "quantity_updated"]
METADATA = '{"productId":"premium-subscription","quantity":1,"price":29.99,"currency":"USD"}'


def written():
    with open("/proc/self/io") as f:
        return int(re.search(r"^write_bytes: (\d+)", f.read(), re.M).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows-per-batch", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=25)
    ap.add_argument("--indexes", default="pk,l,u,t")
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--prefill", type=int, default=0)
    ap.add_argument("--unsorted", action="store_true")
    ap.add_argument("--pragma", action="append", default=[])
    a = ap.parse_args()
    want = set(a.indexes.split(",")) - {""}
    with tempfile.TemporaryDirectory(prefix="write-amp.") as d:
        path = os.path.join(d, "events.db")
        c = sqlite3.connect(path, isolation_level=None)
        c.execute(f"PRAGMA page_size={a.page_size}")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA cache_size=-16384")
        for p in a.pragma:
            c.execute(f"PRAGMA {p}")
        pk = "PRIMARY KEY " if "pk" in want else ""
        c.execute(f"""CREATE TABLE events (event_id TEXT {pk}NOT NULL, user_id TEXT NOT NULL,
            session_id TEXT, event_type TEXT NOT NULL, occurred_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT NOT NULL)""")
        for k in sorted(want - {"pk"}):
            c.execute(INDEXES[k])
        now = 1_700_000_000_000

        def batch(n):
            nonlocal now
            rows = []
            for i in range(n):
                now += 1
                rows.append((str(uuid.uuid4()), f"bench-user-{random.randrange(1000)}",
                             "bench-sess-3", TYPES[i % 4], now, now, "ws", METADATA))
            if not a.unsorted:
                rows.sort(key=lambda r: r[0])
            return rows

        def insert(rows):
            c.execute("BEGIN")
            c.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
            c.execute("COMMIT")

        for done in range(0, a.prefill, 100_000):
            insert(batch(min(100_000, a.prefill - done)))
        start, cpu = written(), 0.0
        for _ in range(a.batches):
            rows = batch(a.rows_per_batch)
            t = time.process_time()
            insert(rows)
            cpu += time.process_time() - t
        total = a.rows_per_batch * a.batches
        print(f"indexes={','.join(sorted(want)) or 'none'} prefill={a.prefill} rows={total} "
              f"batch={a.rows_per_batch} sorted={not a.unsorted} page_size={a.page_size} "
              f"pragmas={';'.join(a.pragma) or '-'} "
              f"bytes_written_per_row={(written() - start) // total} "
              f"cpu_us_per_row={cpu / total * 1e6:.2f} "
              f"db_mb={os.path.getsize(path) >> 20}")


if __name__ == "__main__":
    main()
