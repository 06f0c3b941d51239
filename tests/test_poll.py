"""One poll pass end to end: fixture HTTP server → fetch → parse → SQLite → merged feeds.

Finer cases call the library (``poll_once``); user-facing ones run the CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import feedparser
import pytest

from server import FixtureServer

DATA_DIR = Path(__file__).parent / "data"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
STAMP = "Wed, 04 Nov 2026 18:20:00 GMT"
CANONICAL_STORY = "https://news.example.com/2026/11/story-42"
STORY_TITLE = "City council approves new tram line to the airport"
FORBIDDEN = ("<script", "onclick", "onerror", "javascript:", "<iframe", "evil.test")


def expected(name: str) -> dict[str, Any]:
    return json.loads((DATA_DIR / f"{name}.expected.json").read_text(encoding="utf-8"))


def rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


def feed_row(conn: sqlite3.Connection, url: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM feeds WHERE url = ?", (url,)).fetchone()
    assert row is not None, f"no feeds row for {url}"
    return row


def entries_of(conn: sqlite3.Connection, url: str) -> list[sqlite3.Row]:
    return rows(conn, "SELECT * FROM entries WHERE feed_url = ? ORDER BY id", url)


def outputs(public: Path, name: str = "all") -> tuple[Any, Any, dict[str, Any]]:
    """(atom, rss) parsed by feedparser without its sanitiser, and the JSON Feed document."""
    atom = feedparser.parse((public / f"{name}.atom").read_bytes(), sanitize_html=False)
    rss = feedparser.parse((public / f"{name}.rss").read_bytes(), sanitize_html=False)
    document = json.loads((public / f"{name}.json").read_text(encoding="utf-8"))
    return atom, rss, document


def config_paths(config: Path) -> tuple[Path, Path]:
    return config.parent / "agg.db", config.parent / "public"


# --- first poll, conditional GET, unchanged bodies, changed entries ------------------------


def test_first_poll_stores_entries_and_feed_state(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/news/rss2_basic.xml")
    http.route("/news/rss2_basic.xml", file="rss2_basic.xml", etag='"rev-1"', last_modified=STAMP)
    config = write_config([url])

    summary = poll_once(config)

    (result,) = summary.results
    assert result.status == "ok" and result.new == 5 and result.error is None
    # the configured user_agent (see render_config) is what the server saw
    assert http.last_request("/news/rss2_basic.xml").headers["User-Agent"] == "aggregator-tests/1.0 (+http://127.0.0.1/)"
    conn = db(config_paths(config)[0])
    stored = entries_of(conn, url)
    want = expected("rss2_basic")["entries"]
    assert len(stored) == len(want) == 5
    assert {r["title"] for r in stored} == {e["title"] for e in want}
    by_title = {r["title"]: r for r in stored}
    letters = by_title["Letters: the case for more benches"]
    # the relative link /articles/5 resolves against the address it was fetched from
    assert letters["link"] == http.url("/articles/5")
    assert letters["guid"] == http.url("/articles/5")
    for entry in want:
        row = by_title[entry["title"]]
        assert ISO_UTC.match(row["published"]), row["published"]
        assert row["published"] == entry["published"]
        assert ISO_UTC.match(row["first_seen"])
        assert row["duplicate_of"] is None
    feed = feed_row(conn, url)
    assert feed["title"] == "Feeds Test Daily"
    assert feed["etag"] == '"rev-1"'
    assert feed["last_modified"] == STAMP
    assert feed["last_status"] == 200
    assert feed["error_count"] == 0
    assert feed["last_error"] is None
    assert ISO_UTC.match(feed["last_polled_at"])
    assert feed["moved_to"] is None


def test_second_poll_304_is_success_and_sends_validators(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/cond.xml")
    http.route("/cond.xml", file="rss2_basic.xml", etag='"rev-1"', last_modified=STAMP)
    config = write_config([url])
    poll_once(config)

    summary = poll_once(config)

    (result,) = summary.results
    assert result.status == "not_modified"
    assert result.http_status == 304
    assert result.new == 0 and result.error is None
    second = http.requests_for("/cond.xml")[-1]
    assert second.headers["If-None-Match"] == '"rev-1"'
    assert second.headers["If-Modified-Since"] == STAMP
    conn = db(config_paths(config)[0])
    assert len(entries_of(conn, url)) == 5
    feed = feed_row(conn, url)
    assert feed["last_error"] is None
    assert feed["error_count"] == 0
    assert feed["etag"] == '"rev-1"'


def test_304_without_validators_keeps_stored_etag(http: FixtureServer, write_config, poll_once, db) -> None:
    """A 304 that omits ETag/Last-Modified must not wipe the validators learned before."""
    url = http.url("/cond.xml")
    http.route("/cond.xml", file="rss2_basic.xml", etag='"rev-1"', last_modified=STAMP)
    config = write_config([url])
    poll_once(config)
    http.route("/cond.xml", status=304)  # a sloppy server: 304 with no validators
    assert poll_once(config).results[0].status == "not_modified"
    http.route("/cond.xml", file="rss2_basic.xml", etag='"rev-1"', last_modified=STAMP)

    poll_once(config)

    third = http.requests_for("/cond.xml")[-1]
    assert third.headers.get("If-None-Match") == '"rev-1"'
    feed = feed_row(db(config_paths(config)[0]), url)
    assert feed["etag"] == '"rev-1"' and feed["last_modified"] == STAMP


def test_identical_body_without_etag_is_unchanged(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/plain.xml")
    http.route("/plain.xml", file="rss2_basic.xml")  # no ETag, no Last-Modified
    config = write_config([url])
    first = poll_once(config)
    assert first.results[0].status == "ok"

    second = poll_once(config)

    (result,) = second.results
    assert result.status == "not_modified"
    assert result.new == 0 and result.updated == 0
    request = http.requests_for("/plain.xml")[-1]
    assert "If-None-Match" not in request.headers
    conn = db(config_paths(config)[0])
    stored = entries_of(conn, url)
    assert len(stored) == 5
    assert all(r["changed_at"] is None for r in stored)
    assert feed_row(conn, url)["last_error"] is None


def test_changed_entry_is_updated_in_place(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/daily.xml")
    http.route("/daily.xml", file="rss2_basic.xml")
    config = write_config([url])
    poll_once(config)
    guid = "urn:uuid:6f1c2a9e-8d44-4b7e-9a53-0c2f7d1e5b21"
    conn = db(config_paths(config)[0])
    before = {r["guid"]: dict(r) for r in entries_of(conn, url)}
    http.route("/daily.xml", file="rss2_changed.xml")

    summary = poll_once(config)

    (result,) = summary.results
    assert result.status == "ok" and result.new == 0 and result.updated == 1
    after = {r["guid"]: dict(r) for r in entries_of(conn, url)}
    assert after.keys() == before.keys() and len(after) == 5
    changed = after[guid]
    assert changed["id"] == before[guid]["id"]
    assert changed["title"] == "Library extends opening hours until 2 a.m. during exam season"
    assert "Correction: the central library will stay open until 2 a.m." in changed["summary"]
    assert changed["changed_at"] is not None and ISO_UTC.match(changed["changed_at"])
    assert changed["first_seen"] == before[guid]["first_seen"]
    for other, row in after.items():
        if other != guid:
            assert row["changed_at"] is None
            assert row["title"] == before[other]["title"]


# --- deduplication across feeds ----------------------------------------------------------------


def _story_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return rows(conn, "SELECT * FROM entries WHERE title = ? ORDER BY id", STORY_TITLE)


def _assert_story_once_in_outputs(public: Path) -> None:
    atom, rss, document = outputs(public)
    assert sum(e.title == STORY_TITLE for e in atom.entries) == 1
    assert sum(e.title == STORY_TITLE for e in rss.entries) == 1
    assert sum(i["title"] == STORY_TITLE for i in document["items"]) == 1


def test_same_story_in_two_feeds_in_one_pass(http: FixtureServer, write_config, poll_once, db) -> None:
    a, b = http.url("/syndicated_a.xml"), http.url("/syndicated_b.xml")
    config = write_config([a, b])

    summary = poll_once(config)

    assert sum(r.duplicates for r in summary.results) == 1
    conn = db(config_paths(config)[0])
    story = _story_rows(conn)
    assert len(story) == 2
    first, second = story  # by id: the one stored first comes first
    assert {first["feed_url"], second["feed_url"]} == {a, b}
    assert first["duplicate_of"] is None
    assert second["duplicate_of"] == first["id"]
    assert second["url"] == CANONICAL_STORY
    assert first["url"] == CANONICAL_STORY
    assert rows(conn, "SELECT count(*) AS n FROM entries WHERE duplicate_of IS NOT NULL")[0]["n"] == 1
    _assert_story_once_in_outputs(config_paths(config)[1])


@pytest.mark.parametrize("order", ["a_then_b", "b_then_a"])
def test_original_is_the_entry_seen_first(http: FixtureServer, write_config, poll_once, db, order: str) -> None:
    a, b = http.url("/syndicated_a.xml"), http.url("/syndicated_b.xml")
    first_url, second_url = (a, b) if order == "a_then_b" else (b, a)
    config = write_config([a, b])
    poll_once(config, only=[first_url])

    poll_once(config, only=[second_url])

    conn = db(config_paths(config)[0])
    story = {r["feed_url"]: r for r in _story_rows(conn)}
    original, duplicate = story[first_url], story[second_url]
    assert original["duplicate_of"] is None
    assert duplicate["duplicate_of"] == original["id"]
    assert duplicate["url"] == CANONICAL_STORY
    _assert_story_once_in_outputs(config_paths(config)[1])


def _story_feed(title: str, guid: str, link: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>{title}</title><link>http://feeds.test/{guid}/</link>
<description>x</description>
<item><title>{STORY_TITLE}</title><link>{link}</link><guid isPermaLink="false">{guid}</guid>
<pubDate>Fri, 06 Nov 2026 12:30:00 GMT</pubDate><description>Tram story, third copy.</description></item>
</channel></rss>"""


def test_duplicates_point_at_the_original_directly(http: FixtureServer, write_config, poll_once, db) -> None:
    a, b, c = http.url("/syndicated_a.xml"), http.url("/syndicated_b.xml"), http.url("/third.xml")
    http.route("/third.xml", body=_story_feed("Third", "third-1", CANONICAL_STORY + "/?utm_campaign=x"),
               content_type="application/rss+xml")
    config = write_config([a, b, c])
    for url in (a, b, c):
        poll_once(config, only=[url])

    conn = db(config_paths(config)[0])
    story = {r["feed_url"]: r for r in _story_rows(conn)}
    assert len(story) == 3
    assert story[a]["duplicate_of"] is None
    assert story[b]["duplicate_of"] == story[a]["id"]
    assert story[c]["duplicate_of"] == story[a]["id"]  # not a chain through b
    _assert_story_once_in_outputs(config_paths(config)[1])


def test_edited_link_joins_an_existing_story(http: FixtureServer, write_config, poll_once, db) -> None:
    a, c = http.url("/syndicated_a.xml"), http.url("/late.xml")
    http.route("/late.xml", body=_story_feed("Late", "late-1", "http://feeds.test/late/tram-draft"),
               content_type="application/rss+xml")
    config = write_config([a, c])
    poll_once(config, only=[a])
    poll_once(config, only=[c])
    conn = db(config_paths(config)[0])
    assert {r["feed_url"]: r["duplicate_of"] for r in _story_rows(conn)} == {a: None, c: None}
    http.route("/late.xml", body=_story_feed("Late", "late-1", CANONICAL_STORY), content_type="application/rss+xml")

    summary = poll_once(config, only=[c])

    assert summary.results[0].updated == 1
    story = {r["feed_url"]: r for r in _story_rows(conn)}
    assert story[c]["duplicate_of"] == story[a]["id"]
    assert story[c]["url"] == CANONICAL_STORY
    _assert_story_once_in_outputs(config_paths(config)[1])


def test_tagged_output_shows_its_own_member_of_a_story(http: FixtureServer, write_config, poll_once) -> None:
    a, b = http.url("/syndicated_a.xml"), http.url("/syndicated_b.xml")
    config = write_config(
        [{"url": a, "tags": ["metro"]}, {"url": b, "tags": ["courier"]}],
        outputs=[{"name": "all"}, {"name": "courier", "tags": ["courier"]}],
    )
    poll_once(config, only=[a])
    poll_once(config, only=[b])

    _, _, everything = outputs(config_paths(config)[1], "all")
    _, rss, courier = outputs(config_paths(config)[1], "courier")

    [merged] = [i for i in everything["items"] if i["title"] == STORY_TITLE]
    assert merged["_aggregator"]["source"]["feed_url"] == a  # the original
    [own] = [i for i in courier["items"] if i["title"] == STORY_TITLE]
    assert own["_aggregator"]["source"]["feed_url"] == b  # the courier's own copy, not dropped
    assert len(courier["items"]) == 3
    assert {e.source.href for e in rss.entries} == {b}


# --- failures -----------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Welcome to our site</title></head>
<body><h1>Welcome</h1><p>This is a web page, not a feed.</p></body></html>
"""


def test_failures_are_recorded_per_feed_in_one_pass(http: FixtureServer, write_config, run_cli, db) -> None:
    healthy = {http.url("/ok/rss2_basic.xml"): 5, http.url("/ok/atom_basic.xml"): 4}
    http.route("/ok/rss2_basic.xml", file="rss2_basic.xml")
    http.route("/ok/atom_basic.xml", file="atom_basic.xml")
    http.route("/bad/500", body="boom", status=500)
    http.route("/bad/404", body="gone", status=404)
    http.route("/bad/slow", file="rss2_basic.xml", delay=1.6)
    http.route("/bad/huge", body=b"<rss>" + b"x" * (10 * 1024 * 1024 + 512 * 1024) + b"</rss>",
               content_type="application/rss+xml")
    http.route("/bad/garbage", file="garbage.xml")
    http.route("/bad/page", body=PAGE, content_type="text/html; charset=utf-8")
    failing = {
        http.url("/bad/500"): "500",
        http.url("/bad/404"): "404",
        http.url("/bad/slow"): "timed out",
        http.url("/bad/huge"): "too large",
        http.url("/bad/garbage"): "not a feed",
        http.url("/bad/page"): "not a feed",
    }
    config = write_config([*healthy, *failing], timeout="1s")

    done = run_cli("poll", config=config)

    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()
    assert len(summary) == 1
    assert "6 failed" in summary[0]
    report = done.stdout + done.stderr
    for url in failing:
        assert url in report, f"{url} not named in the CLI report"
    conn = db(config_paths(config)[0])
    for url, words in failing.items():
        feed = feed_row(conn, url)
        assert feed["last_error"] and words in feed["last_error"], (url, feed["last_error"])
        assert feed["error_count"] == 1
        assert feed["last_polled_at"] is not None
        assert entries_of(conn, url) == []
    assert feed_row(conn, http.url("/bad/500"))["last_status"] == 500
    assert feed_row(conn, http.url("/bad/404"))["last_status"] == 404
    for url, count in healthy.items():
        feed = feed_row(conn, url)
        assert feed["last_error"] is None and feed["error_count"] == 0
        assert len(entries_of(conn, url)) == count


def test_failed_and_unchanged_polls_are_written_by_the_writer_thread(
    http: FixtureServer, write_config, poll_once, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop never takes SQLite's write lock for a failed or unchanged feed: it would wait for
    the writer thread's transaction, and every feed of the pass with it."""
    import threading

    from aggregator.storage import Store, store as store_module

    http.route("/w/ok.xml", file="rss2_basic.xml")
    http.route("/w/500", body="boom", status=500)
    http.route("/w/410", file="atom_basic.xml")
    config = write_config([http.url("/w/ok.xml"), http.url("/w/500"), http.url("/w/410")])
    poll_once(config)  # ok.xml is stored; the next pass finds it unchanged (304)
    http.route("/w/410", body="gone", status=410)

    threads: list[tuple[str, str]] = []
    real = store_module._record_failed
    real_success = Store._record_success

    def failed(db, write):
        threads.append((write.url, threading.current_thread().name))
        return real(db, write)

    def success(self, db, url, result, parsed, now, next_poll_at):
        threads.append((url, threading.current_thread().name))
        return real_success(self, db, url, result, parsed, now, next_poll_at)

    monkeypatch.setattr(store_module, "_record_failed", failed)
    monkeypatch.setattr(Store, "_record_success", success)
    summary = poll_once(config)

    assert sorted(r.status for r in summary.results) == ["error", "gone", "not_modified"]
    assert sorted(url for url, _ in threads) == sorted([http.url("/w/ok.xml"), http.url("/w/500"), http.url("/w/410")])
    assert all(name.startswith("store-writer") for _, name in threads), threads
    conn = db(config_paths(config)[0])
    assert feed_row(conn, http.url("/w/500"))["error_count"] == 2
    assert feed_row(conn, http.url("/w/410"))["gone_at"] is not None


def test_a_failed_poll_that_cannot_be_stored_fails_the_pass(
    http: FixtureServer, write_config, poll_once, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass does not wait for a failed feed's row, but does not lose its StorageError either."""
    import sqlite3 as sqlite

    from aggregator.exceptions import StorageError
    from aggregator.storage import store as store_module

    def broken(db, write):
        raise sqlite.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "_record_failed", broken)
    http.route("/s/500", body="boom", status=500)
    http.route("/s/ok.xml", file="rss2_basic.xml")
    config = write_config([http.url("/s/500"), http.url("/s/ok.xml")])
    with pytest.raises(StorageError, match="disk I/O error"):
        poll_once(config)


def test_error_count_grows_and_resets_on_success(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/flaky.xml")
    http.route("/flaky.xml", body="down", status=503)
    config = write_config([url])
    poll_once(config)
    poll_once(config)
    conn = db(config_paths(config)[0])
    assert feed_row(conn, url)["error_count"] == 2
    http.route("/flaky.xml", file="rss2_basic.xml")

    poll_once(config)

    feed = feed_row(conn, url)
    assert feed["error_count"] == 0 and feed["last_error"] is None and feed["last_status"] == 200


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_sets_next_poll_no_earlier(http: FixtureServer, write_config, poll_once, db, form: str) -> None:
    wait = timedelta(hours=3)
    value = str(int(wait.total_seconds())) if form == "seconds" else format_datetime(
        datetime.now(UTC) + wait, usegmt=True
    )
    url = http.url("/busy.xml")
    http.route("/busy.xml", body="slow down", status=429, headers={"Retry-After": value})
    config = write_config([{"url": url, "interval": "15m"}])
    started = datetime.now(UTC)

    poll_once(config)

    feed = feed_row(db(config_paths(config)[0]), url)
    assert feed["last_status"] == 429 and "429" in feed["last_error"]
    next_poll = datetime.strptime(feed["next_poll_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert next_poll >= started + wait - timedelta(seconds=5), (feed["next_poll_at"], value)


def test_malformed_feed_stored_with_warning(http: FixtureServer, write_config, poll_once, db) -> None:
    url = http.url("/malformed.xml")
    config = write_config([url])

    summary = poll_once(config)

    (result,) = summary.results
    assert result.status == "ok" and result.warning
    conn = db(config_paths(config)[0])
    stored = entries_of(conn, url)
    assert {r["title"] for r in stored} == {e["title"] for e in expected("malformed")["entries"]}
    feed = feed_row(conn, url)
    assert feed["last_warning"]
    assert feed["last_error"] is None and feed["error_count"] == 0


def test_loopback_refused_unless_allowed(http: FixtureServer, write_config, run_cli, db) -> None:
    url = http.url("/private.xml")
    http.route("/private.xml", file="rss2_basic.xml")
    config = write_config([url], allow_private_addresses=False)

    done = run_cli("poll", config=config)

    assert done.returncode == 0, done.stderr
    assert "1 failed" in done.stdout
    assert url in done.stderr
    assert http.requests == []  # refused before connecting: the server saw nothing
    feed = feed_row(db(config_paths(config)[0]), url)
    error = feed["last_error"]
    assert "refused" in error and "127.0.0.1" in error and "allow_private_addresses" in error
    assert feed["error_count"] == 1
    assert entries_of(db(config_paths(config)[0]), url) == []


# --- permanent redirect -------------------------------------------------------------------------


def test_permanent_redirect_is_followed_and_reported(http: FixtureServer, write_config, run_cli, db) -> None:
    old, new = http.url("/old/feed.xml"), http.url("/new/feed.xml")
    http.route("/old/feed.xml", redirect="/new/feed.xml", status=301)
    http.route("/new/feed.xml", file="rss2_basic.xml")
    config = write_config([old])

    first = run_cli("poll", config=config)

    assert first.returncode == 0, first.stderr
    assert new in first.stdout + first.stderr  # the user is told where the feed lives now
    conn = db(config_paths(config)[0])
    feed = feed_row(conn, old)
    assert feed["moved_to"] == new
    assert rows(conn, "SELECT url FROM feeds")[0]["url"] == old  # still the configured URL
    assert len(rows(conn, "SELECT url FROM feeds")) == 1
    assert len(entries_of(conn, old)) == 5
    assert http.hits("/old/feed.xml") == 1 and http.hits("/new/feed.xml") == 1

    second = run_cli("poll", config=config)

    assert second.returncode == 0, second.stderr
    assert http.hits("/old/feed.xml") == 1  # not asked again
    assert http.hits("/new/feed.xml") == 2
    feed = feed_row(conn, old)
    assert feed["moved_to"] == new and feed["last_error"] is None
    assert len(entries_of(conn, old)) == 5


def test_temporary_redirect_is_not_recorded_as_move(http: FixtureServer, write_config, poll_once, db) -> None:
    old = http.url("/temp/feed.xml")
    http.route("/temp/feed.xml", redirect="/elsewhere/feed.xml", status=302)
    http.route("/elsewhere/feed.xml", file="rss2_basic.xml")
    config = write_config([old])
    poll_once(config)
    poll_once(config)
    feed = feed_row(db(config_paths(config)[0]), old)
    assert feed["moved_to"] is None
    assert http.hits("/temp/feed.xml") == 2


# --- text encodings ------------------------------------------------------------------------------


def test_german_titles_stored_and_published_intact(http: FixtureServer, write_config, poll_once, db) -> None:
    feeds = {http.url("/german_umlauts.xml"): "german_umlauts", http.url("/german_latin1.xml"): "german_latin1"}
    config = write_config(list(feeds))

    poll_once(config)

    conn = db(config_paths(config)[0])
    titles: set[str] = set()
    for url, name in feeds.items():
        want = expected(name)
        assert feed_row(conn, url)["title"] == want["title"]
        stored = {r["guid"]: r for r in entries_of(conn, url)}
        for entry in want["entries"]:
            assert stored[entry["guid"]]["title"] == entry["title"]
            assert stored[entry["guid"]]["author"] == entry["author"]
            titles.add(entry["title"])
    assert "»Wir müssen jetzt handeln«: Grüne fordern schärfere Klimaziele" in titles
    atom, rss, document = outputs(config_paths(config)[1])
    assert titles <= {e.title for e in atom.entries}
    assert titles <= {e.title for e in rss.entries}
    assert titles <= {i["title"] for i in document["items"]}
    raw_json = (config_paths(config)[1] / "all.json").read_text(encoding="utf-8")
    assert "Fußgängerbrücke" in raw_json and "\\u00" not in raw_json
    sources = {e.source.title for e in atom.entries}
    assert "Kölner Stadtbote – Nachrichten" in sources and "Düsseldorfer Rundschau" in sources


# --- merged outputs ------------------------------------------------------------------------------


def _published(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_generated_outputs_are_valid_safe_and_sourced(http: FixtureServer, write_config, poll_once) -> None:
    names = ["rss2_basic", "atom_basic", "syndicated_a", "syndicated_b"]
    urls = [http.url(f"/{n}.xml") for n in names]
    config = write_config(urls)

    poll_once(config)

    public = config_paths(config)[1]
    for fmt in ("atom", "rss", "json"):
        assert (public / f"all.{fmt}").is_file()
    for fmt in ("atom", "rss", "json"):
        text = (public / f"all.{fmt}").read_text(encoding="utf-8")
        for form in (text.lower(), html.unescape(text).lower(), html.unescape(html.unescape(text)).lower()):
            for bad in FORBIDDEN:
                assert bad not in form, f"{bad!r} in all.{fmt}"
    atom, rss, document = outputs(public)
    total = 5 + 4 + 3 + 3 - 1  # one story appears in both syndicated feeds
    assert atom.bozo == 0, atom.get("bozo_exception")
    assert rss.bozo == 0, rss.get("bozo_exception")
    assert atom.version == "atom10" and rss.version == "rss20"
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert len(atom.entries) == len(rss.entries) == len(document["items"]) == total

    atom_times = [datetime(*e.published_parsed[:6]) for e in atom.entries]
    rss_times = [datetime(*e.published_parsed[:6]) for e in rss.entries]
    json_times = [_published(i["date_published"]) for i in document["items"]]
    assert atom_times == sorted(atom_times, reverse=True)
    assert rss_times == sorted(rss_times, reverse=True)
    assert json_times == sorted(json_times, reverse=True)
    assert atom.entries[0].title == "Bakery wins national bread award"  # 2026-11-06T14:30Z, the newest

    for entry in atom.entries:
        assert entry.source.link in urls and entry.source.title
    for entry in rss.entries:
        assert entry.source.href in urls and entry.source.title
    for item in document["items"]:
        assert item["_aggregator"]["source"]["feed_url"] in urls
        assert item["id"] and item["title"]
    assert {e.source.href for e in rss.entries} == set(urls)
    gliders = next(e for e in atom.entries if e.title.startswith("Researchers map the ocean floor"))
    assert "autonomous gliders" in gliders.content[0].value
    assert gliders.link == "http://feeds.test/articles/3"


def test_max_entries_and_tag_filtered_outputs(http: FixtureServer, write_config, poll_once) -> None:
    en = http.url("/rss2_basic.xml")
    de_utf8, de_latin1 = http.url("/german_umlauts.xml"), http.url("/german_latin1.xml")
    config = write_config(
        [{"url": en, "tags": ["en"]}, {"url": de_utf8, "tags": ["de"]}, {"url": de_latin1, "tags": ["news", "de"]}],
        outputs=[{"name": "all", "max_entries": 3}, {"name": "deutsch", "title": "Deutsch", "tags": ["de"]}],
    )

    poll_once(config)

    public = config_paths(config)[1]
    atom, rss, document = outputs(public, "all")
    assert len(atom.entries) == len(rss.entries) == len(document["items"]) == 3
    # the three newest of all 12 entries
    assert [i["title"] for i in document["items"]] == [
        "»Größte Übung seit Jahren«: Feuerwehr probt am Rheinufer",
        "Altstadt: Bäckerei schließt nach 112 Jahren",
        "Bürgermeisterin eröffnet neue Fußgängerbrücke über den Rhein",
    ]
    atom, rss, document = outputs(public, "deutsch")
    assert len(document["items"]) == len(atom.entries) == len(rss.entries) == 7
    assert {i["_aggregator"]["source"]["feed_url"] for i in document["items"]} == {de_utf8, de_latin1}
    assert {e.source.href for e in rss.entries} == {de_utf8, de_latin1}
    assert document["title"] == "Deutsch"


# --- choosing feeds ---------------------------------------------------------------------------


def test_poll_feed_option_polls_only_that_feed(http: FixtureServer, write_config, run_cli, db) -> None:
    one, two = http.url("/rss2_basic.xml"), http.url("/atom_basic.xml")
    config = write_config([one, two])

    done = run_cli("poll", "--feed", two, config=config)

    assert done.returncode == 0, done.stderr
    assert "polled 1 feed" in done.stdout
    assert http.hits("/atom_basic.xml") == 1 and http.hits("/rss2_basic.xml") == 0
    conn = db(config_paths(config)[0])
    assert feed_row(conn, one)["last_polled_at"] is None
    assert feed_row(conn, two)["last_polled_at"] is not None
    assert entries_of(conn, one) == [] and len(entries_of(conn, two)) == 4


def test_poll_unknown_feed_exits_2(http: FixtureServer, write_config, run_cli) -> None:
    config = write_config([http.url("/rss2_basic.xml")])
    stranger = http.url("/not-configured.xml")

    done = run_cli("poll", "--feed", stranger, config=config)

    assert done.returncode == 2
    assert stranger in done.stderr
    assert http.requests == []


# --- parse expectations for every fixture feed ---------------------------------------------------

FEED_FIXTURES = sorted(
    p.name.removesuffix(".expected.json")
    for p in DATA_DIR.glob("*.expected.json")
    if p.name != "garbage.expected.json"
)


@pytest.fixture(scope="module")
def polled_fixtures(server: FixtureServer, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every fixture feed polled once (served straight from tests/data) into one database."""
    from aggregator.config import load_config
    from aggregator.pipeline import poll_feeds
    from aggregator.storage import Store
    from conftest import render_config

    directory = tmp_path_factory.mktemp("fixtures")
    urls = {name: server.url(f"/{name}.xml") for name in FEED_FIXTURES}
    path = directory / "feeds.toml"
    path.write_text(render_config(directory, list(urls.values())), encoding="utf-8")
    config = load_config(path)
    with Store.open(config.database) as store:
        summary = asyncio.run(poll_feeds(config, store, config.feeds))
    assert all(r.ok for r in summary.results), [r.error for r in summary.results if not r.ok]
    return directory / "agg.db", urls


@pytest.mark.parametrize("name", FEED_FIXTURES)
def test_stored_entries_match_expectations(polled_fixtures, name: str) -> None:
    database, urls = polled_fixtures
    feed_url = urls[name]
    want = expected(name)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        stored = entries_of(conn, feed_url)
        feed = feed_row(conn, feed_url)
    finally:
        conn.close()
    assert feed["title"] == want["title"]
    assert len(stored) == len(want["entries"])
    by_title = {r["title"]: r for r in stored}
    assert len(by_title) == len(stored)
    hashed: set[str] = set()
    for entry in want["entries"]:
        row = by_title[entry["title"]]
        if entry["guid"] is None:
            assert row["guid"], "an entry without id or link still gets a stable key"
            hashed.add(row["guid"])
        elif entry["guid"] == entry["link"]:  # the link stands in for the id: resolved like it
            assert row["guid"] == urljoin(feed_url, entry["guid"])
        else:
            assert row["guid"] == entry["guid"]
        link = entry["link"]
        assert row["link"] == (urljoin(feed_url, link) if link else None)
        assert row["published"] == entry["published"]
        if "updated" in entry:
            assert row["updated"] == entry["updated"]
        if "author" in entry:
            assert row["author"] == entry["author"]
        for text in entry.get("summary_contains", []):
            assert text in (row["summary"] or ""), (entry["title"], text)
        for text in entry.get("content_contains", []):
            assert text in (row["content"] or ""), (entry["title"], text)
        for text in entry.get("summary_forbidden", []):
            assert text not in (row["summary"] or "").lower()
            assert text not in (row["content"] or "").lower()
    assert len(hashed) == sum(e["guid"] is None for e in want["entries"])
