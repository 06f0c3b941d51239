"""Per-host politeness: a few requests at once to one host, and a host that asks for a pause gets it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from urllib.parse import urlsplit

from .timeutil import utcnow

MAX_WAIT_SECONDS = 10.0


class HostPaused(Exception):
    """The host asked to be left alone (429/503 with Retry-After) for longer than a pass waits."""

    def __init__(self, host: str, until: datetime) -> None:
        super().__init__(f"{host} asked for a pause until {until:%Y-%m-%d %H:%M:%S} UTC")
        self.host = host
        self.until = until


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


class HostGate:
    """At most ``per_host`` requests at once to each host; paused hosts wait or refuse."""

    def __init__(self, per_host: int, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self._slots: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(per_host))
        self._paused_until: dict[str, datetime] = {}
        self._max_wait = max_wait

    def pause(self, host: str, until: datetime) -> None:
        self._paused_until[host] = max(until, self._paused_until.get(host, until))

    def paused_until(self, host: str) -> datetime | None:
        until = self._paused_until.get(host)
        return until if until and until > utcnow() else None

    async def _wait_out_pause(self, host: str) -> None:
        while (until := self.paused_until(host)) is not None:
            wait = (until - utcnow()).total_seconds()
            if wait > self._max_wait:
                raise HostPaused(host, until)
            await asyncio.sleep(wait)

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        host = host_of(url)
        await self._wait_out_pause(host)
        async with self._slots[host]:
            await self._wait_out_pause(host)
            yield
