from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.schedule import next_poll, retry_after

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_retry_after_seconds_and_dates():
    assert retry_after("120", NOW) == NOW + timedelta(seconds=120)
    assert retry_after("Thu, 26 Nov 2026 15:00:00 GMT", NOW) == NOW + timedelta(hours=3)


def test_retry_after_bounds_and_garbage():
    assert retry_after("Thu, 26 Nov 2026 09:00:00 GMT", NOW) == NOW
    assert retry_after(str(30 * 86400), NOW) == NOW + timedelta(days=7)
    assert retry_after("soon", NOW) is None
    assert retry_after("", NOW) is None and retry_after(None, NOW) is None


def test_next_poll_honours_not_before():
    assert next_poll(NOW, 900) == NOW + timedelta(minutes=15)
    assert next_poll(NOW, 900, not_before=NOW + timedelta(hours=1)) == NOW + timedelta(hours=1)
    assert next_poll(NOW, 900, not_before=NOW + timedelta(minutes=1)) == NOW + timedelta(minutes=15)
