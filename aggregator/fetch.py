"""HTTP fetching: the only module that talks to the network.

One :class:`Fetcher` per pass wraps an ``httpx.AsyncClient`` whose connections
go through :class:`GuardedBackend`, so the private-address rule is checked on
the address actually connected to, for every hop of every redirect.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from .exceptions import FetchError, RefusedAddressError
from .netguard import refusal
from .types import FetchResult

FEED_MAX_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5
FEED_ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, "
    "application/feed+json;q=0.9, application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
_PERMANENT = (301, 308)
_REDIRECT = (301, 302, 303, 307, 308)


class AddressRefused(OSError):
    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host} ({address}): {reason}")
        self.reason = reason


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves names itself and connects only to addresses the guard allows."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        allowed = [a for a in addresses if refusal(a, allow_private=self._allow_private) is None]
        if not allowed:
            first = addresses[0]
            raise AddressRefused(host, first, refusal(first, allow_private=self._allow_private) or "")
        error: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as e:
                error = e
        assert error is not None
        raise error

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise httpcore.ConnectError(f"cannot resolve {host}: {e.strerror or e}") from e
    return list(dict.fromkeys(info[4][0] for info in infos))


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, *, allow_private: bool, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, retries=0)
        ssl_context = self._pool._ssl_context
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow_private=allow_private),
        )


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 20.0
    user_agent: str = "aggregator"
    allow_private: bool = False
    max_connections: int = 64


class Fetcher:
    """Fetches URLs with conditional GET, redirects, a size cap and a whole-request timeout."""

    def __init__(self, settings: FetchSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow_private=settings.allow_private, limits=limits),
            headers={"User-Agent": settings.user_agent},
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
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._follow(url, headers, max_bytes)
        except TimeoutError as e:
            raise FetchError(url, f"timed out after {self.settings.timeout:g}s") from e
        except AddressRefused as e:
            raise RefusedAddressError(url, _refusal_message(e, self.settings.allow_private)) from e
        except httpx.TimeoutException as e:
            raise FetchError(url, f"timed out after {self.settings.timeout:g}s") from e
        except httpx.DecodingError as e:
            raise FetchError(url, f"invalid compressed response: {e}") from e
        except (httpx.HTTPError, httpx.InvalidURL, httpcore.ConnectError) as e:
            raise FetchError(url, _describe(e)) from e

    async def _follow(self, url: str, headers: dict[str, str], max_bytes: int) -> FetchResult:
        current, permanent = url, None
        all_permanent = True
        for _ in range(MAX_REDIRECTS + 1):
            request = self._client.build_request("GET", current, headers=headers)
            response = await self._client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT and location:
                    target = str(response.url.join(location))
                    all_permanent = all_permanent and response.status_code in _PERMANENT
                    permanent = target if all_permanent else permanent
                    current = target
                    continue
                return await self._complete(url, response, max_bytes, permanent)
            finally:
                await response.aclose()
        raise FetchError(url, f"too many redirects (more than {MAX_REDIRECTS})")

    async def _complete(
        self, url: str, response: httpx.Response, max_bytes: int, permanent: str | None
    ) -> FetchResult:
        status = response.status_code
        if status >= 400:
            raise FetchError(
                url, _status_message(response), status=status, retry_after=response.headers.get("retry-after")
            )
        body = b"" if status == 304 else await _read_capped(url, response, max_bytes)
        return FetchResult(
            url=url,
            final_url=str(response.url),
            status=status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=body,
            permanent_redirect=permanent,
        )


async def _read_capped(url: str, response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(url, f"response too large: {int(declared):,} bytes (limit {max_bytes:,})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(url, f"response too large: over {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal_message(error: AddressRefused, allow_private: bool) -> str:
    if allow_private or error.reason not in ("a loopback address", "a private address"):
        return str(error)
    return f"{error}; set allow_private_addresses = true to allow it"


def _status_message(response: httpx.Response) -> str:
    reason = response.reason_phrase or ""
    return f"HTTP {response.status_code} {reason}".strip()


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError | httpcore.ConnectError):
        return f"cannot connect: {text}"
    if isinstance(error, httpx.UnsupportedProtocol):
        return f"unsupported address: {text}"
    return text
