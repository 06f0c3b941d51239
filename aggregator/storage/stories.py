"""Stories in the store: near-duplicate candidates by LSH band, and entries joining a story."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlite_utils import Database

from ..dedup import DedupSettings, Fingerprint, Match, NearCandidate, match_near
from ..similarity import band_keys, from_bytes

MAX_CANDIDATES = 200


def moment(published: str | None, first_seen: str) -> float:
    """When an entry happened, for the time window: its publication date, else when it was first seen."""
    for text in (published, first_seen):
        try:
            return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return 0.0


class BandIndex:
    """The LSH bands of recent fingerprinted entries, in memory.

    Band rows written to SQLite at random keys dirtied hundreds of pages per
    feed and made every commit slow; held in memory, a lookup is a few
    dictionary reads. The index is built from ``entries`` on first use (the
    entries first seen within twice the time window) and kept up to date by
    this process.
    """

    def __init__(self) -> None:
        self.loaded = False
        self._by_key: dict[int, list[int]] = {}
        self._keys: dict[int, list[int]] = {}
        self._details: dict[int, NearCandidate] = {}

    def load(self, db: Database, since: str) -> None:
        rows = db.execute(
            """SELECT id, duplicate_of, fingerprint, fingerprint_words, published, first_seen, feed_url
            FROM entries WHERE fingerprint IS NOT NULL AND first_seen >= ? ORDER BY id""",
            [since],
        )
        for row in rows:
            self.add(NearCandidate(row[0], row[1], Fingerprint(row[2], row[3]), moment(row[4], row[5]), row[6]))
        self.loaded = True

    def candidates(self, fingerprint: Fingerprint) -> list[NearCandidate]:
        keys = band_keys(from_bytes(fingerprint.signature))
        ids = {entry_id for key in keys for entry_id in self._by_key.get(key, ())}
        return [self._details[i] for i in sorted(ids, reverse=True)[:MAX_CANDIDATES]]

    def add(self, candidate: NearCandidate) -> None:
        self.remove(candidate.id)
        keys = band_keys(from_bytes(candidate.fingerprint.signature))
        self._keys[candidate.id] = keys
        self._details[candidate.id] = candidate
        for key in keys:
            self._by_key.setdefault(key, []).append(candidate.id)

    def remove(self, entry_id: int) -> None:
        for key in self._keys.pop(entry_id, ()):
            ids = self._by_key.get(key, [])
            if entry_id in ids:
                ids.remove(entry_id)
        self._details.pop(entry_id, None)

    def joined(self, entry_id: int, original_id: int) -> None:
        """``entry_id`` and the members of its story now belong to ``original_id``'s story."""
        for candidate in list(self._details.values()):
            if candidate.id == entry_id or candidate.duplicate_of == entry_id:
                self._details[candidate.id] = replace(candidate, duplicate_of=original_id)

    def get(self, entry_id: int) -> NearCandidate | None:
        return self._details.get(entry_id)


def save_fingerprint(
    db: Database, index: BandIndex | None, entry_id: int, fingerprint: Fingerprint | None, when: float, feed_url: str
) -> None:
    """Record an entry's fingerprint; with an ``index``, later entries can find it."""
    db.execute(
        "UPDATE entries SET fingerprint = ?, fingerprint_words = ? WHERE id = ?",
        [fingerprint.signature if fingerprint else None, fingerprint.words if fingerprint else None, entry_id],
    )
    if index is None:
        return
    if fingerprint is None:
        index.remove(entry_id)
        return
    row = db.execute("SELECT duplicate_of FROM entries WHERE id = ?", [entry_id]).fetchone()
    index.add(NearCandidate(entry_id, row[0] if row else None, fingerprint, when, feed_url))


def join(db: Database, entry_id: int, match: Match, index: BandIndex | None = None) -> None:
    """The entry, and every entry of its own story, become members of the matched story."""
    db.execute(
        "UPDATE entries SET duplicate_of = ?, duplicate_rule = ?, similarity = ? WHERE id = ? OR duplicate_of = ?",
        [match.original_id, match.rule, match.similarity, entry_id, entry_id],
    )
    if index is not None:
        index.joined(entry_id, match.original_id)


def reevaluate_near(db: Database, entry_id: int, settings: DedupSettings, index: BandIndex) -> Match | None:
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
    others = [c for c in index.candidates(fingerprint) if c.story_id != entry_id]
    match = match_near(fingerprint, moment(row[3], row[4]), others, settings, None, row[5]) if settings.enabled else None
    if match is None:
        return None
    if match.original_id < entry_id:
        join(db, entry_id, match, index)
        return match
    join(db, match.original_id, Match(original_id=entry_id, rule=match.rule, similarity=match.similarity), index)
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
