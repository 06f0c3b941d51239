"""The store's schema, changed only through these migrations (documented in docs/schema.md)."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ..sanitize import INLINE_TAGS

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


# Full-text search (m005). The index holds plain text: the triggers strip the tags of the HTML
# columns themselves, in SQL, so the index stays right whoever writes to `entries` (aggregator,
# the sqlite3 shell, Datasette) and a search for "href" or "figure" finds words, not markup.
FTS_COLUMNS = ("title", "summary", "content", "article_text")
FTS_TOKENIZER = "unicode61 remove_diacritics 2"
FTS_RANK = "bm25(10.0, 4.0, 1.0, 1.0)"  # a word in the title counts most, then the summary
_INLINE_TAGS = f" {' '.join(sorted(INLINE_TAGS))} "
_ENTITIES = (("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "''"), ("&amp;", "&"))


def html_text_sql(column: str) -> str:
    """SQL for the text of the sanitised HTML in ``column``: tags dropped, entities decoded.

    json_each splits the HTML at its tags (triggers allow no CTEs, and a Python function would
    not exist in other people's connections). Inline tags vanish (``Brü<b>cke</b>`` stays one
    word); any other tag becomes a space. Sanitised HTML escapes ``<`` and ``>`` in text and
    attributes alike, so they only ever delimit tags.
    """
    parts = f"""json_each('[' || replace(replace(json_quote({column}), '<', '","<'), '>', '>","') || ']')"""
    tag = "substr(value, 2 + (substr(value, 2, 1) = '/'))"
    name = f"lower(substr({tag}, 1, instr(replace(replace({tag}, '>', ' '), '/', ' ') || ' ', ' ') - 1))"
    pieces = f"CASE WHEN substr(value, 1, 1) <> '<' THEN value WHEN instr('{_INLINE_TAGS}', ' ' || {name} || ' ') THEN '' ELSE ' ' END"
    text = f"CASE WHEN instr({column}, '<') THEN (SELECT group_concat({pieces}, '') FROM {parts}) ELSE {column} END"
    for entity, char in _ENTITIES:
        text = f"replace({text}, '{entity}', '{char}')"
    return text


def _fts_values(row: str) -> str:
    """The index row of an entry, from ``new`` (in a trigger) or ``entries`` (the backfill)."""
    return f"{row}.id, {row}.title, {html_text_sql(f'{row}.summary')}, {html_text_sql(f'{row}.content')}, {row}.article_text"


@migrations()
def m005_full_text_search(db: Database) -> None:
    """entries_fts: the plain text of every entry (rowid = entries.id), kept in step by triggers."""
    columns = ", ".join(FTS_COLUMNS)
    db.execute(f"CREATE VIRTUAL TABLE entries_fts USING fts5({columns}, tokenize = '{FTS_TOKENIZER}')")
    db.execute(f"INSERT INTO entries_fts (entries_fts, rank) VALUES ('rank', '{FTS_RANK}')")
    db.execute(f"INSERT INTO entries_fts (rowid, {columns}) SELECT {_fts_values('entries')} FROM entries")
    insert = f"INSERT INTO entries_fts (rowid, {columns})\n    VALUES ({_fts_values('new')});"
    delete = "DELETE FROM entries_fts WHERE rowid = old.id;"
    db.execute(f"CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN\n    {insert}\nEND")
    db.execute(f"CREATE TRIGGER entries_fts_update AFTER UPDATE OF id, {columns} ON entries BEGIN\n    {delete}\n    {insert}\nEND")
    db.execute(f"CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries BEGIN\n    {delete}\nEND")


def _story_feeds(expression: str) -> str:
    """SQL: a JSON array of ``expression`` over the feeds of story ``o``, in the order they reported it."""
    return f"""(SELECT json_group_array(feed) FROM (
            SELECT {expression} AS feed FROM entries m JOIN feeds f ON f.url = m.feed_url
            WHERE m.id = o.id OR m.duplicate_of = o.id GROUP BY m.feed_url ORDER BY min(m.id)))"""


@migrations()
def m006_views(db: Database) -> None:
    """Views for people writing SQL: one row per story, and each feed's health in a word."""
    db.execute(
        f"""
        CREATE VIEW stories AS
        SELECT o.id, o.feed_url, o.title, o.link, o.published, o.first_seen,
            1 + (SELECT count(*) FROM entries d WHERE d.duplicate_of = o.id) AS member_count,
            {_story_feeds("coalesce(f.name, f.title, f.url)")} AS sources,
            {_story_feeds("f.url")} AS feed_urls
        FROM entries o
        WHERE o.duplicate_of IS NULL
        """
    )
    db.execute(
        """
        CREATE VIEW feed_health AS
        SELECT f.url, f.name, f.title,
            CASE WHEN f.last_polled_at IS NULL THEN 'never polled'
                WHEN f.last_error IS NOT NULL THEN 'failing'
                WHEN f.moved_to IS NOT NULL THEN 'moved'
                ELSE 'ok' END AS status,
            f.last_status, f.last_error, f.last_warning, f.error_count, f.last_polled_at,
            f.last_success_at, f.next_poll_at, f.moved_to,
            (SELECT count(*) FROM entries e WHERE e.feed_url = f.url) AS entry_count
        FROM feeds f
        """
    )


@migrations()
def m007_near_duplicates(db: Database) -> None:
    db.execute("ALTER TABLE entries ADD COLUMN fingerprint BLOB")
    db.execute("ALTER TABLE entries ADD COLUMN fingerprint_words INTEGER")
    db.execute("ALTER TABLE entries ADD COLUMN similarity REAL")
    db.execute(
        """
        CREATE TABLE entry_bands (
            key INTEGER NOT NULL,
            entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
            PRIMARY KEY (key, entry_id)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX entry_bands_entry ON entry_bands(entry_id)")


@migrations()
def m009_gone_feeds(db: Database) -> None:
    """A feed that answered 410 Gone is no longer polled: when that happened, and `gone` in feed_health."""
    db.execute("ALTER TABLE feeds ADD COLUMN gone_at TEXT")
    db.execute("DROP VIEW IF EXISTS feed_health")
    db.execute(
        """
        CREATE VIEW feed_health AS
        SELECT f.url, f.name, f.title,
            CASE WHEN f.last_polled_at IS NULL THEN 'never polled'
                WHEN f.gone_at IS NOT NULL THEN 'gone'
                WHEN f.last_error IS NOT NULL THEN 'failing'
                WHEN f.moved_to IS NOT NULL THEN 'moved'
                ELSE 'ok' END AS status,
            f.last_status, f.last_error, f.last_warning, f.error_count, f.last_polled_at,
            f.last_success_at, f.next_poll_at, f.moved_to, f.gone_at,
            (SELECT count(*) FROM entries e WHERE e.feed_url = f.url) AS entry_count
        FROM feeds f
        """
    )


ENTRY_DATE_SQL = "min(coalesce(published, first_seen), first_seen)"


@migrations()
def m010_retention(db: Database) -> None:
    """Pruning by age: entries found by feed and date; pruned entries remembered while their feed lists them.

    Also mends stories that an edited original made point at themselves (``duplicate_of = id``).
    """
    db.execute(f"CREATE INDEX entries_feed_date ON entries(feed_url, {ENTRY_DATE_SQL})")
    db.execute(
        """
        CREATE TABLE pruned_entries (
            feed_url TEXT NOT NULL,
            guid TEXT NOT NULL,
            pruned_at TEXT NOT NULL,
            PRIMARY KEY (feed_url, guid)
        ) WITHOUT ROWID
        """
    )
    db.execute("UPDATE entries SET duplicate_of = NULL, duplicate_rule = NULL, similarity = NULL WHERE duplicate_of = id")


def _text_or_html(row: str, column: str, stale: str | None = None) -> str:
    """SQL: the stored words of ``column`` (``<column>_text``, written by aggregator), else its HTML
    stripped in SQL (a row someone else wrote); ``stale`` is when the words no longer match the HTML."""
    words, markup = f"{row}.{column}_text", html_text_sql(f"{row}.{column}")
    usable = f"{words} IS NOT NULL" + (f" AND NOT ({stale})" if stale else "")
    return f"CASE WHEN {usable} THEN {words} ELSE {markup} END"


@migrations()
def m011_search_text(db: Database) -> None:
    """The words of summary and content, taken from the parse workers rather than stripped in SQL.

    Stripping HTML in the triggers cost the writing process more than indexing the words. Rows
    written by others (no ``*_text``, or HTML changed without its words) are still stripped in SQL.
    """
    db.execute("ALTER TABLE entries ADD COLUMN summary_text TEXT")
    db.execute("ALTER TABLE entries ADD COLUMN content_text TEXT")
    for trigger in ("entries_fts_insert", "entries_fts_update"):
        db.execute(f"DROP TRIGGER {trigger}")
    columns = ", ".join(FTS_COLUMNS)
    stale = "new.{0} IS NOT old.{0} AND new.{0}_text IS old.{0}_text"
    values = {
        "insert": f"new.id, new.title, {_text_or_html('new', 'summary')}, {_text_or_html('new', 'content')}, new.article_text",
        "update": f"new.id, new.title, {_text_or_html('new', 'summary', stale.format('summary'))}, "
        f"{_text_or_html('new', 'content', stale.format('content'))}, new.article_text",
    }
    db.execute(
        f"CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN\n"
        f"    INSERT INTO entries_fts (rowid, {columns}) VALUES ({values['insert']});\nEND"
    )
    db.execute(
        f"CREATE TRIGGER entries_fts_update AFTER UPDATE OF id, {columns}, summary_text, content_text ON entries BEGIN\n"
        f"    DELETE FROM entries_fts WHERE rowid = old.id;\n"
        f"    INSERT INTO entries_fts (rowid, {columns}) VALUES ({values['update']});\nEND"
    )


@migrations()
def m012_deferred_search_index(db: Database) -> None:
    """entries_fts_deferred: while a write transaction holds a row there, the insert and update
    triggers leave entries_fts to the writer, which indexes the transaction's entries in one statement.

    FTS5 writes its pending words to disk at every statement of a transaction that touches it, so
    a trigger per row wrote one small index segment per entry, to be merged again later.
    """
    db.execute("CREATE TABLE entries_fts_deferred (after_id INTEGER NOT NULL)")
    for trigger in ("entries_fts_insert", "entries_fts_update"):
        db.execute(f"DROP TRIGGER {trigger}")
    columns = ", ".join(FTS_COLUMNS)
    when = "WHEN NOT EXISTS (SELECT 1 FROM entries_fts_deferred)"
    db.execute(
        f"CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries {when} BEGIN\n"
        f"    INSERT INTO entries_fts (rowid, {columns}) VALUES ({search_index_values('new')});\nEND"
    )
    db.execute(
        f"CREATE TRIGGER entries_fts_update AFTER UPDATE OF id, {columns}, summary_text, content_text ON entries {when} BEGIN\n"
        f"    DELETE FROM entries_fts WHERE rowid = old.id;\n"
        f"    INSERT INTO entries_fts (rowid, {columns}) VALUES ({search_index_values('new', before='old')});\nEND"
    )


def search_index_values(row: str, *, before: str | None = None) -> str:
    """SQL for the ``entries_fts`` row (rowid first) of ``row``, a row of ``entries``. With ``before``
    (``old`` in the update trigger), words left unchanged while their HTML changed are not trusted."""
    changed = "{0}.{2} IS NOT {1}.{2} AND {0}.{2}_text IS {1}.{2}_text"
    summary = _text_or_html(row, "summary", changed.format(row, before, "summary") if before else None)
    content = _text_or_html(row, "content", changed.format(row, before, "content") if before else None)
    return f"{row}.id, {row}.title, {summary}, {content}, {row}.article_text"


@migrations()
def m013_band_index_in_memory(db: Database) -> None:
    """entry_bands goes: the near-duplicate band index is built in memory from entries.fingerprint.

    Its 16 rows per entry at random keys rewrote most of the table's pages at every commit.
    """
    db.execute("DROP TABLE entry_bands")
