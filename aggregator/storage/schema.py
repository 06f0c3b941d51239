"""The store's schema, changed only through these migrations (documented in docs/schema.md)."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("aggregator")


@migrations()
def m001_feeds_and_entries(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE feeds (
            url TEXT PRIMARY KEY,
            name TEXT,
            title TEXT,
            site_url TEXT,
            language TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            etag TEXT,
            last_modified TEXT,
            body_hash TEXT,
            last_polled_at TEXT,
            last_success_at TEXT,
            last_status INTEGER,
            last_error TEXT,
            last_warning TEXT,
            error_count INTEGER NOT NULL DEFAULT 0,
            next_poll_at TEXT,
            moved_to TEXT,
            added_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            feed_url TEXT NOT NULL REFERENCES feeds(url),
            guid TEXT NOT NULL,
            url TEXT,
            link TEXT,
            title TEXT,
            author TEXT,
            published TEXT,
            updated TEXT,
            summary TEXT,
            content TEXT,
            article_text TEXT,
            article_html TEXT,
            language TEXT,
            first_seen TEXT NOT NULL,
            changed_at TEXT,
            content_hash TEXT NOT NULL,
            duplicate_of INTEGER REFERENCES entries(id),
            duplicate_rule TEXT,
            UNIQUE (feed_url, guid)
        )
        """
    )
    db.execute("CREATE INDEX entries_url ON entries(url)")
    db.execute("CREATE INDEX entries_duplicate_of ON entries(duplicate_of)")
    db.execute("CREATE INDEX entries_feed_published ON entries(feed_url, published)")
    db.execute("CREATE INDEX entries_published ON entries(published)")


@migrations()
def m002_article_extraction(db: Database) -> None:
    for column, definition in (
        ("extraction_status", "TEXT"),
        ("extraction_error", "TEXT"),
        ("extraction_attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("extraction_next_at", "TEXT"),
        ("extracted_at", "TEXT"),
    ):
        db.execute(f"ALTER TABLE entries ADD COLUMN {column} {definition}")
    db.execute("CREATE INDEX entries_extraction_due ON entries(extraction_status, extraction_next_at)")


@migrations()
def m003_drop_unused_indexes(db: Database) -> None:
    """Nothing queries entries by publication date through an index; each one cost every insert."""
    db.execute("DROP INDEX IF EXISTS entries_feed_published")
    db.execute("DROP INDEX IF EXISTS entries_published")


@migrations()
def m004_feed_rhythm(db: Database) -> None:
    db.execute("ALTER TABLE feeds ADD COLUMN ttl INTEGER")
    db.execute("ALTER TABLE feeds ADD COLUMN publish_interval INTEGER")
    db.execute("CREATE INDEX feeds_next_poll_at ON feeds(next_poll_at)")
