"""Full-text search over the stored entries, through the ``entries_fts`` index (docs/schema.md).

A query is words and "quoted phrases", all of which must occur; ``-word`` excludes, ``word*``
matches a prefix. Everything else is searched for literally: the FTS5 query language is not
exposed, so no query can be malformed in a way SQLite would reject. Case and diacritics are
ignored (``brucke`` finds ``Brücke``); ``ß`` is a letter of its own (``strasse`` does not find
``Straße``).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import parse_duration
from .exceptions import AggregatorError, StorageError
from .storage import Store
from .timeutil import iso, utcnow

MARK_START = MARK_END = "**"
ELLIPSIS = "…"
SNIPPET_WORDS = 16
_TERM = re.compile(r'(-?)(?:"([^"]*)"(\*?)|([^\s"]+))')
_SNIPPET_COLUMNS = (1, 3, 2, 0)  # summary, article_text, content, title: the first with a highlight wins


class SearchError(AggregatorError):
    """The query or a filter cannot be searched for; the message says why."""


@dataclass(frozen=True)
class SearchHit:
    """One story found: the member entry that matched best.

    ``story_id`` is the story's original (``coalesce(duplicate_of, id)``); ``snippet`` is plain
    text around the match with each matched term between ``**`` markers; ``rank`` is FTS5's
    weighted bm25, lower is better.
    """

    id: int
    story_id: int
    feed_url: str
    feed_title: str | None
    title: str | None
    link: str | None
    published: str | None
    snippet: str
    rank: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def search(
    store: Store, query: str, *, feed: str | None = None, since: str | datetime | None = None,
    limit: int = 20, now: datetime | None = None,
) -> list[SearchHit]:
    """The best-matching stories, most relevant first, one hit per story.

    ``feed`` is a feed's URL or configured name; ``since`` a date, an ISO time or a duration
    (``7d``) back from ``now``.
    """
    if limit < 1:
        raise SearchError(f"the limit must be at least 1, got {limit}")
    match = fts_query(query)
    try:
        filters = _filters(store, feed, since, now or utcnow())
        ranked = _ranked(store, match, filters, limit)
        return _hits(store, match, ranked)
    except sqlite3.OperationalError as e:
        if "fts5" in str(e):
            raise SearchError(f"cannot search for {query!r}: {e}") from e
        raise StorageError(f"{store.path}: search failed: {e}") from e
    except sqlite3.Error as e:
        raise StorageError(f"{store.path}: search failed: {e}") from e


def fts_query(text: str) -> str:
    """The FTS5 MATCH expression for a user's query; every word and phrase is quoted."""
    if text.count('"') % 2:
        raise SearchError(f"unbalanced double quote in {text!r}: close the phrase, e.g. '\"neue Brücke\"'")
    wanted, unwanted = [], []
    for minus, phrase, phrase_star, word in _TERM.findall(text):
        words, prefix = (word.rstrip("*"), word.endswith("*")) if word else (phrase, bool(phrase_star))
        if not any(char.isalnum() for char in words):
            continue
        term = '"' + words.replace('"', '""') + '"' + ("*" if prefix else "")
        (unwanted if minus else wanted).append(term)
    if not wanted:
        raise SearchError(f"nothing to search for in {text!r}: give at least one word that is not excluded")
    return "(" + " AND ".join(wanted) + ")" + "".join(f" NOT {term}" for term in unwanted)


def since_moment(text: str | datetime, now: datetime) -> str:
    """``2026-11-01``, ``2026-11-01T08:00:00+01:00`` or a duration back from ``now``, as UTC ISO."""
    if isinstance(text, datetime):
        return iso(text if text.tzinfo else text.replace(tzinfo=UTC))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return iso(now - timedelta(seconds=parse_duration(text)))
        except OverflowError:
            return "0001-01-01T00:00:00Z"  # further back than any date: everything
        except ValueError:
            raise SearchError(
                f"--since {text!r}: give a date (2026-11-01), a time (2026-11-01T08:00:00Z) or a duration (7d, 12h)"
            ) from None
    return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _filters(store: Store, feed: str | None, since: str | datetime | None, now: datetime) -> list[tuple[str, Any]]:
    filters: list[tuple[str, Any]] = []
    if feed is not None:
        url = store.scalar("SELECT url FROM feeds WHERE url = ? OR name = ? ORDER BY url = ? DESC", [feed, feed, feed])
        if url is None:
            raise SearchError(f"--feed {feed!r}: no such feed in the database (give its URL or name)")
        filters.append(("e.feed_url = ?", url))
    if since is not None:
        filters.append(("coalesce(e.published, e.first_seen) >= ?", since_moment(since, now)))
    return filters


def _ranked(store: Store, match: str, filters: list[tuple[str, Any]], limit: int) -> list[tuple[int, int, float]]:
    """``(entry id, story id, rank)`` of the best-ranked member of each matching story."""
    where = "".join(f" AND {condition}" for condition, _ in filters)
    sql = f"""
        SELECT id, story_id, rank FROM (
            SELECT e.id, coalesce(e.duplicate_of, e.id) AS story_id, entries_fts.rank AS rank,
                row_number() OVER (PARTITION BY coalesce(e.duplicate_of, e.id) ORDER BY entries_fts.rank, e.id) AS n
            FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid
            WHERE entries_fts MATCH ?{where}
        ) WHERE n = 1 ORDER BY rank, id LIMIT ?
    """
    return store.db.execute(sql, [match, *(value for _, value in filters), limit]).fetchall()


def _hits(store: Store, match: str, ranked: list[tuple[int, int, float]]) -> list[SearchHit]:
    """The details and a snippet of each ranked entry, in rank order."""
    if not ranked:
        return []
    snippets = ", ".join(
        f"snippet(entries_fts, {column}, '{MARK_START}', '{MARK_END}', '{ELLIPSIS}', {SNIPPET_WORDS})"
        for column in _SNIPPET_COLUMNS
    )
    rows = store.db.execute(
        f"""
        SELECT e.id, e.feed_url, coalesce(f.name, f.title), e.title, e.link, e.published, {snippets}
        FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid LEFT JOIN feeds f ON f.url = e.feed_url
        WHERE entries_fts MATCH ? AND entries_fts.rowid IN ({",".join("?" * len(ranked))})
        """,
        [match, *(entry_id for entry_id, _, _ in ranked)],
    ).fetchall()
    details = {row[0]: row for row in rows}
    return [
        SearchHit(entry_id, story_id, *details[entry_id][1:6], _best_snippet(details[entry_id][6:]), rank)
        for entry_id, story_id, rank in ranked
        if entry_id in details
    ]


def _best_snippet(candidates: tuple[str | None, ...]) -> str:
    """The first snippet with a highlighted term, else the first with any text; whitespace collapsed."""
    texts = [" ".join(text.split()) for text in candidates if text and text.strip()]
    return next((text for text in texts if MARK_START in text), texts[0] if texts else "")


def render_text(hits: list[SearchHit], *, emphasis: Any = None) -> str:
    """One block per hit: date and feed, title, link, snippet. ``emphasis`` styles the highlighted terms."""
    blocks = []
    for hit in hits:
        lines = [
            f"{(hit.published or 'undated')[:10]}  {hit.feed_title or hit.feed_url}",
            hit.title or "(no title)",
            *([hit.link] if hit.link else []),
            *([_emphasise(hit.snippet, emphasis)] if hit.snippet else []),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _emphasise(snippet: str, emphasis: Any) -> str:
    if emphasis is None:
        return snippet
    pattern = re.compile(re.escape(MARK_START) + "(.+?)" + re.escape(MARK_END))
    return pattern.sub(lambda m: emphasis(m.group(1)), snippet)
