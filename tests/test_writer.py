"""Polls written in batches: one transaction for several feeds, each feed still all or nothing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aggregator.exceptions import StorageError
from aggregator.parse import keyed
from aggregator.storage import Store
from aggregator.storage.store import WAL_CHECKPOINT_PAGES, FeedWrite, StoreCounts
from aggregator.types import FeedConfig, FetchResult, ParsedEntry, ParsedFeed
from aggregator.writer import CACHE_MIB, StoreWriter

NOW = "2026-11-20T10:00:00Z"
LATER = "2026-11-20T10:30:00Z"
A, B, UNKNOWN = "http://a.test/feed", "http://b.test/feed", "http://unknown.test/feed"


def write(url: str, *guids: str) -> FeedWrite:
    entries = tuple(
        keyed(ParsedEntry(guid=g, link=f"{url}/{g}", title=f"Eintrag {g}", author=None, published=None,
                          updated=None, summary=None, content=None))
        for g in guids
    )
    return FeedWrite(url, ParsedFeed("Feed", None, None, entries), FetchResult(url, url, 200, {"etag": '"1"'}), NOW, LATER)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "agg.db") as store:
        store.sync_feeds([FeedConfig(A), FeedConfig(B)], NOW)
        yield store


def guids(store: Store) -> set[tuple[str, str]]:
    return set(store.db.execute("SELECT feed_url, guid FROM entries").fetchall())


def test_a_feed_that_cannot_be_stored_is_rolled_back_alone(store: Store) -> None:
    """A feed the store does not know (entries.feed_url must name a feed) fails; the feeds around it commit."""
    outcomes = store.store_feeds([write(A, "1", "2"), write(UNKNOWN, "x"), write(B, "3")])
    assert [type(o) for o in outcomes] == [StoreCounts, StorageError, StoreCounts]
    assert "unknown.test" in str(outcomes[1])
    assert guids(store) == {(A, "1"), (A, "2"), (B, "3")}
    assert store.scalar("SELECT etag FROM feeds WHERE url = ?", [B]) == '"1"'
    assert not store.db.conn.in_transaction


def test_writer_stores_waiting_polls_in_one_transaction(store: Store) -> None:
    commits: list[int] = []
    store.db.conn.set_trace_callback(lambda sql: commits.append(1) if sql.strip().upper() == "COMMIT" else None)

    async def main() -> list[StoreCounts | BaseException]:
        writer = StoreWriter(store, max_feeds=10, delay=0.05)
        return await asyncio.gather(
            writer.store_feed(write(A, "1")), writer.store_feed(write(UNKNOWN, "x")), writer.store_feed(write(B, "2", "3")),
            return_exceptions=True,
        )

    first, failed, last = asyncio.run(main())
    assert (first.new, last.new) == (1, 2)
    assert isinstance(failed, StorageError)
    assert len(commits) == 1
    assert guids(store) == {(A, "1"), (B, "2"), (B, "3")}


def test_writer_flushes_when_the_batch_is_full(store: Store) -> None:
    async def main() -> tuple[bool, StoreCounts]:
        writer = StoreWriter(store, max_feeds=2, delay=60)
        pending = asyncio.ensure_future(writer.store_feed(write(A, "1")))
        await asyncio.sleep(0.01)
        waiting = not pending.done()
        counts = await writer.store_feed(write(B, "2"))
        await pending
        return waiting, counts

    waiting, counts = asyncio.run(main())
    assert waiting and counts.new == 1
    assert guids(store) == {(A, "1"), (B, "2")}


def test_threaded_writer_stores_on_its_own_thread_and_connection(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    settings: list[tuple[int, int]] = []
    real = Store.store_feeds

    def recording(self: Store, writes):
        threads.append(threading.current_thread().name)
        settings.append((self.scalar("PRAGMA cache_size"), self.scalar("PRAGMA wal_autocheckpoint"), self.scalar("PRAGMA temp_store")))
        return real(self, writes)

    async def main() -> list[StoreCounts | BaseException]:
        writer = StoreWriter(store, max_feeds=10, delay=0.01, threaded=True)
        try:
            return await asyncio.gather(
                writer.store_feed(write(A, "1")), writer.store_feed(write(UNKNOWN, "x")), writer.store_feed(write(B, "2")),
                return_exceptions=True,
            )
        finally:
            await writer.aclose()

    monkeypatch.setattr(Store, "store_feeds", recording)
    first, failed, last = asyncio.run(main())
    assert (first.new, last.new) == (1, 1) and isinstance(failed, StorageError)
    assert threads and all(name.startswith("store-writer") for name in threads)
    assert settings and all(s == (-1024 * CACHE_MIB, WAL_CHECKPOINT_PAGES, 2) for s in settings)  # a cache of its own
    assert store.scalar("PRAGMA cache_size") == -2000  # the loop's connection keeps SQLite's default
    assert store.scalar("PRAGMA temp_store") == 0  # and a large sort goes to a temporary file
    assert guids(store) == {(A, "1"), (B, "2")}


def test_a_closed_writer_refuses_instead_of_waiting(store: Store) -> None:
    async def main() -> None:
        writer = StoreWriter(store, threaded=True)
        await writer.store_feed(write(A, "1"))
        await writer.aclose()
        with pytest.raises(StorageError, match="closed"):
            await asyncio.wait_for(writer.store_feed(write(B, "2")), timeout=5)

    asyncio.run(main())
    assert guids(store) == {(A, "1")}
