from __future__ import annotations

import random
import sqlite3

import pytest

from aggregator.dedup import Candidate, match_url
from aggregator.exceptions import StorageError
from aggregator.parse import keyed
from aggregator.storage import Store
from aggregator.storage.schema import migrations
from aggregator.storage.store import FeedFailed, FeedUnchanged
from aggregator.types import FeedConfig, FetchResult, ParsedEntry, ParsedFeed

NOW = "2026-11-20T10:00:00Z"
LATER = "2026-11-20T11:00:00Z"


def entry(guid: str, link: str | None = None, title: str = "t", **kw) -> ParsedEntry:
    fields = dict(guid=guid, link=link, title=title, author=None, published=None, updated=None, summary=None, content=None)
    return keyed(ParsedEntry(**{**fields, **kw}))


def feed(*entries: ParsedEntry, title: str = "Feed") -> ParsedFeed:
    return ParsedFeed(title=title, site_url=None, language=None, entries=entries)


def ok(url: str, etag: str | None = None) -> FetchResult:
    headers = {"etag": etag} if etag else {}
    return FetchResult(url=url, final_url=url, status=200, headers=headers, body=b"<rss/>")


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "sub" / "agg.db") as store:
        store.sync_feeds([FeedConfig("http://a.test/feed"), FeedConfig("http://b.test/feed", tags=("x",))], NOW)
        yield store


def rows(store: Store, sql: str, params=()):
    return store.db.execute(sql, params).fetchall()


def test_open_creates_wal_database_with_schema(tmp_path):
    with Store.open(tmp_path / "new" / "agg.db") as store:
        assert store.scalar("PRAGMA journal_mode") == "wal"
        assert {"feeds", "entries"} <= set(store.db.table_names())
    with Store.open(tmp_path / "new" / "agg.db") as again:
        assert migrations.pending(again.db) == []
        assert again.scalar("SELECT count(*) FROM _sqlite_migrations") == len(migrations.applied(again.db)) >= 2


def test_open_rejects_what_is_not_a_database(tmp_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="bogus.db"):
        Store.open(bogus)
    with pytest.raises(StorageError):
        Store.open(tmp_path)


def test_sync_feeds_keeps_state_and_updates_settings(store):
    store.store_feed("http://a.test/feed", feed(entry("1")), ok("http://a.test/feed", '"v1"'), now=NOW, next_poll_at=LATER)
    store.sync_feeds([FeedConfig("http://a.test/feed", name="Renamed", tags=("de",))], LATER)
    assert rows(store, "SELECT name, tags, etag FROM feeds WHERE url = 'http://a.test/feed'") == [("Renamed", '["de"]', '"v1"')]
    assert store.scalar("SELECT count(*) FROM feeds") == 2


def test_new_entries_then_unchanged_then_changed_in_place(store):
    url = "http://a.test/feed"
    first = store.store_feed(url, feed(entry("1", "http://x.test/1"), entry("2")), ok(url), now=NOW, next_poll_at=LATER)
    assert (first.new, first.updated) == (2, 0)
    again = store.store_feed(url, feed(entry("1", "http://x.test/1"), entry("2")), ok(url), now=LATER, next_poll_at=LATER)
    assert (again.new, again.updated) == (0, 0)
    (before_id,) = rows(store, "SELECT id FROM entries WHERE guid = '2'")[0]
    changed = store.store_feed(url, feed(entry("1", "http://x.test/1"), entry("2", title="new")), ok(url), now=LATER, next_poll_at=LATER)
    assert (changed.new, changed.updated) == (0, 1)
    assert rows(store, "SELECT id, title, changed_at, first_seen FROM entries WHERE guid = '2'") == [(before_id, "new", LATER, NOW)]
    assert store.scalar("SELECT count(*) FROM entries") == 2


def test_older_entries_get_lower_ids(store):
    store.store_feed("http://a.test/feed", feed(entry("newest"), entry("oldest")), ok("x"), now=NOW, next_poll_at=LATER)
    assert [g for (g,) in rows(store, "SELECT guid FROM entries ORDER BY id")] == ["oldest", "newest"]


def test_same_canonical_url_across_feeds_is_a_duplicate_of_the_first(store):
    a = "https://news.test/story?utm_source=rss#top"
    b = "https://NEWS.test:443/story/?fbclid=1"
    store.store_feed("http://a.test/feed", feed(entry("a1", a)), ok("x"), now=NOW, next_poll_at=LATER)
    counts = store.store_feed("http://b.test/feed", feed(entry("b1", b)), ok("x"), now=LATER, next_poll_at=LATER)
    assert counts.duplicates == 1
    (original,), (dup,) = rows(store, "SELECT id FROM entries WHERE guid = 'a1'"), rows(store, "SELECT duplicate_of FROM entries WHERE guid = 'b1'")
    assert dup == original
    assert rows(store, "SELECT DISTINCT url FROM entries") == [("https://news.test/story",)]
    assert rows(store, "SELECT duplicate_rule FROM entries WHERE guid = 'b1'") == [("url",)]


def test_duplicates_point_at_the_original_never_a_chain(store):
    link = "https://news.test/story"
    store.store_feed("http://a.test/feed", feed(entry("1", link)), ok("x"), now=NOW, next_poll_at=LATER)
    store.store_feed("http://b.test/feed", feed(entry("2", link), entry("3", link + "?utm_medium=x")), ok("x"), now=NOW, next_poll_at=LATER)
    (original,) = rows(store, "SELECT id FROM entries WHERE guid = '1'")[0]
    assert rows(store, "SELECT DISTINCT duplicate_of FROM entries WHERE guid != '1'") == [(original,)]


def test_edited_entry_joins_an_earlier_story_with_its_members(store):
    store.store_feed("http://a.test/feed", feed(entry("1", "https://news.test/story")), ok("x"), now=NOW, next_poll_at=LATER)
    store.store_feed("http://b.test/feed", feed(entry("2", "https://news.test/draft")), ok("x"), now=NOW, next_poll_at=LATER)
    store.store_feed("http://b.test/feed", feed(entry("2", "https://news.test/story")), ok("x"), now=LATER, next_poll_at=LATER)
    (original,) = rows(store, "SELECT id FROM entries WHERE guid = '1'")[0]
    assert rows(store, "SELECT duplicate_of FROM entries WHERE guid = '2'") == [(original,)]


def test_entries_for_output_one_per_story_newest_first(store):
    store.store_feed("http://a.test/feed", feed(
        entry("old", "https://n.test/old", published="2026-11-01T00:00:00Z"),
        entry("shared", "https://n.test/shared", published="2026-11-05T00:00:00Z"),
    ), ok("x"), now=NOW, next_poll_at=LATER)
    store.store_feed("http://b.test/feed", feed(
        entry("shared-b", "https://n.test/shared", published="2026-11-05T01:00:00Z"),
        entry("future", "https://n.test/future", published="2099-01-01T00:00:00Z"),
    ), ok("x"), now=NOW, next_poll_at=LATER)
    everything = store.entries_for_output(None, 10)
    assert [e.guid for e in everything] == ["future", "shared", "old"]
    only_b = store.entries_for_output(["http://b.test/feed"], 10)
    assert [e.guid for e in only_b] == ["future", "shared-b"]
    assert [e.guid for e in store.entries_for_output(None, 1)] == ["future"]


def test_errors_counted_and_cleared(store):
    url = "http://a.test/feed"
    store.store_feeds([FeedFailed(url, "HTTP 500", 500, NOW, LATER)])
    store.store_feeds([FeedFailed(url, "HTTP 503", 503, NOW, LATER)])
    assert rows(store, "SELECT last_error, last_status, error_count FROM feeds WHERE url = ?", [url]) == [("HTTP 503", 503, 2)]
    store.store_feeds([FeedUnchanged(url, FetchResult(url, url, 304, {}), LATER, LATER)])
    assert rows(store, "SELECT last_error, last_status, error_count, last_success_at FROM feeds WHERE url = ?", [url]) == [(None, 304, 0, LATER)]


def test_failed_transaction_leaves_nothing_behind(store, monkeypatch):
    def boom(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_record_success", boom)
    with pytest.raises(StorageError, match="disk I/O error"):
        store.store_feed("http://a.test/feed", feed(entry("1"), entry("2")), ok("x"), now=NOW, next_poll_at=LATER)
    assert store.scalar("SELECT count(*) FROM entries") == 0


def test_match_url_picks_the_earliest_story():
    assert match_url([]) is None
    assert match_url([Candidate(5, None), Candidate(7, 5)]).original_id == 5
    assert match_url([Candidate(9, 3)]).original_id == 3
    assert match_url([Candidate(4, None)], own_id=4) is None
    assert match_url([Candidate(8, None)], own_id=4) is None


def test_the_newest_stories_are_chosen_without_sorting_every_entrys_text(store):
    """Under an SQLite heap limit smaller than the stored text, the merged feed's entries still come back:
    stories are chosen on a few small columns and only the newest are read whole."""
    rng = random.Random(3)
    entries = [
        entry(f"g{i}", f"http://a.test/{i}", title=f"Meldung {i}", published=f"2026-11-{1 + i // 100:02d}T{i % 24:02d}:00:00Z",
              summary="<p>" + " ".join(f"wort{rng.randrange(100_000)}" for _ in range(1200)) + "</p>")
        for i in range(1500)
    ]
    store.store_feed("http://a.test/feed", feed(*entries), ok("http://a.test/feed"), now=NOW, next_poll_at=LATER)
    text = store.scalar("SELECT sum(length(summary) + length(summary_text)) FROM entries")
    assert text > 20_000_000
    limit = 12_000_000
    store.db.execute("PRAGMA temp_store = MEMORY")  # as the writer's connection: a sort would stay in memory
    try:
        assert store.scalar(f"PRAGMA hard_heap_limit = {limit}") == limit
        newest = store.entries_for_output(None, 20)
    finally:
        store.scalar("PRAGMA hard_heap_limit = 0")
    expected = sorted(entries, key=lambda e: (e.published, -int(e.guid[1:])), reverse=True)[:20]  # stored last to first
    assert [row.guid for row in newest] == [e.guid for e in expected]
