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

Each band's keys live in two numpy arrays sorted by the key's hash (12 bytes a row) and, since
the last merge, in a dict.
One index per database file and process, shared by the stores open on it, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from ..similarity import BANDS, band_keys

MERGE_ROWS = 1 << 15  # keys added since the last merge, kept in a dict until there are this many
_LOW32 = 0xFFFFFFFF

_shared: dict[str, tuple[BandIndex, int]] = {}  # per database file: the index, and the stores using it
_shared_lock = threading.Lock()


class BandIndex:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        # per band: the 32-bit hashes of its rows, sorted, and the entry of each (12 bytes a row)
        self._hashes = [np.empty(0, dtype=np.uint32) for _ in range(BANDS)]
        self._ids = [np.empty(0, dtype=np.int64) for _ in range(BANDS)]
        self._recent: dict[int, int | list[int]] = {}  # key -> entry (entries), since the last merge
        self._recent_rows = 0
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
        """Index ``(entry id, stored signature)`` pairs."""
        self.add_keys((entry_id, band_keys(signature)) for entry_id, signature in entries)

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
                self._recent_rows += BANDS
                if self._recent_rows >= MERGE_ROWS:  # a store's first load, too, goes in steps
                    self._merge()
                    recent = self._recent

    def find(self, keys: Sequence[int]) -> dict[int, list[int]]:
        """The entries under each of ``keys`` (those with none left out), oldest first."""
        with self.lock:
            found: dict[int, list[int]] = {}
            by_band: dict[int, list[int]] = {}
            for key in keys:
                by_band.setdefault(key >> 32, []).append(key)
            for band, wanted in by_band.items():
                hashes, ids = self._hashes[band], self._ids[band]
                if not len(hashes):
                    continue
                query = np.fromiter((key & _LOW32 for key in wanted), dtype=np.uint32, count=len(wanted))
                lows = np.searchsorted(hashes, query, side="left").tolist()
                highs = np.searchsorted(hashes, query, side="right").tolist()
                for key, low, high in zip(wanted, lows, highs, strict=True):
                    if high > low:
                        found[key] = ids[low:high].tolist()
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
            ids = {i for band in self._ids for i in band.tolist()}
            for found in self._recent.values():
                ids.update(_listed(found))
            return {i for i in ids if i > self._floor}

    def _merge(self) -> None:
        """The keys added since the last merge join each band's sorted arrays; entries out of the horizon leave."""
        recent, count = self._recent, self._recent_rows
        keys = np.fromiter((k for k, found in recent.items() for _ in _listed(found)), dtype=np.uint64, count=count)
        added = np.fromiter((i for found in recent.values() for i in _listed(found)), dtype=np.int64, count=count)
        self._recent, self._recent_rows = {}, 0
        bands = (keys >> np.uint64(32)).astype(np.uint8)
        digests = (keys & np.uint64(_LOW32)).astype(np.uint32)
        del keys
        for band in range(BANDS):
            mine = bands == band
            hashes = np.concatenate((self._hashes[band], digests[mine]))
            ids = np.concatenate((self._ids[band], added[mine]))
            if len(ids) and ids.min() <= self._floor:
                kept = ids > self._floor
                hashes, ids = hashes[kept], ids[kept]
            order = np.argsort(hashes, kind="stable")  # old rows in order, then new ones: timsort merges
            self._hashes[band], self._ids[band] = hashes[order], ids[order]


def _listed(found: int | list[int]) -> list[int] | tuple[int]:
    return found if isinstance(found, list) else (found,)
