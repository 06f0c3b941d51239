"""Time a cold and a warm ``reader`` update of a set of feeds; print JSON.

Usage: ``python bench/reader_poll.py --db PATH --base-url URL --feeds N --workers W [--search]``

With ``--search``, reader's full-text search is enabled and each pass includes
``update_search()``, so the store it leaves is searchable like aggregator's (whose FTS5 index
is kept by triggers during the pass).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from reader import Reader, UpdateResult, make_reader


@dataclass(slots=True)
class PassResult:
    seconds: float
    updated: int = 0
    not_modified: int = 0
    errors: int = 0
    new_entries: int = 0
    first_error: str | None = None
    search_seconds: float = 0.0
    cpu_seconds: float = 0.0


def feed_urls(base_url: str, n_feeds: int) -> list[str]:
    return [f"{base_url}/feeds/{i}.xml" for i in range(n_feeds)]


def summarize(results: Iterable[UpdateResult], started: float) -> PassResult:
    summary = PassResult(seconds=0.0)
    for result in results:
        if result.error is not None:
            summary.errors += 1
            summary.first_error = summary.first_error or repr(result.error)
        elif result.not_modified:
            summary.not_modified += 1
        elif result.updated_feed is not None:
            summary.updated += 1
            summary.new_entries += result.updated_feed.new
    summary.seconds = time.perf_counter() - started
    return summary


def timed_update(reader: Reader, workers: int, search: bool) -> PassResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    result = summarize(reader.update_feeds_iter(scheduled=False, workers=workers), started)
    if search:
        indexing = time.perf_counter()
        reader.update_search()
        result.search_seconds = time.perf_counter() - indexing
        result.seconds += result.search_seconds
    result.cpu_seconds = time.process_time() - cpu_started  # every thread of the process
    return result


def run(db_path: str, base_url: str, n_feeds: int, workers: int, search: bool = False) -> dict[str, object]:
    reader = make_reader(db_path)
    try:
        for url in feed_urls(base_url, n_feeds):
            reader.add_feed(url, exist_ok=True)
        if search:
            reader.enable_search()
        cold = timed_update(reader, workers, search)
        warm = timed_update(reader, workers, search)
        entries = reader.get_entry_counts().total
    finally:
        reader.close()
    return {"workers": workers, "search": search, "cold": asdict(cold), "warm": asdict(warm), "entries": entries}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--search", action="store_true", help="enable search and time update_search() too")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.db, args.base_url, args.feeds, args.workers, args.search)))


if __name__ == "__main__":
    main()
