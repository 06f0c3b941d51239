"""A process pool for CPU-bound stages (parsing), so they use every core and never stall the event loop."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from .parse import parse_feed
from .types import ParsedFeed

T = TypeVar("T")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class WorkerPool:
    """Runs pure functions in worker processes; ``workers=0`` runs them inline."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["aggregator.parse"])
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._executor

    async def run(self, func: Callable[..., T], *args: object) -> T:
        if self.workers == 0:
            return func(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), func, *args)

    async def parse(self, body: bytes, url: str, headers: Mapping[str, str]) -> ParsedFeed:
        return await self.run(parse_feed, body, url, dict(headers))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
