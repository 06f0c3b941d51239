"""Search indexing for a whole write transaction at once (``entries_fts_deferred``, m012).

FTS5 writes the words it holds in memory to disk whenever a statement begins in a transaction
that has touched the index. With the triggers indexing row by row, every entry stored became a
small index segment of its own, merged again and again later. Inside :func:`deferred` the triggers
stand aside and the transaction's new and changed entries are indexed by one statement before
it commits. Other connections never see the row that makes them stand aside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlite_utils import Database

from .schema import FTS_COLUMNS, search_index_values

_COLUMNS = ", ".join(FTS_COLUMNS)
_CHUNK = 500


class DeferredIndex:
    """The entries a transaction changed; those it inserted are every id above ``after_id``."""

    def __init__(self, after_id: int, flag: int) -> None:
        self.after_id = after_id
        self._flag = flag
        self._changed: set[int] = set()

    def changed(self, entry_id: int) -> None:
        """An entry whose indexed columns (title, summary, content, their words, article_text) were updated."""
        if entry_id <= self.after_id:
            self._changed.add(entry_id)

    def finish(self, db: Database) -> None:
        changed = sorted(self._changed)
        for start in range(0, len(changed), _CHUNK):
            chunk = changed[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM entries_fts WHERE rowid IN ({marks})", chunk)
            db.execute(
                f"INSERT INTO entries_fts (rowid, {_COLUMNS}) SELECT {search_index_values('e')} FROM entries e WHERE e.id IN ({marks})",
                chunk,
            )
        db.execute(
            f"INSERT INTO entries_fts (rowid, {_COLUMNS}) SELECT {search_index_values('e')} FROM entries e WHERE e.id > ?",
            [self.after_id],
        )
        db.execute("DELETE FROM entries_fts_deferred WHERE rowid = ?", [self._flag])


@contextmanager
def deferred(db: Database) -> Iterator[DeferredIndex]:
    """Within a write transaction: the index is brought up to date when the block ends without error.

    On an error nothing is indexed, and the caller's rollback takes the rows and the marker away.
    """
    after_id = int(db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])
    flag = db.execute("INSERT INTO entries_fts_deferred (after_id) VALUES (?)", [after_id]).lastrowid
    index = DeferredIndex(after_id, int(flag or 0))
    yield index
    index.finish(db)
