"""Stories in the store: near-duplicate candidates by LSH band, and entries joining a story."""

from __future__ import annotations

from dataclasses import dataclass
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


def candidates(db: Database, fingerprint: Fingerprint) -> list[NearCandidate]:
    """Stored entries sharing at least one band with ``fingerprint``."""
    keys = band_keys(from_bytes(fingerprint.signature))
    rows = db.execute(
        f"""
        SELECT e.id, e.duplicate_of, e.fingerprint, e.fingerprint_words, e.published, e.first_seen, e.feed_url
        FROM entries e WHERE e.id IN (
            SELECT entry_id FROM entry_bands WHERE key IN ({",".join("?" * len(keys))})
            ORDER BY entry_id DESC LIMIT {MAX_CANDIDATES}
        )
        """,
        keys,
    ).fetchall()
    return [
        NearCandidate(row[0], row[1], Fingerprint(row[2], row[3]), moment(row[4], row[5]), row[6])
        for row in rows
        if row[2] is not None
    ]


def save_fingerprint(db: Database, entry_id: int, fingerprint: Fingerprint | None, *, banded: bool) -> None:
    """Record an entry's fingerprint; ``banded`` entries can be found by later ones."""
    db.execute(
        "UPDATE entries SET fingerprint = ?, fingerprint_words = ? WHERE id = ?",
        [fingerprint.signature if fingerprint else None, fingerprint.words if fingerprint else None, entry_id],
    )
    db.execute("DELETE FROM entry_bands WHERE entry_id = ?", [entry_id])
    if fingerprint is not None and banded:
        keys = band_keys(from_bytes(fingerprint.signature))
        db.conn.executemany("INSERT OR IGNORE INTO entry_bands (key, entry_id) VALUES (?, ?)", [(k, entry_id) for k in keys])


def near_match(
    db: Database, fingerprint: Fingerprint | None, when: float, settings: DedupSettings,
    own_id: int | None = None, feed_url: str = "",
) -> Match | None:
    if fingerprint is None or not settings.enabled:
        return None
    return match_near(fingerprint, when, candidates(db, fingerprint), settings, own_id, feed_url)


def join(db: Database, entry_id: int, match: Match) -> None:
    """The entry, and every entry of its own story, become members of the matched story."""
    db.execute(
        "UPDATE entries SET duplicate_of = ?, duplicate_rule = ?, similarity = ? WHERE id = ? OR duplicate_of = ?",
        [match.original_id, match.rule, match.similarity, entry_id, entry_id],
    )


def reevaluate_near(db: Database, entry_id: int, settings: DedupSettings) -> Match | None:
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
    others = [c for c in candidates(db, fingerprint) if c.story_id != entry_id]
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
