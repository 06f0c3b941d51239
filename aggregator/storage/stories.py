"""Stories in the store: near-duplicate candidates by LSH band, and entries joining a story."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlite_utils import Database

from ..dedup import DedupSettings, Fingerprint, Match, NearCandidate, match_near
from ..similarity import band_keys, band_keys_of
from ..timeutil import iso, parse_iso
from .bands import BandIndex

MAX_CANDIDATES = 200


def moment(published: str | None, first_seen: str) -> float:
    """When an entry happened, for the time window: its publication date, else when it was first seen."""
    for text in (published, first_seen):
        try:
            return parse_iso(text or "").timestamp()
        except ValueError:
            continue
    return 0.0


def candidates(db: Database, index: BandIndex, fingerprint: Fingerprint) -> list[NearCandidate]:
    """Stored entries sharing at least one band with ``fingerprint``, the newest ``MAX_CANDIDATES``."""
    found = index.find(band_keys(fingerprint.signature))
    newest = sorted({entry_id for ids in found.values() for entry_id in ids}, reverse=True)[:MAX_CANDIDATES]
    return list(_near_candidates(db, newest).values())


def _near_candidates(db: Database, ids: list[int]) -> dict[int, NearCandidate]:
    """The stored entries of ``ids`` that have a fingerprint."""
    found: dict[int, NearCandidate] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in db.execute(
            f"""SELECT id, duplicate_of, fingerprint, fingerprint_words, published, first_seen, feed_url
            FROM entries WHERE id IN ({','.join('?' * len(chunk))}) AND fingerprint IS NOT NULL""",
            chunk,
        ):
            found[row[0]] = NearCandidate(row[0], row[1], Fingerprint(row[2], row[3]), moment(row[4], row[5]), row[6])
    return found


def save_fingerprint(db: Database, entry_id: int, fingerprint: Fingerprint | None, index: BandIndex | None) -> None:
    """Record an entry's fingerprint; with an ``index``, later entries can find it there (the keys of its
    old fingerprint stay in the index: they only propose a candidate that no longer matches)."""
    old = db.execute("SELECT fingerprint FROM entries WHERE id = ?", [entry_id]).fetchone()
    db.execute(
        "UPDATE entries SET fingerprint = ?, fingerprint_words = ? WHERE id = ?",
        [fingerprint.signature if fingerprint else None, fingerprint.words if fingerprint else None, entry_id],
    )
    if fingerprint is not None and index is not None and (old is None or old[0] != fingerprint.signature):
        index.add([(entry_id, fingerprint.signature)])


def join(db: Database, entry_id: int, match: Match) -> None:
    """The entry, and every entry of its own story, become members of the matched story."""
    db.execute(
        "UPDATE entries SET duplicate_of = ?, duplicate_rule = ?, similarity = ? WHERE id = ? OR duplicate_of = ?",
        [match.original_id, match.rule, match.similarity, entry_id, entry_id],
    )


def reevaluate_near(db: Database, index: BandIndex, entry_id: int, settings: DedupSettings) -> Match | None:
    """An original whose text changed may now belong with another story.

    With an earlier story it joins that story; a later story joins it instead,
    since the original of a story is the entry seen first.
    """
    row = db.execute(
        "SELECT duplicate_of, fingerprint, fingerprint_words, published, first_seen, feed_url FROM entries WHERE id = ?",
        [entry_id],
    ).fetchone()
    if row is None or row[0] is not None or row[1] is None:
        return None
    fingerprint = Fingerprint(row[1], row[2])
    others = [c for c in candidates(db, index, fingerprint) if c.story_id != entry_id]
    match = match_near(fingerprint, moment(row[3], row[4]), others, settings, None, row[5]) if settings.enabled else None
    if match is None:
        return None
    if match.original_id < entry_id:
        join(db, entry_id, match)
        return match
    join(db, match.original_id, Match(original_id=entry_id, rule=match.rule, similarity=match.similarity))
    return None


@dataclass(frozen=True)
class Source:
    """Where a member of a story was published."""

    entry_id: int
    feed_url: str
    feed_title: str
    link: str | None


@dataclass(frozen=True)
class Member:
    """An entry of a story and why it belongs there."""

    id: int
    feed_url: str
    feed_title: str
    title: str | None
    link: str | None
    published: str | None
    first_seen: str
    duplicate_of: int | None
    rule: str | None
    similarity: float | None


def sources(db: Database, story_ids: list[int]) -> dict[int, list[Source]]:
    found: dict[int, list[Source]] = {}
    for start in range(0, len(story_ids), 500):
        chunk = story_ids[start : start + 500]
        rows = db.execute(
            f"""
            SELECT coalesce(e.duplicate_of, e.id), e.id, e.feed_url, coalesce(f.name, f.title, e.feed_url), e.link
            FROM entries e JOIN feeds f ON f.url = e.feed_url
            WHERE e.id IN ({",".join("?" * len(chunk))}) OR e.duplicate_of IN ({",".join("?" * len(chunk))})
            ORDER BY e.id
            """,
            [*chunk, *chunk],
        )
        for story, entry_id, feed_url, title, link in rows:
            found.setdefault(story, []).append(Source(entry_id, feed_url, title, link))
    return found


def members(db: Database, entry_id: int) -> list[Member]:
    row = db.execute("SELECT coalesce(duplicate_of, id) FROM entries WHERE id = ?", [entry_id]).fetchone()
    if row is None:
        return []
    rows = db.execute(
        """
        SELECT e.id, e.feed_url, coalesce(f.name, f.title, e.feed_url), e.title, e.link, e.published, e.first_seen,
               e.duplicate_of, e.duplicate_rule, e.similarity
        FROM entries e JOIN feeds f ON f.url = e.feed_url
        WHERE e.id = ? OR e.duplicate_of = ? ORDER BY e.id
        """,
        [row[0], row[0]],
    ).fetchall()
    return [Member(*r) for r in rows]


class BatchIndex:
    """Near-duplicate candidates for one feed's new entries, looked up in the band index at once.

    Entries stored meanwhile are added as they go, so two copies inside one
    feed still find each other; they join the band index together.
    """

    def __init__(self, db: Database, index: BandIndex, fingerprints: list[Fingerprint]) -> None:
        self._index = index
        signatures = list({fp.signature: None for fp in fingerprints})
        self._keys = dict(zip(signatures, band_keys_of(signatures), strict=True))
        self._by_key: dict[int, list[int]] = {}
        self._details: dict[int, NearCandidate] = {}
        self._pending: list[tuple[int, list[int]]] = []
        self._load(db, sorted({key for keys in self._keys.values() for key in keys}))

    def _load(self, db: Database, keys: list[int]) -> None:
        self._by_key = self._index.find(keys)
        for key, found in self._by_key.items():  # a band common to many entries: the newest are compared
            if len(found) > MAX_CANDIDATES:
                self._by_key[key] = sorted(found)[-MAX_CANDIDATES:]
        self._details = _near_candidates(db, sorted({entry_id for ids in self._by_key.values() for entry_id in ids}))

    def keys(self, fingerprint: Fingerprint) -> list[int]:
        if fingerprint.signature not in self._keys:
            self._keys[fingerprint.signature] = band_keys(fingerprint.signature)
        return self._keys[fingerprint.signature]

    def candidates(self, fingerprint: Fingerprint) -> list[NearCandidate]:
        ids = {entry_id for key in self.keys(fingerprint) for entry_id in self._by_key.get(key, ())[-MAX_CANDIDATES:]}
        newest = sorted(ids, reverse=True)[:MAX_CANDIDATES]
        return [self._details[i] for i in newest if i in self._details]

    def add(self, candidate: NearCandidate) -> None:
        self._details[candidate.id] = candidate
        for key in self.keys(candidate.fingerprint):
            self._by_key.setdefault(key, []).append(candidate.id)
        self._pending.append((candidate.id, self.keys(candidate.fingerprint)))

    def link(self, db: Database, story_id: int, into: Match) -> None:
        """A story found to be the same as a story begun earlier joins it, members and all
        (an entry just stored was nearly the same as a member of each)."""
        db.execute(
            "UPDATE entries SET duplicate_of = ?, duplicate_rule = ?, similarity = ? WHERE id = ?",
            [into.original_id, into.rule, into.similarity, story_id],
        )
        db.execute("UPDATE entries SET duplicate_of = ? WHERE duplicate_of = ?", [into.original_id, story_id])
        for entry_id, candidate in self._details.items():
            if candidate.story_id == story_id:
                self._details[entry_id] = replace(candidate, duplicate_of=into.original_id)

    def flush(self) -> None:
        self._index.add_keys(self._pending)
        self._pending = []


BAND_STEP = 6 * 3600.0  # how often the horizon of the band index moves on


class BandHorizon:
    """The band index holds entries first seen within two dedup windows of the newest write.

    An older entry is hardly ever within the window of a new one, and the index stays the size of
    the window. Ids grow with ``first_seen``, so what leaves is an id range, read off marks taken
    every ``BAND_STEP`` of the writes' clock.
    """

    def __init__(self) -> None:
        self.marks: deque[tuple[float, int]] = deque()
        self.pruned_to: int | None = None

    def advance(self, db: Database, index: BandIndex, now: float, window: float) -> int:
        """Move the horizon on to ``now``; the newest entry stored, which the caller's transaction wrote last."""
        keep = 2 * window
        newest = db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
        if self.pruned_to is None:
            self.pruned_to = 0
            self.marks.append((now - keep, first_seen_before(db, now - keep)))
        if not self.marks or now - self.marks[-1][0] >= BAND_STEP:
            self.marks.append((now, newest))
        while self.marks and now - self.marks[0][0] >= keep:
            _, upto = self.marks.popleft()
            if upto > self.pruned_to:
                index.prune(upto)
                self.pruned_to = upto
        return newest


def first_seen_before(db: Database, moment: float) -> int:
    """The newest entry first seen before ``moment``: ids grow with ``first_seen``."""
    cutoff = iso(datetime.fromtimestamp(moment, UTC))
    return db.execute("SELECT coalesce(max(id), 0) FROM entries WHERE first_seen < ?", [cutoff]).fetchone()[0]
