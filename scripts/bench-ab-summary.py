#!/usr/bin/env python3
"""Medians of a bench-ab.sh sitting: for each figure and build, the events/s of each round,
their median, and each build's change against the first ("old") within each round. For an
`abba` sitting (one figure, old new new old three times): each build's runs and median, and
the change of each quartet (the two new runs against the two old ones around them).

Usage: scripts/bench-ab.sh ... > LOG; scripts/bench-ab-summary.py LOG
"""
import re
import statistics
import sys
from collections import defaultdict


def parse(lines):
    """{figure: {build: {round: events/s}}}, and the builds in their order."""
    runs = defaultdict(lambda: defaultdict(dict))
    builds = []
    rnd = build = figure = None
    for line in lines:
        m = re.match(r"### round (\d+), (\S+) build \((.*)\)", line)
        if m:
            rnd, build = int(m.group(1)), f"{m.group(2)} ({m.group(3)})"
            if build not in builds:
                builds.append(build)
            continue
        m = re.match(r"## (.*)", line)
        if m:
            figure = m.group(1)
            continue
        m = re.match(r"\s*throughput: (\d+) events/s", line)
        if m and figure and build:
            runs[figure][build][rnd] = int(m.group(1))
    return runs, builds


def abba(lines):
    """The runs of an abba sitting, in order: [(build, events/s)]."""
    runs, build = [], None
    for line in lines:
        m = re.match(r"### (old|new) build \((.*)\)", line)
        if m:
            build = m.group(1)
            continue
        m = re.match(r"\s*throughput: (\d+) events/s", line)
        if m and build:
            runs.append((build, int(m.group(1))))
    return runs


def print_abba(runs):
    for build in ("old", "new"):
        values = [v for b, v in runs if b == build]
        print(f"  {build}: {' / '.join(f'{v:,}' for v in values)}, median {statistics.median(values):,.0f}")
    old = statistics.median([v for b, v in runs if b == "old"])
    new = statistics.median([v for b, v in runs if b == "new"])
    quartets = []
    for i in range(0, len(runs) - 3, 4):
        q = runs[i : i + 4]
        olds = sum(v for b, v in q if b == "old")
        news = sum(v for b, v in q if b == "new")
        quartets.append(100.0 * (news / olds - 1))
    print(
        f"  new against old: medians {100 * (new / old - 1):+.1f}%, per quartet "
        f"{' / '.join(f'{c:+.1f}' for c in quartets)}%"
    )


def main():
    with open(sys.argv[1]) as f:
        lines = f.readlines()
    if not any(line.startswith("### round") for line in lines):
        print_abba(abba(lines))
        return
    runs, builds = parse(lines)
    base = builds[0] if builds else None
    for figure, by_build in runs.items():
        print(f"## {figure}")
        for build in builds:
            rounds = by_build.get(build, {})
            if not rounds:
                continue
            values = [rounds[r] for r in sorted(rounds)]
            line = f"  {build}: {' / '.join(f'{v:,}' for v in values)}, median {statistics.median(values):,.0f}"
            if build != base:
                changes = [
                    100.0 * (rounds[r] / by_build[base][r] - 1)
                    for r in sorted(rounds)
                    if r in by_build[base]
                ]
                medians = statistics.median(values) / statistics.median(by_build[base].values())
                line += (
                    f"; medians {100 * (medians - 1):+.1f}%, per round "
                    f"{' / '.join(f'{c:+.1f}' for c in changes)}%"
                )
            print(line)


if __name__ == "__main__":
    main()
