"""When a feed is due again. Pure decisions: every function takes ``now``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = timedelta(days=7)


def retry_after(value: str | None, now: datetime) -> datetime | None:
    """The moment a ``Retry-After`` header (seconds or HTTP date) points at, at most a week out."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        moment = now + timedelta(seconds=int(text))
    else:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return min(max(moment, now), now + MAX_RETRY_AFTER)


def next_poll(now: datetime, interval: float, *, not_before: datetime | None = None) -> datetime:
    """The feed's interval from now, and never earlier than ``not_before``."""
    due = now + timedelta(seconds=interval)
    return max(due, not_before) if not_before else due


ARTICLE_RETRY_BASE = timedelta(minutes=15)
ARTICLE_RETRY_CAP = timedelta(days=1)


def article_retry_at(attempts: int, now: datetime, *, max_attempts: int) -> datetime | None:
    """When a failed extraction is tried again (15 min, 1 h, 4 h, 16 h, ...), None after the last attempt."""
    if attempts >= max_attempts:
        return None
    return now + min(ARTICLE_RETRY_BASE * 4 ** max(attempts - 1, 0), ARTICLE_RETRY_CAP)
