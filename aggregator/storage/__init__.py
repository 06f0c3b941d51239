"""The SQLite store: the only module that reads and writes the database."""

from .store import EntryRow, FeedRow, Store, StoreCounts

__all__ = ["EntryRow", "FeedRow", "Store", "StoreCounts"]
