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
