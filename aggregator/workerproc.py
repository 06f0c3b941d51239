"""The worker process of :mod:`.workers`: ``python -m aggregator.workerproc``.

It imports nothing but what reading and answering calls needs; a call's function brings its own
module (feed parsing, article extraction) when it is first unpickled, so a worker starts in a
fraction of the time the whole pool module with asyncio would take. With ``--preload`` (started by
:func:`.launch.prestart`) it loads the parsing stack at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import sys
from typing import BinaryIO

HEADER = 8
BIG_CALL = 4 * 1024 * 1024  # a call with a request or reply this large: give the freed memory back after it
INLINE_PARSE_BELOW = 4  # a pass over fewer feeds parses them in its own process
PRELOAD = ("aggregator.parse", "aggregator.similarity")  # what parsing a feed imports: feedparser, nh3, numpy


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: one pickled ``(func, args)`` in, one pickled ``(ok, value)`` out."""
    while header := requests.read(HEADER):
        size = int.from_bytes(header, "big")
        request = requests.read(size)
        func, args = pickle.loads(request)
        del request  # a feed's body is not kept twice while it is parsed
        try:
            reply = pickle.dumps((True, func(*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - the caller gets the error
            reply = _error_reply(e)
        replies.write(len(reply).to_bytes(HEADER, "big"))
        replies.write(reply)  # not concatenated: a 15 MB reply is not copied
        replies.flush()
        if max(size, len(reply)) >= BIG_CALL:
            del func, args, reply
            release_memory()


def release_memory() -> None:
    """Hand memory freed by a large job back to the system (glibc keeps it for reuse otherwise, and a
    10,000-item feed leaves a worker tens of MB larger for the rest of its life)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return
    trim(0)


def _error_reply(error: Exception) -> bytes:
    try:
        return pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an error that cannot be pickled still reaches the caller as text
        return pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {error}")))


def _preload() -> None:
    """Import what parsing a feed needs before the first call; a module that fails to import fails that call instead."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _main() -> None:
    if "--preload" in sys.argv[1:]:
        _preload()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    _main()
