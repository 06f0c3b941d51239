"""Local HTTP server with many deterministic RSS 2.0 feeds, for benchmarks.

Run ``python bench/feedserver.py --feeds 1000 --items 20``; the first line
printed to stdout is the base URL.  Import :func:`start_server` to run it in a
separate process from Python.

Routes: ``/feeds/{i}.xml`` (RSS 2.0, ETag/Last-Modified, 304, gzip),
``/articles/{i}/{j}`` (HTML page) and ``/_stats`` (JSON response counters).
With ``--ttl 0`` the feeds carry no ``<ttl>`` (default: 30 minutes, which a
poller honours as a lower bound on its interval).  With ``--request-log``,
``/_requests`` returns the wall-clock time of every feed request, per feed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import hashlib
import json
import random
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from html import escape as html_escape
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from aiohttp import web

BASE_TIME = datetime(2024, 11, 1, 12, 0, tzinfo=UTC)
GUID_NAMESPACE = uuid.UUID("6f1c2a52-8e0a-4d5e-9a63-6a5d4f0b7c11")
HOST = "127.0.0.1"

EN_WORDS = (
    "council budget river bridge school library festival market station "
    "harbour museum election transport energy climate research university "
    "hospital community volunteers housing rail project district weather "
    "report committee approval funding league season concert exhibition "
    "startup software release security update network storage platform "
    "developers community maintainers performance benchmark regional local "
    "national residents officials analysis survey study results proposal"
).split()
DE_WORDS = (
    "Bürgermeister Straße Größe Änderung Überblick Gebühren Rathaus "
    "Bahnhof Brücke Schüler Lösung Öffnungszeiten Förderung Verkehr "
    "Gemeinderat Haushalt Wärmepumpe Bürger Ausschuss Baustelle Fußgänger "
    "Grünfläche Übergang Kindergärten Müllabfuhr Zuständigkeit Prüfung"
).split()
VERBS = (
    "announced approved discussed reviewed delayed published expanded "
    "criticised welcomed presented postponed confirmed"
).split()
DE_VERBS = ("beschließt", "prüft", "verschiebt", "genehmigt", "eröffnet", "kündigt an")


@dataclass(frozen=True, slots=True)
class Item:
    feed: int
    index: int
    title: str
    paragraphs: tuple[str, ...]
    published: datetime
    german: bool


@dataclass(frozen=True, slots=True)
class Representation:
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class FeedDoc:
    identity: Representation
    gzipped: Representation
    last_modified: str
    last_modified_ts: int


def _sentence(rng: random.Random, german: bool) -> str:
    in_german = german and rng.random() < 0.6
    subject = " ".join(rng.sample(DE_WORDS if in_german else EN_WORDS, 2))
    verb = rng.choice(DE_VERBS if in_german else VERBS)
    rest = " ".join(rng.choices(EN_WORDS + DE_WORDS if german else EN_WORDS, k=rng.randint(5, 11)))
    return f"{'Die' if in_german else 'The'} {subject} {verb} {rest}."


def _paragraph(rng: random.Random, german: bool, min_chars: int) -> str:
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < min_chars:
        sentences.append(_sentence(rng, german))
    return " ".join(sentences)


@lru_cache(maxsize=4096)
def make_item(feed: int, index: int) -> Item:
    rng = random.Random(feed * 100_003 + index)
    german = feed % 3 == 0 or rng.random() < 0.15
    words = rng.sample(DE_WORDS if german else EN_WORDS, 3)
    title = f"{words[0].capitalize()} {rng.choice(DE_VERBS if german else VERBS)} {words[1]} {words[2]}"
    paragraphs = tuple(_paragraph(rng, german, rng.randint(70, 160)) for _ in range(rng.randint(2, 3)))
    published = BASE_TIME - timedelta(hours=feed % 48, minutes=index * 97 + rng.randint(0, 50))
    return Item(feed, index, title, paragraphs, published, german)


def item_link(base_url: str, item: Item) -> str:
    return f"{base_url}/articles/{item.feed}/{item.index}"


def description_html(base_url: str, item: Item) -> str:
    first, *rest = item.paragraphs
    more = "".join(f"<p>{html_escape(p)}</p>" for p in rest[:1])
    link = html_escape(item_link(base_url, item))
    read_more = "Weiterlesen" if item.german else "Read more"
    lead = f"<p><strong>{html_escape(item.title)}</strong> &mdash; {html_escape(first)}</p>"
    return f'{lead}{more}<p><a href="{link}">{read_more}</a></p>'


def render_item(base_url: str, item: Item) -> str:
    guid = uuid.uuid5(GUID_NAMESPACE, f"{item.feed}/{item.index}")
    description = description_html(base_url, item)
    description_xml = f"<![CDATA[{description}]]>" if item.index % 2 else xml_escape(description)
    return (
        "<item>"
        f"<title>{xml_escape(item.title)}</title>"
        f"<link>{xml_escape(item_link(base_url, item))}</link>"
        f'<guid isPermaLink="false">urn:uuid:{guid}</guid>'
        f"<pubDate>{format_datetime(item.published, usegmt=True)}</pubDate>"
        f"<category>{'Lokales' if item.german else 'News'}</category>"
        f"<description>{description_xml}</description>"
        "</item>\n"
    )


def render_feed(base_url: str, feed: int, n_items: int, ttl: int = 30) -> tuple[bytes, datetime]:
    """The feed's RSS document and its newest date; ``ttl`` in minutes, 0 for no ``<ttl>`` element."""
    items = [make_item(feed, j) for j in range(n_items)]
    newest = max((item.published for item in items), default=BASE_TIME)
    lang = "de-DE" if feed % 3 == 0 else "en-GB"
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">\n<channel>\n'
        f"<title>Bench Feed {feed}</title>\n"
        f"<link>{base_url}/</link>\n"
        f'<atom:link href="{base_url}/feeds/{feed}.xml" rel="self" type="application/rss+xml"/>\n'
        f"<description>Deterministic benchmark feed number {feed}</description>\n"
        f"<language>{lang}</language>\n"
        f"<lastBuildDate>{format_datetime(newest, usegmt=True)}</lastBuildDate>\n"
        + (f"<ttl>{ttl}</ttl>\n" if ttl else "")
        + "".join(render_item(base_url, item) for item in items)
        + "</channel>\n</rss>\n"
    )
    return text.encode(), newest


def build_feed_doc(base_url: str, feed: int, n_items: int, ttl: int = 30) -> FeedDoc:
    body, newest = render_feed(base_url, feed, n_items, ttl)
    digest = hashlib.sha1(body).hexdigest()[:20]
    return FeedDoc(
        identity=Representation(body, f'"{digest}"'),
        gzipped=Representation(gzip.compress(body, compresslevel=6, mtime=0), f'"{digest}-gz"'),
        last_modified=format_datetime(newest, usegmt=True),
        last_modified_ts=int(newest.timestamp()),
    )


def render_article(base_url: str, feed: int, index: int) -> bytes:
    item = make_item(feed, index)
    body = "".join(f"<p>{html_escape(p)}</p>\n" for p in item.paragraphs)
    lang = "de" if item.german else "en"
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{html_escape(item.title)}</title></head>\n"
        f'<body><header><a href="{base_url}/">Bench News</a></header>\n'
        f"<article><h1>{html_escape(item.title)}</h1>\n"
        f'<time datetime="{item.published.isoformat()}">{format_datetime(item.published, usegmt=True)}</time>\n'
        f"{body}</article>\n<footer>&copy; Bench News</footer></body></html>\n"
    ).encode()


def _etag_matches(header: str, doc: FeedDoc) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or doc.identity.etag in tags or doc.gzipped.etag in tags


def _not_modified_since(header: str, doc: FeedDoc) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return doc.last_modified_ts <= since.timestamp()


def is_not_modified(request: web.Request, doc: FeedDoc) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, doc)
    if_modified_since = request.headers.get("If-Modified-Since")
    return if_modified_since is not None and _not_modified_since(if_modified_since, doc)


def accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


class FeedApp:
    def __init__(
        self, base_url: str, n_feeds: int, n_items: int, full_pages: bool = False, ttl: int = 30,
        request_log: bool = False,
    ) -> None:
        self.base_url = base_url
        self.full_pages = full_pages
        self.n_feeds = n_feeds
        self.n_items = n_items
        self.docs = [build_feed_doc(base_url, i, n_items, ttl) for i in range(n_feeds)]
        self.article_cache: dict[tuple[int, int], bytes] = {}
        self.stats = {"feed_200": 0, "feed_304": 0, "article_200": 0, "not_found": 0}
        self.requests: dict[int, list[float]] | None = {} if request_log else None

    async def feed(self, request: web.Request) -> web.Response:
        index = int(request.match_info["i"])
        if index >= self.n_feeds:
            self.stats["not_found"] += 1
            raise web.HTTPNotFound()
        if self.requests is not None:
            self.requests.setdefault(index, []).append(time.time())
        doc = self.docs[index]
        rep = doc.gzipped if accepts_gzip(request) else doc.identity
        headers = {"ETag": rep.etag, "Last-Modified": doc.last_modified, "Vary": "Accept-Encoding"}
        if is_not_modified(request, doc):
            self.stats["feed_304"] += 1
            return web.Response(status=304, headers=headers)
        self.stats["feed_200"] += 1
        if rep is doc.gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=rep.body, headers=headers, content_type="application/rss+xml", charset="utf-8")

    async def article(self, request: web.Request) -> web.Response:
        key = (int(request.match_info["i"]), int(request.match_info["j"]))
        if key[0] >= self.n_feeds or key[1] >= self.n_items:
            self.stats["not_found"] += 1
            raise web.HTTPNotFound()
        self.stats["article_200"] += 1
        body = self.article_cache.get(key)
        if body is None:
            body = self.article_cache[key] = self.render(*key)
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    def render(self, feed: int, index: int) -> bytes:
        if not self.full_pages:
            return render_article(self.base_url, feed, index)
        from pages import article_page

        page, _ = article_page(feed * self.n_items + index, f"{self.base_url}/articles/{feed}/{index}")
        return page

    async def stats_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def requests_json(self, request: web.Request) -> web.Response:
        """``{feed index: [unix time of each request, ...]}``; 404 unless started with ``--request-log``."""
        if self.requests is None:
            raise web.HTTPNotFound()
        return web.json_response({str(i): times for i, times in self.requests.items()})

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get(r"/feeds/{i:\d+}.xml", self.feed)
        app.router.add_get(r"/articles/{i:\d+}/{j:\d+}", self.article)
        app.router.add_get("/_stats", self.stats_json)
        app.router.add_get("/_requests", self.requests_json)
        return app


async def serve(
    n_feeds: int, n_items: int, port: int, full_pages: bool = False, ttl: int = 30, request_log: bool = False
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    base_url = f"http://{HOST}:{sock.getsockname()[1]}"
    feed_app = FeedApp(base_url, n_feeds, n_items, full_pages, ttl, request_log)
    gc.collect()
    gc.freeze()
    runner = web.AppRunner(feed_app.application(), access_log=None, keepalive_timeout=75)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=2048).start()
    print(base_url, flush=True)
    await asyncio.Event().wait()


def start_server(
    n_feeds: int, items: int, timeout: float = 60.0, full_pages: bool = False, ttl: int = 30,
    request_log: bool = False,
) -> tuple[subprocess.Popen[str], str]:
    """Start the server in a child process; return it and its base URL."""
    extra = ["--full-pages"] if full_pages else []
    extra += ["--ttl", str(ttl)] if ttl != 30 else []
    extra += ["--request-log"] if request_log else []
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--feeds", str(n_feeds), "--items", str(items), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = _read_line(proc, timeout)
    if not line.startswith("http://"):
        stop_server(proc)
        raise RuntimeError(f"feed server failed to start: {line!r}")
    return proc, line


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


def fetch_stats(base_url: str) -> dict[str, int]:
    """Response counters kept by the server since it started."""
    with urllib.request.urlopen(f"{base_url}/_stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def fetch_requests(base_url: str) -> dict[int, list[float]]:
    """Unix times of every feed request per feed index (server started with ``request_log=True``)."""
    with urllib.request.urlopen(f"{base_url}/_requests", timeout=60) as response:
        return {int(i): times for i, times in json.loads(response.read()).items()}


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--full-pages", action="store_true", help="serve 40-80 KB article pages (bench/pages.py)")
    parser.add_argument("--ttl", type=int, default=30, help="<ttl> of every feed in minutes; 0: none")
    parser.add_argument("--request-log", action="store_true", help="keep each feed request's time for /_requests")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.feeds, args.items, args.port, args.full_pages, args.ttl, args.request_log))


if __name__ == "__main__":
    main()
