"""Polls written to the store in batches, off the event loop's thread.

Committing costs about as much for one feed as for a dozen: the pages of every index an entry
touches and a new full-text segment are written either way. So results wait a moment (at most
``delay``) for others and are stored together: one transaction, a savepoint per feed, so each
feed is still all or nothing.

With ``threaded`` the batches are written by a thread of their own, on a connection of its own,
one batch after another. SQLite does its work (most of it indexing words) without Python's lock,
so the event loop meanwhile keeps fetching and keeps the parse workers fed instead of waiting for
each commit. The transaction never waits for the network: a batch is written in one go.
Failed and unchanged polls (a row of ``feeds`` each) go the same way, so the event loop never
waits for SQLite's write lock while the writer holds it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .exceptions import StorageError
from .storage.store import FeedWrite, PollWrite, Store, StoreCounts

MAX_FEEDS = 16
CACHE_MIB = 8  # the writing connection's page cache: the indexes' pages stay in memory between batches
MAX_ENTRIES = 1500
DELAY = 0.05

Outcome = StoreCounts | StorageError
Batch = list[tuple[PollWrite, asyncio.Future[StoreCounts]]]


class StoreWriter:
    def __init__(
        self, store: Store, *, max_feeds: int = MAX_FEEDS, max_entries: int = MAX_ENTRIES, delay: float = DELAY,
        threaded: bool = False,
    ) -> None:
        self.store = store
        self.max_feeds = max_feeds
        self.max_entries = max_entries
        self.delay = delay
        self._pending: Batch = []
        self._entries = 0
        self._feeds = 0
        self._timer: asyncio.TimerHandle | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer") if threaded else None
        self._own: Store | None = None
        self._writing: set[asyncio.Future[list[Outcome]]] = set()
        self._closed = False

    async def store_feed(self, write: PollWrite) -> StoreCounts:
        """Store ``write`` with the next batch; raises StorageError when it could not be stored."""
        return await self.submit(write)

    def submit(self, write: PollWrite) -> asyncio.Future[StoreCounts]:
        """Queue ``write`` for the next batch; the future ends with its counts or its StorageError.

        A failed or unchanged poll (one row of ``feeds``) counts as one entry towards ``max_entries``
        and not towards ``max_feeds``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreCounts] = loop.create_future()
        if self._closed:
            future.set_exception(StorageError(f"{self.store.path}: the writer is closed; {write.url} was not stored"))
            return future
        self._pending.append((write, future))
        self._entries += len(write.parsed.entries) if isinstance(write, FeedWrite) else 1
        self._feeds += isinstance(write, FeedWrite)
        if self._feeds >= self.max_feeds or self._entries >= self.max_entries:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay, self.flush)
        return future

    def flush(self) -> None:
        """Write every waiting result now (in threaded mode: hand them to the writing thread)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._entries, self._feeds = self._pending, [], 0, 0
        if not batch:
            return
        writes = [write for write, _ in batch]
        if self._thread is None:
            _settle(batch, _stored(self.store, writes))
            return
        writing = asyncio.get_running_loop().run_in_executor(self._thread, self._store_apart, writes)
        self._writing.add(writing)
        writing.add_done_callback(lambda done: self._written(done, batch))

    async def drain(self) -> None:
        """Write what is waiting and wait until every batch is in the store."""
        self.flush()
        while self._writing:
            await asyncio.wait(set(self._writing))

    async def aclose(self) -> None:
        await self.drain()
        self._closed = True
        if self._thread is not None:
            if self._own is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._own.close)
            self._thread.shutdown(wait=True)

    def _store_apart(self, writes: list[PollWrite]) -> list[Outcome]:
        """In the writing thread: the batch through its own connection, with the store's dedup settings."""
        if self._own is None:
            self._own = Store.open(self.store.path, cache_mib=CACHE_MIB)
        self._own.dedup, self._own.dedup_opted_out = self.store.dedup, self.store.dedup_opted_out
        return _stored(self._own, writes)

    def _written(self, done: asyncio.Future[list[Outcome]], batch: Batch) -> None:
        self._writing.discard(done)
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            failure = error if isinstance(error, StorageError) else StorageError(f"{self.store.path}: write failed: {error}")
            _settle(batch, [failure] * len(batch))
            return
        _settle(batch, done.result())


def _stored(store: Store, writes: list[PollWrite]) -> list[Outcome]:
    try:
        return store.store_feeds(writes)
    except StorageError as e:
        return [e] * len(writes)


def _settle(batch: Batch, outcomes: list[Outcome]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, StorageError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
