from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
from test_fetch import fetch, fetch_error

from aggregator.decoding import PIECE, Decoder, DecodingFailed
from aggregator.exceptions import FetchError, TooLargeError

TEXT = ("Grüße aus Köln – »Brücke« " * 4000).encode("utf-8")


def decode(data: bytes, encoding: str | None, chunk: int = 1000) -> bytes:
    decoder = Decoder(encoding)
    pieces = [p for start in range(0, len(data), chunk) for p in decoder.feed(data[start : start + chunk])]
    return b"".join([*pieces, *decoder.finish()])


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),
        ("br", brotli.compress),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_round_trips(encoding, encode):
    assert decode(encode(TEXT), encoding) == TEXT


def test_pieces_are_bounded():
    bomb = brotli.compress(b"\0" * (8 * 1024 * 1024))
    decoder = Decoder("br")
    assert max(len(p) for p in [*decoder.feed(bomb), *decoder.finish()]) <= 2 * PIECE


def test_garbage_and_unknown_encodings_fail_clearly():
    with pytest.raises(DecodingFailed, match="invalid compressed"):
        decode(b"not gzip at all", "gzip")
    with pytest.raises(DecodingFailed, match="unsupported content encoding 'zstd'"):
        Decoder("zstd")


@pytest.mark.parametrize(("encoding", "compress"), [("br", brotli.compress), ("gzip", gzip.compress)])
def test_bombs_stop_at_the_cap_without_filling_memory(http, encoding, compress):
    bomb = compress(b"\0" * (200 * 1024 * 1024))
    http.route("/bomb.xml", body=bomb, headers={"Content-Encoding": encoding}, content_type="application/xml")
    tracemalloc.start()
    try:
        error = fetch_error(http.url("/bomb.xml"), TooLargeError, max_bytes=1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "once decompressed" in str(error)
    assert peak < 16 * 1024 * 1024, peak


def test_brotli_body_is_decoded(http):
    http.route("/br.xml", body=brotli.compress(TEXT), headers={"Content-Encoding": "br"}, content_type="application/xml")
    assert fetch(http.url("/br.xml")).body == TEXT
    assert "br" in http.last_request("/br.xml").headers["Accept-Encoding"]


def test_corrupt_compressed_body_is_a_fetch_error(http):
    http.route("/bad.xml", body=b"\x1f\x8b\x08garbage", headers={"Content-Encoding": "gzip"})
    assert "invalid compressed" in str(fetch_error(http.url("/bad.xml"), FetchError))
