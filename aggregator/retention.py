"""How long entries are kept: which feeds prune entries dated before when. A pure decision.

An entry's date is the one the merged feeds sort by: its publication time, or when it was first
seen if it has none or claims a later one. ``retention`` in ``[aggregator]`` applies to every feed,
a feed's own overrides it, and feeds no longer in feeds.toml follow the ``[aggregator]`` one.
What the store then keeps anyway (originals of kept duplicates) is the store's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from .timeutil import iso
from .types import Config


def keeps_everything(config: Config) -> bool:
    """Whether no feed, configured or not, ever prunes: then there is nothing to look for."""
    return config.retention is None and all(feed.retention is None for feed in config.feeds)


def cutoffs(config: Config, feed_urls: Iterable[str], now: datetime) -> dict[str, str]:
    """For each of ``feed_urls`` that prunes, the time (ISO 8601) before which its entries go."""
    configured = {feed.url: feed.retention for feed in config.feeds}
    found = {}
    for url in feed_urls:
        seconds = configured[url] if url in configured else config.retention
        if seconds is not None:
            found[url] = iso(now - timedelta(seconds=seconds))
    return found
