"""A process pool for the CPU-bound stages (feed parsing, article extraction).

They use every core and never stall the event loop. Each task has a time
limit: a page that makes a worker hang or crash costs that task alone, the
worker is replaced and the pass goes on (pebble kills and restarts it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from pebble import ProcessExpired, ProcessPool

from .parse import parse_feed
from .types import ParsedFeed

from .extract import Article, extract_article

T = TypeVar("T")

PARSE_TIME_LIMIT = 60.0
EXTRACT_TIME_LIMIT = 30.0


class TaskTimedOut(Exception):
    """A task ran past its time limit; its worker was stopped."""


class WorkerCrashed(Exception):
    """A worker process died while running a task."""


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class WorkerPool:
    """Runs pure functions in worker processes, started on first use; ``inline`` runs one in this process."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPool | None = None

    def _processes(self) -> ProcessPool:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["aggregator.workers"])
            self._pool = ProcessPool(max_workers=self.workers, context=context)
        return self._pool

    async def run(self, func: Callable[..., T], *args: object, time_limit: float, inline: bool = False) -> T:
        if inline:
            return func(*args)
        future = self._processes().schedule(func, args=args, timeout=time_limit)
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.TimeoutError as e:
            raise TaskTimedOut(f"gave up after the {time_limit:g}s time limit") from e
        except ProcessExpired as e:
            raise WorkerCrashed(f"the worker process died (exit code {e.exitcode})") from e
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def parse(self, body: bytes, url: str, headers: Mapping[str, str], *, inline: bool = False) -> ParsedFeed:
        return await self.run(parse_feed, body, url, dict(headers), time_limit=PARSE_TIME_LIMIT, inline=inline)

    async def extract(self, body: bytes, url: str, content_type: str | None, time_limit: float) -> Article:
        return await self.run(extract_article, body, url, content_type, time_limit=time_limit)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
