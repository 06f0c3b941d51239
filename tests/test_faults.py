"""Hostile and broken feeds beside healthy ones, all polled in one ``aggregator poll`` run.

Each fault mode is one feed on the local test server (fixtures in ``tests/data/faults/``, the large
ones generated here). The healthy feeds must all be stored; every faulty feed either fails with a
clear, specific ``last_error`` or, where the feed can still be read, is stored sensibly with a
``last_warning`` that says what was wrong. ``aggregator stats`` and ``/healthz`` report it in words.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import finish_cli, open_db, render_config, start_cli
from server import FixtureServer

from aggregator.storage import Store
from aggregator.storage.store import FeedFailed, FeedUnchanged

DATA = Path(__file__).parent / "data"
FAULTS = DATA / "faults"
HEALTHY = {"rss2_basic.xml": 5, "atom_basic.xml": 4, "german_umlauts.xml": 4, "rss1_rdf.xml": 3}
SECRET = "s3cr3t-7f1d0c-do-not-store"
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MANY_ITEMS = 10_000
TIMEOUT = 2.0


def many_items(count: int) -> bytes:
    items = "".join(
        f"<item><title>Meldung {i}: Brücke über den Fluss</title><link>http://many.test/{i}</link>"
        f"<guid>http://many.test/{i}</guid><pubDate>Mon, 02 Nov 2026 10:{i % 60:02d}:00 GMT</pubDate>"
        f"<description>Kurzer Text Nummer {i}.</description></item>\n"
        for i in range(count)
    )
    return f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Many</title>{items}</channel></rss>'.encode()


def enormous_title(words: int) -> bytes:
    title = " ".join(f"Wort{i}" for i in range(words))
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Long Winded</title>'
        f"<item><title>{title}</title><link>http://long.test/1</link><guid>http://long.test/1</guid></item>"
        "</channel></rss>"
    ).encode()


def serve_faults(http: FixtureServer, secret_file: Path) -> None:
    """One route per fault mode under /faults/, the healthy feeds under /healthy/."""
    for name in HEALTHY:
        http.route(f"/healthy/{name}", file=name)
    rss = "application/rss+xml"
    http.route("/faults/stall", file="rss2_basic.xml", delay=TIMEOUT + 1.5)
    http.route("/faults/drip", body=(DATA / "rss2_basic.xml").read_bytes(), drip=(256, 0.4), content_type=rss)
    http.route("/faults/too-large", body=b"<rss>" + b"x" * (10 * 1024 * 1024 + 1024) + b"</rss>", content_type=rss)
    http.route("/faults/gzip-bomb", file="faults/bomb.gz", content_type=rss, headers={"Content-Encoding": "gzip"})
    http.route("/faults/brotli-bomb", file="faults/bomb.br", content_type=rss, headers={"Content-Encoding": "br"})
    http.route("/faults/loop-a", redirect="/faults/loop-b", status=302)
    http.route("/faults/loop-b", redirect="/faults/loop-a", status=302)
    http.route("/faults/old-home", redirect="/faults/new-home", status=301)
    http.route("/faults/new-home", file="syndicated_a.xml")
    http.route("/faults/gone", body="This feed has been removed.", status=410, content_type="text/plain")
    http.route("/faults/site/", file="faults/site_with_feed.html")
    http.route("/faults/site/feed.xml", file="syndicated_b.xml")
    http.route("/faults/page", file="faults/site_without_feed.html")
    http.route("/faults/laughs", file="faults/billion_laughs.xml", content_type=rss)
    http.route("/faults/expansion", file="faults/entity_expansion.xml", content_type=rss)
    xxe = (FAULTS / "external_entity.xml").read_bytes().replace(b"SECRET_PATH", str(secret_file).encode())
    http.route("/faults/xxe", body=xxe, content_type=rss)
    http.route("/faults/wrong-charset", file="faults/wrong_charset.xml", content_type=f"{rss}; charset=windows-1252")
    http.route("/faults/no-charset", file="faults/no_charset.xml", content_type="text/xml")
    http.route("/faults/invalid-utf8", file="faults/invalid_utf8.xml", content_type=rss)
    http.route("/faults/control", file="faults/control_chars.xml", content_type=rss)
    http.route("/faults/dates", file="faults/dates_and_duplicates.xml", content_type=rss)
    http.route("/faults/enormous-title", body=enormous_title(40_000), content_type=rss)
    http.route("/faults/many", body=many_items(MANY_ITEMS), content_type=rss)


# The feeds that cannot be read, and words their last_error must contain.
FAILING = {
    "/faults/stall": "timed out after 2s: the server did not answer",
    "/faults/drip": "timed out after 2s: the response was still arriving",
    "/faults/too-large": "too large",
    "/faults/gzip-bomb": "too large: over 10,485,760 bytes once decompressed",
    "/faults/brotli-bomb": "too large: over 10,485,760 bytes once decompressed",
    "/faults/loop-a": "redirect loop through",
    "/faults/gone": "HTTP 410 Gone: the publisher has removed this feed, so it is no longer polled",
    "/faults/page": "the address serves an HTML page, not a feed (no feed link found)",
}
# The feeds that are read despite their fault, and words their last_warning must contain (None: no warning).
READ = {
    "/faults/old-home": None,
    "/faults/site/": "is a web page, not a feed",
    "/faults/laughs": "entity declarations were ignored",
    "/faults/expansion": "entity declarations were ignored",
    "/faults/xxe": "entity declarations were ignored",
    "/faults/wrong-charset": "declared as windows-1252 but written in UTF-8",
    "/faults/no-charset": "not valid UTF-8",
    "/faults/invalid-utf8": "not valid UTF-8",
    "/faults/control": "control characters removed",
    "/faults/dates": None,
    "/faults/enormous-title": None,
    "/faults/many": None,
}


@dataclass
class FaultPass:
    """One ``aggregator poll --json`` over every feed, and what it left behind."""

    http: FixtureServer
    config: Path
    report: dict[str, Any]
    seconds: float
    conn: sqlite3.Connection

    def url(self, path: str) -> str:
        return self.http.url(path)

    def feed(self, path: str) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM feeds WHERE url = ?", [self.url(path)]).fetchone()

    def entries(self, path: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM entries WHERE feed_url = ? ORDER BY id", [self.url(path)]).fetchall()

    def result(self, path: str) -> dict[str, Any]:
        return next(r for r in self.report["results"] if r["url"] == self.url(path))


@pytest.fixture(scope="module")
def fault_pass(server: FixtureServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultPass]:
    directory = tmp_path_factory.mktemp("faults")
    secret_file = directory / "secret.txt"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    server.reset()
    serve_faults(server, secret_file)
    paths = [f"/healthy/{name}" for name in HEALTHY] + list(FAILING) + list(READ)
    config = write_feeds(directory, [server.url(path) for path in paths])
    started = time.monotonic()
    done = finish_cli(start_cli("poll", "--json", cwd=directory, config=config), timeout=90)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(f"file:{directory / 'agg.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    yield FaultPass(server, config, json.loads(done.stdout), seconds, conn)
    conn.close()
    server.reset()


def write_feeds(directory: Path, urls: list[str]) -> Path:
    path = directory / "feeds.toml"
    text = render_config(directory, urls, timeout=f"{TIMEOUT:g}s", concurrency=8)
    path.write_text(text + f'\n[server]\nhost = "127.0.0.1"\nport = {free_port()}\n', encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the pass -----------------------------------------------------------------------------------


def test_the_pass_runs_to_the_end_and_faults_do_not_serialise_it(fault_pass: FaultPass) -> None:
    report = fault_pass.report
    assert report["feeds"] == len(HEALTHY) + len(FAILING) + len(READ)
    assert report["failed"] == len(FAILING)
    # stalls and drips are cut at the timeout, side by side: the whole pass is a few timeouts, not one per fault
    assert fault_pass.seconds < 30, fault_pass.seconds
    for path in ("/faults/stall", "/faults/drip"):
        assert fault_pass.result(path)["seconds"] < TIMEOUT + 1


def test_every_healthy_feed_is_stored(fault_pass: FaultPass) -> None:
    for name, count in HEALTHY.items():
        feed = fault_pass.feed(f"/healthy/{name}")
        assert feed["last_error"] is None and feed["last_warning"] is None, name
        assert len(fault_pass.entries(f"/healthy/{name}")) == count, name


@pytest.mark.parametrize("path", list(FAILING))
def test_each_unreadable_feed_has_a_clear_error(fault_pass: FaultPass, path: str) -> None:
    feed = fault_pass.feed(path)
    assert FAILING[path] in (feed["last_error"] or ""), feed["last_error"]
    assert feed["error_count"] == 1 and fault_pass.entries(path) == []


@pytest.mark.parametrize("path", list(READ))
def test_each_readable_fault_is_stored_with_a_warning_that_says_what_was_wrong(fault_pass: FaultPass, path: str) -> None:
    feed = fault_pass.feed(path)
    assert feed["last_error"] is None, feed["last_error"]
    assert fault_pass.entries(path), "nothing stored"
    if READ[path] is None:
        assert feed["last_warning"] is None
    else:
        assert READ[path] in (feed["last_warning"] or ""), feed["last_warning"]


# --- how each readable fault ends up --------------------------------------------------------------


def test_a_permanent_redirect_is_followed_and_recorded(fault_pass: FaultPass) -> None:
    assert fault_pass.feed("/faults/old-home")["moved_to"] == fault_pass.url("/faults/new-home")
    assert len(fault_pass.entries("/faults/old-home")) == 3
    assert fault_pass.result("/faults/old-home")["moved_to"] == fault_pass.url("/faults/new-home")


def test_an_html_page_is_followed_to_the_feed_it_links_to(fault_pass: FaultPass) -> None:
    feed_url = fault_pass.url("/faults/site/feed.xml")
    assert fault_pass.feed("/faults/site/")["moved_to"] == feed_url
    assert feed_url in fault_pass.feed("/faults/site/")["last_warning"]
    expected = json.loads((DATA / "syndicated_b.expected.json").read_text(encoding="utf-8"))
    titles = {e["title"] for e in fault_pass.entries("/faults/site/")}
    assert titles == {e["title"] for e in expected["entries"]}
    assert fault_pass.http.hits("/faults/site/comments.xml") == 0  # the first feed link, not every one


def test_entities_neither_expand_nor_read_files(fault_pass: FaultPass, tmp_path_factory: pytest.TempPathFactory) -> None:
    for path in ("/faults/laughs", "/faults/expansion", "/faults/xxe"):
        assert fault_pass.result(path)["seconds"] < TIMEOUT, "entities must not make parsing slow"
        for entry in fault_pass.entries(path):
            text = " ".join(str(entry[c] or "") for c in ("title", "summary", "content"))
            assert "lollol" not in text and "hahaha" not in text and SECRET not in text
            assert len(text) < 500
    directory = fault_pass.config.parent
    for stored in [*directory.glob("agg.db*"), *directory.glob("public/*")]:
        assert SECRET.encode() not in stored.read_bytes(), f"the secret file's content leaked into {stored.name}"


def test_text_in_the_wrong_or_no_charset_is_decoded_right(fault_pass: FaultPass) -> None:
    (wrong,) = fault_pass.entries("/faults/wrong-charset")
    assert wrong["title"] == "Bürgermeisterin eröffnet die Brücke »Süd« – endlich"
    assert "Lächeln 😀" in wrong["summary"]
    assert fault_pass.feed("/faults/wrong-charset")["title"] == "Grüße aus Köln"
    (missing,) = fault_pass.entries("/faults/no-charset")
    assert missing["title"] == "Schöne Grüße – „Zeichensatz“ fehlt"
    (mixed,) = fault_pass.entries("/faults/invalid-utf8")
    assert mixed["title"] == "Größere Brücke für Köln"
    assert mixed["summary"] == "Überall »UTF-8«, nur hier nicht."


def test_control_characters_are_removed_and_the_outputs_stay_well_formed(fault_pass: FaultPass) -> None:
    (entry,) = fault_pass.entries("/faults/control")
    assert entry["title"] == "Bell and escape[31m red"
    assert entry["summary"] == "Backspace form feed and a reference."
    assert fault_pass.feed("/faults/control")["title"] == "Control Room"
    public = fault_pass.config.parent / "public"
    atom = (public / "all.atom").read_bytes()
    ET.fromstring(atom)  # raises on a control character
    assert b"Bell and escape[31m red" in atom
    assert not CONTROL.search((public / "all.rss").read_text(encoding="utf-8"))


def test_dates_in_the_future_become_the_time_read_and_invalid_ones_are_dropped(fault_pass: FaultPass) -> None:
    entries = {e["title"]: e for e in fault_pass.entries("/faults/dates")}
    future = entries["From the future"]
    assert future["published"] == future["first_seen"]
    assert entries["Not a date"]["published"] is None
    assert entries["Year one"]["published"] is None
    assert entries["On time"]["published"] == "2026-11-04T17:15:00Z"


def test_a_guid_twice_in_one_feed_is_stored_once_as_first_given(fault_pass: FaultPass) -> None:
    twice = [e for e in fault_pass.entries("/faults/dates") if e["guid"].endswith("twice")]
    assert [e["title"] for e in twice] == ["Twice, first copy"]
    assert len(fault_pass.entries("/faults/dates")) == 5


def test_an_enormous_title_is_cut_at_a_word(fault_pass: FaultPass) -> None:
    (entry,) = fault_pass.entries("/faults/enormous-title")
    assert 900 < len(entry["title"]) <= 1001 and entry["title"].endswith("…")
    assert entry["title"].startswith("Wort0 Wort1 ") and entry["title"][:-1].split()[-1].startswith("Wort")


def test_ten_thousand_items_are_all_stored_oldest_first(fault_pass: FaultPass) -> None:
    entries = fault_pass.entries("/faults/many")  # by id
    assert len(entries) == MANY_ITEMS
    # the feed lists its newest first; stored in chunks, the last listed still gets the lowest id
    assert entries[0]["guid"] == f"http://many.test/{MANY_ITEMS - 1}" and entries[-1]["guid"] == "http://many.test/0"
    assert fault_pass.feed("/faults/many")["body_hash"] is not None


def test_a_gone_feed_is_no_longer_scheduled(fault_pass: FaultPass) -> None:
    feed = fault_pass.feed("/faults/gone")
    assert feed["last_status"] == 410 and feed["gone_at"] is not None and feed["next_poll_at"] is None
    health = fault_pass.conn.execute("SELECT status FROM feed_health WHERE url = ?", [fault_pass.url("/faults/gone")])
    assert health.fetchone()[0] == "gone"
    assert fault_pass.result("/faults/gone")["status"] == "gone"


# --- what the user is told ------------------------------------------------------------------------


def stats_blocks(text: str) -> dict[str, str]:
    """``aggregator stats`` output cut into one block per feed, keyed by URL."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        found = re.search(r"<(http://[^>]+)>$", line)
        if found:
            current = found.group(1)
            blocks[current] = ""
        if current:
            blocks[current] += line + "\n"
    return blocks


def test_stats_names_every_fault_in_plain_words(fault_pass: FaultPass) -> None:
    done = finish_cli(start_cli("stats", cwd=fault_pass.config.parent, config=fault_pass.config))
    assert done.returncode == 0, done.stderr
    assert f"({len(FAILING) - 1} failing, 1 gone)" in done.stdout.splitlines()[0]
    blocks = stats_blocks(done.stdout)
    for path, words in FAILING.items():
        assert words in blocks[fault_pass.url(path)], blocks[fault_pass.url(path)]
    for path, words in READ.items():
        block = blocks[fault_pass.url(path)]
        assert block.startswith("ok") and "last error" not in block, block
        assert ("warning: " in block and words in block) if words else "warning: " not in block, block
    assert blocks[fault_pass.url("/faults/gone")].startswith("GONE")
    assert "FAILING" in blocks[fault_pass.url("/faults/stall")]
    for path, target in (("/faults/old-home", "/faults/new-home"), ("/faults/site/", "/faults/site/feed.xml")):
        assert f"now read from {fault_pass.url(target)}: put that address in feeds.toml" in blocks[fault_pass.url(path)]


def test_healthz_reports_the_failing_feeds_with_their_errors(fault_pass: FaultPass) -> None:
    port = int(re.search(r"port = (\d+)", fault_pass.config.read_text()).group(1))  # type: ignore[union-attr]
    daemon = start_cli("run", cwd=fault_pass.config.parent, config=fault_pass.config)
    try:
        document = wait_for_health(f"http://127.0.0.1:{port}/healthz", daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        stopped = finish_cli(daemon, timeout=20)
    assert stopped.returncode == 0, stopped.stderr
    assert document["status"] == "degraded"
    assert document["feeds"]["failing"] == len(FAILING)
    for failure in document["feeds"]["failures"]:
        stored = fault_pass.conn.execute("SELECT last_error FROM feeds WHERE url = ?", [failure["url"]]).fetchone()
        assert failure["last_error"] == stored[0]
        assert any(words in failure["last_error"] for words in FAILING.values()), failure


def wait_for_health(url: str, daemon: Any, timeout: float = 20) -> dict[str, Any]:
    """The first /healthz answer once the scheduler runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, daemon.communicate()[1]
        try:
            document = dict(httpx.get(url, timeout=2, trust_env=False).json())
            if document["scheduler"]["running"]:
                return document
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the daemon did not answer /healthz")


# --- 410 Gone, from first to last -----------------------------------------------------------------


def test_a_gone_feed_keeps_its_entries_is_left_out_and_can_be_tried_again(http: FixtureServer, write_config, run_cli) -> None:
    url, other = http.url("/lifecycle/feed.xml"), http.url("/lifecycle/other.xml")
    http.route("/lifecycle/feed.xml", file="rss2_basic.xml")
    http.route("/lifecycle/other.xml", file="atom_basic.xml")
    config = write_config([url, other])
    assert run_cli("poll", config=config).returncode == 0

    http.route("/lifecycle/feed.xml", body="removed", status=410, content_type="text/plain")
    gone = run_cli("poll", config=config)
    assert gone.returncode == 0 and f"failed: {url}: HTTP 410 Gone" in gone.stderr
    assert stored(config, url) == (5, True)

    requests = http.hits("/lifecycle/feed.xml")
    skipped = run_cli("poll", config=config)
    assert skipped.returncode == 0 and http.hits("/lifecycle/feed.xml") == requests  # not asked again
    assert f"not polled, gone (HTTP 410): {url}" in skipped.stdout and "polled 1 feed" in skipped.stdout
    with Store.open(config.parent / "agg.db") as store:
        assert url not in store.due_feeds("9999-12-31T00:00:00Z")  # nor by the daemon

    assert run_cli("poll", "--feed", url, config=config).returncode == 0
    assert http.hits("/lifecycle/feed.xml") == requests + 1 and stored(config, url) == (5, True)

    http.route("/lifecycle/feed.xml", file="rss2_basic.xml")
    back = run_cli("poll", "--feed", url, config=config)
    assert back.returncode == 0 and "0 failed" in back.stdout
    assert stored(config, url) == (5, False)
    with Store.open(config.parent / "agg.db") as store:
        assert url in store.due_feeds("9999-12-31T00:00:00Z")


def stored(config: Path, url: str) -> tuple[int, bool]:
    """How many entries the feed has, and whether it is gone."""
    with contextlib.closing(open_db(config.parent / "agg.db")) as conn:
        count = conn.execute("SELECT count(*) FROM entries WHERE feed_url = ?", [url]).fetchone()[0]
        gone = conn.execute("SELECT gone_at FROM feeds WHERE url = ?", [url]).fetchone()[0]
    return count, gone is not None



# --- entity tricks, one document each, straight through the parser -------------------------------

ITEM = (
    '<rss version="2.0"><channel><title>T</title><item><title>A &a; B</title><guid>g</guid>'
    "<description>d &a;</description></item></channel></rss>"
)
BIG = "x" * 2_000_000
ENTITY_TRICKS = {
    "declarations on the DOCTYPE line": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY b "lol"><!ENTITY a "&b;&b;&b;">]>' + ITEM,
    "byte order mark first": '\ufeff<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY b "lol">\n<!ENTITY a "&b;&b;">\n]>\n' + ITEM,
    "junk before the DOCTYPE": f'x<!DOCTYPE rss [\n<!ENTITY a "{BIG}">\n]>\n' + ITEM.replace("A &a; B", "&a;" * 1000),
    "declaration after the DOCTYPE": f'<?xml version="1.0"?>\n<!DOCTYPE rss []>\n<!ENTITY a "{BIG}">\n' + ITEM,
    "long literal value": f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "{BIG}">\n]>\n' + ITEM.replace("A &a; B", "&a;" * 1000),
    "'>' inside a value": '<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY c ">"><!ENTITY b "&c;&c;"><!ENTITY a "&b;&b;">]>' + ITEM,
    "']>' inside a comment": '<?xml version="1.0"?><!DOCTYPE rss [<!-- ]> --><!ENTITY b "lol"><!ENTITY a "&b;&b;">]>' + ITEM,
    "external entity": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a SYSTEM "file:///etc/hostname">]>' + ITEM,
    "external parameter entity": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % p SYSTEM "file:///etc/hostname"> %p;]>' + ITEM,
}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("name", list(ENTITY_TRICKS))
def test_entity_tricks_neither_expand_nor_load(name: str, encoding: str) -> None:
    from aggregator.exceptions import ParseError
    from aggregator.parse import parse_feed

    text = ENTITY_TRICKS[name].replace('version="1.0"?>', f'version="1.0" encoding="{encoding}"?>')
    if encoding == "utf-16":
        text = text.removeprefix("\ufeff")
    started = time.monotonic()
    try:
        parsed = parse_feed(text.encode(encoding), "http://127.0.0.1/tricks")
    except ParseError:
        return  # refusing the document is as safe as reading it without its entities
    assert time.monotonic() - started < 2
    stored = repr(parsed)
    assert "lollol" not in stored and "xxxxxxxxxx" not in stored and ">>" not in stored
    assert len(stored) < 5000
    assert "its XML entity declarations were ignored" in (parsed.warning or "")


def test_a_short_literal_entity_is_still_understood() -> None:
    from aggregator.parse import parse_feed

    body = '<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY nbsp "&#160;"><!ENTITY co "Example Co.">]>\n' + ITEM.replace(
        "A &a; B", "A&nbsp;B &co;"
    ).replace("&a;", "")
    parsed = parse_feed(body.encode(), "http://127.0.0.1/entities")
    assert parsed.entries[0].title == "A B Example Co." and parsed.warning is None


def test_a_feed_served_as_text_html_is_still_a_feed_and_a_page_is_a_page() -> None:
    from aggregator.documents import HtmlPage
    from aggregator.parse import read_document
    from aggregator.types import ParsedFeed

    feed = (DATA / "rss2_basic.xml").read_bytes()
    assert isinstance(read_document(feed, "http://127.0.0.1/f", {"content-type": "text/html"}), ParsedFeed)
    page = b"<!-- a comment -->\n<?php ?>\n<HTML><head><link rel='alternate feed' type='application/atom+xml' href='/a.xml'>"
    found = read_document(page, "http://127.0.0.1/site/", {"content-type": "application/xml"})
    assert found == HtmlPage("http://127.0.0.1/site/", ("http://127.0.0.1/a.xml",))


def test_any_other_answer_than_410_ends_gone(tmp_path: Path) -> None:
    from aggregator.types import FeedConfig, FetchResult

    url = "http://127.0.0.1:9/feed.xml"
    with Store.open(tmp_path / "agg.db") as store:
        store.sync_feeds([FeedConfig(url=url)], "2026-11-20T10:00:00Z")
        store.store_feeds([FeedFailed(url, "HTTP 410 Gone", 410, "2026-11-20T10:00:00Z", None)])
        assert store.gone_feeds([url]) == {url} and url not in store.due_feeds("2099-01-01T00:00:00Z")
        store.store_feeds([FeedFailed(url, "HTTP 503", 503, "2026-11-20T11:00:00Z", "2026-11-20T12:00:00Z")])
        assert store.gone_feeds([url]) == set() and url in store.due_feeds("2099-01-01T00:00:00Z")
        store.store_feeds([FeedFailed(url, "HTTP 410 Gone", 410, "2026-11-20T13:00:00Z", None)])
        ok = FetchResult(url=url, final_url=url, status=304, headers={})
        store.store_feeds([FeedUnchanged(url, ok, "2026-11-20T14:00:00Z", "2026-11-20T15:00:00Z")])
        assert store.gone_feeds([url]) == set()


def test_a_feed_that_failed_last_time_is_polled_first(http: FixtureServer, write_config, poll_once) -> None:
    http.route("/order/a.xml", file="rss2_basic.xml")
    http.route("/order/b.xml", file="atom_basic.xml")
    http.route("/order/slow.xml", file="rss1_rdf.xml", delay=1.5)
    config = write_config([http.url(f"/order/{name}") for name in ("a.xml", "b.xml", "slow.xml")], timeout="1s", concurrency=1)
    poll_once(config)
    first = [r.path for r in http.requests]
    poll_once(config)
    second = [r.path for r in http.requests][len(first) :]
    assert first == ["/order/a.xml", "/order/b.xml", "/order/slow.xml"]
    assert second == ["/order/slow.xml", "/order/a.xml", "/order/b.xml"]
