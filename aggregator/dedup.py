"""Recognising the same story twice. Pure decisions over candidates the store looks up.

A story is identified by its original: the entry seen first. Every later member
points at the original directly (``duplicate_of``), never at another duplicate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

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
    if own_id is not None and original >= own_id:  # its own story, or a later one
        return None
    return Match(original_id=original, rule=RULE_URL)


RULE_NEAR = "near-duplicate"
RULE_SHORT = "same-title"
RULE_LINKED = "linked"


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
FINGERPRINT_BATCH = 256
BOILERPLATE_MIN_ENTRIES = 3
BOILERPLATE_SHARE = 0.3
def boilerplate(documents: Sequence[Sequence[str]]) -> frozenset[str]:
    """Paragraphs a feed repeats across its entries (each entry given as its paragraphs): footers,
    disclaimers, "read more" lines.

    A paragraph counts when at least three entries and 30 % of them carry it, so two copies of
    one report in a feed still match each other.
    """
    counts = Counter(key for blocks in documents for key in {_key(p) for p in blocks})
    needed = max(BOILERPLATE_MIN_ENTRIES, math.ceil(BOILERPLATE_SHARE * len(documents)))
    return frozenset(key for key, count in counts.items() if count >= needed)


def body_text(blocks: Sequence[str], repeated: frozenset[str] = frozenset()) -> str | None:
    """The text an entry is fingerprinted by: its paragraphs without the feed's boilerplate
    (all of them when nothing else would be left)."""
    kept = [p for p in blocks if _key(p) not in repeated] or blocks
    return " ".join(kept) or None


def _key(paragraph: str) -> str:
    return paragraph.casefold()


def fingerprint_of(title: str | None, body: str | None) -> Fingerprint | None:
    """An entry's fingerprint: of its body, with the title only when the body is short.

    A changed headline then does not hide a republished report.
    """
    return fingerprints_of([(title, body)])[0]


def fingerprints_of(texts: Iterable[tuple[str | None, str | None]]) -> list[Fingerprint | None]:
    """:func:`fingerprint_of` each ``(title, body)``, the signatures computed together, ``FINGERPRINT_BATCH``
    texts at a time (the words of a feed of 10,000 items are not all held at once)."""
    from .similarity import signatures, to_bytes, words

    found: list[Fingerprint | None] = []
    pending = iter(texts)
    while batch := list(islice(pending, FINGERPRINT_BATCH)):
        token_lists = []
        for title, body in batch:
            tokens = words(body) if body else []
            if len(tokens) < BODY_MIN_WORDS:
                tokens = words(title or "") + tokens
            token_lists.append(tokens)
        found += [
            Fingerprint(to_bytes(sig), len(tokens)) if sig is not None else None
            for sig, tokens in zip(signatures(token_lists), token_lists, strict=True)
        ]
    return found


def match_near(
    own: Fingerprint, moment: float, candidates: list[NearCandidate], settings: DedupSettings,
    own_id: int | None = None, feed_url: str = "",
) -> Match | None:
    """The story among candidates similar enough and close enough in time with the best similarity
    (the earliest of equals)."""
    found = stories_near(own, moment, candidates, settings, own_id, feed_url)
    if not found:
        return None
    best = max(found, key=lambda m: (m.similarity, -m.original_id))
    if own_id is not None and best.original_id >= own_id:
        return None
    return best


def stories_near(
    own: Fingerprint, moment: float, candidates: list[NearCandidate], settings: DedupSettings,
    own_id: int | None = None, feed_url: str = "",
) -> list[Match]:
    """Every story with a member similar enough and close enough in time, earliest story first,
    each with its best similarity.

    Long texts need ``similarity``; when either text is shorter than
    ``min_words`` (a title-only item), ``short_similarity``, and never within one
    feed: a feed repeating a title ("Die Lage am Morgen") publishes a new item.
    """
    if not candidates:  # most new entries: nothing shares a band with them
        return []
    from .similarity import from_bytes, jaccard

    mine = from_bytes(own.signature)
    best: dict[int, float] = {}
    for candidate in candidates:
        if candidate.id == own_id or abs(candidate.moment - moment) > settings.window:
            continue
        short = min(own.words, candidate.fingerprint.words) < settings.min_words
        if short and feed_url and candidate.feed_url == feed_url:
            continue
        score = jaccard(mine, from_bytes(candidate.fingerprint.signature))
        if score >= (settings.short_similarity if short else settings.similarity):
            best[candidate.story_id] = max(best.get(candidate.story_id, 0.0), score)
    rule = RULE_SHORT if own.words < settings.min_words else RULE_NEAR
    return [Match(story, rule, round(score, 3)) for story, score in sorted(best.items())]
