"""Write transactions that take SQLite's write lock when they begin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlite_utils import Database


@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """A write transaction holding the write lock from its start; a savepoint inside one already open.

    A deferred transaction (plain ``BEGIN``) that reads before it writes cannot wait for the lock:
    when another process (``aggregator poll`` beside ``aggregator run``, a script) committed in
    between, SQLite fails it at once with "database is locked", whatever the busy timeout.
    ``BEGIN IMMEDIATE`` waits for the other writer instead, up to the busy timeout.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
