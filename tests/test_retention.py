"""Retention: entries past their feed's ``retention`` are pruned, but never a story's original while a
kept duplicate points at it, and never brought back by a feed that still lists them.

The store tests write entries with ``Store.store_feed`` into a real SQLite file and prune with a
``now`` of their own; the end-to-end tests run the CLI (``poll``, ``search``, ``stats``, ``run``)
against feeds on the fixture server, dated relative to today.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from conftest import open_db
from server import FixtureServer

from aggregator.config import build_config
from aggregator.dedup import Fingerprint
from aggregator.parse import keyed
from aggregator.retention import cutoffs
from aggregator.storage import Store, stories
from aggregator.storage.retention import _EXPIRED, prune, prune_batch
from aggregator.types import Config, FeedConfig, FetchResult, ParsedEntry, ParsedFeed

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
A, B, C = "http://a.test/feed", "http://b.test/feed", "http://c.test/feed"
DAY = 86400.0


# --- the pure decision -------------------------------------------------------------------------


def test_cutoffs_per_feed_with_the_default_for_the_rest():
    config = build_config(
        {"aggregator": {"retention": "30d"},
         "feeds": [{"url": A}, {"url": B, "retention": "0"}, {"url": C, "retention": "1w"}]},
        Path("feeds.toml"),
    )
    found = cutoffs(config, [A, B, C, "http://gone.test/feed"], NOW)
    assert found == {
        A: "2026-10-21T10:00:00Z",
        C: "2026-11-13T10:00:00Z",
        "http://gone.test/feed": "2026-10-21T10:00:00Z",  # no longer configured: the default
    }


def test_no_retention_keeps_everything():
    config = build_config({"feeds": [{"url": A}]}, Path("feeds.toml"))
    assert config.retention is None and cutoffs(config, [A, B], NOW) == {}


# --- the store -----------------------------------------------------------------------------------


def entry(guid: str, published: str | None, *, link: str | None = None, words: str = "") -> ParsedEntry:
    text = f"<p>{words or guid} Bericht über den Gemeinderat und die neue Brücke am Rhein, Folge {guid}.</p>"
    return keyed(ParsedEntry(
        guid=guid, link=link or f"http://news.test/{guid}", title=f"Meldung {guid} {words}".strip(),
        author=None, published=published, updated=None, summary=text, content=None,
    ))


def store_entries(store: Store, feed: str, entries: Sequence[ParsedEntry], now: str = "2026-11-20T09:00:00Z") -> None:
    parsed = ParsedFeed(title=feed, site_url=None, language=None, entries=tuple(entries))
    result = FetchResult(url=feed, final_url=feed, status=200, headers={}, body=repr(entries).encode())
    store.store_feed(feed, parsed, result, now=now, next_poll_at="2026-11-20T12:00:00Z")


def configured(retention: str | None = "30d", **per_feed: str) -> Config:
    section = {"retention": retention} if retention else {}
    feeds = [{"url": url} | ({"retention": per_feed[key]} if key in per_feed else {})
             for key, url in (("a", A), ("b", B), ("c", C))]
    return build_config({"aggregator": section, "feeds": feeds}, Path("feeds.toml"))


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "agg.db") as opened:
        opened.sync_feeds([FeedConfig(A), FeedConfig(B), FeedConfig(C)], "2026-01-01T00:00:00Z")
        yield opened


def guids(store: Store) -> set[str]:
    return {row[0] for row in store.db.execute("SELECT guid FROM entries")}


def entry_ids(store: Store, *wanted: str) -> list[int]:
    rows = dict(store.db.execute("SELECT guid, id FROM entries").fetchall())
    return [rows[guid] for guid in wanted]


def test_old_entries_go_from_every_index_and_recent_ones_stay(store):
    store_entries(store, A, [entry("old", "2026-01-05T08:00:00Z", words="Hafenkran"),
                             entry("recent", "2026-11-19T08:00:00Z"),
                             entry("undated", None)])  # dated by first_seen: 2026-11-20
    (old,) = entry_ids(store, "old")
    fingerprint = Fingerprint(*store.db.execute("SELECT fingerprint, fingerprint_words FROM entries WHERE id = ?", [old]).fetchone())
    assert old in [c.id for c in stories.candidates(store.db, store.bands, fingerprint)]

    assert prune(store.db, configured("30d"), NOW) == 1

    assert guids(store) == {"recent", "undated"}
    assert old not in [c.id for c in stories.candidates(store.db, store.bands, fingerprint)]
    assert store.scalar("SELECT count(*) FROM entries_fts WHERE entries_fts MATCH 'hafenkran'") == 0
    assert store.scalar("SELECT count(*) FROM entries_fts") == 2
    store.db.execute("INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check')")
    assert store.db.execute("SELECT feed_url, guid FROM pruned_entries").fetchall() == [(A, "old")]


def test_a_future_date_counts_from_first_seen(store):
    store_entries(store, A, [entry("claims-2030", "2030-01-01T00:00:00Z")], now="2026-01-01T00:00:00Z")
    assert prune(store.db, configured("30d"), NOW) == 1


def test_per_feed_retention_overrides_the_default(store):
    for feed in (A, B, C):
        store_entries(store, feed, [entry(f"{feed[7]}-jan", "2026-01-05T08:00:00Z"), entry(f"{feed[7]}-nov", "2026-11-01T08:00:00Z")])

    prune(store.db, configured("30d", b="0", c="400d"), NOW)

    assert guids(store) == {"a-nov", "b-jan", "b-nov", "c-jan", "c-nov"}


def test_an_original_stays_while_a_kept_duplicate_points_at_it(store):
    shared = "http://news.test/shared-story"
    store_entries(store, A, [entry("a-original", "2026-01-05T08:00:00Z", link=shared), entry("a-other", "2026-01-05T08:00:00Z")])
    store_entries(store, B, [entry("b-copy", "2026-01-05T09:00:00Z", link=shared)])
    original, copy = entry_ids(store, "a-original", "b-copy")
    assert store.scalar("SELECT duplicate_of FROM entries WHERE id = ?", [copy]) == original

    assert prune(store.db, configured("30d", b="0"), NOW) == 1  # b keeps its copy forever, so a keeps the original
    assert guids(store) == {"a-original", "b-copy"}

    prune(store.db, configured("30d"), NOW)  # now both expire: the copy goes first, then the original
    assert guids(store) == set()


def test_each_batch_is_bounded_and_the_loop_finishes_stories_across_batches(store):
    shared = "http://news.test/one-story"
    store_entries(store, A, [entry(f"a{i}", "2026-01-05T08:00:00Z") for i in range(5)]
                  + [entry("a-original", "2026-01-05T08:00:00Z", link=shared)])
    store_entries(store, B, [entry("b-copy", "2026-01-06T08:00:00Z", link=shared)])
    feed_cutoffs = {A: "2026-10-21T10:00:00Z", B: "2026-10-21T10:00:00Z"}

    assert prune_batch(store.db, feed_cutoffs, "2026-11-20T10:00:00Z", limit=2) == 2
    assert len(guids(store)) == 5
    assert prune(store.db, configured("30d"), NOW, limit=2) == 5
    assert guids(store) == set()


def test_a_pruned_entry_still_listed_is_not_stored_again_until_the_feed_drops_it(store):
    old, recent = entry("old", "2026-01-05T08:00:00Z"), entry("recent", "2026-11-19T08:00:00Z")
    store_entries(store, A, [old, recent])
    prune(store.db, configured("30d"), NOW)
    edited = keyed(ParsedEntry(**{**old.__dict__, "title": "Meldung old, korrigiert", "content_hash": ""}))

    store_entries(store, A, [edited, recent, entry("new", "2026-11-20T08:00:00Z")])
    assert guids(store) == {"recent", "new"}
    assert store.scalar("SELECT count(*) FROM pruned_entries") == 1

    store_entries(store, A, [recent])  # the feed no longer lists it: its tombstone goes
    assert store.scalar("SELECT count(*) FROM pruned_entries") == 0


def test_finding_nothing_to_prune_is_an_index_lookup_per_feed(store):
    plan = store.db.execute(f"EXPLAIN QUERY PLAN {_EXPIRED}", {"cutoffs": json.dumps({A: "2026"}), "limit": 5})
    steps = " | ".join(row[3] for row in plan)
    assert "SEARCH e USING INDEX entries_feed_date (feed_url=? AND <expr><?)" in steps, steps
    assert "SCAN e" not in steps, steps


def test_a_busy_store_is_pruned_next_time_and_the_pass_goes_on(store, tmp_path: Path):
    store_entries(store, A, [entry("old", "2026-01-05T08:00:00Z")])
    store.db.execute("PRAGMA busy_timeout = 100")
    other = sqlite3.connect(tmp_path / "agg.db")
    other.execute("BEGIN IMMEDIATE")
    try:
        assert prune(store.db, configured("30d"), NOW) == 0
    finally:
        other.rollback()
        other.close()
    assert not store.db.conn.in_transaction
    assert prune(store.db, configured("30d"), NOW) == 1


# --- end to end: the CLI and the daemon ------------------------------------------------------------


def rss(items: Sequence[tuple[str, datetime, str]], base: str) -> str:
    """RSS 2.0 with one item per ``(guid, published, word)``; the word makes each item searchable."""
    body = "".join(
        f"<item><title>{escape(word)} news {guid}</title><link>{base}/story/{guid}</link>"
        f'<guid isPermaLink="false">{guid}</guid><pubDate>{format_datetime(published, usegmt=True)}</pubDate>'
        f"<description>{escape(word)}: what happened in the council today, item {guid}.</description></item>"
        for guid, published, word in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Retention</title><link>{base}/</link>{body}</channel></rss>'


def serve(http: FixtureServer, path: str, items: Sequence[tuple[str, datetime, str]]) -> str:
    http.route(path, body=rss(items, http.base_url), content_type="application/rss+xml")
    return http.url(path)


def stored(database: Path) -> set[str]:
    with contextlib.closing(open_db(database)) as conn:
        return {row[0] for row in conn.execute("SELECT guid FROM entries")}


def test_poll_prunes_at_the_end_of_the_pass_and_search_and_stats_agree(http, write_config, run_cli, tmp_path):
    today = datetime.now(UTC)
    old, recent = today - timedelta(days=200), today - timedelta(days=2)
    items = [("gone-1", old, "Zeppelin"), ("gone-2", old, "Walross"), ("kept", recent, "Leuchtturm")]
    feed = serve(http, "/retention/a.xml", items)
    config = write_config([feed], retention="180d")
    database = tmp_path / "agg.db"

    first = run_cli("poll", "--json", config=config)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["new"] == 3  # stored, then pruned at the end of the pass
    assert stored(database) == {"kept"}
    assert run_cli("search", "Zeppelin", config=config).stdout == ""
    assert "Leuchtturm" in run_cli("search", "Leuchtturm", config=config).stdout

    serve(http, "/retention/a.xml", [*items, ("fresh", today, "Kormoran")])
    second = run_cli("poll", "--json", config=config)
    assert json.loads(second.stdout)["new"] == 1, "the pruned entries the feed still lists came back"
    assert stored(database) == {"kept", "fresh"}

    stats = run_cli("stats", "--json", config=config)
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert (report["entries"], report["feed_details"][0]["entries"]) == (2, 2)
    assert "2 entries" in run_cli("stats", config=config).stdout
    atom = (tmp_path / "public" / "all.atom").read_text(encoding="utf-8")
    assert "Leuchtturm" in atom and "Zeppelin" not in atom


def test_the_daemon_prunes_when_it_starts(http, write_config, run_cli, tmp_path):
    from test_crash import _free_port, spawn, wait_until

    today = datetime.now(UTC)
    feed = serve(http, "/retention/d.xml", [("ancient", today - timedelta(days=90), "Mammut"),
                                             ("current", today, "Gegenwart")])
    assert run_cli("poll", config=write_config([feed])).returncode == 0
    assert stored(tmp_path / "agg.db") == {"ancient", "current"}
    config = write_config([feed], retention="60d")  # the feed is not due again for half an hour
    config.write_text(config.read_text() + f'\n[server]\nhost = "127.0.0.1"\nport = {_free_port()}\n')

    daemon = spawn(config, "run", log=tmp_path / "run.log")
    try:
        pruned = wait_until(lambda: stored(tmp_path / "agg.db") == {"current"}, 10)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert pruned, (tmp_path / "run.log").read_text()
