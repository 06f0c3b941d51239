"""The near-duplicate band index, held in memory and built from ``entries.fingerprint``.

A fingerprinted entry of a feed that deduplicates is found by the 16 band keys of its signature
(:func:`..similarity.band_keys`): entries sharing a key are the candidates a new entry is compared
with. The index only proposes candidates; each is compared on the fingerprint stored with it. A key
left behind by an entry that was rolled back, deleted or fingerprinted again therefore costs one
comparison and changes no decision, which is why nothing is ever taken out but by the horizon.

The index covers the entries first seen within two dedup windows (:class:`.stories.BandHorizon`).
It is loaded when a write first needs it and, at the start of every write transaction, reads the
entries stored since it last looked, by this process or another (ids only grow). Kept as a table,
its 16 rows per entry at random keys rewrote most of the table's pages at every commit.

The keys live in two numpy arrays sorted by key (16 bytes a row: one lookup for all the keys of a
feed's entries) and, since the last merge, in a dict.
One index per database file and process, shared by the stores open on it, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from ..similarity import band_keys_of

MERGE_ROWS = 1 << 15  # keys added since the last merge, kept in a dict until there are this many
ADD_BATCH = 4096  # stored signatures hashed into keys together

_shared: dict[str, tuple[BandIndex, int]] = {}  # per database file: the index, and the stores using it
_shared_lock = threading.Lock()


class BandIndex:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        # every row's key, sorted, and the entry of each
        self._keys = np.empty(0, dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)
        self._recent: dict[int, int | list[int]] = {}  # key -> entry (entries), since the last merge
        self._recent_keys: list[int] = []  # the same rows in the order they came, for the merge
        self._recent_ids: list[int] = []
        self._floor = 0  # entries up to this id are outside the horizon
        self.seen: int | None = None  # every entry up to this id has been read (None: not loaded yet)

    @classmethod
    def shared(cls, path: Path) -> BandIndex:
        """The index of the database at ``path`` in this process; :meth:`release` it when done."""
        with _shared_lock:
            index, users = _shared.get(str(path.resolve()), (cls(), 0))
            _shared[str(path.resolve())] = (index, users + 1)
            return index

    @staticmethod
    def release(path: Path) -> None:
        """One user of the index of ``path`` is done; the last one lets it go."""
        with _shared_lock:
            index, users = _shared.pop(str(path.resolve()), (None, 0))
            if index is not None and users > 1:
                _shared[str(path.resolve())] = (index, users - 1)

    def catch_up(self, db: Database, banded: Callable[[str], bool]) -> None:
        """Read the entries stored since the index last looked (every one inside the horizon, the first
        time); ``banded`` says which feeds' entries are indexed. Run inside a write transaction, before
        it writes: nobody else is storing meanwhile, so ``seen`` is exact."""
        with self.lock:
            start = self._floor if self.seen is None else max(self.seen, self._floor)
            rows = db.execute(
                "SELECT id, feed_url, fingerprint FROM entries WHERE id > ? AND fingerprint IS NOT NULL ORDER BY id",
                [start],
            )
            self.add((entry_id, signature) for entry_id, feed_url, signature in rows if banded(feed_url))
            self.seen = db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]

    def committed(self, newest: int) -> None:
        """A write transaction that read the entries up to ``newest`` (and added its own) committed."""
        with self.lock:
            if self.seen is not None:
                self.seen = max(self.seen, newest)

    def add(self, entries: Iterable[tuple[int, bytes]]) -> None:
        """Index ``(entry id, stored signature)`` pairs (their keys hashed ``ADD_BATCH`` at a time)."""
        pending = iter(entries)
        while batch := list(islice(pending, ADD_BATCH)):
            ids, signatures = zip(*batch, strict=True)
            self.add_keys(zip(ids, band_keys_of(signatures), strict=True))

    def add_keys(self, entries: Iterable[tuple[int, list[int]]]) -> None:
        """Index ``(entry id, band keys of its signature)`` pairs."""
        with self.lock:
            recent = self._recent
            for entry_id, keys in entries:
                for key in keys:
                    found = recent.get(key)
                    if found is None:
                        recent[key] = entry_id
                    elif isinstance(found, list):
                        found.append(entry_id)
                    else:
                        recent[key] = [found, entry_id]
                self._recent_keys += keys
                self._recent_ids += [entry_id] * len(keys)
                if len(self._recent_keys) >= MERGE_ROWS:  # a store's first load, too, goes in steps
                    self._merge()
                    recent = self._recent

    def find(self, keys: Sequence[int]) -> dict[int, list[int]]:
        """The entries under each of ``keys`` (those with none left out), oldest first."""
        with self.lock:
            found: dict[int, list[int]] = {}
            if len(self._keys) and keys:
                query = np.array(keys, dtype=np.uint64)
                lows = np.searchsorted(self._keys, query, side="left")
                highs = np.searchsorted(self._keys, query, side="right")
                hits = np.flatnonzero(highs > lows).tolist()
                for i, low, high in zip(hits, lows[hits].tolist(), highs[hits].tolist(), strict=True):
                    found[keys[i]] = self._ids[low:high].tolist()
            for key in keys:
                recent = self._recent.get(key)
                if recent is not None:
                    found.setdefault(key, []).extend(_listed(recent))
            return found

    def prune(self, upto: int) -> None:
        """Entries up to ``upto`` left the horizon: their keys go at the next merge."""
        with self.lock:
            self._floor = max(self._floor, upto)

    def entry_ids(self) -> set[int]:
        """Every entry with keys in the index, inside the horizon."""
        with self.lock:
            ids = set(self._ids.tolist())
            for found in self._recent.values():
                ids.update(_listed(found))
            return {i for i in ids if i > self._floor}

    def _merge(self) -> None:
        """The keys added since the last merge join the sorted arrays; entries out of the horizon leave."""
        keys = np.concatenate((self._keys, np.array(self._recent_keys, dtype=np.uint64)))
        ids = np.concatenate((self._ids, np.array(self._recent_ids, dtype=np.int64)))
        self._recent, self._recent_keys, self._recent_ids = {}, [], []
        if len(ids) and ids.min() <= self._floor:
            kept = ids > self._floor
            keys, ids = keys[kept], ids[kept]
        order = np.argsort(keys, kind="stable")  # old rows in order, then new ones: timsort merges
        self._keys, self._ids = keys[order], ids[order]


def _listed(found: int | list[int]) -> list[int] | tuple[int]:
    return found if isinstance(found, list) else (found,)
