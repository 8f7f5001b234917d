#!/usr/bin/env python3
"""Instructions per event by component, from a callgrind profile of a whole server run.

Usage: scripts/callgrind-breakdown.py EVENTS CALLGRIND.OUT [MORE.OUT ...]

Each function's *exclusive* instructions (callgrind_annotate --inclusive=no) go to the first
component whose pattern matches its name (crate path or C symbol), so the components add up
to the whole process. Kernel time (syscalls) is not in a callgrind profile: the figure is the
user-space work only. With several profiles, prints one column each (same EVENTS for all is
not assumed: pass EVENTS as a comma-separated list in the same order).
"""
import re
import subprocess
import sys

# (component, pattern on the function's name), first match wins.
COMPONENTS = [
    ("journal: SQLite", r"^(sqlite3|rusqlite|libsqlite3|pcache|btree|vdbe|walIndex|wal[A-Z]|pager|unixSync|unixWrite|unixRead|unix[A-Z])|sqlite"),
    ("journal: encode (postcard, lz4, crc32)", r"postcard|lz4_flex|crc32fast|journal::"),
    ("Redis client (redis, combine, bb8)", r"redis::|combine::|bb8|outbound::redis"),
    ("ClickHouse client + forwarder", r"clickhouse::|app::forwarder|forwarder::|outbound::clickhouse|rowbinary|lz4::|cityhash|outbox"),
    ("embedded store", r"outbound::embedded"),
    ("JSON parse (serde_json de, its IndexMap)", r"serde_json::(de|read)|serde_json::value::de|Deserialize|deserialize|visit_|indexmap|serde_json::map|drop_in_place<serde_json"),
    ("hashing (SipHash of map keys: JSON objects, dedup keys)", r"hash::sip|hash_one|Hasher|RandomState"),
    ("JSON encode (replies, serde_json ser)", r"serde_json::(ser|value::ser)|Serialize|serialize|ryu::|itoa::|event_reply|format_escaped"),
    ("validation + domain", r"cartstream::domain|validation|chrono::|uuid|idna|unicode"),
    ("ingest use case (committer, pipeline)", r"app::ingest|Pipeline|Committer|GroupPlan|DedupKey|hashbrown|HashMap|siphash|SipHasher|sip::"),
    ("metrics (prometheus_client)", r"prometheus|metrics::"),
    ("WebSocket framing (tungstenite)", r"tungstenite|inbound::ws|sha1|base64"),
    ("HTTP edge (hyper, poem, h1)", r"hyper::|poem|http::|httparse|h2::|inbound::http|inbound::listener|inbound::edge|inbound::wire|tower"),
    ("tokio runtime + mio (scheduling, wakeups, channels, timers)", r"tokio|mio::|parking_lot|futures_|async_trait|crossbeam|event_listener|std::sync|std::thread|epoll|futex"),
    ("allocator (mimalloc)", r"^_?mi_|mimalloc|malloc|free|realloc|alloc::alloc|__rust_(alloc|dealloc|realloc)|core::ptr::drop_in_place"),
    ("memcpy / memmove / memset / memchr", r"mem(cpy|move|set|chr|cmp)|__memcpy|__memmove|__memset|__memchr|strlen|bcmp"),
    ("syscall wrappers (libc, std::sys)", r"std::sys|std::io|libc|__libc|_IO_|syscall|__GI_|read$|write$|send|recv|clock_gettime|__vdso"),
]
COMPILED = [(name, re.compile(p)) for name, p in COMPONENTS]


def costs(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
        check=True, capture_output=True, text=True,
    ).stdout
    total = None
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.*?):(.*)$", line)
        if m and total is not None:
            fn = m.group(3).strip()
            fn = re.sub(r"\s*\[[^\]]*\]$", "", fn)
            rows.append((int(m.group(1).replace(",", "")), m.group(2) + ":" + fn))
    return total, rows


def breakdown(path):
    total, rows = costs(path)
    by = {name: 0 for name, _ in COMPONENTS}
    by["other"] = 0
    for ir, name in rows:
        fn = name.split(":", 1)[1] if ":" in name else name
        for comp, pat in COMPILED:
            if pat.search(fn):
                by[comp] += ir
                break
        else:
            by["other"] += ir
    by["(below threshold)"] = total - sum(ir for ir, _ in rows)
    return total, by


def main():
    events = [float(x) for x in sys.argv[1].split(",")]
    paths = sys.argv[2:]
    if len(events) == 1:
        events *= len(paths)
    cols = [breakdown(p) for p in paths]
    width = 62
    print(f"{'instructions per event':<{width}}" + "".join(f"{p[-24:]:>26}" for p in paths))
    for comp in [c for c, _ in COMPONENTS] + ["other", "(below threshold)"]:
        vals = [by[comp] / n for (_, by), n in zip(cols, events)]
        print(f"{comp:<{width}}" + "".join(f"{v:>26,.0f}" for v in vals))
    print(f"{'total':<{width}}" + "".join(f"{t / n:>26,.0f}" for (t, _), n in zip(cols, events)))
    if "-v" in sys.argv[0:0] or __import__("os").environ.get("SHOW_OTHER"):
        for p in paths:
            _, rows = costs(p)
            other = [(ir, n) for ir, n in rows if not any(pat.search(n.split(":", 1)[-1]) for _, pat in COMPILED)]
            for ir, n in sorted(other, reverse=True)[:25]:
                print(f"  other {ir:>14,} {n[-150:]}")


if __name__ == "__main__":
    main()
