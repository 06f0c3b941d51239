"""Content-Encoding decoding that never produces more than a bounded piece at a time.

A small compressed body can expand a thousandfold (gzip) or far more (brotli).
Decoding in pieces of about ``PIECE`` bytes (brotli may overshoot by a block) lets the caller count the
decompressed size and stop at its cap before a bomb can fill the memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import brotli

PIECE = 64 * 1024
ACCEPT_ENCODING = "gzip, deflate, br"


class DecodingFailed(ValueError):
    """The body is not valid in its declared encoding."""


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _Zlib:
    """gzip, or deflate with or without the zlib header (servers send both)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._inner = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._inner.decompress(data, PIECE)
        except zlib.error:
            if self._gzip or self._started:
                raise
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._inner.decompress(data, PIECE)
        self._started = True
        yield out
        while self._inner.unconsumed_tail:
            yield self._inner.decompress(self._inner.unconsumed_tail, PIECE)

    def finish(self) -> Iterator[bytes]:
        yield self._inner.flush(PIECE)


class _Brotli:
    def __init__(self) -> None:
        self._inner = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield self._inner.process(data, output_buffer_limit=PIECE)
        while not self._inner.can_accept_more_data():
            yield self._inner.process(b"", output_buffer_limit=PIECE)

    def finish(self) -> Iterator[bytes]:
        while not self._inner.is_finished():
            piece = self._inner.process(b"", output_buffer_limit=PIECE)
            if not piece:
                return
            yield piece


_DECODERS = {"gzip": lambda: _Zlib(True), "x-gzip": lambda: _Zlib(True), "deflate": lambda: _Zlib(False), "br": _Brotli}


class Decoder:
    """Decodes a body in the order its ``Content-Encoding`` lists, piece by piece."""

    def __init__(self, content_encoding: str | None) -> None:
        names = [n.strip().lower() for n in (content_encoding or "").split(",") if n.strip() and n.strip() != "identity"]
        unknown = [n for n in names if n not in _DECODERS]
        if unknown:
            raise DecodingFailed(f"unsupported content encoding {unknown[0]!r}")
        self._stages = [_DECODERS[name]() for name in reversed(names)] or [_Identity()]

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield from self._through(0, data)

    def finish(self) -> Iterator[bytes]:
        try:
            for index, stage in enumerate(self._stages):
                for piece in stage.finish():
                    yield from self._through(index + 1, piece)
        except (zlib.error, brotli.error) as e:
            raise DecodingFailed(f"invalid compressed response: {e}") from e

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self._stages):
            if data:
                yield data
            return
        try:
            for piece in self._stages[index].feed(data):
                yield from self._through(index + 1, piece)
        except (zlib.error, brotli.error) as e:
            raise DecodingFailed(f"invalid compressed response: {e}") from e
