"""The HTTP side of the daemon: merged feeds, ``/healthz``, ``/metrics`` and an index page.

Feeds are served from ``output_dir`` with ETag/Last-Modified and 304s; the store
is only ever opened read-only here, so a busy daemon never waits on a reader.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import os
import re
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .exceptions import AggregatorError
from .generate import FORMATS
from .metrics import Metrics
from .types import Config

MEDIA_TYPES = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}
GZIP_MINIMUM_SIZE = 500
FEED_CACHE_CONTROL = "public, max-age=60"
NOT_GENERATED = "This feed has not been generated yet; try again shortly.\n"
NOT_GENERATED_HEADERS = {"Retry-After": "30", "Cache-Control": "no-store"}
DATABASE_TIMEOUT_SECONDS = 2.0
HEALTH_FAILURES_SHOWN = 10
INDEX_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}
_ETAGS = re.compile(r'(?:W/)?("[^"]*")')


@dataclass(frozen=True)
class Health:
    scheduler_running: bool
    last_successful_poll: str | None
    started_at: str


class HealthSource(Protocol):
    def health(self) -> Health: ...


class ServerStartError(AggregatorError):
    """The HTTP server could not start, e.g. its address is in use."""


@dataclass(frozen=True)
class CachedFile:
    key: tuple[int, int]
    body: bytes
    gzipped: bytes | None
    etag: str
    gzip_etag: str
    modified: int
    last_modified: str


def load_file(path: Path) -> CachedFile:
    with path.open("rb") as handle:
        stat = os.fstat(handle.fileno())
        body = handle.read()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return CachedFile(
        key=(stat.st_mtime_ns, stat.st_size),
        body=body,
        gzipped=gzip.compress(body, compresslevel=6, mtime=0) if len(body) >= GZIP_MINIMUM_SIZE else None,
        etag=f'"{digest}"',
        gzip_etag=f'"{digest}-gzip"',
        modified=int(stat.st_mtime),
        last_modified=formatdate(int(stat.st_mtime), usegmt=True),
    )


class FileCache:
    """The bytes of each served file, hashed and compressed once per version (mtime, size)."""

    def __init__(self) -> None:
        self._files: dict[Path, CachedFile] = {}

    async def get(self, path: Path) -> CachedFile:
        """Raises FileNotFoundError while the file does not exist."""
        stat = path.stat()
        cached = self._files.get(path)
        if cached is None or cached.key != (stat.st_mtime_ns, stat.st_size):
            cached = await anyio.to_thread.run_sync(load_file, path)
            self._files[path] = cached
        return cached


def etag_matches(header: str, etags: set[str]) -> bool:
    """``If-None-Match`` by weak comparison: a list of tags or ``*``."""
    if header.strip() == "*":
        return True
    return any(tag in etags for tag in _ETAGS.findall(header))


def modified_since(header: str, modified: int) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, OverflowError):
        return True
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return modified > since.timestamp()


def not_modified(headers: Mapping[str, str], cached: CachedFile) -> bool:
    if "if-none-match" in headers:
        return etag_matches(headers["if-none-match"], {cached.etag, cached.gzip_etag})
    if "if-modified-since" in headers:
        return not modified_since(headers["if-modified-since"], cached.modified)
    return False


def accepts_gzip(header: str) -> bool:
    weights: dict[str, float] = {}
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        match = re.search(r"q\s*=\s*([01](?:\.[0-9]{0,3})?)", params)
        weights[coding.strip()] = float(match.group(1)) if match else 1.0
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def feed_response(request: Request, cached: CachedFile, media_type: str) -> Response:
    use_gzip = cached.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding", ""))
    headers = {
        "ETag": cached.gzip_etag if use_gzip else cached.etag,
        "Last-Modified": cached.last_modified,
        "Cache-Control": FEED_CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(request.headers, cached):
        return Response(status_code=304, headers=headers)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return Response(cached.gzipped if use_gzip else cached.body, headers=headers, media_type=media_type)


def feed_files(config: Config) -> dict[str, tuple[Path, str]]:
    """Every servable file name, ``"all.atom"``, with its path and media type."""
    names = [f"{output.name}.{fmt}" for output in config.outputs for fmt in FORMATS]
    return {name: (config.output_dir / name, MEDIA_TYPES[name.rpartition(".")[2]]) for name in names}


@dataclass(frozen=True)
class FeedStatus:
    url: str
    name: str
    site_url: str | None
    last_polled_at: str | None
    last_success_at: str | None
    next_poll_at: str | None
    last_error: str | None
    error_count: int
    moved_to: str | None
    gone_at: str | None
    entries: int

    @property
    def state(self) -> str:
        if self.gone_at:
            return "gone"
        return "failing" if self.last_error else "ok" if self.last_polled_at else "never polled"


_FEED_SQL = """SELECT url, coalesce(name, title), site_url, last_polled_at, last_success_at, next_poll_at,
    last_error, error_count, moved_to, gone_at FROM feeds"""
_COUNT_SQL = "SELECT feed_url, count(*) FROM entries GROUP BY feed_url"


def read_only(database: Path) -> sqlite3.Connection:
    """A read-only connection; a missing file stays missing."""
    if not database.is_file():
        raise sqlite3.OperationalError(f"no database file at {database}")
    uri = f"{database.absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=DATABASE_TIMEOUT_SECONDS)


def feed_statuses(config: Config, *, with_counts: bool) -> list[FeedStatus]:
    """The configured feeds, in configuration order, as the store knows them."""
    with contextlib.closing(read_only(config.database)) as conn:
        rows = {row[0]: row for row in conn.execute(_FEED_SQL)}
        counts = dict(conn.execute(_COUNT_SQL)) if with_counts else {}
    statuses = []
    for feed in config.feeds:
        row = rows.get(feed.url) or (feed.url, None, None, None, None, None, None, 0, None, None)
        name = feed.name or row[1] or feed.url
        statuses.append(FeedStatus(feed.url, name, *row[2:], entries=counts.get(feed.url, 0)))
    return statuses


def health_document(health: Health, feeds: list[FeedStatus] | None, db_error: str | None) -> dict[str, object]:
    failing = [feed for feed in feeds or () if feed.last_error]
    healthy = db_error is None and health.scheduler_running
    return {
        "status": ("degraded" if failing else "ok") if healthy else "error",
        "database": {"reachable": db_error is None, "error": db_error},
        "scheduler": {"running": health.scheduler_running},
        "last_successful_poll": health.last_successful_poll,
        "started_at": health.started_at,
        "feeds": {
            "total": None if feeds is None else len(feeds),
            "failing": None if feeds is None else len(failing),
            "gone": None if feeds is None else sum(1 for feed in feeds if feed.gone_at),
            "failures": [_failure(feed) for feed in _worst(failing)],
        },
    }


def _worst(failing: list[FeedStatus]) -> list[FeedStatus]:
    return sorted(failing, key=lambda feed: (-feed.error_count, feed.name))[:HEALTH_FAILURES_SHOWN]


def _failure(feed: FeedStatus) -> dict[str, object]:
    keys = ("name", "url", "state", "last_error", "error_count", "last_polled_at", "last_success_at")
    return {key: getattr(feed, key) for key in keys}


def read_feeds(config: Config, *, with_counts: bool) -> tuple[list[FeedStatus] | None, str | None]:
    try:
        return feed_statuses(config, with_counts=with_counts), None
    except sqlite3.Error as e:
        return None, f"{config.database}: {e}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _time(text: str | None) -> str:
    if not text:
        return "–"
    return f'<time datetime="{_e(text)}">{_e(text.replace("T", " ").replace("Z", " UTC"))}</time>'


def _outputs_html(config: Config) -> str:
    items = []
    for output in config.outputs:
        links = " · ".join(f'<a href="/feeds/{_e(output.name)}.{fmt}">{fmt.upper()}</a>' for fmt in FORMATS)
        items.append(f"<li><strong>{_e(output.title)}</strong> ({_e(output.name)}): {links}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _feed_row(feed: FeedStatus) -> str:
    name = _e(feed.name)
    if feed.site_url and feed.site_url.lower().startswith(("http://", "https://")):
        name = f'<a href="{_e(feed.site_url)}" rel="noopener noreferrer nofollow">{name}</a>'
    error = _e(feed.last_error) if feed.last_error else ""
    if feed.moved_to:
        error += f" Now read from {_e(feed.moved_to)}: put that address in feeds.toml."
    cells = (
        f'{name}<br><small>{_e(feed.url)}</small>',
        f'<span class="{feed.state.replace(" ", "-")}">{_e(feed.state)}</span>',
        _time(feed.last_success_at),
        _time(feed.next_poll_at),
        str(feed.entries),
        error.strip(),
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


_COLUMNS = ("Feed", "Status", "Last success", "Next poll", "Entries", "Last error")


def _feeds_html(feeds: list[FeedStatus] | None, db_error: str | None) -> str:
    if feeds is None:
        return f"<p>The database cannot be read: {_e(db_error)}</p>"
    if not feeds:
        return "<p>No feeds are configured.</p>"
    head = "".join(f"<th>{title}</th>" for title in _COLUMNS)
    rows = "".join(_feed_row(feed) for feed in feeds)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}"
    "table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4rem;"
    "text-align:left;vertical-align:top}small{color:#666}.failing{color:#b00020;font-weight:bold}"
    ".ok{color:#1b5e20}.never-polled{color:#666}"
)


def index_html(config: Config, feeds: list[FeedStatus] | None, db_error: str | None) -> str:
    failing = sum(1 for feed in feeds or () if feed.last_error)
    summary = f"Feeds: {len(feeds)}, failing: {failing}." if feeds is not None else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>aggregator</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>aggregator</h1>\n<h2>Merged feeds</h2>\n{_outputs_html(config)}\n"
        f"<h2>Feeds</h2>\n<p>{_e(summary)}</p>\n{_feeds_html(feeds, db_error)}\n"
        '<p><a href="/healthz">Health</a> · <a href="/metrics">Metrics</a></p>\n</body>\n</html>\n'
    )


def build_app(
    config: Config | Callable[[], Config], health: HealthSource, metrics: Metrics | None = None
) -> Starlette:
    """The HTTP app; ``config`` may be a callable, so a reloaded configuration is served at once."""
    metrics = metrics or Metrics()
    current = config if callable(config) else (lambda: config)
    cache = FileCache()

    async def feed(request: Request) -> Response:
        entry = feed_files(current()).get(request.path_params["filename"])
        if entry is None:
            return PlainTextResponse("No such feed.\n", status_code=404)
        path, media_type = entry
        try:
            cached = await cache.get(path)
        except FileNotFoundError:
            return PlainTextResponse(NOT_GENERATED, status_code=503, headers=NOT_GENERATED_HEADERS)
        return feed_response(request, cached, media_type)

    async def healthz(request: Request) -> Response:
        state = health.health()
        feeds, db_error = await anyio.to_thread.run_sync(lambda: read_feeds(current(), with_counts=False))
        document = health_document(state, feeds, db_error)
        status_code = 503 if document["status"] == "error" else 200
        return JSONResponse(document, status_code=status_code, headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(request: Request) -> Response:
        metrics.set_scheduler_running(health.health().scheduler_running)
        feeds, _ = await anyio.to_thread.run_sync(lambda: read_feeds(current(), with_counts=False))
        if feeds is not None:
            metrics.set_feed_counts(len(feeds), sum(1 for f in feeds if f.last_error))
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def index(request: Request) -> Response:
        configured = current()
        feeds, db_error = await anyio.to_thread.run_sync(lambda: read_feeds(configured, with_counts=True))
        page = index_html(configured, feeds, db_error)
        return Response(page, headers=INDEX_HEADERS, media_type="text/html; charset=utf-8")

    compressed = [Middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_SIZE)]
    routes = [
        Route("/feeds/{filename}", feed, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET", "HEAD"], middleware=compressed),
        Route("/", index, methods=["GET", "HEAD"], middleware=compressed),
    ]
    app = Starlette(routes=routes)
    app.state.metrics = metrics
    return app


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server for an event loop someone else owns: no signal handlers, no ``sys.exit``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit as e:
            where = f"{self.config.host}:{self.config.port}"
            raise ServerStartError(f"cannot serve on {where}: the address is in use or not available") from e

    @property
    def port(self) -> int | None:
        """The port actually bound (useful with port 0), once started."""
        sockets = [sock for server in getattr(self, "servers", ()) for sock in server.sockets or ()]
        return int(sockets[0].getsockname()[1]) if sockets else None


def make_server(app: Starlette, host: str, port: int) -> EmbeddedServer:
    """``await server.serve()`` inside the caller's loop; set ``server.should_exit = True`` to stop."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
        timeout_graceful_shutdown=5, server_header=False,
    )
    return EmbeddedServer(config)


