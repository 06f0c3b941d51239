"""Reads and writes of the SQLite store. No network I/O inside a transaction.

A feed's writes are atomic: its entries and its new state commit together (the poll pipeline
writes a feed of more than ``pipeline.STORE_CHUNK`` entries in chunks, its state with the last).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from ..dedup import (
    RULE_LINKED,
    RULE_URL,
    Candidate,
    DedupSettings,
    Fingerprint,
    Match,
    match_url,
    stories_near,
)
from ..exceptions import StorageError
from ..types import (
    ArticleJob,
    FeedConfig,
    FeedState,
    FetchResult,
    ParsedEntry,
    ParsedFeed,
)
from . import retention, search_index, stories
from .articles import ArticleLedger
from .bands import BandIndex
from .schema import migrations
from .transactions import immediate

BUSY_TIMEOUT_SECONDS = 30
# The WAL is copied back into the database once it holds this many pages (40 MiB) rather than
# SQLite's 1,000: pages written by many commits (index pages, the near-duplicate bands) are copied once.
WAL_CHECKPOINT_PAGES = 10_000


@dataclass(frozen=True)
class StoreCounts:
    new: int = 0
    updated: int = 0
    duplicates: int = 0
    jobs: tuple[ArticleJob, ...] = ()


@dataclass(frozen=True)
class FeedWrite:
    """One successful poll to store: the feed's entries and its new state."""

    url: str
    parsed: ParsedFeed
    result: FetchResult
    now: str
    next_poll_at: str
    full_text: bool = False


@dataclass(frozen=True)
class FeedUnchanged:
    """A successful poll that brought nothing new (304, or the same body): only the feed's state changes."""

    url: str
    result: FetchResult
    now: str
    next_poll_at: str


@dataclass(frozen=True)
class FeedFailed:
    """A failed poll: its error, and when to try again (``next_poll_at`` None for a feed that is gone)."""

    url: str
    error: str
    status: int | None
    now: str
    next_poll_at: str | None


PollWrite = FeedWrite | FeedUnchanged | FeedFailed


@dataclass(frozen=True)
class FeedRow:
    url: str
    name: str | None
    title: str | None
    site_url: str | None
    tags: str
    last_polled_at: str | None
    last_success_at: str | None
    last_status: int | None
    last_error: str | None
    last_warning: str | None
    error_count: int
    next_poll_at: str | None
    moved_to: str | None
    gone_at: str | None

    @property
    def display_name(self) -> str:
        return self.name or self.title or self.url


@dataclass(frozen=True)
class EntryRow:
    id: int
    feed_url: str
    guid: str
    url: str | None
    link: str | None
    title: str | None
    author: str | None
    published: str | None
    updated: str | None
    summary: str | None
    content: str | None
    article_text: str | None
    article_html: str | None
    language: str | None
    first_seen: str
    duplicate_of: int | None
    feed_title: str | None
    feed_site_url: str | None

    @property
    def story_id(self) -> int:
        return self.duplicate_of if self.duplicate_of is not None else self.id


_ENTRY_COLUMNS = ", ".join(f"e.{f.name}" for f in fields(EntryRow) if not f.name.startswith("feed_") or f.name == "feed_url")
_FEED_COLUMNS = ", ".join(f.name for f in fields(FeedRow))


class Store:
    def __init__(self, db: Database, path: Path) -> None:
        self.db = db
        self.path = path
        self.dedup = DedupSettings()
        self.dedup_opted_out: frozenset[str] = frozenset()
        self.articles = ArticleLedger(db, self._write, self._article_text_changed)
        self.bands = BandIndex.shared(path)
        self._released = False
        self._horizon = stories.BandHorizon()
        self._clock = 0.0  # the time of the write in progress, for the band index's horizon
        self._bands_current = False  # the band index has read what others stored, in this transaction

    def configure_dedup(self, settings: DedupSettings, feeds: Sequence[FeedConfig]) -> None:
        self.dedup = settings
        self.dedup_opted_out = frozenset(feed.url for feed in feeds if not feed.dedup)

    def _article_text_changed(self, db: Database, entry_id: int, fingerprint: Fingerprint | None) -> None:
        """An extracted article fingerprints the entry better than its teaser: decide its story again."""
        feed_url = self.scalar("SELECT feed_url FROM entries WHERE id = ?", [entry_id])
        if fingerprint is None or feed_url is None or not self.near_duplicates(feed_url):
            return
        self._clock, self._bands_current = time.time(), False
        bands = self._band_index(db)
        stories.save_fingerprint(db, entry_id, fingerprint, bands)
        stories.reevaluate_near(db, bands, entry_id, self.dedup)

    def _band_index(self, db: Database) -> BandIndex:
        """The band index, brought up to date once per write transaction, when first needed in it."""
        if not self._bands_current:
            if self.bands.seen is None:  # loaded from the entries first seen within two windows
                self.bands.prune(stories.first_seen_before(db, self._clock - 2 * self.dedup.window))
            self.bands.catch_up(db, self.near_duplicates)
            self._bands_current = True
        return self.bands

    @classmethod
    def open(cls, path: str | Path, *, cache_mib: int | None = None) -> Store:
        """Open (creating and migrating) the store at ``path``; ``cache_mib`` sizes SQLite's page cache
        of this connection (default 2 MiB) and keeps its temporary data (savepoint journals) in memory:
        worth it for a connection that writes a lot. Other connections spill a large sort to a file."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
            db = Database(conn)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
            db.enable_wal()
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            if cache_mib is not None:
                db.execute(f"PRAGMA cache_size = {-1024 * cache_mib}")
                db.execute("PRAGMA temp_store = MEMORY")
            db.execute("PRAGMA foreign_keys = ON")
            migrations.apply(db)
        except (sqlite3.Error, OSError) as e:
            raise StorageError(f"{path}: cannot open the database: {e}") from e
        return cls(db, path)

    def close(self) -> None:
        self.db.close()
        if not self._released:
            self._released = True
            BandIndex.release(self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Database]:
        try:
            with immediate(self.db):  # waits for another writer; a deferred BEGIN could fail at once
                yield self.db
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: write failed: {e}") from e

    def sync_feeds(self, feeds: Sequence[FeedConfig], now: str) -> None:
        """Make the configured feeds known to the store; their entries are never touched here."""
        rows = [(f.url, f.name, json.dumps(list(f.tags), ensure_ascii=False), now) for f in feeds]
        with self._write() as db:
            db.conn.executemany(
                """
                INSERT INTO feeds (url, name, tags, added_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(url) DO UPDATE SET name = excluded.name, tags = excluded.tags
                """,
                rows,
            )

    def feed_states(self, urls: Iterable[str]) -> dict[str, FeedState]:
        states = {}
        for chunk in _chunks(list(urls)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"""SELECT url, etag, last_modified, moved_to, body_hash, error_count, ttl, publish_interval
                FROM feeds WHERE url IN ({marks})""",
                chunk,
            ):
                states[row[0]] = FeedState(*row)
        return states

    def due_feeds(self, now: str, limit: int = 1_000_000) -> list[str]:
        """Feeds due for a poll (never polled first, then the most overdue), configured or not; never gone ones."""
        fresh = [
            row[0]
            for row in self.db.execute("SELECT url FROM feeds WHERE next_poll_at IS NULL AND gone_at IS NULL LIMIT ?", [limit])
        ]
        overdue = self.db.execute(
            "SELECT url FROM feeds WHERE next_poll_at <= ? ORDER BY next_poll_at LIMIT ?", [now, limit - len(fresh)]
        )
        return fresh + [row[0] for row in overdue]

    def gone_feeds(self, urls: Iterable[str]) -> set[str]:
        """Which of these feeds answered 410 Gone and are no longer polled."""
        gone: set[str] = set()
        for chunk in _chunks(list(urls)):
            marks = ",".join("?" * len(chunk))
            gone.update(row[0] for row in self.db.execute(
                f"SELECT url FROM feeds WHERE gone_at IS NOT NULL AND url IN ({marks})", chunk
            ))
        return gone

    def poll_no_later_than(self, urls: Sequence[str], moment: str) -> None:
        """Bring the next poll of these feeds forward to ``moment`` where it is later (a shorter interval)."""
        with self._write() as db:
            db.conn.executemany(
                "UPDATE feeds SET next_poll_at = ? WHERE url = ? AND next_poll_at > ?", [(moment, url, moment) for url in urls]
            )

    def last_success(self) -> str | None:
        return self.scalar("SELECT max(last_success_at) FROM feeds")

    def feed_counts(self) -> tuple[int, int]:
        row = self.db.execute("SELECT count(*), count(last_error) FROM feeds").fetchone()
        return int(row[0]), int(row[1])

    def store_feed(
        self, url: str, parsed: ParsedFeed, result: FetchResult, *, now: str, next_poll_at: str,
        full_text: bool = False,
    ) -> StoreCounts:
        """Upsert a feed's entries and its state in one transaction.

        With ``full_text``, new and changed entries are queued for article
        extraction; the jobs are returned.
        """
        outcome = self.store_feeds([FeedWrite(url, parsed, result, now, next_poll_at, full_text)])[0]
        if isinstance(outcome, StorageError):
            raise outcome
        return outcome

    def store_feeds(self, writes: Sequence[PollWrite]) -> list[StoreCounts | StorageError]:
        """Store several polls in one transaction, each feed's entries in a savepoint of its own.

        Failed and unchanged polls only update their feed's row (one statement, and count nothing).
        A feed whose writes fail is rolled back alone and gets its error; the others commit.
        One commit for several feeds shares its cost (the index pages, the full-text segment).
        """
        stored = [w for w in writes if isinstance(w, FeedWrite)]
        if not stored:
            with self._write() as db:
                return [self._store_state(db, write) for write in writes]
        self._clock, self._bands_current = max(stories.moment(None, w.now) for w in stored), False
        try:
            with self._write() as db:
                with search_index.deferred(db) as index:
                    outcomes = [
                        self._store_one(write, index) if isinstance(write, FeedWrite) else self._store_state(db, write)
                        for write in writes
                    ]
                newest = 0
                if self.dedup.enabled:
                    newest = self._horizon.advance(db, self.bands, self._clock, self.dedup.window)
            if self._bands_current:  # only with dedup on: the index is used for near duplicates alone
                self.bands.committed(newest)
            return outcomes
        finally:
            self._bands_current = False

    def _store_one(self, write: FeedWrite, index: search_index.DeferredIndex) -> StoreCounts | StorageError:
        try:
            with self.db.atomic() as db:
                counts = self._upsert_entries(db, write.url, write.parsed.entries, write.now, write.full_text, index)
                self._record_success(db, write.url, write.result, write.parsed, write.now, write.next_poll_at)
        except sqlite3.Error as e:
            return self._failed(write, e)
        return counts

    def _store_state(self, db: Database, write: FeedUnchanged | FeedFailed) -> StoreCounts | StorageError:
        """One UPDATE of the feed's row: a statement that fails changes nothing, so no savepoint."""
        try:
            if isinstance(write, FeedUnchanged):
                self._record_success(db, write.url, write.result, None, write.now, write.next_poll_at)
            else:
                _record_failed(db, write)
        except sqlite3.Error as e:
            return self._failed(write, e)
        return StoreCounts()

    def _failed(self, write: PollWrite, error: sqlite3.Error) -> StorageError:
        if not self.db.conn.in_transaction:
            raise error  # the error ended the whole transaction: no feed of the batch is stored
        return StorageError(f"{self.path}: cannot store {write.url}: {error}")

    def _record_success(
        self, db: Database, url: str, result: FetchResult, parsed: ParsedFeed | None, now: str, next_poll_at: str
    ) -> None:
        headers = result.headers
        db.execute(
            """
            UPDATE feeds SET
                title = coalesce(?, title), site_url = coalesce(?, site_url), language = coalesce(?, language),
                etag = CASE WHEN ? = 304 THEN coalesce(?, etag) ELSE ? END,
                last_modified = CASE WHEN ? = 304 THEN coalesce(?, last_modified) ELSE ? END,
                body_hash = coalesce(?, body_hash),
                last_polled_at = ?, last_success_at = ?, last_status = ?, last_error = NULL,
                last_warning = ?, error_count = 0, next_poll_at = ?, gone_at = NULL,
                moved_to = coalesce(?, moved_to),
                ttl = CASE WHEN ? THEN ? ELSE ttl END,
                publish_interval = CASE WHEN ? THEN coalesce(?, publish_interval) ELSE publish_interval END
            WHERE url = ?
            """,
            [
                parsed.title if parsed else None,
                parsed.site_url if parsed else None,
                parsed.language if parsed else None,
                result.status, headers.get("etag"), headers.get("etag"),
                result.status, headers.get("last-modified"), headers.get("last-modified"),
                body_hash(result.body) if result.body else None,
                now, now, result.status,
                parsed.warning if parsed else None,
                next_poll_at,
                result.permanent_redirect,
                parsed is not None, parsed.ttl if parsed else None,
                parsed is not None, round(parsed.publish_interval) if parsed and parsed.publish_interval else None,
                url,
            ],
        )

    def _upsert_entries(
        self, db: Database, feed_url: str, entries: Sequence[ParsedEntry], now: str, full_text: bool,
        index: search_index.DeferredIndex,
    ) -> StoreCounts:
        entries = retention.unpruned(db, feed_url, entries)
        existing = self._existing(db, feed_url, [e.guid for e in entries])
        fresh = [e for e in entries if e.guid not in existing]
        candidates = self._candidates(db, {e.url for e in fresh if e.url})
        near = (
            stories.BatchIndex(db, self._band_index(db), [e.fingerprint for e in fresh if e.fingerprint])
            if self.near_duplicates(feed_url) and fresh else None
        )
        new = updated = duplicates = 0
        jobs: list[ArticleJob] = []
        for entry in reversed(entries):
            known = existing.get(entry.guid)
            if known is None:
                entry_id, match = self._insert(db, feed_url, entry, now, candidates, full_text, near)
                new += 1
                duplicates += match is not None
            elif known[1] != entry.content_hash:
                entry_id, match = known[0], self._update(db, feed_url, known[0], entry, now, full_text)
                index.changed(entry_id)
                updated += 1
            else:
                continue
            if full_text and entry.link and (match is None or match.rule != RULE_URL):  # as _extraction_state
                jobs.append(ArticleJob(entry_id=entry_id, feed_url=feed_url, url=entry.link))
        if near is not None:
            near.flush()
        return StoreCounts(new=new, updated=updated, duplicates=duplicates, jobs=tuple(jobs))

    def _existing(self, db: Database, feed_url: str, guids: list[str]) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(guids):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT guid, id, content_hash FROM entries WHERE feed_url = ? AND guid IN ({marks})",
                [feed_url, *chunk],
            )
            found.update((guid, (entry_id, digest)) for guid, entry_id, digest in rows)
        return found

    def _candidates(self, db: Database, keys: set[str]) -> dict[str, list[Candidate]]:
        """Stored entries sharing each canonical URL, oldest first."""
        found: dict[str, list[Candidate]] = {key: [] for key in keys}
        for chunk in _chunks(sorted(keys)):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT url, id, duplicate_of FROM entries WHERE url IN ({marks}) ORDER BY id", chunk)
            for key, entry_id, duplicate_of in rows:
                found[key].append(Candidate(id=entry_id, duplicate_of=duplicate_of))
        return found

    def _insert(
        self, db: Database, feed_url: str, entry: ParsedEntry, now: str,
        candidates: dict[str, list[Candidate]], full_text: bool, near: stories.BatchIndex | None,
    ) -> tuple[int, Match | None]:
        when = stories.moment(entry.published, now)
        match = match_url(candidates.get(entry.url, [])) if entry.url else None
        linked: list[Match] = []
        if match is None and near is not None and entry.fingerprint is not None:
            found = stories_near(entry.fingerprint, when, near.candidates(entry.fingerprint), self.dedup, None, feed_url)
            match, linked = (found[0], found[1:]) if found else (None, [])
        status, reason = _extraction_state(entry, match, full_text)
        fingerprint = entry.fingerprint
        cursor = db.execute(
            """
            INSERT INTO entries (feed_url, guid, url, link, title, author, published, updated, summary,
                content, summary_text, content_text, language, first_seen, content_hash, duplicate_of,
                duplicate_rule, similarity, extraction_status, extraction_error, fingerprint, fingerprint_words)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                feed_url, entry.guid, entry.url, entry.link, entry.title, entry.author, entry.published,
                entry.updated, entry.summary, entry.content, entry.summary_text, entry.content_text,
                entry.language, now, entry.content_hash,
                match.original_id if match else None, match.rule if match else None,
                match.similarity if match else None, status, reason,
                fingerprint.signature if fingerprint else None, fingerprint.words if fingerprint else None,
            ],
        )
        entry_id = int(cursor.lastrowid or 0)
        if fingerprint is not None and near is not None:
            duplicate_of = match.original_id if match else None
            near.add(stories.NearCandidate(entry_id, duplicate_of, fingerprint, when, feed_url))
            for story in linked:
                near.link(db, story.original_id, Match(duplicate_of or entry_id, RULE_LINKED, story.similarity))
        if entry.url:
            candidates[entry.url].append(Candidate(id=entry_id, duplicate_of=match.original_id if match else None))
        return entry_id, match

    def near_duplicates(self, feed_url: str) -> bool:
        """Whether this feed's entries take part in near-duplicate detection."""
        return self.dedup.enabled and feed_url not in self.dedup_opted_out

    def _update(
        self, db: Database, feed_url: str, entry_id: int, entry: ParsedEntry, now: str, full_text: bool
    ) -> Match | None:
        db.execute(
            """
            UPDATE entries SET url = ?, link = ?, title = ?, author = ?, published = ?, updated = ?,
                summary = ?, content = ?, summary_text = ?, content_text = ?, language = coalesce(?, language),
                changed_at = ?, content_hash = ?
            WHERE id = ?
            """,
            [entry.url, entry.link, entry.title, entry.author, entry.published, entry.updated,
             entry.summary, entry.content, entry.summary_text, entry.content_text, entry.language, now,
             entry.content_hash, entry_id],
        )
        banded = self._band_index(db) if self.near_duplicates(feed_url) else None
        stories.save_fingerprint(db, entry_id, entry.fingerprint, banded)
        match = self._reevaluate(db, entry_id, entry.url, feed_url)
        if full_text:
            status, reason = _extraction_state(entry, match, full_text)
            db.execute(
                """
                UPDATE entries SET extraction_status = ?, extraction_error = ?, extraction_attempts = 0,
                    extraction_next_at = NULL
                WHERE id = ?
                """,
                [status, reason, entry_id],
            )
        return match

    def _reevaluate(self, db: Database, entry_id: int, key: str | None, feed_url: str) -> Match | None:
        """An edited entry may now match an earlier story; it and its members then join that story."""
        row = db.execute("SELECT duplicate_of, duplicate_rule FROM entries WHERE id = ?", [entry_id]).fetchone()
        if row is None or row[0] is not None:
            return Match(original_id=row[0], rule=row[1]) if row else None
        match = match_url(self._candidates(db, {key}).get(key, []) if key else [], own_id=entry_id)
        if match is not None:
            stories.join(db, entry_id, match)
            return match
        if not self.near_duplicates(feed_url):
            return None
        return stories.reevaluate_near(db, self._band_index(db), entry_id, self.dedup)

    def entries_for_output(self, feed_urls: Sequence[str] | None, limit: int) -> list[EntryRow]:
        """Newest first, one entry per story: the earliest member among ``feed_urls``."""
        where, params = "", []
        if feed_urls is not None:
            if not feed_urls:
                return []
            where = f"WHERE e.feed_url IN ({','.join('?' * len(feed_urls))})"
            params = list(feed_urls)
        # Stories' first members are chosen on a few small columns and only the ``limit`` newest are read
        # whole: sorting every entry with its text would cost memory and time in proportion to the store.
        sql = f"""
            WITH firsts AS (
                SELECT min(e.id) AS id, min(coalesce(e.published, e.first_seen), e.first_seen) AS moment
                FROM entries e {where}
                GROUP BY coalesce(e.duplicate_of, e.id)
            ), newest AS (
                SELECT id, moment FROM firsts ORDER BY moment DESC, id DESC LIMIT ?
            )
            SELECT {_ENTRY_COLUMNS}, f.title AS feed_title, f.site_url AS feed_site_url
            FROM newest n JOIN entries e ON e.id = n.id JOIN feeds f ON f.url = e.feed_url
            ORDER BY n.moment DESC, n.id DESC
        """
        rows = self.db.execute(sql, [*params, limit]).fetchall()
        return [EntryRow(*row) for row in rows]

    def also_reported_by(self, rows: Sequence[EntryRow]) -> dict[int, list[stories.Source]]:
        """For each shown entry, the story's other members: where else it was reported."""
        found = stories.sources(self.db, sorted({row.story_id for row in rows}))
        return {row.id: [s for s in found.get(row.story_id, []) if s.entry_id != row.id] for row in rows}

    def story(self, entry_id: int) -> list[stories.Member]:
        """The story an entry belongs to: its original first, then every member with why it joined."""
        return stories.members(self.db, entry_id)

    def feeds(self) -> list[FeedRow]:
        rows = self.db.execute(f"SELECT {_FEED_COLUMNS} FROM feeds ORDER BY url").fetchall()
        return [FeedRow(*row) for row in rows]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.db.execute(sql, list(params)).fetchone()
        return row[0] if row else None


def _extraction_state(entry: ParsedEntry, match: Match | None, full_text: bool) -> tuple[str | None, str | None]:
    """Whether a stored entry's page is to be fetched: ``(status, reason)``."""
    if not full_text:
        return None, None
    if not entry.link:
        return "skipped", "the entry has no link"
    if match is not None and match.rule == RULE_URL:
        return "skipped", f"same page as entry {match.original_id}"
    return "pending", None


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def _record_failed(db: Database, failed: FeedFailed) -> None:
    """The feed's error; with no next poll (410 Gone), also since when it is gone."""
    db.execute(
        """
        UPDATE feeds SET last_polled_at = ?, last_status = ?, last_error = ?,
            error_count = error_count + 1, next_poll_at = ?,
            gone_at = CASE WHEN ? IS NULL THEN coalesce(gone_at, ?) END
        WHERE url = ?
        """,
        [failed.now, failed.status, failed.error, failed.next_poll_at, failed.next_poll_at, failed.now, failed.url],
    )


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
