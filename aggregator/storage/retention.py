"""Pruning entries past their feed's retention, in small transactions of their own.

An entry dated before its feed's cutoff is deleted, with its full-text row (trigger) and its
near-duplicate bands, unless other entries point at it as their story's original: an original
stays while a duplicate of it does. Each pruned entry leaves a tombstone, ``(feed_url, guid)`` in
``pruned_entries``, so a feed that still lists it does not bring it back as new; the tombstone
goes once the feed no longer lists the entry, so there are never more than the feeds list.
Each batch is one short transaction: polls and readers wait for none long.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlite_utils import Database

from ..exceptions import StorageError
from ..retention import cutoffs, keeps_everything
from ..timeutil import iso
from ..types import Config, ParsedEntry
from .schema import ENTRY_DATE_SQL
from .transactions import immediate

BATCH = 500

log = logging.getLogger("aggregator.retention")

_EXPIRED = f"""
    WITH cutoffs(feed_url, cutoff) AS (SELECT key, value FROM json_each(:cutoffs))
    SELECT e.id FROM cutoffs c JOIN entries e ON e.feed_url = c.feed_url AND {ENTRY_DATE_SQL} < c.cutoff
    WHERE NOT EXISTS (SELECT 1 FROM entries d WHERE d.duplicate_of = e.id)
    LIMIT :limit
"""


def expired_cutoffs(db: Database, config: Config, now: datetime) -> dict[str, str]:
    """Every stored feed that prunes, with the time before which its entries go."""
    if keeps_everything(config):
        return {}
    return cutoffs(config, (row[0] for row in db.execute("SELECT url FROM feeds")), now)


def prune_batch(db: Database, feed_cutoffs: Mapping[str, str], now: str, limit: int = BATCH) -> int:
    """Prune at most ``limit`` expired entries in one transaction; how many went."""
    if not feed_cutoffs:
        return 0
    with _transaction(db):
        rows = db.execute(_EXPIRED, {"cutoffs": json.dumps(feed_cutoffs), "limit": limit}).fetchall()
        ids = json.dumps([row[0] for row in rows])
        if rows:
            _delete(db, ids, now)
    return len(rows)


def batches(db: Database, config: Config, now: datetime, limit: int = BATCH) -> Iterator[int]:
    """Prune every expired entry, ``limit`` per transaction, yielding how many went after each."""
    feed_cutoffs = expired_cutoffs(db, config, now)
    while count := prune_batch(db, feed_cutoffs, iso(now), limit):
        yield count


def prune(db: Database, config: Config, now: datetime, limit: int = BATCH) -> int:
    """Prune every expired entry; how many went.

    Housekeeping never fails a pass: a store too busy to prune now is pruned next time.
    """
    total = 0
    try:
        for count in batches(db, config, now, limit):
            total += count
    except StorageError as e:
        log.warning("%s; %d pruned, the rest next time", e, total)
    return total


def _delete(db: Database, ids: str, now: str) -> None:
    chosen = "SELECT value FROM json_each(?)"
    db.conn.execute(
        f"""INSERT INTO pruned_entries (feed_url, guid, pruned_at) SELECT feed_url, guid, ? FROM entries
        WHERE id IN ({chosen}) ON CONFLICT DO NOTHING""",
        [now, ids],
    )
    db.conn.execute(f"DELETE FROM entries WHERE id IN ({chosen})", [ids])


def unpruned(db: Database, feed_url: str, entries: Sequence[ParsedEntry]) -> Sequence[ParsedEntry]:
    """A feed's listed entries less those pruned before; tombstones of entries it no longer lists go.

    Runs inside the transaction that stores the feed.
    """
    tombstones = {row[0] for row in db.execute("SELECT guid FROM pruned_entries WHERE feed_url = ?", [feed_url])}
    if not tombstones:
        return entries
    listed = {entry.guid for entry in entries}
    db.conn.executemany(
        "DELETE FROM pruned_entries WHERE feed_url = ? AND guid = ?", [(feed_url, guid) for guid in tombstones - listed]
    )
    return [entry for entry in entries if entry.guid not in tombstones]


@contextmanager
def _transaction(db: Database) -> Iterator[None]:
    try:
        with immediate(db):
            yield
    except sqlite3.Error as e:
        raise StorageError(f"cannot prune expired entries: {e}") from e
