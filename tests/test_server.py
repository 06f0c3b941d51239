from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server import FixtureServer

FEED = "<?xml version='1.0'?><rss version='2.0'><channel><title>t</title></channel></rss>"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, follow_redirects=False) as c:
        yield c


def test_base_url_is_loopback(http: FixtureServer) -> None:
    assert http.base_url.startswith("http://127.0.0.1:")
    assert http.url("/a") == http.base_url + "/a"


def test_serves_data_files_with_guessed_type(http: FixtureServer, client: httpx.Client, data_dir: Path) -> None:
    response = client.get(http.url("/rss2_basic.xml"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/xml"
    assert response.content == (data_dir / "rss2_basic.xml").read_bytes()


def test_unknown_path_is_404(http: FixtureServer, client: httpx.Client) -> None:
    assert client.get(http.url("/nope.xml")).status_code == 404
    assert client.get(http.url("/../conftest.py")).status_code == 404


def test_route_body_status_headers(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", body="grüße", status=203, content_type="text/plain; charset=utf-8", headers={"X-Test": "1"})
    response = client.get(http.url("/feed"))
    assert response.status_code == 203
    assert response.text == "grüße"
    assert response.headers["x-test"] == "1"
    assert response.headers["content-length"] == str(len("grüße".encode()))


def test_route_file_and_swap(http: FixtureServer, client: httpx.Client, data_dir: Path) -> None:
    http.route("/feed", file="rss2_basic.xml")
    assert client.get(http.url("/feed")).content == (data_dir / "rss2_basic.xml").read_bytes()
    http.route("/feed", file="rss2_changed.xml")
    assert client.get(http.url("/feed")).content == (data_dir / "rss2_changed.xml").read_bytes()


def test_missing_route_file_is_500(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", file="does-not-exist.xml")
    assert client.get(http.url("/feed")).status_code == 500


def test_etag_conditional(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", body=FEED, etag='"v1"')
    first = client.get(http.url("/feed"))
    assert first.headers["etag"] == '"v1"'
    second = client.get(http.url("/feed"), headers={"If-None-Match": '"v1"'})
    assert second.status_code == 304
    assert second.content == b""
    assert client.get(http.url("/feed"), headers={"If-None-Match": '"v0"'}).status_code == 200
    assert http.requests[1].headers["if-none-match"] == '"v1"'


def test_last_modified_conditional(http: FixtureServer, client: httpx.Client) -> None:
    stamp = "Wed, 04 Nov 2026 10:00:00 GMT"
    http.route("/feed", body=FEED, last_modified=stamp)
    assert client.get(http.url("/feed")).headers["last-modified"] == stamp
    assert client.get(http.url("/feed"), headers={"If-Modified-Since": stamp}).status_code == 304
    older = "Tue, 03 Nov 2026 10:00:00 GMT"
    assert client.get(http.url("/feed"), headers={"If-Modified-Since": older}).status_code == 200


def test_redirect_defaults_to_301(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/old", redirect="/new")
    http.route("/new", body=FEED, content_type="application/rss+xml")
    response = client.get(http.url("/old"))
    assert response.status_code == 301
    assert response.headers["location"] == "/new"
    followed = client.get(http.url("/old"), follow_redirects=True)
    assert followed.status_code == 200
    assert str(followed.url) == http.url("/new")


def test_redirect_custom_status(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/temp", redirect=http.url("/x"), status=307)
    response = client.get(http.url("/temp"))
    assert response.status_code == 307
    assert response.headers["location"] == http.url("/x")


def test_gzip_when_accepted(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", body=FEED, gzip=True)
    response = client.get(http.url("/feed"))
    assert response.headers["content-encoding"] == "gzip"
    assert response.text == FEED
    plain = client.get(http.url("/feed"), headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.text == FEED


def test_gzip_body_is_really_compressed(http: FixtureServer) -> None:
    http.route("/feed", body=FEED, gzip=True)
    with httpx.Client(timeout=5) as c, c.stream("GET", http.url("/feed")) as response:
        raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw) == FEED.encode()


def test_delay(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/slow", body="ok", delay=0.3)
    started = time.monotonic()
    assert client.get(http.url("/slow")).text == "ok"
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        client.get(http.url("/slow"), timeout=0.05)


def test_drip(http: FixtureServer, client: httpx.Client) -> None:
    body = "x" * 40
    http.route("/drip", body=body, drip=(10, 0.1))
    started = time.monotonic()
    response = client.get(http.url("/drip"))
    assert response.text == body
    assert response.headers["content-length"] == "40"
    assert time.monotonic() - started >= 0.3


def test_head(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", body=FEED, etag='"h"')
    response = client.head(http.url("/feed"))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(FEED))
    assert http.requests[-1].method == "HEAD"


def test_records_requests_and_hits(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/feed", body=FEED)
    client.get(http.url("/feed"), headers={"User-Agent": "agg-test"})
    client.get(http.url("/feed?page=2"))
    assert http.hits("/feed") == 1
    assert http.hits("/feed?page=2") == 1
    assert http.hits("/feed", prefix=True) == 2
    assert http.requests[0].headers["USER-AGENT"] == "agg-test"
    assert http.requests[1].path == "/feed?page=2"
    http.reset()
    assert http.requests == []
    assert client.get(http.url("/feed")).status_code == 404


def test_keep_alive_reuses_connection(http: FixtureServer) -> None:
    http.route("/a", body="1")
    with socket.create_connection(("127.0.0.1", http.port), timeout=5) as sock:
        request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request + request)
        data = b""
        while data.count(b"\r\n\r\n1") < 2:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2
    assert http.hits("/a") == 2


def test_client_disconnect_mid_drip_is_harmless(http: FixtureServer, client: httpx.Client) -> None:
    http.route("/drip", body="y" * 100, drip=(1, 0.01))
    with socket.create_connection(("127.0.0.1", http.port), timeout=5) as sock:
        sock.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(64)
    http.route("/after", body="fine")
    assert client.get(http.url("/after")).text == "fine"


def test_concurrent_requests(http: FixtureServer) -> None:
    http.route("/slow", body="ok", delay=0.3)
    results: list[int] = []

    def fetch() -> None:
        results.append(httpx.get(http.url("/slow"), timeout=5).status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=fetch) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 5
    assert time.monotonic() - started < 1.2


def test_stop_is_fast_with_idle_keep_alive(data_dir: Path) -> None:
    fixture = FixtureServer(data_dir)
    fixture.start()
    fixture.route("/a", body="1")
    idle = httpx.Client(timeout=5)
    assert idle.get(fixture.url("/a")).text == "1"
    started = time.monotonic()
    fixture.stop()
    assert time.monotonic() - started < 1.0
    idle.close()
