"""HTTP fetching: the only module that talks to the network.

One :class:`Fetcher` per pass wraps an ``httpx.AsyncClient`` over an aiohttp
transport whose resolver and socket factory apply the private-address rule to
the address actually connected to, for every hop of every redirect.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.abc
import certifi
import httpx
from httpx_aiohttp import AiohttpTransport

from .decoding import ACCEPT_ENCODING, Decoder, DecodingFailed
from .exceptions import FetchError, RefusedAddressError, TooLargeError
from .netguard import refusal
from .types import FetchResult

FEED_MAX_BYTES = 10 * 1024 * 1024
PAGE_MAX_BYTES = 5 * 1024 * 1024
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"
MAX_REDIRECTS = 5
FEED_ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, "
    "application/feed+json;q=0.9, application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
_PERMANENT = (301, 308)
_REDIRECT = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 20.0
    user_agent: str = "aggregator"
    allow_private: bool = False
    max_connections: int = 64


class AddressRefused(OSError):
    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host} ({address}): {reason}")
        self.reason = reason


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Resolves names and keeps only the addresses the guard allows."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        infos = await self._inner.resolve(host, port, family)
        allowed = [info for info in infos if refusal(info["host"], allow_private=self._allow_private) is None]
        if not allowed and infos:
            first = infos[0]["host"]
            raise AddressRefused(host, first, refusal(first, allow_private=self._allow_private) or "")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(allow_private: bool) -> Callable[[Any], socket.socket]:
    """The last check, on the very address a socket is about to connect to (IP literals included)."""

    def create(addr_info: Any) -> socket.socket:
        family, type_, proto, _, address = addr_info
        reason = refusal(address[0], allow_private=allow_private)
        if reason:
            raise AddressRefused(address[0], address[0], reason)
        return socket.socket(family=family, type=type_, proto=proto)

    return create


_tls: Future[ssl.SSLContext] | None = None
_tls_lock = threading.Lock()


def preload_tls() -> None:
    """Start making the TLS context in a thread of its own: OpenSSL reads the CA bundle (20-25 ms) without
    Python's lock, so a command reads its configuration and opens the store meanwhile."""
    _tls_made()


def tls_context() -> ssl.SSLContext:
    """The client TLS context with certifi's CA bundle, made once per process and shared by every fetcher."""
    return _tls_made().result()


def _tls_made() -> Future[ssl.SSLContext]:
    global _tls
    with _tls_lock:
        if _tls is None:
            _tls = Future()
            threading.Thread(target=_make_tls, args=(_tls,), name="tls-context", daemon=True).start()
        return _tls


def _make_tls(made: Future[ssl.SSLContext]) -> None:
    try:
        made.set_result(ssl.create_default_context(cafile=certifi.where()))
    except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the context
        made.set_exception(e)


def guarded_transport(settings: FetchSettings) -> httpx.AsyncBaseTransport:
    """httpx over aiohttp: far less CPU per request than httpcore's pool at high concurrency."""
    ssl_context = tls_context()

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            ssl=ssl_context,
            resolver=GuardedResolver(allow_private=settings.allow_private),
            socket_factory=guarded_socket_factory(settings.allow_private),
        )
        return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)

    return AiohttpTransport(verify=ssl_context, trust_env=False, client=session)  # not a second CA bundle load


class Fetcher:
    """Fetches URLs with conditional GET, redirects, a size cap and a whole-request timeout."""

    def __init__(self, settings: FetchSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport or guarded_transport(settings)
        self._client = httpx.AsyncClient(
            transport=self._transport,
            headers={"User-Agent": settings.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        max_bytes: int = FEED_MAX_BYTES,
        accept: str = FEED_ACCEPT,
    ) -> FetchResult:
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        progress = _Progress()
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._follow(url, headers, max_bytes, progress)
        except TimeoutError as e:
            raise FetchError(url, progress.timed_out(self.settings.timeout)) from e
        except (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError, OSError) as e:
            raise self._failure(url, e) from e

    def _failure(self, url: str, error: BaseException) -> FetchError:
        chain = _chain(error)
        refused = next((e for e in chain if isinstance(e, AddressRefused)), None)
        if refused is not None:
            return RefusedAddressError(url, _refusal_message(refused, self.settings.allow_private))
        if any(isinstance(e, aiohttp.ServerTimeoutError | TimeoutError) for e in chain):
            return FetchError(url, f"timed out after {self.settings.timeout:g}s")
        if isinstance(error, httpx.DecodingError):
            return FetchError(url, f"invalid compressed response: {error}")
        cause = next((e for e in chain if isinstance(e, aiohttp.ClientError)), chain[-1])
        return FetchError(url, _describe(cause))

    async def _follow(self, url: str, headers: dict[str, str], max_bytes: int, progress: _Progress) -> FetchResult:
        current, permanent = url, None
        all_permanent = True
        visited: list[str] = []
        for _ in range(MAX_REDIRECTS + 1):
            visited.append(current)
            request = self._client.build_request("GET", current, headers=headers)
            response = await self._send(request)
            progress.answered = True
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT and location:
                    target = str(response.url.join(location))
                    all_permanent = all_permanent and response.status_code in _PERMANENT
                    permanent = target if all_permanent else permanent
                    current = target
                    continue
                return await self._complete(url, response, max_bytes, permanent, progress)
            finally:
                await response.aclose()
        raise FetchError(url, _too_many_redirects(visited))

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """``request`` (built by the client: its headers, cookies and timeout) through the client's transport,
        its response streamed. Redirects are followed by :meth:`_follow`, and there is no auth, proxy or
        event hook: the client's ``send`` would only add its machinery for those, a quarter of the CPU of
        a request. Cookies are still kept, from the responses that set some (the standard library's jar
        costs more than the rest of a 304)."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            self._client.cookies.extract_cookies(response)
        return response

    async def _complete(
        self, url: str, response: httpx.Response, max_bytes: int, permanent: str | None, progress: _Progress
    ) -> FetchResult:
        status = response.status_code
        if status >= 400:
            raise FetchError(
                url, _status_message(response), status=status, retry_after=response.headers.get("retry-after")
            )
        body = b"" if status == 304 else await _read_capped(url, response, max_bytes, progress)
        return FetchResult(
            url=url,
            final_url=str(response.url),
            status=status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=body,
            permanent_redirect=permanent,
        )


@dataclass
class _Progress:
    """How far a request got, so that a timeout says what was slow."""

    answered: bool = False
    received: int = 0

    def timed_out(self, seconds: float) -> str:
        if not self.answered:
            return f"timed out after {seconds:g}s: the server did not answer in time"
        return (
            f"timed out after {seconds:g}s: the response was still arriving "
            f"({self.received:,} bytes so far; the server sends too slowly)"
        )


def _too_many_redirects(visited: list[str]) -> str:
    looping = [url for url in dict.fromkeys(visited) if visited.count(url) > 1]
    loop = f": a redirect loop through {', '.join(looping)}" if looping else ""
    return f"too many redirects (more than {MAX_REDIRECTS}){loop}"


async def _read_capped(url: str, response: httpx.Response, max_bytes: int, progress: _Progress) -> bytes:
    """The decoded body, refused as soon as it grows past ``max_bytes`` (compression bombs included)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLargeError(url, f"response too large: {int(declared):,} bytes (limit {max_bytes:,})")
    body = _CappedBody(url, max_bytes)
    try:
        decoder = Decoder(response.headers.get("content-encoding"))
        async for raw in response.aiter_raw():
            progress.received += len(raw)
            body.extend(decoder.feed(raw))
        body.extend(decoder.finish())
    except DecodingFailed as e:
        raise FetchError(url, str(e)) from e
    except TooLargeError:
        body.pieces.clear()  # not kept alive by the traceback while the error is recorded
        raise
    return b"".join(body.pieces)


@dataclass
class _CappedBody:
    url: str
    limit: int
    size: int = 0
    pieces: list[bytes] = field(default_factory=list)

    def extend(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise TooLargeError(self.url, f"response too large: over {self.limit:,} bytes once decompressed")
            self.pieces.append(piece)


def _refusal_message(error: AddressRefused, allow_private: bool) -> str:
    if allow_private or error.reason not in ("a loopback address", "a private address"):
        return str(error)
    return f"{error}; set allow_private_addresses = true to allow it"


def _status_message(response: httpx.Response) -> str:
    reason = response.reason_phrase or ""
    return f"HTTP {response.status_code} {reason}".strip()


def _chain(error: BaseException) -> list[BaseException]:
    """The error and the errors it was raised from, outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {error.host}: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = "connection refused" if error.os_error.errno == errno.ECONNREFUSED else error.os_error.strerror
        return f"cannot connect to {error.host}:{error.port}: {reason or error.os_error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientPayloadError):
        return f"incomplete response: {text}"
    if isinstance(error, httpx.UnsupportedProtocol | aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return f"unsupported address: {text}"
    return text
