"""Other processes reading the store while aggregator writes it: no reader ever sees an error, the writer
never fails, and no write transaction is ever held while waiting on the network.

Readers are what users run: the ``sqlite3`` shell with its defaults (read-write, no busy timeout at
all), holding a read transaction open for seconds over slow queries on ``entries``, ``entries_fts``
and the ``stories`` view, then short queries, one shell after another; and a Python process reading
the way Datasette does (read-only connections, Python's 5 s busy timeout), one connection kept open
and a fresh one per query. Writers are ``aggregator poll`` and ``aggregator run`` over the crash
tests' fixture feeds (some slow, some full-text), and both at once. The database exists before the
readers start (``aggregator stats`` creates it): readers of a file that is being created are not
the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import render_config
from server import FixtureServer
from test_crash import (
    FINAL_STATES, _free_port, article_states, expected_entries, feed_tables, feed_xml, plan_feeds, serve_round, spawn,
    stored_entries, wait_until,
)

from aggregator import pipeline
from aggregator.config import load_config
from aggregator.fetch import Fetcher
from aggregator.storage import Store

SQLITE3 = shutil.which("sqlite3")
FEEDS = 16
ROUND = 4  # 14 entries a feed
HOLD_BACK = 3.5
PROBES = 6
needs_shell = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 shell is not installed")
SLOW = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000000) SELECT count(*) FROM n"
LONG_READ = f"""
.bail on
BEGIN;
SELECT 'before', count(*) FROM entries;
{SLOW};
SELECT count(*) FROM entries a JOIN entries b ON a.feed_url = b.feed_url;
SELECT count(*) FROM entries_fts WHERE entries_fts MATCH 'rathaus OR council';
SELECT count(*), sum(member_count) FROM stories;
{SLOW};
SELECT 'after', count(*) FROM entries;
COMMIT;
"""
SHORT_QUERIES = (
    "SELECT id, title FROM entries ORDER BY id DESC LIMIT 20",
    "SELECT title, member_count, sources FROM stories ORDER BY first_seen DESC LIMIT 10",
    "SELECT rowid FROM entries_fts WHERE entries_fts MATCH 'brücke OR library' LIMIT 5",
    "SELECT url, status, entry_count FROM feed_health",
    "SELECT extraction_status, count(*) FROM entries GROUP BY 1",
)
# Datasette's way: read-only connections with Python's default 5 s busy timeout, one kept open, one per query.
PYTHON_READER = r"""
import json, sqlite3, sys, time
uri, until, queries = f"file:{sys.argv[1]}?mode=ro", float(sys.argv[2]), json.loads(sys.argv[3])
kept = sqlite3.connect(uri, uri=True)
done, errors = 0, []
while time.time() < until:
    for sql in queries:
        try:
            kept.execute(sql).fetchall()
            fresh = sqlite3.connect(uri, uri=True)
            fresh.execute(sql).fetchall()
            fresh.close()
        except sqlite3.Error as e:
            errors.append(f"{type(e).__name__}: {e}")
    done += 1
    time.sleep(0.02)
print(json.dumps({"rounds": done, "errors": errors}))
"""


# --- readers --------------------------------------------------------------------------------------


@dataclass
class Readers:
    """Reader processes run in threads until ``stop``; every failure they report is kept.

    The ``sqlite3`` shell runs in one thread, one process after another: the shell opens the file
    read-write, and a read-write connection closing takes a lock for an instant in which a
    connection opening without a busy timeout fails. That is two readers failing each other, so
    the test does not let them; the writer's part is what is under test.
    """

    database: Path
    errors: list[str] = field(default_factory=list)
    long_reads: int = 0
    short_reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, seconds: float) -> None:
        self._threads = [threading.Thread(target=self._shell), threading.Thread(target=self._python, args=(seconds,))]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _shell(self) -> None:
        while not self._stop.is_set():
            self._long_read()
            for sql in SHORT_QUERIES:
                self._sqlite3(sql + ";")
                self.short_reads += 1
                time.sleep(0.05)

    def _sqlite3(self, script: str) -> str:
        run = subprocess.run([SQLITE3, str(self.database)], input=script, capture_output=True, text=True, timeout=60)
        if run.returncode or run.stderr:
            self.errors.append(f"sqlite3 exit {run.returncode}: {run.stderr.strip()}")
        return run.stdout

    def _long_read(self) -> None:
        output = self._sqlite3(LONG_READ)
        counts = [line.split("|")[1] for line in output.splitlines() if line.startswith(("before|", "after|"))]
        if len(counts) == 2 and counts[0] != counts[1]:
            self.errors.append(f"a read transaction saw the table change under it: {output}")
        self.long_reads += len(counts) == 2

    def _python(self, seconds: float) -> None:
        command = [sys.executable, "-c", PYTHON_READER, str(self.database), str(time.time() + seconds),
                   json.dumps(SHORT_QUERIES)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        report = json.loads(run.stdout) if run.returncode == 0 else {"rounds": 0, "errors": [run.stderr]}
        self.short_reads += report["rounds"] * len(SHORT_QUERIES) * 2
        self.errors += report["errors"]


@contextlib.contextmanager
def reading(database: Path, seconds: float) -> Iterator[Readers]:
    readers = Readers(database)
    readers.start(seconds)
    try:
        yield readers
    finally:
        readers.stop()


def assert_readers_fine(readers: Readers) -> None:
    assert readers.errors == [], readers.errors[:5]
    assert readers.long_reads >= 1 and readers.short_reads >= 100, (readers.long_reads, readers.short_reads)


def assert_wal_fine(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        busy, frames, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and frames == moved, "the WAL could not be checkpointed once the readers left"


def readers_config(http: FixtureServer, tmp_path: Path, feeds: int, *, server: bool = False) -> Path:
    """feeds.toml for ``feeds`` crash-test feeds, two of them full-text, and the store created."""
    plans = plan_feeds(feeds)
    serve_round(http, plans, ROUND)
    tables = [table | {"full_text": table["full_text"] and index < 8} for index, table in enumerate(feed_tables(http, plans))]
    text = render_config(tmp_path, tables, timeout="10s", concurrency=8, host_concurrency=16)
    if server:
        text += f'\n[server]\nhost = "127.0.0.1"\nport = {_free_port()}\n'
    config = tmp_path / "feeds.toml"
    config.write_text(text, encoding="utf-8")
    created = spawn(config, "stats", log=tmp_path / "stats.log")  # the store exists before anyone reads it
    assert created.wait(timeout=30) == 0, (tmp_path / "stats.log").read_text()
    return config


# --- the tests ----------------------------------------------------------------------------------------


@needs_shell
def test_readers_never_fail_while_poll_writes(http: FixtureServer, tmp_path: Path):
    config = readers_config(http, tmp_path, FEEDS)
    database, log = tmp_path / "agg.db", tmp_path / "poll.log"
    poll = spawn(config, "poll", log=log)
    with reading(database, 3.0) as readers:
        code = poll.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "locked" not in log.read_text() and "busy" not in log.read_text().lower()
    assert_readers_fine(readers)
    assert expected_entries(http, plan_feeds(FEEDS), ROUND) <= stored_entries(database)
    assert set(article_states(database)) <= FINAL_STATES
    assert_wal_fine(database)


@needs_shell
def test_readers_never_fail_while_the_daemon_writes(http: FixtureServer, tmp_path: Path):
    config = readers_config(http, tmp_path, FEEDS, server=True)
    database, log = tmp_path / "agg.db", tmp_path / "run.log"
    expected = expected_entries(http, plan_feeds(FEEDS), ROUND)
    daemon = spawn(config, "run", log=log)
    try:
        with reading(database, 3.0) as readers:
            complete = wait_until(lambda: expected <= stored_entries(database), 30)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert complete, log.read_text()[-3000:]
    assert '"level": "ERROR"' not in log.read_text() and "locked" not in log.read_text(), log.read_text()[-3000:]
    assert_readers_fine(readers)
    assert_wal_fine(database)


def test_no_write_lock_is_held_while_a_response_is_awaited(http: FixtureServer, tmp_path: Path):
    """While the server holds back a feed, and then an article page, another process takes the write
    lock again and again, waiting at most 200 ms each time: it always gets it."""
    plans = plan_feeds(8)
    serve_round(http, plans, 0)
    slow_feed, slow_page = plans[1].path, "/pages/en_science.html"
    http.route(slow_feed, body=feed_xml(http, plans[1], 0), content_type="application/rss+xml", delay=HOLD_BACK)
    http.route(slow_page, file="pages/en_science.html", delay=HOLD_BACK)
    config = tmp_path / "feeds.toml"
    config.write_text(render_config(tmp_path, feed_tables(http, plans), timeout="10s", concurrency=8,
                                    host_concurrency=16), encoding="utf-8")
    database, log = tmp_path / "agg.db", tmp_path / "poll.log"
    poll = spawn(config, "poll", log=log)
    try:
        feed_wait = _probe_while_held_back(lambda: http.hits(slow_feed) > 0, database)
        page_wait = _probe_while_held_back(lambda: http.hits(slow_page, prefix=True) > 0, database)
    finally:
        code = poll.wait(timeout=60)
    assert feed_wait == [True] * PROBES and page_wait == [True] * PROBES, (feed_wait, page_wait)
    assert code == 0, log.read_text()
    assert expected_entries(http, plans, 0) <= stored_entries(database)


def _probe_while_held_back(requested: Callable[[], bool], database: Path) -> list[bool]:
    """Once the held-back request has reached the server, try the write lock ``PROBES`` times during its delay."""
    assert wait_until(requested, 20), "the slow request never came"
    started = time.monotonic()
    taken = [_take_write_lock(database) for _ in range(PROBES) if not time.sleep(0.1)]
    assert time.monotonic() - started < HOLD_BACK - 0.5, "the probes outlasted the delay: they showed nothing"
    return taken


def test_no_transaction_is_open_when_a_request_starts_or_ends(http: FixtureServer, tmp_path: Path, monkeypatch):
    """In process: every fetch (feeds and article pages) starts and ends with the connection outside a transaction."""
    plans = plan_feeds(12)
    serve_round(http, plans, 3)
    config_path = tmp_path / "feeds.toml"
    config_path.write_text(render_config(tmp_path, feed_tables(http, plans), timeout="10s", concurrency=8,
                                         host_concurrency=16), encoding="utf-8")
    config = load_config(config_path)
    seen: list[bool] = []
    with Store.open(config.database) as store:

        class CheckingFetcher(Fetcher):
            async def fetch(self, *args, **kwargs):
                seen.append(store.db.conn.in_transaction)
                try:
                    return await super().fetch(*args, **kwargs)
                finally:
                    seen.append(store.db.conn.in_transaction)

        monkeypatch.setattr(pipeline, "Fetcher", CheckingFetcher)
        summary = asyncio.run(pipeline.poll_feeds(config, store, list(config.feeds)))
    assert summary.count("ok") == len(plans) and summary.articles.get("done")
    assert len(seen) >= 2 * (len(plans) + summary.articles["done"]) and not any(seen)


def _stored_feeds(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
        with contextlib.suppress(sqlite3.OperationalError):
            return conn.execute("SELECT count(DISTINCT feed_url) FROM entries").fetchone()[0]
    return 0


def _take_write_lock(database: Path) -> bool:
    """``BEGIN IMMEDIATE`` with a 200 ms busy timeout, as a second writer would; rolled back."""
    with contextlib.closing(sqlite3.connect(database, timeout=0.2, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True


def test_poll_beside_the_daemon_neither_fails(http: FixtureServer, tmp_path: Path):
    """Two writers: ``aggregator poll`` run by hand while ``aggregator run`` polls the same feeds. Each
    waits for the other's write lock; neither is told "database is locked"."""
    config = readers_config(http, tmp_path, 48, server=True)
    database, log = tmp_path / "agg.db", tmp_path / "run.log"
    daemon = spawn(config, "run", log=log)
    try:
        codes = [spawn(config, "poll", log=tmp_path / "poll.log").wait(timeout=60)]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert codes == [0], (tmp_path / "poll.log").read_text()[-3000:]
    assert "locked" not in log.read_text() + (tmp_path / "poll.log").read_text()
    assert expected_entries(http, plan_feeds(48), ROUND) <= stored_entries(database)
