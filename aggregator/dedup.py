"""Recognising the same story twice. Pure decisions over candidates the store looks up.

A story is identified by its original: the entry seen first. Every later member
points at the original directly (``duplicate_of``), never at another duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE_URL = "url"


@dataclass(frozen=True)
class Candidate:
    """An entry already stored, as seen by the deduplicator."""

    id: int
    duplicate_of: int | None

    @property
    def story_id(self) -> int:
        return self.duplicate_of if self.duplicate_of is not None else self.id


@dataclass(frozen=True)
class Match:
    original_id: int
    rule: str
    similarity: float = 1.0


def match_url(candidates: list[Candidate], own_id: int | None = None) -> Match | None:
    """The story an entry joins when other entries share its canonical URL."""
    others = [c for c in candidates if c.id != own_id]
    if not others:
        return None
    original = min(others, key=lambda c: c.story_id).story_id
    if own_id is not None and original > own_id:
        return None
    return Match(original_id=original, rule=RULE_URL)


RULE_NEAR = "near-duplicate"
RULE_SHORT = "same-title"


@dataclass(frozen=True)
class DedupSettings:
    """How alike two entries must be to be one story (``[dedup]`` in feeds.toml)."""

    enabled: bool = True
    window: float = 3 * 86400.0
    similarity: float = 0.5
    short_similarity: float = 0.9
    min_words: int = 80


@dataclass(frozen=True)
class Fingerprint:
    """An entry's text as the near-duplicate rule sees it: a MinHash signature and the words it covers."""

    signature: bytes
    words: int


@dataclass(frozen=True)
class NearCandidate:
    """A stored entry that shares at least one LSH band with the entry being decided."""

    id: int
    duplicate_of: int | None
    fingerprint: Fingerprint
    moment: float
    feed_url: str = ""

    @property
    def story_id(self) -> int:
        return self.duplicate_of if self.duplicate_of is not None else self.id


BODY_MIN_WORDS = 30


def fingerprint_of(title: str | None, body: str | None) -> Fingerprint | None:
    """An entry's fingerprint: of its body, with the title only when the body is short.

    A changed headline then does not hide a republished report.
    """
    from .similarity import signature, to_bytes, words

    tokens = words(body) if body else []
    if len(tokens) < BODY_MIN_WORDS:
        tokens = words(title or "") + tokens
    sig = signature(tokens)
    return Fingerprint(to_bytes(sig), len(tokens)) if sig is not None else None


def match_near(
    own: Fingerprint, moment: float, candidates: list[NearCandidate], settings: DedupSettings,
    own_id: int | None = None, feed_url: str = "",
) -> Match | None:
    """The earliest story among candidates similar enough and close enough in time, with the best similarity.

    Long texts need ``similarity``; when either text is shorter than
    ``min_words`` (a title-only item), ``short_similarity``, and never within one
    feed: a feed repeating a title ("Die Lage am Morgen") publishes a new item.
    """
    from .similarity import from_bytes, jaccard

    mine = from_bytes(own.signature)
    best: tuple[float, int] | None = None
    for candidate in candidates:
        if candidate.id == own_id or abs(candidate.moment - moment) > settings.window:
            continue
        short = min(own.words, candidate.fingerprint.words) < settings.min_words
        if short and feed_url and candidate.feed_url == feed_url:
            continue
        needed = settings.short_similarity if short else settings.similarity
        score = jaccard(mine, from_bytes(candidate.fingerprint.signature))
        if score >= needed and (best is None or (score, -candidate.story_id) > (best[0], -best[1])):
            best = (score, candidate.story_id)
    if best is None or (own_id is not None and best[1] >= own_id):
        return None
    short = own.words < settings.min_words
    return Match(original_id=best[1], rule=RULE_SHORT if short else RULE_NEAR, similarity=round(best[0], 3))
