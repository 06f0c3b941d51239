"""Full-text benchmark: article extraction in the worker pool, and a whole poll with full text.

1. Extraction throughput over the same N local article pages (40-80 KB each,
   bench/pages.py): a single-process loop versus aggregator's worker pool
   (one worker per core), pages/s for each, and how many pages came out with
   every body paragraph and no boilerplate.
2. A full poll of F feeds x I entries with ``full_text = true`` against a local
   server (bench/feedserver.py --full-pages) serving those same pages, each page
   rendered once before anything is timed: the pass's own time against the pool's
   extraction-only time from step 1. The server shares the machine's cores; the CPU
   time it used during the pass is reported beside the ratio.

    python bench/fulltext_bench.py [--pages 2000] [--feeds 100] [--items 20] [--runs 3]

Targets (PASS/FAIL, exit 0 either way): pool >= 1.7x the single-process rate;
the full-text pass within 15% of the extraction-only time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from feedserver import start_server, stop_server  # noqa: E402
from pages import article_page  # noqa: E402

from aggregator.extract import extract_article  # noqa: E402
from aggregator.workers import WorkerPool  # noqa: E402

POOL_TARGET = 1.7
PASS_TARGET = 1.15
URL = "http://127.0.0.1/articles/{}"


def make_pages(count: int) -> list[tuple[bytes, list[str]]]:
    return [article_page(seed, URL.format(seed)) for seed in range(count)]


def clean(text: str, body: list[str]) -> bool:
    return all(paragraph in text for paragraph in body) and "ANZEIGE" not in text and "Leser" not in text


def single_process(pages: list[tuple[bytes, list[str]]]) -> tuple[float, int]:
    started = time.perf_counter()
    good = sum(clean(extract_article(page, URL.format(i), "text/html").text, body) for i, (page, body) in enumerate(pages))
    return time.perf_counter() - started, good


async def pooled(pages: list[tuple[bytes, list[str]]]) -> tuple[float, int]:
    async with WorkerPool() as pool:
        await pool.run(sum, [0], time_limit=30)
        started = time.perf_counter()
        articles = await asyncio.gather(
            *(pool.extract(page, URL.format(i), "text/html", 30.0) for i, (page, _) in enumerate(pages))
        )
        seconds = time.perf_counter() - started
    return seconds, sum(clean(a.text, body) for a, (_, body) in zip(articles, pages, strict=True))


def write_config(directory: Path, base_url: str, feeds: int) -> Path:
    lines = [
        "[aggregator]",
        f'database = "{directory / "agg.db"}"',
        f'output_dir = "{directory / "public"}"',
        "full_text = true",
        "allow_private_addresses = true",
        "",
    ]
    for index in range(feeds):
        lines += ["[[feeds]]", f'url = "{base_url}/feeds/{index}.xml"']
    path = directory / "feeds.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_server(base_url: str, feeds: int, items: int) -> None:
    """Request every article page once, so the server renders them before anything is timed."""
    urls = [f"{base_url}/articles/{f}/{i}" for f in range(feeds) for i in range(items)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda url: urllib.request.urlopen(url, timeout=60).read(), urls))


def full_poll(base_url: str, feeds: int, server_pid: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), base_url, feeds)
        server_cpu = cpu_seconds(server_pid)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "aggregator", "--config", str(config), "poll", "--json"],
            capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(server_pid) - server_cpu
    result = json.loads(done.stdout)
    return {"seconds": result["seconds"], "wall": wall, "articles": result["articles"], "new": result["new"],
            "server_cpu": server_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--feeds", type=int, default=100)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    pages = make_pages(args.pages)
    size = statistics.mean(len(page) for page, _ in pages) / 1024
    print(f"{len(pages)} pages, mean {size:.0f} KB")
    singles, pools, polls = [], [], []
    server, base_url = start_server(args.feeds, args.items, timeout=120, full_pages=True)
    try:
        warm_server(base_url, args.feeds, args.items)
        for run in range(1, args.runs + 1):
            single_s, single_ok = single_process(pages)
            pool_s, pool_ok = asyncio.run(pooled(pages))
            poll = full_poll(base_url, args.feeds, server.pid)
            singles.append(single_s)
            pools.append(pool_s)
            polls.append(poll)
            print(
                f"run {run}: single {len(pages) / single_s:.0f} pages/s ({single_ok} clean), "
                f"pool {len(pages) / pool_s:.0f} pages/s ({pool_ok} clean), "
                f"full-text poll {poll['seconds']:.2f}s in-process ({poll['wall']:.2f}s wall), articles {poll['articles']}, "
                f"local page server used {poll['server_cpu']:.2f}s CPU meanwhile"
            )
    finally:
        stop_server(server)
    single_rate = len(pages) / statistics.median(singles)
    pool_rate = len(pages) / statistics.median(pools)
    poll_seconds = statistics.median(float(p["seconds"]) for p in polls)
    entries = args.feeds * args.items
    extraction_only = entries / pool_rate
    speedup = pool_rate / single_rate
    overhead = poll_seconds / extraction_only
    print(f"\nmedians of {args.runs} run(s)")
    print(f"single process: {single_rate:.0f} pages/s; pool: {pool_rate:.0f} pages/s; speed-up {speedup:.2f}x")
    server_cpu = statistics.median(float(p["server_cpu"]) for p in polls)
    print(f"full-text poll of {entries} entries: {poll_seconds:.2f}s; extraction-only for {entries} pages: "
          f"{extraction_only:.2f}s; ratio {overhead:.2f}")
    print(f"the local server serving the pages used {server_cpu:.2f}s of CPU during the pass, on the same "
          f"{os.cpu_count()} cores (its share of the ratio: about {server_cpu / (os.cpu_count() or 1) / extraction_only:.2f})")
    print(f"{'PASS' if speedup >= POOL_TARGET else 'FAIL'}  pool speed-up: {speedup:.2f} (target >= {POOL_TARGET})")
    print(f"{'PASS' if overhead <= PASS_TARGET else 'FAIL'}  full-text pass / extraction-only: {overhead:.2f} "
          f"(target <= {PASS_TARGET})")


if __name__ == "__main__":
    main()
