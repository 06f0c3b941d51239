"""When a feed is due again. Pure decisions: every function takes ``now`` (and any randomness) as arguments.

The next poll is the feed's interval from now, jittered by up to ±10% so feeds
added together drift apart, then raised to honour what the publisher asked
for (``<ttl>``, ``sy:updatePeriod``, ``Cache-Control: max-age``, ``Expires``,
``Retry-After``). Failures back off exponentially, capped at one day, and the
feed keeps being retried. ``interval = "auto"`` derives the interval from how
often the feed publishes, clamped between configurable bounds.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from .timeutil import parse_iso

MAX_RETRY_AFTER = timedelta(days=7)
MAX_PUBLISHER_HINT = timedelta(days=1)
MAX_BACKOFF = timedelta(days=1)
JITTER = 0.1
AUTO_SAMPLE = 20
_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000, "yearly": 31536000}


@dataclass(frozen=True)
class Interval:
    """How often a feed is polled: a fixed number of seconds, or ``auto`` within bounds."""

    seconds: float
    auto: bool = False
    minimum: float = 300.0
    maximum: float = 86400.0


@dataclass(frozen=True)
class Hints:
    """What the publisher said about polling, from the feed and the response."""

    ttl: float | None = None
    max_age: float | None = None
    expires: datetime | None = None
    retry_after: datetime | None = None


def retry_after(value: str | None, now: datetime) -> datetime | None:
    """The moment a ``Retry-After`` header (seconds or HTTP date) points at, at most a week out."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        moment = now + timedelta(seconds=int(text))
    else:
        moment = _http_date(text)
        if moment is None:
            return None
    return min(max(moment, now), now + MAX_RETRY_AFTER)


def _http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def response_hints(headers: Mapping[str, str], now: datetime) -> Hints:
    """``Cache-Control: max-age``, ``Expires`` and ``Retry-After`` of a response (lower-case header names)."""
    match = _MAX_AGE.search(headers.get("cache-control", ""))
    expires = _http_date(headers.get("expires"))
    return Hints(
        max_age=float(match.group(1)) if match else None,
        expires=expires if expires and expires > now else None,
        retry_after=retry_after(headers.get("retry-after"), now),
    )


def feed_ttl(ttl: object, update_period: object, update_frequency: object) -> float | None:
    """Seconds a feed asks to be left alone: RSS ``<ttl>`` (minutes) or ``sy:updatePeriod``/``sy:updateFrequency``."""
    seconds = []
    if isinstance(ttl, str) and ttl.strip().isdigit() and int(ttl) > 0:
        seconds.append(int(ttl) * 60.0)
    period = _PERIODS.get(str(update_period or "").strip().lower())
    if period:
        frequency = str(update_frequency or "1").strip()
        seconds.append(period / max(int(frequency) if frequency.isdigit() else 1, 1))
    return max(seconds) if seconds else None


def publish_interval(published: Iterable[str | None]) -> float | None:
    """Median seconds between the feed's most recent entries (ISO 8601 UTC), None with fewer than three dates."""
    moments = sorted({_iso(p) for p in published if p} - {None}, reverse=True)[:AUTO_SAMPLE]
    if len(moments) < 3:
        return None
    gaps = [(a - b).total_seconds() for a, b in zip(moments, moments[1:])]
    return max(statistics.median(gaps), 1.0)


def _iso(text: str) -> datetime | None:
    try:
        return parse_iso(text)
    except ValueError:
        return None


def base_interval(interval: Interval, published_every: float | None) -> float:
    """The interval in force: fixed, or for ``auto`` the publishing rhythm clamped to the bounds."""
    if not interval.auto:
        return interval.seconds
    seconds = published_every if published_every is not None else interval.seconds
    return min(max(seconds, interval.minimum), interval.maximum)


def next_poll(
    now: datetime,
    interval: float,
    *,
    not_before: datetime | None = None,
    hints: Hints = Hints(),
    errors: int = 0,
    jitter: float = 0.5,
) -> datetime:
    """When the feed is due again.

    ``interval`` is the base interval in seconds, ``errors`` the consecutive
    failures including this poll, ``jitter`` a number in [0, 1) (0.5: none).
    """
    seconds = interval * (1 + JITTER * (2 * jitter - 1))
    if errors:
        seconds = min(interval * 2 ** (errors - 1), MAX_BACKOFF.total_seconds())
    due = now + timedelta(seconds=seconds)
    for hint in (hints.ttl, hints.max_age):
        if hint:
            due = max(due, now + min(timedelta(seconds=hint), MAX_PUBLISHER_HINT))
    limits = ((hints.expires, MAX_PUBLISHER_HINT), (hints.retry_after, MAX_RETRY_AFTER), (not_before, MAX_RETRY_AFTER))
    for moment, cap in limits:
        if moment:
            due = max(due, min(moment, now + cap))
    return due


ARTICLE_RETRY_BASE = timedelta(minutes=15)
ARTICLE_RETRY_CAP = timedelta(days=1)


def article_retry_at(attempts: int, now: datetime, *, max_attempts: int) -> datetime | None:
    """When a failed extraction is tried again (15 min, 1 h, 4 h, 16 h, ...), None after the last attempt."""
    if attempts >= max_attempts:
        return None
    return now + min(ARTICLE_RETRY_BASE * 4 ** max(attempts - 1, 0), ARTICLE_RETRY_CAP)
