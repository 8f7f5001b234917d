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
      [--page-size 4096]
  pk: the primary key on event_id; l: the listing's (occurred_at, received_at, event_id);
  u: the same by user_id; t: by event_type. Prints bytes written per row and the file's size.
"""
import argparse
import os
import random
import re
import sqlite3
import tempfile
import uuid

INDEXES = {
    "l": "CREATE INDEX l ON events (occurred_at DESC, received_at DESC, event_id DESC)",
    "u": "CREATE INDEX u ON events (user_id, occurred_at DESC, received_at DESC, event_id DESC)",
    "t": "CREATE INDEX t ON events (event_type, occurred_at DESC, received_at DESC, event_id DESC)",
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
    a = ap.parse_args()
    want = set(a.indexes.split(",")) - {""}
    with tempfile.TemporaryDirectory(prefix="write-amp.") as d:
        path = os.path.join(d, "events.db")
        c = sqlite3.connect(path, isolation_level=None)
        c.execute(f"PRAGMA page_size={a.page_size}")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA cache_size=-16384")
        pk = "PRIMARY KEY " if "pk" in want else ""
        c.execute(f"""CREATE TABLE events (event_id TEXT {pk}NOT NULL, user_id TEXT NOT NULL,
            session_id TEXT, event_type TEXT NOT NULL, occurred_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT NOT NULL)""")
        for k in sorted(want - {"pk"}):
            c.execute(INDEXES[k])
        now = 1_700_000_000_000
        start = written()
        for _ in range(a.batches):
            rows = []
            for i in range(a.rows_per_batch):
                now += 1
                rows.append((str(uuid.uuid4()), f"bench-user-{random.randrange(1000)}",
                             "bench-sess-3", TYPES[i % 4], now, now, "ws", METADATA))
            c.execute("BEGIN")
            c.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
            c.execute("COMMIT")
        total = a.rows_per_batch * a.batches
        print(f"indexes={','.join(sorted(want)) or 'none'} rows={total} "
              f"batch={a.rows_per_batch} page_size={a.page_size} "
              f"bytes_written_per_row={(written() - start) // total} "
              f"db_mb={os.path.getsize(path) >> 20}")


if __name__ == "__main__":
    main()
