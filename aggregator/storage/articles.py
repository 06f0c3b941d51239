"""The article-extraction state of entries: what is due, what came of each attempt."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlite_utils import Database

from ..dedup import Fingerprint
from ..types import ArticleJob
from . import search_index

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class ArticleOutcome:
    """What one attempt at an entry's article came to."""

    entry_id: int
    status: str
    reason: str | None = None
    text: str | None = None
    html: str | None = None
    author: str | None = None
    published: str | None = None
    language: str | None = None
    next_at: str | None = None
    counts_as_attempt: bool = True
    fingerprint: Fingerprint | None = None


class ArticleLedger:
    def __init__(
        self,
        db: Database,
        write: Callable[[], AbstractContextManager[Database]],
        text_changed: Callable[[Database, int, Fingerprint | None], None] | None = None,
    ) -> None:
        self.db = db
        self._write = write
        self._text_changed = text_changed

    def due(self, feed_urls: Sequence[str], now: str, limit: int = 10_000) -> list[ArticleJob]:
        """Entries of these feeds still waiting for their article, or due for another attempt."""
        if not feed_urls:
            return []
        marks = ",".join("?" * len(feed_urls))
        rows = self.db.execute(
            f"""
            SELECT id, feed_url, link, extraction_attempts FROM entries
            WHERE extraction_status IN ('pending', 'failed') AND link IS NOT NULL
              AND extraction_attempts < ? AND (extraction_next_at IS NULL OR extraction_next_at <= ?)
              AND feed_url IN ({marks})
            ORDER BY id DESC LIMIT ?
            """,
            [MAX_ATTEMPTS, now, *feed_urls, limit],
        ).fetchall()
        return [ArticleJob(entry_id=r[0], feed_url=r[1], url=r[2], attempts=r[3]) for r in rows]

    def record(self, outcomes: Iterable[ArticleOutcome], now: str) -> None:
        """Store a batch of outcomes in one transaction."""
        with self._write() as db, search_index.deferred(db) as index:
            for outcome in outcomes:
                self._record_one(db, outcome, now)
                if outcome.text is not None:
                    index.changed(outcome.entry_id)
                if outcome.status == "done" and self._text_changed is not None:
                    self._text_changed(db, outcome.entry_id, outcome.fingerprint)

    def _record_one(self, db: Database, outcome: ArticleOutcome, now: str) -> None:
        db.execute(
            """
            UPDATE entries SET
                extraction_status = ?, extraction_error = ?, extraction_next_at = ?,
                extraction_attempts = extraction_attempts + ?,
                article_text = coalesce(?, article_text), article_html = coalesce(?, article_html),
                extracted_at = CASE WHEN ? = 'done' THEN ? ELSE extracted_at END,
                author = coalesce(author, ?), published = coalesce(published, ?), language = coalesce(language, ?)
            WHERE id = ?
            """,
            [
                outcome.status, outcome.reason, outcome.next_at, int(outcome.counts_as_attempt),
                outcome.text, outcome.html, outcome.status, now,
                outcome.author, outcome.published, outcome.language, outcome.entry_id,
            ],
        )

    def summary(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT extraction_status, count(*) FROM entries WHERE extraction_status IS NOT NULL GROUP BY 1"
        ).fetchall()
        return {status: count for status, count in rows}

    def reasons(self, limit: int = 10) -> list[tuple[str, str, int]]:
        return self.db.execute(
            """
            SELECT extraction_status, extraction_error, count(*) FROM entries
            WHERE extraction_status IN ('failed', 'skipped') GROUP BY 1, 2 ORDER BY 3 DESC LIMIT ?
            """,
            [limit],
        ).fetchall()
