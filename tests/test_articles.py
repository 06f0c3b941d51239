"""Full-text articles end to end: feed → store → page fetch → extraction in the worker pool → SQLite → outputs.

Each test builds its RSS feed on the fly; the items link to pages from ``tests/data/pages/`` served by the
fixture server (content type from the page's ``.expected.json``). State is checked in the SQLite file the
way a user would query it (``entries.extraction_*``, see docs/schema.md), page fetches on the server's
request log. ``localhost`` and ``127.0.0.1`` reach the same server as two different hosts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import feedparser
import lxml.html
import pytest
from server import FixtureServer

from aggregator.workers import TaskTimedOut, WorkerCrashed, WorkerPool

PAGES = Path(__file__).parent / "data" / "pages"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
UNSAFE = re.compile(r"<script|<iframe|\son[a-z]+\s*=|javascript:", re.IGNORECASE)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\0" * 64
PAGE_MAX_BYTES = 5 * 1024 * 1024


# --- helpers -----------------------------------------------------------------------------------


def expected(name: str) -> dict[str, Any]:
    return json.loads((PAGES / f"{name}.expected.json").read_text(encoding="utf-8"))


def flat(text: str | None) -> str:
    """Whitespace (no-break spaces included) folded to single spaces."""
    return " ".join((text or "").replace("\u00a0", " ").replace("\u202f", " ").split())


def html_text(markup: str | None) -> str:
    if not markup:
        return ""
    return flat(lxml.html.fragment_fromstring(markup, create_parent="div").text_content())


def rss(items: Sequence[Mapping[str, str]], title: str = "Articles Test") -> str:
    """An RSS 2.0 document; each item may have title, link, guid (never a permalink), author (dc:creator)."""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>',
        f"<title>{escape(title)}</title><link>http://127.0.0.1/</link><description>test</description>",
    ]
    for number, item in enumerate(items):
        parts.append("<item>")
        parts.append(f"<title>{escape(item.get('title', f'Item {number}'))}</title>")
        if item.get("link"):
            parts.append(f"<link>{escape(item['link'])}</link>")
        parts.append(f'<guid isPermaLink="false">{escape(item.get("guid", f"guid-{number}"))}</guid>')
        if item.get("author"):
            parts.append(f"<dc:creator>{escape(item['author'])}</dc:creator>")
        parts.append(f"<description>Teaser {number}.</description>")
        parts.append(f"<pubDate>Mon, 0{1 + number % 9} Jan 2024 10:00:00 GMT</pubDate>")
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "\n".join(parts)


def route_page(http: FixtureServer, name: str, path: str | None = None, **options: Any) -> str:
    """Serve ``pages/<name>.html`` at ``path`` (default ``/pages/<name>.html``) and return the path."""
    path = path or f"/pages/{name}.html"
    content_type = expected(name)["content_type"] if (PAGES / f"{name}.expected.json").exists() else "text/html"
    http.route(path, file=f"pages/{name}.html", content_type=content_type, **options)
    return path


def route_feed(http: FixtureServer, path: str, items: Sequence[Mapping[str, str]], **options: Any) -> str:
    http.route(path, body=rss(items), content_type="application/rss+xml; charset=utf-8", **options)
    return http.url(path)


def by_link(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    return {row["link"]: row for row in conn.execute("SELECT * FROM entries ORDER BY id")}


def database(config: Path) -> Path:
    return config.parent / "agg.db"


def writable(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(database(config), timeout=5)


def make_due(config: Path, where: str = "1 = 1") -> None:
    """Simulate the passing of time: every matching entry's next attempt is now overdue."""
    with writable(config) as conn:
        conn.execute(f"UPDATE entries SET extraction_next_at = '2000-01-01T00:00:00Z' WHERE {where}")
    conn.close()


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def about(text: str | None, delta: timedelta, since: datetime, slack: timedelta = timedelta(seconds=30)) -> bool:
    """``text`` is an ISO time about ``delta`` after ``since`` (allowing for the pass's own duration)."""
    if not text:
        return False
    moment = parse_iso(text)
    return since + delta - slack <= moment <= datetime.now(UTC) + delta + slack


def assert_article(row: sqlite3.Row, name: str) -> None:
    want = expected(name)
    text, markup = row["article_text"], row["article_html"]
    assert row["extraction_status"] == "done", (name, row["extraction_status"], row["extraction_error"])
    assert row["extraction_attempts"] == 1
    assert row["extraction_error"] is None
    assert row["extraction_next_at"] is None
    assert row["extracted_at"] and ISO_UTC.match(row["extracted_at"]), row["extracted_at"]
    text_flat, html_flat = flat(text), html_text(markup)
    for paragraph in want["body_paragraphs"]:
        assert flat(paragraph) in text_flat, f"{name}: paragraph missing from article_text: {paragraph[:60]}"
        assert flat(paragraph) in html_flat, f"{name}: paragraph missing from article_html: {paragraph[:60]}"
    for junk in want["boilerplate"]:
        assert junk not in text, f"{name}: boilerplate {junk!r} in article_text"
        assert junk not in markup, f"{name}: boilerplate {junk!r} in article_html"
    assert not UNSAFE.search(markup), f"{name}: unsafe markup {UNSAFE.search(markup).group()!r}"


# --- 1. full text end to end through the CLI ---------------------------------------------------------

FULL_TEXT_PAGES = ("de_politik", "en_science", "de_latin1")


def test_full_text_end_to_end(http: FixtureServer, write_config, run_cli, db) -> None:
    links = {name: http.url(route_page(http, name)) for name in FULL_TEXT_PAGES}
    items = [
        {"title": "Landtag beschließt Doppelhaushalt", "link": links["de_politik"]},
        {"title": "Oxygen in the dark", "link": links["en_science"]},
        # this one names its author in the feed: the page's author must not replace it
        {"title": "Freibad wird saniert", "link": links["de_latin1"], "author": "Lokalredaktion"},
    ]
    # a page whose article body carries script, an iframe, event handlers and javascript: links
    hostile = http.url(route_page(http, "hostile"))
    items.append({"title": "Harbour bridge reopens", "link": hostile})
    feed = route_feed(http, "/feeds/full.xml", items)
    config = write_config([{"url": feed, "full_text": True}])

    result = run_cli("poll", config=config)

    assert result.returncode == 0, result.stderr
    assert "articles: 4 done" in result.stdout, result.stdout
    assert len(result.stdout.strip().splitlines()) == 1, "not on a terminal: one summary line"
    for name in (*FULL_TEXT_PAGES, "hostile"):
        assert http.hits(f"/pages/{name}.html") == 1, name
    conn = db(database(config))
    rows = by_link(conn)
    assert set(rows) == {*links.values(), hostile}
    bridge = rows[hostile]
    assert bridge["extraction_status"] == "done"
    assert "corroded cables" in bridge["article_html"] and "resurfaced the deck" in bridge["article_html"]
    assert not UNSAFE.search(bridge["article_html"]), UNSAFE.search(bridge["article_html"]).group()
    assert "injected" not in bridge["article_html"] and "evil.test" not in bridge["article_html"]
    assert "injected" not in bridge["article_text"]
    for name, link in links.items():
        assert_article(rows[link], name)
    # ISO-8859-1 declared only in <meta>: decoded, not mojibake
    latin1 = rows[links["de_latin1"]]["article_text"]
    assert "Mühlenteich" in latin1 and "Ã" not in latin1 and "\ufffd" not in latin1
    # the page's author fills an entry the feed gave none; the feed's own author is kept
    assert rows[links["de_politik"]]["author"] == expected("de_politik")["author"]
    assert rows[links["en_science"]]["author"] == expected("en_science")["author"]
    assert rows[links["de_latin1"]]["author"] == "Lokalredaktion"
    # the feed had no language: the page's is recorded
    assert (rows[links["de_politik"]]["language"] or "").lower().startswith("de")
    assert (rows[links["en_science"]]["language"] or "").lower().startswith("en")

    public = config.parent / "public"
    atom = feedparser.parse((public / "all.atom").read_bytes(), sanitize_html=False)
    rss_out = feedparser.parse((public / "all.rss").read_bytes(), sanitize_html=False)
    document = json.loads((public / "all.json").read_text(encoding="utf-8"))
    assert not atom.bozo and not rss_out.bozo
    marker = {"de_politik": "»Haushalt der Verantwortung«", "en_science": "natural batteries",
              "de_latin1": "»guten Nachricht für alle Familien in der Stadt«"}
    for name, link in links.items():
        paragraphs = [flat(p) for p in expected(name)["body_paragraphs"]]
        atom_entry = next(e for e in atom.entries if e.link == link)
        rss_entry = next(e for e in rss_out.entries if e.link == link)
        json_item = next(i for i in document["items"] if i.get("url") == link)
        bodies = {
            "atom content": html_text(atom_entry.content[0].value),
            "rss content:encoded": html_text(rss_entry.content[0].value),
            "json content_html": html_text(json_item["content_html"]),
            "json content_text": flat(json_item.get("content_text")),
        }
        for where, body in bodies.items():
            assert marker[name] in body, f"{name}: {where} lacks {marker[name]!r}"
            for paragraph in paragraphs:
                assert paragraph in body, f"{name}: {where} lacks paragraph {paragraph[:50]!r}"
        for raw in (atom_entry.content[0].value, rss_entry.content[0].value, json_item["content_html"]):
            assert not UNSAFE.search(raw)
    json_bridge = next(i for i in document["items"] if i.get("url") == hostile)
    assert "corroded cables" in json_bridge["content_html"]
    for raw in (
        next(e for e in atom.entries if e.link == hostile).content[0].value,
        next(e for e in rss_out.entries if e.link == hostile).content[0].value,
        json_bridge["content_html"],
    ):
        assert not UNSAFE.search(raw) and "evil.test" not in raw and "injected" not in raw


# --- 2. no refetch; a changed entry is extracted again ------------------------------------------------


def test_pages_are_not_refetched_but_changed_entries_are(http: FixtureServer, write_config, poll_once, db) -> None:
    a_items = [
        {"title": "Oxygen in the dark", "guid": "a-1", "link": http.url(route_page(http, "en_science"))},
        {"title": "Haushalt beschlossen", "guid": "a-2", "link": http.url(route_page(http, "de_politik"))},
    ]
    b_items = [{"title": "Culture", "guid": "b-1", "link": http.url(route_page(http, "fr_culture"))}]
    feed_a = route_feed(http, "/feeds/a.xml", a_items, etag='"v1"')  # second poll: 304
    feed_b = route_feed(http, "/feeds/b.xml", b_items)  # second poll: same body, no validators
    config = write_config([feed_a, feed_b], full_text=True)
    page_paths = ["/pages/en_science.html", "/pages/de_politik.html", "/pages/fr_culture.html"]

    first = poll_once(config)
    assert first.articles["done"] == 3
    assert [http.hits(p) for p in page_paths] == [1, 1, 1]

    second = poll_once(config)

    assert {r.url: r.status for r in second.results} == {feed_a: "not_modified", feed_b: "not_modified"}
    assert http.requests_for("/feeds/a.xml")[-1].headers.get("If-None-Match") == '"v1"'
    assert [http.hits(p) for p in page_paths] == [1, 1, 1], "an extracted page was fetched again"
    assert sum(second.articles.values()) == 0

    # a new body whose items are unchanged (the channel title changed): still no page fetched
    http.route("/feeds/b.xml", body=rss(b_items, title="Articles Test, renamed"), content_type="application/rss+xml")
    assert poll_once(config).articles == {}
    assert [http.hits(p) for p in page_paths] == [1, 1, 1], "an unchanged entry's page was fetched again"

    # the same guid with a new title: that entry (and only it) is extracted again, once
    a_items[1] = {**a_items[1], "title": "Landtag beschließt Doppelhaushalt nach zwölf Stunden"}
    route_feed(http, "/feeds/a.xml", a_items, etag='"v2"')

    third = poll_once(config)

    assert [http.hits(p) for p in page_paths] == [1, 2, 1]
    assert third.articles == {"done": 1}
    row = by_link(db(database(config)))[a_items[1]["link"]]
    assert row["title"] == "Landtag beschließt Doppelhaushalt nach zwölf Stunden"
    assert row["extraction_status"] == "done" and row["extraction_attempts"] == 1
    assert flat(expected("de_politik")["body_paragraphs"][0]) in flat(row["article_text"])

    poll_once(config)
    assert [http.hits(p) for p in page_paths] == [1, 2, 1]


# --- 3. full_text = false ---------------------------------------------------------------------------


def test_full_text_false_fetches_no_page(http: FixtureServer, write_config, poll_once, db) -> None:
    off = route_feed(http, "/feeds/off.xml", [{"title": "Off", "link": http.url(route_page(http, "en_science"))}])
    on = route_feed(http, "/feeds/on.xml", [{"title": "On", "link": http.url(route_page(http, "de_politik"))}])
    # the aggregator default is full text; the first feed opts out
    config = write_config([{"url": off, "full_text": False}, on], full_text=True)

    poll_once(config)

    assert http.hits("/pages/en_science.html") == 0
    assert http.hits("/pages/de_politik.html") == 1
    conn = db(database(config))
    rows = {row["feed_url"]: row for row in conn.execute("SELECT * FROM entries")}
    assert rows[off]["extraction_status"] is None
    assert rows[off]["article_text"] is None and rows[off]["article_html"] is None
    assert rows[off]["extraction_attempts"] == 0 and rows[off]["extracted_at"] is None
    assert rows[on]["extraction_status"] == "done"


# --- 4. the worker pool ----------------------------------------------------------------------------


def test_worker_pool_runs_in_other_processes_and_survives_timeouts_and_crashes() -> None:
    async def scenario() -> None:
        async with WorkerPool(workers=1) as pool:
            first = await pool.run(os.getpid, time_limit=10)
            assert isinstance(first, int) and first != os.getpid()

            started = time.monotonic()
            with pytest.raises(TaskTimedOut):
                await pool.run(time.sleep, 30, time_limit=0.5)
            assert time.monotonic() - started < 5, "the time limit was not enforced promptly"

            second = await pool.run(os.getpid, time_limit=10)  # the same pool goes on, in a fresh worker
            assert second not in (os.getpid(), first)

            started = time.monotonic()
            with pytest.raises(WorkerCrashed, match="3"):
                await pool.run(os._exit, 3, time_limit=10)
            assert time.monotonic() - started < 5

            third = await pool.run(os.getpid, time_limit=10)
            assert third not in (os.getpid(), second)
            assert await pool.run(sum, [1, 2, 3], time_limit=10) == 6

            body = (PAGES / "en_science.html").read_bytes()
            article = await pool.extract(body, "http://news.test/science", "text/html; charset=utf-8", 20)
            assert flat(expected("en_science")["body_paragraphs"][0]) in flat(article.text)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_worker_hands_back_the_memory_of_a_large_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a call whose request or reply is BIG_CALL or more (a feed of 10,000 items), the worker
    returns freed memory to the system; small calls do not pay for it. Replies read back whole."""
    import io
    import pickle

    from aggregator import workerproc

    released: list[int] = []
    real_release = workerproc.release_memory
    monkeypatch.setattr(workerproc, "release_memory", lambda: released.append(1))
    big = b"x" * workerproc.BIG_CALL
    calls = [(len, (big,)), (bytes, (workerproc.BIG_CALL,)), (sum, ([1, 2],))]
    requests = io.BytesIO(b"".join(
        len(p).to_bytes(workerproc.HEADER, "big") + p for p in (pickle.dumps(call) for call in calls)
    ))
    replies = io.BytesIO()
    workerproc._serve(requests, replies)
    replies.seek(0)
    answers = []
    while header := replies.read(workerproc.HEADER):
        answers.append(pickle.loads(replies.read(int.from_bytes(header, "big"))))
    assert [a[1] if not isinstance(a[1], bytes) else len(a[1]) for a in answers] == [workerproc.BIG_CALL, workerproc.BIG_CALL, 3]
    assert len(released) == 2  # the big request, the big reply; not the small call
    real_release()  # runs here (glibc), and is a no-op where there is no malloc_trim


def test_a_worker_process_starts_without_the_pool_or_the_stages_it_is_not_asked_for() -> None:
    """A worker imports what reading calls needs; parsing brings its modules with the first feed."""
    import pickle
    import subprocess
    import sys

    from aggregator import workerproc

    call = pickle.dumps((eval, ("sorted(__import__('sys').modules)",)))
    done = subprocess.run(
        [sys.executable, "-m", "aggregator.workerproc"], input=len(call).to_bytes(workerproc.HEADER, "big") + call,
        capture_output=True, timeout=60, check=True,
    )
    ok, modules = pickle.loads(done.stdout[workerproc.HEADER:])
    assert ok and "aggregator" in modules
    assert not {"asyncio", "aggregator.workers", "aggregator.extract", "aggregator.parse", "numpy"} & set(modules)


# --- 5 and 10. failures and their states; poll --json reports the counts ----------------------------


def test_failures_are_recorded_and_the_pass_goes_on(http: FixtureServer, write_config, run_cli, db) -> None:
    http.route("/pages/missing.html", status=404, body="gone", content_type="text/plain")
    http.route("/pages/picture.html", body=PNG, content_type="image/png")
    http.route("/pages/data.html", body='{"article": "no"}', content_type="application/json")
    http.route("/pages/huge.html", body=b"<html><body><p>" + b"x" * PAGE_MAX_BYTES + b"</p></body></html>",
               content_type="text/html")
    # small on the wire, over the cap once decompressed: the cap is on what the page really is
    http.route("/pages/bomb.html", body=b"<html><body><p>" + b"y" * (PAGE_MAX_BYTES + 1024) + b"</p></body></html>",
               content_type="text/html", gzip=True)
    route_page(http, "empty_shell")  # a JavaScript app shell: HTML, but no article in it
    good = http.url(route_page(http, "en_science"))
    names = ("missing", "picture", "data", "huge", "bomb", "empty_shell")
    links = {name: http.url(f"/pages/{name}.html") for name in names}
    items = [{"title": name, "link": link} for name, link in links.items()]
    items += [{"title": "Only a title, no link", "guid": "no-link"}, {"title": "Good", "link": good}]
    feed = route_feed(http, "/feeds/mixed.xml", items)
    config = write_config([feed], full_text=True)
    started = datetime.now(UTC)

    result = run_cli("poll", "--json", config=config)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["articles"] == {"done": 1, "failed": 2, "skipped": 4}, report["articles"]
    conn = db(database(config))
    rows = by_link(conn)
    missing = rows[links["missing"]]
    assert missing["extraction_status"] == "failed"
    assert "404" in missing["extraction_error"]
    assert missing["extraction_attempts"] == 1
    assert about(missing["extraction_next_at"], timedelta(minutes=15), started), missing["extraction_next_at"]
    assert missing["article_text"] is None and missing["extracted_at"] is None
    shell = rows[links["empty_shell"]]
    assert shell["extraction_status"] == "failed" and shell["extraction_attempts"] == 1
    assert "empty" in shell["extraction_error"], shell["extraction_error"]
    assert shell["article_text"] is None and shell["extracted_at"] is None
    for name, media in (("picture", "image/png"), ("data", "application/json")):
        row = rows[links[name]]
        assert row["extraction_status"] == "skipped", name
        assert "not HTML" in row["extraction_error"] and media in row["extraction_error"], row["extraction_error"]
        assert row["extraction_next_at"] is None
    for name in ("huge", "bomb"):
        row = rows[links[name]]
        assert row["extraction_status"] == "skipped", (name, row["extraction_status"], row["extraction_error"])
        assert "too large" in row["extraction_error"], row["extraction_error"]
        assert row["extraction_next_at"] is None and row["article_text"] is None
    assert http.last_request("/pages/bomb.html").headers.get("Accept-Encoding")
    no_link = conn.execute("SELECT * FROM entries WHERE guid = 'no-link'").fetchone()
    assert no_link["extraction_status"] == "skipped" and no_link["extraction_error"]
    assert no_link["extraction_attempts"] == 0
    assert_article(rows[good], "en_science")
    for link in links.values():
        assert http.hits(link.removeprefix(http.base_url)) == 1


# --- 6. retry with backoff, at most five attempts --------------------------------------------------


def test_failed_pages_are_retried_with_backoff_then_given_up(http: FixtureServer, write_config, poll_once, db) -> None:
    http.route("/pages/flaky.html", status=500, body="oops", content_type="text/plain")
    http.route("/pages/dead.html", status=404, body="gone", content_type="text/plain")
    flaky, dead = http.url("/pages/flaky.html"), http.url("/pages/dead.html")
    feed = route_feed(http, "/feeds/retry.xml", [{"title": "Flaky", "link": flaky}, {"title": "Dead", "link": dead}])
    config = write_config([feed], full_text=True)

    poll_once(config)
    rows = by_link(db(database(config)))
    assert rows[flaky]["extraction_status"] == "failed" and rows[flaky]["extraction_attempts"] == 1
    assert "500" in rows[flaky]["extraction_error"]

    poll_once(config)  # at once: nothing is due yet
    assert http.hits("/pages/flaky.html") == 1 and http.hits("/pages/dead.html") == 1

    make_due(config)
    route_page(http, "en_science", "/pages/flaky.html")
    started = datetime.now(UTC)
    poll_once(config)

    assert http.hits("/pages/flaky.html") == 2 and http.hits("/pages/dead.html") == 2
    rows = by_link(db(database(config)))
    fixed = rows[flaky]
    assert fixed["extraction_status"] == "done"
    assert fixed["extraction_attempts"] == 2
    assert fixed["extraction_error"] is None and fixed["extraction_next_at"] is None
    assert flat(expected("en_science")["body_paragraphs"][1]) in flat(fixed["article_text"])
    # the second failure waits longer: 1 h
    assert rows[dead]["extraction_attempts"] == 2
    assert about(rows[dead]["extraction_next_at"], timedelta(hours=1), started), rows[dead]["extraction_next_at"]

    for attempt in (3, 4, 5):
        make_due(config, "extraction_status = 'failed'")
        poll_once(config)
        assert http.hits("/pages/dead.html") == attempt
    last = by_link(db(database(config)))[dead]
    assert last["extraction_status"] == "failed" and last["extraction_attempts"] == 5
    assert last["extraction_next_at"] is None, "no further attempt is scheduled after the fifth"

    make_due(config, "extraction_status = 'failed'")
    poll_once(config)
    assert http.hits("/pages/dead.html") == 5
    assert http.hits("/pages/flaky.html") == 2


# --- 7. politeness ---------------------------------------------------------------------------------


@pytest.fixture
def in_flight(http: FixtureServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts page requests (/pages/...) the server is handling at once; ``peak`` is the most seen."""
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()
    respond = http._respond

    def counting(path: str, request: Any) -> Any:
        if not path.startswith("/pages/"):
            return respond(path, request)
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            return respond(path, request)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(http, "_respond", counting)
    yield state


def test_host_concurrency_bounds_requests_to_one_host(http: FixtureServer, write_config, poll_once, db, in_flight) -> None:
    items = []
    for number in range(8):
        path = route_page(http, "en_science", f"/pages/story-{number}.html", delay=0.3)
        items.append({"title": f"Story {number}", "link": http.url(path)})
    feed = route_feed(http, "/feeds/busy.xml", items)
    config = write_config([feed], full_text=True, host_concurrency=2, concurrency=8)

    started = time.monotonic()
    summary = poll_once(config)
    elapsed = time.monotonic() - started

    assert summary.articles == {"done": 8}
    assert http.hits("/pages/story-", prefix=True) == 8
    assert in_flight["peak"] <= 2, f"{in_flight['peak']} requests to one host at once"
    assert in_flight["peak"] == 2, "host_concurrency = 2 should allow two requests at once"
    assert elapsed >= 4 * 0.3


def test_retry_after_pauses_the_host_for_the_rest_of_the_pass(
    http: FixtureServer, write_config, poll_once, db
) -> None:
    here, there = http.base_url, f"http://localhost:{http.port}"
    # pass 1: the first page fails, so that in pass 2 it is due (and fetched) before the feed is read
    http.route("/pages/limited.html", status=500, body="oops", content_type="text/plain")
    limited = f"{here}/pages/limited.html"
    items = [{"title": "Limited", "guid": "limited", "link": limited}]
    feed = route_feed(http, "/feeds/hosts.xml", items)
    config = write_config([feed], full_text=True, host_concurrency=2)
    poll_once(config)
    make_due(config)

    # pass 2: the host answers 429 Retry-After: 120; the feed (slow to arrive) brings more pages of both hosts
    http.route("/pages/limited.html", status=429, body="slow down", content_type="text/plain",
               headers={"Retry-After": "120"})
    same_host = [f"{here}/pages/same-{n}.html" for n in range(4)]
    other_host = [f"{there}/pages/other-{n}.html" for n in range(2)]
    for link in same_host + other_host:
        route_page(http, "en_science", link.split(str(http.port), 1)[1])
    items += [{"title": link.rsplit("/", 1)[1], "guid": link, "link": link} for link in same_host + other_host]
    route_feed(http, "/feeds/hosts.xml", items, delay=0.5)
    started = datetime.now(UTC)

    summary = poll_once(config)

    assert http.hits("/pages/limited.html") == 2
    assert http.hits("/pages/same-", prefix=True) == 0, "pages of a paused host were requested"
    assert http.hits("/pages/other-", prefix=True) == 2, "the other host was held up by the pause"
    rows = by_link(db(database(config)))
    throttled = rows[limited]
    assert throttled["extraction_status"] == "pending" and "429" in throttled["extraction_error"]
    assert throttled["extraction_attempts"] == 1, "a rate-limited attempt does not count against the page"
    assert parse_iso(throttled["extraction_next_at"]) >= started + timedelta(seconds=115)
    for link in same_host:
        row = rows[link]
        assert row["extraction_status"] == "pending", (link, row["extraction_status"])
        assert row["extraction_attempts"] == 0
        assert about(row["extraction_next_at"], timedelta(seconds=120), started, slack=timedelta(seconds=15))
    for link in other_host:
        assert rows[link]["extraction_status"] == "done"
    assert summary.articles.get("done") == 2

    # an immediate pass still leaves the paused host alone
    poll_once(config)
    assert http.hits("/pages/same-", prefix=True) == 0
    assert http.hits("/pages/limited.html") == 2

    # once the pause is over, the deferred pages are fetched: each a first attempt
    make_due(config, "extraction_status = 'pending'")
    poll_once(config)
    rows = by_link(db(database(config)))
    for link in same_host:
        assert http.hits(link.removeprefix(here)) == 1
        assert rows[link]["extraction_status"] == "done" and rows[link]["extraction_attempts"] == 1
    assert http.hits("/pages/limited.html") == 3, "the rate-limited page is tried again once the pause is over"


# --- 8. the same page from two feeds ---------------------------------------------------------------


def test_same_page_in_two_feeds_is_fetched_once(http: FixtureServer, write_config, poll_once, db) -> None:
    route_page(http, "de_politik", "/pages/shared.html")
    first = route_feed(http, "/feeds/one.xml", [
        {"title": "Haushalt", "link": http.url("/pages/shared.html?utm_source=rss&utm_medium=feed")}])
    second = route_feed(http, "/feeds/two.xml", [
        {"title": "Doppelhaushalt beschlossen", "link": http.url("/pages/shared.html?utm_campaign=partner")}])
    config = write_config([first, second], full_text=True)

    poll_once(config)

    assert http.hits("/pages/shared.html", prefix=True) == 1
    rows = db(database(config)).execute("SELECT * FROM entries ORDER BY id").fetchall()
    assert len(rows) == 2
    original = next(r for r in rows if r["duplicate_of"] is None)
    duplicate = next(r for r in rows if r["duplicate_of"] is not None)
    assert duplicate["duplicate_of"] == original["id"]
    assert original["extraction_status"] == "done"
    assert duplicate["extraction_status"] == "skipped"
    assert duplicate["extraction_error"] == f"same page as entry {original['id']}"
    assert duplicate["extraction_attempts"] == 0


# --- 9. stats ----------------------------------------------------------------------------------------


def test_stats_reports_article_states_and_reasons(http: FixtureServer, write_config, poll_once, run_cli_many) -> None:
    http.route("/pages/missing.html", status=404, body="gone", content_type="text/plain")
    http.route("/pages/picture.html", body=PNG, content_type="image/png")
    feed = route_feed(http, "/feeds/stats.xml", [
        {"title": "Good", "link": http.url(route_page(http, "en_science"))},
        {"title": "Missing", "link": http.url("/pages/missing.html")},
        {"title": "Picture", "link": http.url("/pages/picture.html")},
    ])
    config = write_config([feed], full_text=True)
    poll_once(config)

    text, as_json = run_cli_many([
        {"args": ["stats"], "cwd": config.parent, "config": config},
        {"args": ["stats", "--json"], "cwd": config.parent, "config": config},
    ])

    assert text.returncode == 0 and as_json.returncode == 0, (text.stderr, as_json.stderr)
    assert "articles: 1 done, 1 failed, 1 skipped" in text.stdout, text.stdout
    assert re.search(r"1 failed: HTTP 404\b", text.stdout), text.stdout
    assert re.search(r"1 skipped: not HTML \(image/png\)", text.stdout), text.stdout
    report = json.loads(as_json.stdout)
    assert report["articles"] == {"done": 1, "failed": 1, "skipped": 1}
    problems = {(state, reason): count for state, reason, count in report["article_problems"]}
    assert any(state == "failed" and "404" in reason and n == 1 for (state, reason), n in problems.items()), problems
    assert problems.get(("skipped", "not HTML (image/png)")) == 1, problems
