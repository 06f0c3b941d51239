"""How much of feedparser's own test corpus aggregator stores as feedparser parses it.

Downloads the sdist of the installed feedparser (it carries ``tests/wellformed``
and ``tests/illformed``, 1,758 feeds), then for each file parses it with
``aggregator.parse.parse_feed`` and stores it in a fresh SQLite store. A feed
counts as stored when the store holds one entry for every distinct entry
feedparser itself yields.

    python bench/feedparser_corpus.py [--tests DIR] [--show 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import feedparser

from aggregator.exceptions import ParseError
from aggregator.parse import parse_feed
from aggregator.storage import Store
from aggregator.types import FeedConfig, FetchResult

BASE = "http://127.0.0.1/"


def fetch_corpus(workdir: Path) -> Path:
    wanted = f"feedparser=={version('feedparser')}"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", wanted, "-d", str(workdir)],
        check=True,
    )
    archive = next(workdir.glob("feedparser-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return next(workdir.glob("feedparser-*/tests"))


def corpus_files(tests: Path) -> list[Path]:
    return sorted([*tests.glob("wellformed/**/*.xml"), *tests.glob("illformed/**/*.xml")])


def expected_entries(body: bytes) -> int:
    data = feedparser.parse(body, response_headers={"content-location": BASE})
    return len(data.entries)


def stored_entries(store: Store, url: str, body: bytes) -> tuple[int, str]:
    try:
        parsed = parse_feed(body, url, {})
    except ParseError as e:
        return 0, f"refused: {e}"
    result = FetchResult(url=url, final_url=url, status=200, headers={}, body=body)
    store.store_feed(url, parsed, result, now="2026-01-01T00:00:00Z", next_poll_at="2026-01-01T00:00:00Z")
    count = store.scalar("SELECT count(*) FROM entries WHERE feed_url = ?", [url])
    return count, "" if count else "no entries"


def measure(tests: Path, show: int) -> float:
    files = corpus_files(tests)
    failures: Counter[str] = Counter()
    examples: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "corpus.db") as store:
        store.sync_feeds([FeedConfig(f"{BASE}{i}") for i in range(len(files))], "2026-01-01T00:00:00Z")
        ok = 0
        for index, path in enumerate(files):
            body = path.read_bytes()
            want = expected_entries(body)
            got, why = stored_entries(store, f"{BASE}{index}", body)
            if got >= want:
                ok += 1
                continue
            reason = why or f"stored {got} of {want}"
            failures[reason.split(":")[0]] += 1
            examples.append(f"{path.relative_to(tests)}: {reason}")
    ratio = ok / len(files)
    print(f"feedparser {version('feedparser')} test corpus: {len(files)} feeds, stored as feedparser parses them: {ok} ({ratio:.3f})")
    for reason, count in failures.most_common():
        print(f"  {count:5d}  {reason}")
    for line in examples[:show]:
        print(f"  e.g. {line}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=Path, help="feedparser's tests/ directory (downloaded when absent)")
    parser.add_argument("--show", type=int, default=20, help="how many failing files to list")
    args = parser.parse_args()
    if args.tests:
        measure(args.tests, args.show)
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(fetch_corpus(Path(tmp)), args.show)


if __name__ == "__main__":
    main()
