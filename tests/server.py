"""A threaded HTTP server on 127.0.0.1 that serves test fixtures and records requests."""

from __future__ import annotations

import gzip as gzip_module
import mimetypes
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
NO_BODY_STATUSES = frozenset({204, 304})
CONTENT_TYPES = {
    ".xml": "application/xml",
    ".rss": "application/xml",
    ".atom": "application/xml",
    ".rdf": "application/xml",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".txt": "text/plain",
    ".bin": "application/octet-stream",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class Headers(Mapping[str, str]):
    """Read-only header mapping with case-insensitive lookup; keeps the original names."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items:
            key = name.lower()
            if key in self._items:
                value = f"{self._items[key][1]}, {value}"
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Headers


@dataclass(frozen=True)
class Route:
    body: bytes | None = None
    file: str | None = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delay: float = 0.0
    etag: str | None = None
    last_modified: str | None = None
    redirect: str | None = None
    drip: tuple[int, float] | None = None
    gzip: bool = False


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip: tuple[int, float] | None = None

    def set_header(self, name: str, value: str) -> None:
        for existing in list(self.headers):
            if existing.lower() == name.lower():
                del self.headers[existing]
        self.headers[name] = value

    def has_header(self, name: str) -> bool:
        return any(existing.lower() == name.lower() for existing in self.headers)


def guess_content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or DEFAULT_CONTENT_TYPE


def normalize_etag(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def etag_matches(if_none_match: str, etag: str) -> bool:
    wanted = normalize_etag(etag)
    candidates = [part.strip() for part in if_none_match.split(",")]
    return any(tag == "*" or normalize_etag(tag) == wanted for tag in candidates)


def not_modified_since(if_modified_since: str, last_modified: str) -> bool:
    if if_modified_since.strip() == last_modified.strip():
        return True
    try:
        return parsedate_to_datetime(if_modified_since) >= parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False


def is_not_modified(route: Route, request: Headers) -> bool:
    if_none_match = request.get("If-None-Match")
    if if_none_match is not None:
        return route.etag is not None and etag_matches(if_none_match, route.etag)
    if_modified_since = request.get("If-Modified-Since")
    if if_modified_since is not None and route.last_modified is not None:
        return not_modified_since(if_modified_since, route.last_modified)
    return False


def accepts_gzip(request: Headers) -> bool:
    for part in request.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class FixtureServer:
    """Serves files from ``data_dir`` and programmable routes on 127.0.0.1."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FixtureServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._httpd is not None:
            return
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fixture-http-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FixtureServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    def route(
        self,
        path: str,
        *,
        body: bytes | str | None = None,
        file: str | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
        delay: float = 0.0,
        etag: str | None = None,
        last_modified: str | None = None,
        redirect: str | None = None,
        drip: tuple[int, float] | None = None,
        gzip: bool = False,
    ) -> None:
        if body is not None and file is not None:
            raise ValueError("route() takes body= or file=, not both")
        if drip is not None and drip[0] < 1:
            raise ValueError("drip chunk size must be at least 1 byte")
        if redirect is not None and status == 200:
            status = 301
        route = Route(
            body=body.encode("utf-8") if isinstance(body, str) else body,
            file=file,
            status=status,
            headers=dict(headers or {}),
            content_type=content_type,
            delay=delay,
            etag=etag,
            last_modified=last_modified,
            redirect=redirect,
            drip=drip,
            gzip=gzip,
        )
        with self._lock:
            self._routes[path] = route

    def unroute(self, path: str) -> None:
        with self._lock:
            self._routes.pop(path, None)

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str, *, prefix: bool = False) -> list[RecordedRequest]:
        return [r for r in self.requests if _path_matches(r.path, path, prefix)]

    def hits(self, path: str, *, prefix: bool = False) -> int:
        """Requests for exactly ``path`` (query included), or starting with it if ``prefix``."""
        return len(self.requests_for(path, prefix=prefix))

    def last_request(self, path: str | None = None) -> RecordedRequest | None:
        matching = self.requests if path is None else self.requests_for(path)
        return matching[-1] if matching else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _find_route(self, path: str) -> Route | None:
        bare = urlsplit(path).path
        with self._lock:
            return self._routes.get(path) or self._routes.get(bare)

    def _data_file(self, name: str) -> Path | None:
        candidate = (self.data_dir / name.lstrip("/")).resolve()
        if candidate.is_relative_to(self.data_dir) and candidate.is_file():
            return candidate
        return None

    def _respond(self, path: str, request: Headers) -> Response:
        route = self._find_route(path)
        if route is None:
            return self._respond_with_file(path)
        if route.delay > 0:
            time.sleep(route.delay)
        if route.file is not None and self._data_file(route.file) is None:
            return Response(500, f"fixture file missing: {route.file}".encode(), {"Content-Type": "text/plain"})
        if route.redirect is not None:
            return self._redirect_response(route)
        if is_not_modified(route, request):
            return self._not_modified_response(route)
        return self._route_response(route, path, request)

    def _respond_with_file(self, path: str) -> Response:
        bare = unquote(urlsplit(path).path)
        data_file = self._data_file(bare)
        if data_file is None:
            return Response(404, b"not found", {"Content-Type": "text/plain"})
        return Response(200, data_file.read_bytes(), {"Content-Type": guess_content_type(data_file.name)})

    def _redirect_response(self, route: Route) -> Response:
        response = Response(route.status, route.body or b"")
        response.set_header("Location", route.redirect or "/")
        if route.content_type is not None:
            response.set_header("Content-Type", route.content_type)
        return _with_custom_headers(response, route.headers)

    def _not_modified_response(self, route: Route) -> Response:
        response = Response(304)
        _add_validators(response, route)
        return _with_custom_headers(response, route.headers)

    def _route_response(self, route: Route, path: str, request: Headers) -> Response:
        body = self._route_body(route)
        response = Response(route.status, body, drip=route.drip)
        response.set_header("Content-Type", self._route_content_type(route, path))
        _add_validators(response, route)
        if route.gzip:
            response.set_header("Vary", "Accept-Encoding")
            if accepts_gzip(request):
                response.body = gzip_module.compress(body, mtime=0)
                response.set_header("Content-Encoding", "gzip")
        return _with_custom_headers(response, route.headers)

    def _route_body(self, route: Route) -> bytes:
        if route.file is None:
            return route.body or b""
        return (self.data_dir / route.file).read_bytes()

    @staticmethod
    def _route_content_type(route: Route, path: str) -> str:
        if route.content_type is not None:
            return route.content_type
        if route.file is not None:
            return guess_content_type(route.file)
        return guess_content_type(urlsplit(path).path)


def _path_matches(actual: str, wanted: str, prefix: bool) -> bool:
    return actual.startswith(wanted) if prefix else actual == wanted


def _add_validators(response: Response, route: Route) -> None:
    if route.etag is not None:
        response.set_header("ETag", route.etag)
    if route.last_modified is not None:
        response.set_header("Last-Modified", route.last_modified)


def _with_custom_headers(response: Response, headers: Mapping[str, str]) -> Response:
    for name, value in headers.items():
        response.set_header(name, value)
    return response


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fixture: FixtureServer) -> None:
        self.fixture = fixture
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], DISCONNECT_ERRORS):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FixtureServer/1.0"
    sys_version = ""
    timeout = 10
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except DISCONNECT_ERRORS:
            pass
        finally:
            self.server.untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except DISCONNECT_ERRORS:
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, *, send_body: bool) -> None:
        headers = Headers(self.headers.items())
        fixture = self.server.fixture
        fixture._record(RecordedRequest(self.command, self.path, headers))
        response = fixture._respond(self.path, headers)
        self._send_head(response)
        if send_body and response.status not in NO_BODY_STATUSES:
            self._send_body(response)

    def _send_head(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status not in NO_BODY_STATUSES and not response.has_header("Content-Length"):
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()

    def _send_body(self, response: Response) -> None:
        if response.drip is None:
            self.wfile.write(response.body)
            return
        size, pause = response.drip
        for start in range(0, len(response.body), size):
            if start:
                time.sleep(pause)
            self.wfile.write(response.body[start : start + size])
            self.wfile.flush()
