"""The HTTP server under a real uvicorn on 127.0.0.1, with real output files and a real SQLite store."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.utils import formatdate
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator import serve as serve_module
from appserver import AppServer
from aggregator.generate import output_paths, write_outputs
from aggregator.metrics import Metrics
from aggregator.serve import Health, ServerStartError, build_app, make_server
from aggregator.storage import Store
from aggregator.storage.store import FeedFailed
from aggregator.types import Config, FeedConfig, FetchResult, OutputConfig, ParsedEntry, ParsedFeed, PollResult

OK_FEED = "http://127.0.0.1:9/sueddeutsche.xml"
FAILING_FEED = "http://127.0.0.1:9/broken.xml"
NEVER_FEED = "http://127.0.0.1:9/later.xml"
HOSTILE = "<script>alert(1)</script>"
GERMAN = "Süddeutsche – Grüße aus München »heute«"
NOW = "2026-11-20T10:00:00Z"


@dataclass
class FakeHealth:
    scheduler_running: bool = True
    last_successful_poll: str | None = NOW
    started_at: str = "2026-11-20T09:00:00Z"

    def health(self) -> Health:
        return Health(self.scheduler_running, self.last_successful_poll, self.started_at)


def make_config(tmp_path: Path, **changes: object) -> Config:
    config = Config(
        path=tmp_path / "feeds.toml",
        database=tmp_path / "agg.db",
        output_dir=tmp_path / "public",
        outputs=(OutputConfig(name="all", title=f"Alle Nachrichten {HOSTILE}"), OutputConfig(name="de", tags=("de",))),
        feeds=(
            FeedConfig(url=OK_FEED, name=GERMAN, tags=("de",)),
            FeedConfig(url=FAILING_FEED),
            FeedConfig(url=NEVER_FEED, name="Später"),
        ),
    )
    return replace(config, **changes)


def fill_store(config: Config) -> None:
    """One feed polled fine, one failing with a hostile title and error, one never polled."""
    entries = tuple(
        ParsedEntry(
            guid=f"g{i}", link=f"http://127.0.0.1:9/a{i}", title=f"Meldung {i}: Bürger größer",
            author="Jürgen", published="2026-11-19T08:00:00Z", updated=None,
            summary="<p>Kurz gefasst.</p>", content=f"<p>Ausführlicher Text Nummer {i}. " + "Mehr. " * 40 + "</p>",
            url=f"http://127.0.0.1:9/a{i}", content_hash=f"h{i}",
        )
        for i in range(3)
    )
    parsed = ParsedFeed(title="SZ", site_url="javascript:alert(1)", language="de", entries=entries)
    result = FetchResult(url=OK_FEED, final_url=OK_FEED, status=200, headers={}, body=b"x")
    with Store.open(config.database) as store:
        store.sync_feeds(config.feeds, NOW)
        store.store_feed(OK_FEED, parsed, result, now=NOW, next_poll_at="2026-11-20T10:30:00Z")
        store.db.execute("UPDATE feeds SET title = ? WHERE url = ?", [f"Kaputt {HOSTILE}", FAILING_FEED])
        store.store_feeds([
            FeedFailed(FAILING_FEED, f"HTTP 500 Internal Server Error {HOSTILE}", 500, NOW, "2026-11-20T10:05:00Z")
        ])
        write_outputs(config, store)




@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def start(health: FakeHealth, metrics: Metrics) -> Iterator[Callable[[Config], httpx.Client]]:
    running: list[AppServer] = []

    def launch(config: Config) -> httpx.Client:
        server = AppServer(build_app(config, health, metrics))
        running.append(server)
        return server.__enter__()

    yield launch
    for server in running:
        server.__exit__()


@pytest.fixture
def site(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    fill_store(config)
    return config


@pytest.fixture
def client(site: Config, start: Callable[[Config], httpx.Client]) -> httpx.Client:
    return start(site)


IDENTITY = {"Accept-Encoding": "identity"}


# --- feeds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("atom", "application/atom+xml"), ("rss", "application/rss+xml"), ("json", "application/feed+json")],
)
def test_feed_served_with_content_type_and_validators(site: Config, client: httpx.Client, fmt: str, media_type: str):
    response = client.get(f"/feeds/all.{fmt}", headers=IDENTITY)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.content == (site.output_dir / f"all.{fmt}").read_bytes()
    assert response.headers["etag"].startswith('"') and response.headers["etag"].endswith('"')
    assert response.headers["last-modified"].endswith(" GMT")
    assert response.headers["cache-control"] == "public, max-age=60"
    assert "Accept-Encoding" in response.headers["vary"]
    assert "content-encoding" not in response.headers


def test_german_text_survives_in_the_feed(client: httpx.Client):
    assert "Bürger größer" in client.get("/feeds/de.json").json()["items"][0]["title"]


def test_304_for_own_etag_weak_form_lists_and_star(client: httpx.Client):
    etag = client.get("/feeds/all.atom", headers=IDENTITY).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = client.get("/feeds/all.atom", headers={**IDENTITY, "If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert "Accept-Encoding" in response.headers["vary"]
    assert client.get("/feeds/all.atom", headers={"If-None-Match": '"other"'}).status_code == 200


def test_if_modified_since(client: httpx.Client):
    last_modified = client.get("/feeds/all.rss").headers["last-modified"]
    assert client.get("/feeds/all.rss", headers={"If-Modified-Since": last_modified}).status_code == 304
    assert client.get("/feeds/all.rss", headers={"If-Modified-Since": formatdate(0, usegmt=True)}).status_code == 200
    assert client.get("/feeds/all.rss", headers={"If-Modified-Since": "not a date"}).status_code == 200
    both = {"If-Modified-Since": last_modified, "If-None-Match": '"other"'}
    assert client.get("/feeds/all.rss", headers=both).status_code == 200


def test_changed_file_is_served_again_with_a_new_etag(site: Config, client: httpx.Client):
    first = client.get("/feeds/all.json", headers=IDENTITY)
    path = site.output_dir / "all.json"
    path.write_bytes(first.content.replace(b"Merged", b"Changed") + b"\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    second = client.get("/feeds/all.json", headers={**IDENTITY, "If-None-Match": first.headers["etag"]})
    assert second.status_code == 200
    assert second.headers["etag"] != first.headers["etag"]
    assert second.content == path.read_bytes()
    assert second.headers["last-modified"] != first.headers["last-modified"]


def test_unchanged_file_is_read_and_hashed_once(client: httpx.Client, monkeypatch: pytest.MonkeyPatch):
    loads: list[Path] = []
    original = serve_module.load_file
    monkeypatch.setattr(serve_module, "load_file", lambda path: loads.append(path) or original(path))
    etags = {client.get("/feeds/de.atom").headers["etag"] for _ in range(3)}
    assert len(etags) == 1 and len(loads) == 1


def test_gzip_when_accepted_identity_otherwise(site: Config, client: httpx.Client):
    raw = (site.output_dir / "all.atom").read_bytes()
    zipped = client.get("/feeds/all.atom", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == raw
    assert int(zipped.headers["content-length"]) < len(raw)
    assert "Accept-Encoding" in zipped.headers["vary"]
    plain = client.get("/feeds/all.atom", headers=IDENTITY)
    assert "content-encoding" not in plain.headers and plain.content == raw
    refused = client.get("/feeds/all.atom", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers
    again = client.get("/feeds/all.atom", headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == zipped.headers["etag"]
    assert client.get("/feeds/all.atom", headers={"If-None-Match": plain.headers["etag"]}).status_code == 304


def test_gzip_body_is_a_valid_gzip_stream(client: httpx.Client):
    with client.stream("GET", "/feeds/all.rss", headers={"Accept-Encoding": "gzip"}) as response:
        body = b"".join(response.iter_raw())
    assert gzip.decompress(body).startswith(b"<?xml")


def test_head(site: Config, client: httpx.Client):
    get = client.get("/feeds/all.atom", headers=IDENTITY)
    head = client.head("/feeds/all.atom", headers=IDENTITY)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-length"] == str(len(get.content))
    assert client.head("/feeds/all.atom", headers={"If-None-Match": get.headers["etag"]}).status_code == 304
    assert client.head("/").status_code == 200


def raw_get(client: httpx.Client, target: str) -> tuple[int, bytes]:
    """A request line sent as written: no client normalises ``..`` or percent escapes away."""
    with socket.create_connection(("127.0.0.1", client.base_url.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        response = b"".join(iter(lambda: sock.recv(65536), b""))
    return int(response.split(b" ", 2)[1]), response


@pytest.mark.parametrize(
    "path",
    [
        "/feeds/unknown.atom", "/feeds/all.xml", "/feeds/all", "/feeds/.atom", "/feeds/all.atom.bak",
        "/feeds/../agg.db", "/feeds/..%2Fagg.db", "/feeds/%2e%2e%2fagg.db", "/feeds/..%2F..%2Fetc%2Fpasswd",
        "/feeds/all%2Eatom%2F..%2F..%2Fagg.db", "/agg.db", "/public/all.atom",
        "/feeds/../public/all.atom", "/feeds/%2e%2e/public/all.atom", "/feeds/all.atom%00", "/feeds/ALL.ATOM",
    ],
)
def test_404_for_unknown_outputs_and_path_tricks(client: httpx.Client, path: str):
    status, response = raw_get(client, path)
    assert status == 404, path
    assert b"SQLite" not in response and b"Alle Nachrichten" not in response


def test_503_before_the_file_is_generated(tmp_path: Path, start: Callable[[Config], httpx.Client]):
    config = make_config(tmp_path)
    client = start(config)
    response = client.get("/feeds/all.atom")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert "not been generated" in response.text
    fill_store(config)
    assert client.get("/feeds/all.atom").status_code == 200
    assert all(path.exists() for path in output_paths(config, config.outputs[1]).values())


# --- /healthz ------------------------------------------------------------------------------------


def test_healthz_degraded_when_a_feed_fails(client: httpx.Client):
    response = client.get("/healthz")
    assert response.status_code == 200
    document = response.json()
    assert document["status"] == "degraded"
    assert document["database"] == {"reachable": True, "error": None}
    assert document["scheduler"] == {"running": True}
    assert document["last_successful_poll"] == NOW
    assert document["started_at"] == "2026-11-20T09:00:00Z"
    assert document["feeds"]["total"] == 3 and document["feeds"]["failing"] == 1
    [failure] = document["feeds"]["failures"]
    assert failure["url"] == FAILING_FEED and failure["error_count"] == 1
    assert failure["last_error"].startswith("HTTP 500 Internal Server Error")


def test_healthz_ok_when_nothing_fails(tmp_path: Path, start: Callable[[Config], httpx.Client]):
    config = make_config(tmp_path)
    fill_store(config)
    with Store.open(config.database) as store:
        store.db.execute("UPDATE feeds SET last_error = NULL")
    document = start(config).get("/healthz").json()
    assert document["status"] == "ok" and document["feeds"]["failing"] == 0


def test_healthz_and_index_say_a_gone_feed_is_gone(tmp_path: Path, start: Callable[[Config], httpx.Client]):
    config = make_config(tmp_path)
    fill_store(config)
    with Store.open(config.database) as store:
        store.store_feeds([FeedFailed(FAILING_FEED, "gone (HTTP 410): the feed was removed", 410, NOW, None)])
    client = start(config)
    document = client.get("/healthz").json()
    assert document["feeds"]["gone"] == 1
    [failure] = document["feeds"]["failures"]
    assert (failure["url"], failure["state"]) == (FAILING_FEED, "gone")
    assert '<span class="gone">gone</span>' in client.get("/").text


def test_healthz_503_when_the_scheduler_is_stopped(health: FakeHealth, client: httpx.Client):
    health.scheduler_running = False
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error" and response.json()["scheduler"] == {"running": False}


def test_healthz_503_without_a_database_and_never_creates_it(tmp_path: Path, start: Callable[[Config], httpx.Client]):
    config = make_config(tmp_path, database=tmp_path / "missing" / "agg.db")
    client = start(config)
    response = client.get("/healthz")
    assert response.status_code == 503
    document = response.json()
    assert document["status"] == "error"
    assert document["database"]["reachable"] is False and "agg.db" in document["database"]["error"]
    assert not config.database.exists() and not config.database.parent.exists()
    assert client.get("/").status_code == 200
    assert not config.database.parent.exists()


def test_healthz_503_when_the_file_is_not_a_database(tmp_path: Path, start: Callable[[Config], httpx.Client]):
    config = make_config(tmp_path)
    config.database.write_bytes(b"this is not SQLite" * 100)
    document = start(config).get("/healthz").json()
    assert document["database"]["reachable"] is False and document["status"] == "error"


# --- /metrics ------------------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_reflect_recorded_polls(metrics: Metrics, client: httpx.Client):
    before = scrape(client)
    assert before[("aggregator_polls_total", (("status", "ok"),))] == 0
    metrics.record_poll(PollResult(url=OK_FEED, status="ok", new=5, updated=1, duplicates=2, seconds=0.3))
    metrics.record_poll(PollResult(url=OK_FEED, status="not_modified", seconds=0.1))
    metrics.record_poll(PollResult(url=FAILING_FEED, status="error", error="HTTP 500", seconds=2.0))
    metrics.record_extraction("done")
    metrics.record_extraction("deferred")
    after = scrape(client)
    assert after[("aggregator_polls_total", (("status", "ok"),))] == 1
    assert after[("aggregator_polls_total", (("status", "not_modified"),))] == 1
    assert after[("aggregator_polls_total", (("status", "error"),))] == 1
    assert after[("aggregator_poll_errors_total", ())] == 1
    assert after[("aggregator_entries_stored_total", (("kind", "new"),))] == 3
    assert after[("aggregator_entries_stored_total", (("kind", "duplicate"),))] == 2
    assert after[("aggregator_entries_stored_total", (("kind", "updated"),))] == 1
    assert after[("aggregator_extractions_total", (("status", "done"),))] == 1
    assert after[("aggregator_extractions_total", (("status", "deferred"),))] == 1
    assert after[("aggregator_poll_duration_seconds_count", ())] == 3
    assert after[("aggregator_poll_duration_seconds_sum", ())] == pytest.approx(2.4)
    assert after[("aggregator_feeds", ())] == 3 and after[("aggregator_feeds_failing", ())] == 1
    assert after[("aggregator_scheduler_running", ())] == 1


def test_metrics_instances_share_nothing():
    first, second = Metrics(), Metrics()
    first.record_poll(PollResult(url=OK_FEED, status="ok"))
    assert b'aggregator_polls_total{status="ok"} 1.0' in first.render()[0]
    assert b'aggregator_polls_total{status="ok"} 0.0' in second.render()[0]
    with pytest.raises(ValueError, match="unknown extraction status"):
        first.record_extraction("exploded")


# --- the index page ------------------------------------------------------------------------------


def test_index_lists_outputs_and_feeds_escaped(client: httpx.Client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in response.headers["content-security-policy"]
    page = response.text
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    for name in ("all", "de"):
        for fmt in ("atom", "rss", "json"):
            assert f'href="/feeds/{name}.{fmt}"' in page
    assert GERMAN in page and "Später" in page
    assert "<script" not in page.lower() and "javascript:" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "HTTP 500 Internal Server Error &lt;script&gt;" in page
    assert ">failing<" in page and ">never polled<" in page and ">ok<" in page
    assert "<td>3</td>" in page


class TagBalance(HTMLParser):
    VOID = {"meta", "br", "link", "img", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"unexpected </{tag}>")


def test_index_is_well_formed(client: httpx.Client):
    checker = TagBalance()
    checker.feed(client.get("/").text)
    checker.close()
    assert checker.problems == [] and checker.open == []


def test_index_is_gzipped_when_accepted(client: httpx.Client):
    response = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip" and "Süddeutsche" in response.text


def test_embedded_server_reports_an_address_in_use(site: Config, health: FakeHealth):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = make_server(build_app(site, health), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ServerStartError, match="cannot serve on 127.0.0.1"):
            asyncio.run(server.serve())
