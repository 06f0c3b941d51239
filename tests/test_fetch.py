"""aggregator.fetch.Fetcher against the real fixture HTTP server, plus the address guard."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from typing import Any

import httpx
import pytest
from server import FixtureServer

from aggregator.exceptions import FetchError, RefusedAddressError
from aggregator.fetch import FEED_ACCEPT, Fetcher, FetchSettings
from aggregator.netguard import refusal
from aggregator.types import FetchResult

FEED = b"<?xml version='1.0'?><rss version='2.0'><channel><title>t</title></channel></rss>"
AGENT = "aggregator-tests/9.9 (+http://127.0.0.1/about)"
STAMP = "Wed, 04 Nov 2026 10:00:00 GMT"


def fetch(url: str, *, timeout: float = 2.0, allow_private: bool = True, **kwargs: Any) -> FetchResult:
    settings = FetchSettings(timeout=timeout, allow_private=allow_private, user_agent=AGENT)

    async def go() -> FetchResult:
        async with Fetcher(settings) as fetcher:
            return await fetcher.fetch(url, **kwargs)

    return asyncio.run(go())


def fetch_error(url: str, error: type[FetchError] = FetchError, **kwargs: Any) -> FetchError:
    with pytest.raises(error) as info:
        fetch(url, **kwargs)
    return info.value


# --- plain 200 --------------------------------------------------------------------------


def test_200_returns_body_status_and_headers(http: FixtureServer, data_dir) -> None:
    result = fetch(http.url("/rss2_basic.xml"))
    assert result.status == 200
    assert result.body == (data_dir / "rss2_basic.xml").read_bytes()
    assert result.final_url == http.url("/rss2_basic.xml")
    assert result.permanent_redirect is None
    assert not result.not_modified
    assert result.headers["content-type"] == "application/xml"


def test_sends_configured_user_agent_and_feed_accept(http: FixtureServer) -> None:
    http.route("/feed", body=FEED)
    fetch(http.url("/feed"))
    request = http.last_request("/feed")
    assert request is not None
    assert request.headers["User-Agent"] == AGENT
    accept = request.headers["Accept"]
    assert accept == FEED_ACCEPT
    ranked = [part.strip().split(";")[0] for part in accept.split(",")]
    # feed types come first; generic XML and the catch-all only after them
    assert ranked[:2] == ["application/atom+xml", "application/rss+xml"]
    assert ranked.index("application/xml") > ranked.index("application/rss+xml")
    assert ranked[-1] == "*/*" and "q=" in accept.split(",")[-1]
    # no conditional headers on an unconditional fetch
    assert "If-None-Match" not in request.headers
    assert "If-Modified-Since" not in request.headers


# --- conditional GET --------------------------------------------------------------------


def test_if_none_match_sent_and_304_is_not_modified(http: FixtureServer) -> None:
    http.route("/feed", body=FEED, etag='"v7"')
    first = fetch(http.url("/feed"))
    assert first.headers["etag"] == '"v7"'
    result = fetch(http.url("/feed"), etag='"v7"')
    assert http.last_request("/feed").headers["If-None-Match"] == '"v7"'
    assert result.status == 304
    assert result.not_modified
    assert result.body == b""


def test_if_modified_since_sent_and_304_is_not_modified(http: FixtureServer) -> None:
    http.route("/feed", body=FEED, last_modified=STAMP)
    result = fetch(http.url("/feed"), last_modified=STAMP)
    request = http.last_request("/feed")
    assert request.headers["If-Modified-Since"] == STAMP
    assert "If-None-Match" not in request.headers
    assert result.not_modified and result.body == b""


def test_stale_etag_gets_full_body(http: FixtureServer) -> None:
    http.route("/feed", body=FEED, etag='"v2"')
    result = fetch(http.url("/feed"), etag='"v1"')
    assert http.last_request("/feed").headers["If-None-Match"] == '"v1"'
    assert result.status == 200 and result.body == FEED


# --- redirects --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 308])
def test_permanent_redirect_is_reported(http: FixtureServer, status: int) -> None:
    http.route("/old", redirect="/new", status=status)
    http.route("/new", body=FEED)
    result = fetch(http.url("/old"))
    assert result.status == 200
    assert result.body == FEED
    assert result.final_url == http.url("/new")
    assert result.permanent_redirect == http.url("/new")
    assert result.url == http.url("/old")


def test_a_cookie_set_on_the_way_is_sent_after_the_redirect(http: FixtureServer, monkeypatch) -> None:
    """Sites that set a cookie and redirect (consent pages) still get it back; answers without
    Set-Cookie are not handed to the cookie jar at all (it costs more than the rest of a 304)."""
    from http import cookiejar

    parsed: list[str] = []
    real = cookiejar.CookieJar.extract_cookies

    def counting(self, response, request):
        parsed.append(request.get_full_url())
        return real(self, response, request)

    monkeypatch.setattr(cookiejar.CookieJar, "extract_cookies", counting)

    async def no_send(*args, **kwargs):
        raise AssertionError("requests go through the transport, without the client's auth and hook machinery")

    monkeypatch.setattr(httpx.AsyncClient, "send", no_send)
    http.route("/consent", redirect="/feed-c", status=302, headers={"Set-Cookie": "consent=yes; Path=/"})
    http.route("/feed-c", body=FEED)
    result = fetch(http.url("/consent"))
    assert result.body == FEED
    request = http.last_request("/feed-c")
    assert request is not None and request.headers.get("Cookie") == "consent=yes"
    assert parsed == [http.url("/consent")]


@pytest.mark.parametrize("status", [302, 303, 307])
def test_temporary_redirect_is_followed_but_not_permanent(http: FixtureServer, status: int) -> None:
    http.route("/old", redirect="/new", status=status)
    http.route("/new", body=FEED)
    result = fetch(http.url("/old"))
    assert result.body == FEED
    assert result.final_url == http.url("/new")
    assert result.permanent_redirect is None


def test_permanent_chain_reports_final_target(http: FixtureServer) -> None:
    http.route("/a", redirect="/b", status=301)
    http.route("/b", redirect="/c", status=308)
    http.route("/c", body=FEED)
    result = fetch(http.url("/a"))
    assert result.permanent_redirect == http.url("/c")
    assert result.final_url == http.url("/c")


def test_permanent_then_temporary_chain_moves_to_the_end_of_the_permanent_part(http: FixtureServer) -> None:
    """301 /a -> /b then 302 /b -> /c: the feed now lives at /b, which itself redirects for now."""
    http.route("/a", redirect="/b", status=301)
    http.route("/b", redirect="/c", status=302)
    http.route("/c", body=FEED)
    result = fetch(http.url("/a"))
    assert result.body == FEED
    assert result.final_url == http.url("/c")
    assert result.permanent_redirect == http.url("/b")


def test_temporary_then_permanent_chain_is_not_permanent(http: FixtureServer) -> None:
    http.route("/a", redirect="/b", status=302)
    http.route("/b", redirect="/c", status=301)
    http.route("/c", body=FEED)
    assert fetch(http.url("/a")).permanent_redirect is None


def test_redirect_loop_is_too_many_redirects(http: FixtureServer) -> None:
    http.route("/loop", redirect="/loop", status=302)
    error = fetch_error(http.url("/loop"))
    assert "too many redirects" in str(error)
    assert http.hits("/loop") == 6  # the first request plus five followed hops, then it stops


def test_five_redirects_are_followed_six_are_too_many(http: FixtureServer) -> None:
    for hop in range(6):
        http.route(f"/h{hop}", redirect=f"/h{hop + 1}", status=302)
    http.route("/h6", body=FEED)
    assert fetch(http.url("/h1")).body == FEED  # h1 → … → h6: five redirects
    error = fetch_error(http.url("/h0"))  # six redirects
    assert "too many redirects" in str(error)
    assert error.url == http.url("/h0")


# --- compression and size cap ---------------------------------------------------------------


def test_gzip_response_is_decompressed(http: FixtureServer, data_dir) -> None:
    original = (data_dir / "rss2_basic.xml").read_bytes()
    http.route("/feed", file="rss2_basic.xml", gzip=True)
    result = fetch(http.url("/feed"))
    assert "gzip" in http.last_request("/feed").headers["Accept-Encoding"]
    assert result.headers.get("content-encoding") == "gzip"  # it really was compressed on the wire
    assert result.body == original


def test_declared_content_length_over_cap_is_refused(http: FixtureServer) -> None:
    http.route("/big", body=b"x" * 5000)
    error = fetch_error(http.url("/big"), max_bytes=4096)
    assert "too large" in str(error)


def test_body_just_under_cap_is_accepted(http: FixtureServer) -> None:
    http.route("/ok", body=b"x" * 4096)
    assert len(fetch(http.url("/ok"), max_bytes=4096).body) == 4096


def test_gzip_bomb_over_cap_after_decompression_is_refused(http: FixtureServer) -> None:
    payload = b"<rss>" + b" " * (3 * 1024 * 1024) + b"</rss>"
    assert len(gzip.compress(payload)) < 64 * 1024  # small on the wire …
    http.route("/bomb", body=payload, gzip=True)
    started = time.monotonic()
    error = fetch_error(http.url("/bomb"), max_bytes=1024 * 1024)  # … but 3 MiB decompressed
    assert "too large" in str(error)
    assert time.monotonic() - started < 2


# --- timeouts ---------------------------------------------------------------------------


def test_timeout_bounds_whole_request_against_slow_drip(http: FixtureServer) -> None:
    # 10 bytes every 0.3 s for ~5 s: every gap is far below the timeout, the whole is not
    http.route("/drip", body=b"x" * 170, drip=(10, 0.3))
    started = time.monotonic()
    error = fetch_error(http.url("/drip"), timeout=1)
    elapsed = time.monotonic() - started
    assert "timed out" in str(error)
    assert elapsed < 2.0


def test_timeout_on_slow_headers(http: FixtureServer) -> None:
    http.route("/slow", body=FEED, delay=2.5)
    started = time.monotonic()
    error = fetch_error(http.url("/slow"), timeout=0.5)
    assert "timed out" in str(error)
    assert time.monotonic() - started < 1.5


# --- HTTP errors --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410, 500, 502])
def test_error_status_is_fetch_error_with_status(http: FixtureServer, status: int) -> None:
    http.route("/err", body=b"nope", status=status)
    error = fetch_error(http.url("/err"))
    assert error.status == status
    assert str(status) in str(error)
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, "120"), (503, "Wed, 04 Nov 2026 10:00:00 GMT")]
)
def test_retry_after_is_carried(http: FixtureServer, status: int, retry_after: str) -> None:
    http.route("/busy", body=b"slow down", status=status, headers={"Retry-After": retry_after})
    error = fetch_error(http.url("/busy"))
    assert error.status == status
    assert error.retry_after == retry_after
    assert str(status) in str(error)


def test_connection_refused_is_fetch_error(http: FixtureServer) -> None:
    import socket

    with socket.socket() as sock:  # a port that was just free and now is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/feed")
    assert not isinstance(error, RefusedAddressError)
    assert "connect" in str(error)


# --- private-address guard ------------------------------------------------------------------


def test_loopback_refused_without_allow_private_and_no_request_made(http: FixtureServer) -> None:
    http.route("/feed", body=FEED)
    error = fetch_error(http.url("/feed"), RefusedAddressError, allow_private=False)
    assert "127.0.0.1" in str(error)
    assert "loopback" in str(error)
    assert "allow_private_addresses" in str(error)
    assert http.hits("/feed") == 0
    assert http.requests == []


def test_localhost_name_refused_without_allow_private(http: FixtureServer) -> None:
    http.route("/feed", body=FEED)
    error = fetch_error(f"http://localhost:{http.port}/feed", RefusedAddressError, allow_private=False)
    assert "localhost" in str(error)
    assert http.requests == []


def test_ipv4_mapped_loopback_refused_without_allow_private(http: FixtureServer) -> None:
    http.route("/feed", body=FEED)
    fetch_error(f"http://[::ffff:127.0.0.1]:{http.port}/feed", RefusedAddressError, allow_private=False)
    assert http.requests == []


def test_loopback_allowed_with_allow_private(http: FixtureServer) -> None:
    http.route("/feed", body=FEED)
    assert fetch(f"http://localhost:{http.port}/feed").body == FEED
    assert http.hits("/feed") == 1


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x", "http://[::ffff:169.254.169.254]/"],
)
def test_redirect_to_metadata_or_link_local_refused_even_when_private_allowed(
    http: FixtureServer, target: str
) -> None:
    http.route("/go", redirect=target, status=302)
    started = time.monotonic()
    error = fetch_error(http.url("/go"), RefusedAddressError, timeout=2)
    # refused before any connection attempt: no waiting for a connect timeout
    assert time.monotonic() - started < 1.0
    assert "metadata" in str(error) or "link-local" in str(error)
    assert http.hits("/go") == 1


def test_direct_metadata_address_refused(http: FixtureServer) -> None:
    error = fetch_error("http://169.254.169.254/latest/meta-data/", RefusedAddressError)
    assert "metadata" in str(error)


# --- netguard.refusal -------------------------------------------------------------------------

GLOBAL_V4 = "203.0.114.7"  # a global unicast address; only ever passed to the pure function
GLOBAL_V6 = "2a00:1:2::3"


@pytest.mark.parametrize("address", [GLOBAL_V4, GLOBAL_V6, f"::ffff:{GLOBAL_V4}"])
@pytest.mark.parametrize("allow_private", [False, True])
def test_refusal_allows_global_unicast(address: str, allow_private: bool) -> None:
    assert refusal(address, allow_private=allow_private) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.178.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT
        ("192.0.2.10", "private"),  # documentation range: not global
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:192.168.0.1", "private"),
    ],
)
def test_refusal_private_only_without_allow_private(address: str, reason: str) -> None:
    why = refusal(address, allow_private=False)
    assert why is not None and reason in why
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:a9fe:a9fe::", "metadata"),  # 6to4 wrapping 169.254.169.254
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:169.254.7.7", "link-local"),
        ("0.0.0.0", "unicast"),
        ("::", "unicast"),
        ("224.0.0.1", "unicast"),
        ("ff02::1", "unicast"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_refusal_always_refused(address: str, reason: str, allow_private: bool) -> None:
    why = refusal(address, allow_private=allow_private)
    assert why is not None and reason in why


def test_refusal_teredo_unwraps_to_client_address() -> None:
    # Teredo (2001:0::/32) carrying the client address 169.254.169.254, obfuscated by xor 0xffffffff
    teredo_metadata = "2001:0:4136:e378:8000:63bf:5601:5601"
    why = refusal(teredo_metadata, allow_private=True)
    assert why is not None and "metadata" in why


def test_one_tls_context_per_process(monkeypatch) -> None:
    """Loading the CA bundle costs more than a hundred 304s: it is loaded once, in a thread, and every
    fetcher's transport and connections use that context."""
    import ssl

    from aggregator import fetch

    made: list[str] = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        made.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.setattr(fetch, "_tls", None)
    fetch.preload_tls()
    first = Fetcher(FetchSettings(timeout=1.0, allow_private=True, user_agent=AGENT))
    second = Fetcher(FetchSettings(timeout=1.0, allow_private=True, user_agent=AGENT))
    assert made == ["tls-context"]
    context = fetch.tls_context()
    assert first._client._transport.ssl_context is context and second._client._transport.ssl_context is context
