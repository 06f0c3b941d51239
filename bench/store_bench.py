"""The store's write path on its own: parsed feeds written to a fresh SQLite file.

Renders the poll benchmark's feeds (``feedserver.render_feed``), parses them once, then
times only ``Store.store_feeds`` over them, in batches of each size given, in one process
(CPU time and wall time). A cold poll pass is bound by this path in the main process.

    python bench/store_bench.py --feeds 1000 --items 20 --batches 1,16 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedserver import render_feed  # noqa: E402

from aggregator.parse import parse_feed  # noqa: E402
from aggregator.storage import Store  # noqa: E402
from aggregator.storage.store import FeedWrite  # noqa: E402
from aggregator.types import FetchResult  # noqa: E402

BASE = "http://127.0.0.1:9"
NOW = "2024-11-02T12:00:00Z"


def writes(feeds: int, items: int) -> list[FeedWrite]:
    out = []
    for i in range(feeds):
        url = f"{BASE}/feeds/{i}.xml"
        body, _ = render_feed(BASE, i, items)
        headers = {"content-type": "application/rss+xml"}
        out.append(FeedWrite(url, parse_feed(body, url, headers), FetchResult(url, url, 200, headers, body), NOW, NOW))
    return out


def run(batch: int, parsed: list[FeedWrite]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "agg.db") as store:
        store.db.conn.executemany("INSERT INTO feeds (url, tags, added_at) VALUES (?, '[]', ?)", [(w.url, NOW) for w in parsed])
        store.db.conn.commit()
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(parsed), batch):
            store.store_feeds(parsed[start:start + batch])
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeds", type=int, default=1000)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    parsed = writes(args.feeds, args.items)
    sizes = [int(b) for b in args.batches.split(",")]
    results: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
    for _ in range(args.runs):
        for b in sizes:
            results[b].append(run(b, parsed))
    entries = args.feeds * args.items
    for b in sizes:
        wall = statistics.median(w for w, _ in results[b])
        cpu = statistics.median(c for _, c in results[b])
        print(f"batch {b:>3}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  {1e6 * wall / entries:6.0f} µs/entry  {1e3 * wall / args.feeds:5.2f} ms/feed")


if __name__ == "__main__":
    main()
