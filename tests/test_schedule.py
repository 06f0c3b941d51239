from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.schedule import (
    Hints,
    Interval,
    article_retry_at,
    base_interval,
    feed_ttl,
    next_poll,
    publish_interval,
    response_hints,
    retry_after,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def minutes(moment: datetime) -> float:
    return (moment - NOW).total_seconds() / 60


def test_retry_after_seconds_and_dates():
    assert retry_after("120", NOW) == NOW + timedelta(seconds=120)
    assert retry_after("Thu, 26 Nov 2026 15:00:00 GMT", NOW) == NOW + timedelta(hours=3)


def test_retry_after_bounds_and_garbage():
    assert retry_after("Thu, 26 Nov 2026 09:00:00 GMT", NOW) == NOW
    assert retry_after(str(30 * 86400), NOW) == NOW + timedelta(days=7)
    assert retry_after("soon", NOW) is None
    assert retry_after("", NOW) is None and retry_after(None, NOW) is None


def test_interval_with_jitter_within_ten_percent():
    assert next_poll(NOW, 900) == NOW + timedelta(minutes=15)
    assert minutes(next_poll(NOW, 900, jitter=0.0)) == pytest.approx(13.5)
    assert minutes(next_poll(NOW, 900, jitter=0.999999)) == pytest.approx(16.5, abs=0.01)


def test_publisher_hints_raise_the_interval_never_lower_it():
    assert minutes(next_poll(NOW, 900, hints=Hints(ttl=HOUR))) == 60
    assert minutes(next_poll(NOW, 900, hints=Hints(max_age=1800))) == 30
    assert minutes(next_poll(NOW, 900, hints=Hints(expires=NOW + timedelta(hours=2)))) == 120
    assert minutes(next_poll(NOW, 900, hints=Hints(retry_after=NOW + timedelta(minutes=45)))) == 45
    assert minutes(next_poll(NOW, 7200, hints=Hints(ttl=60, max_age=10))) == 120


def test_publisher_hints_are_capped():
    assert next_poll(NOW, 900, hints=Hints(ttl=30 * 86400.0)) == NOW + timedelta(days=1)
    assert next_poll(NOW, 900, hints=Hints(expires=NOW + timedelta(days=30))) == NOW + timedelta(days=1)


def test_errors_back_off_exponentially_up_to_a_day_and_never_give_up():
    due = [minutes(next_poll(NOW, 900, errors=n)) for n in range(1, 10)]
    assert due[:4] == [15, 30, 60, 120]
    assert due[-1] == 24 * 60
    assert minutes(next_poll(NOW, 900, errors=50)) == 24 * 60


def test_errors_still_honour_retry_after():
    assert minutes(next_poll(NOW, 900, errors=1, hints=Hints(retry_after=NOW + timedelta(seconds=30 * 60)))) == 30


def test_response_hints():
    hints = response_hints(
        {"cache-control": "public, max-age=600", "expires": "Thu, 26 Nov 2026 13:00:00 GMT", "retry-after": "30"}, NOW
    )
    assert hints.max_age == 600 and hints.expires == NOW + timedelta(hours=1)
    assert hints.retry_after == NOW + timedelta(seconds=30)
    assert response_hints({"cache-control": "s-maxage=60, no-cache", "expires": "0"}, NOW) == Hints(max_age=60)
    assert response_hints({"expires": "Thu, 26 Nov 2026 11:00:00 GMT"}, NOW).expires is None


def test_feed_ttl():
    assert feed_ttl("60", None, None) == HOUR
    assert feed_ttl(None, "hourly", "2") == 1800
    assert feed_ttl(None, "daily", None) == 86400
    assert feed_ttl("30", "hourly", "1") == HOUR
    assert feed_ttl("abc", "sometimes", "x") is None
    assert feed_ttl(None, None, None) is None


def test_publish_interval_is_the_median_gap():
    dates = [f"2026-11-26T{h:02d}:00:00Z" for h in (1, 3, 5, 6, 7)]
    assert publish_interval(dates) == 1.5 * HOUR
    assert publish_interval(["2026-11-26T01:00:00Z", "2026-11-26T02:00:00Z", None]) is None
    assert publish_interval(["junk", "2026-11-26T01:00:00Z"]) is None


def test_auto_interval_is_clamped():
    auto = Interval(1800, auto=True, minimum=600, maximum=6 * HOUR)
    assert base_interval(auto, 2 * HOUR) == 2 * HOUR
    assert base_interval(auto, 60) == 600
    assert base_interval(auto, 30 * 86400) == 6 * HOUR
    assert base_interval(auto, None) == 1800
    assert base_interval(Interval(900), 60) == 900


def test_article_retries():
    first = article_retry_at(1, NOW, max_attempts=5)
    assert first == NOW + timedelta(minutes=15)
    assert article_retry_at(2, NOW, max_attempts=5) == NOW + timedelta(hours=1)
    assert article_retry_at(5, NOW, max_attempts=5) is None


def test_store_times_parse_to_the_moment_they_name_and_nothing_else_parses() -> None:
    from aggregator.timeutil import iso, parse_iso

    moment = datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)
    assert parse_iso(iso(moment)) == moment and parse_iso(iso(moment)).tzinfo is UTC
    for text in ("2024-2-29T23:59:58Z", "2024-02-29T23:59:58", "2024-02-30T00:00:00Z", "2024-02-29 23:59:58Z",
                 "２０２４-02-29T23:59:58Z", "2024-02-29T23:59:58+00:00", ""):
        with pytest.raises(ValueError):
            parse_iso(text)
