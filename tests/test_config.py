from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import DEFAULT_USER_AGENT, load_config, parse_duration, resolve_config_path
from aggregator.exceptions import ConfigError

FULL = """
[aggregator]
database = "db/agg.db"
output_dir = "out"
interval = "15m"
concurrency = 8
timeout = "30s"
full_text = false
allow_private_addresses = true
user_agent = "aggregator/<version> (+https://example.org/)"

[server]
host = "0.0.0.0"
port = 9000

[[outputs]]
name = "all"
title = "Everything"
max_entries = 50

[[outputs]]
name = "de"
tags = ["de"]

[[feeds]]
url = "https://example.org/a.xml"
name = "A"
interval = "2h"
full_text = true
tags = ["news", "de"]

[[feeds]]
url = "https://example.org/b.xml"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feeds.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("7d", 604800), ("500ms", 0.5), (45, 45), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "10", "-5m", "0s", True, None, "15m garbage"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_key_is_read(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.database == tmp_path / "db/agg.db"
    assert config.output_dir == tmp_path / "out"
    assert (config.interval, config.concurrency, config.timeout) == (900, 8, 30)
    assert config.full_text is False and config.allow_private_addresses is True
    assert config.user_agent.startswith("aggregator/0.") and "<version>" not in config.user_agent
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9000)
    assert [(o.name, o.title, o.max_entries, o.tags) for o in config.outputs] == [
        ("all", "Everything", 50, ()),
        ("de", "de", 100, ("de",)),
    ]
    first, second = config.feeds
    assert (first.name, first.interval, first.full_text, first.tags) == ("A", 7200, True, ("news", "de"))
    assert (second.name, second.interval, second.full_text, second.tags) == (None, 900, False, ())


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.database == tmp_path / "data/aggregator.db"
    assert config.interval == 1800 and config.concurrency == 32 and config.timeout == 20
    assert config.full_text is True and config.allow_private_addresses is False
    assert config.user_agent == DEFAULT_USER_AGENT
    assert [o.name for o in config.outputs] == ["all"] and config.outputs[0].max_entries == 100
    assert config.feeds == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[feeds]]\nurl = "https://example.org/a"\nintervall = "5m"', ["feeds[0] (https://example.org/a).intervall", "unknown key"]),
        ('[[feeds]]\nurl = "https://example.org/a"\ninterval = "5 parsecs"', ["feeds[0] (https://example.org/a).interval", "5 parsecs"]),
        ('[[feeds]]\nurl = "ftp://example.org/a"', ["feeds[0] (ftp://example.org/a).url", "not an http(s) URL"]),
        ('[[feeds]]\nname = "x"', ["feeds[0].url", "required"]),
        ('[[feeds]]\nurl = "https://example.org/a"\n[[feeds]]\nurl = "https://EXAMPLE.org/a"', ["feeds[1].url", "duplicate of feeds[0]"]),
        ('[[feeds]]\nurl = "https://example.org/a"\ntags = "news"', ["feeds[0] (https://example.org/a).tags", "list"]),
        ('[aggregator]\nconcurrency = 0', ["aggregator.concurrency", "1 to 1000"]),
        ('[aggregator]\nfull_text = "yes"', ["aggregator.full_text", "true or false"]),
        ('[aggregator]\ndatabse = "x.db"', ["aggregator.databse", "unknown key"]),
        ('[server]\nport = 70000', ["server.port"]),
        ('[[outputs]]\nname = "../evil"', ["outputs[0] (../evil).name", "file name"]),
        ('[[outputs]]\nname = "a"\n[[outputs]]\nname = "a"', ["outputs[1].name", "duplicate"]),
        ("colour = 'red'", ["'colour'", "unknown key"]),
    ],
)
def test_errors_name_file_key_and_feed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message


def test_all_errors_reported_at_once(tmp_path):
    path = write(tmp_path, '[aggregator]\nconcurrency = -1\n[[feeds]]\nurl = "nope"\ninterval = "x"')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert len(str(error.value).splitlines()) == 3


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[[feeds]\nurl="))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_config_path_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("AGGREGATOR_CONFIG", raising=False)
    assert resolve_config_path(None) == Path("feeds.toml")
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(tmp_path / "env.toml"))
    assert resolve_config_path(None) == tmp_path / "env.toml"
    assert resolve_config_path("explicit.toml") == Path("explicit.toml")


def test_repository_feeds_toml_is_valid():
    config = load_config(Path(__file__).parent.parent / "feeds.toml")
    assert len(config.feeds) >= 5
    assert any("de" in feed.tags for feed in config.feeds)


def test_auto_interval_and_bounds(tmp_path):
    text = (
        '[aggregator]\ninterval = "auto"\nmin_interval = "10m"\nmax_interval = "6h"\n'
        '[[feeds]]\nurl = "https://example.org/a"\n'
        '[[feeds]]\nurl = "https://example.org/b"\ninterval = "15m"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.auto_interval and (config.min_interval, config.max_interval) == (600, 21600)
    assert [(f.auto_interval, f.interval) for f in config.feeds] == [(True, 1800), (False, 900)]
    fixed = load_config(write(tmp_path, '[[feeds]]\nurl = "https://example.org/a"\ninterval = "auto"'))
    assert fixed.feeds[0].auto_interval and not fixed.auto_interval
    with pytest.raises(ConfigError, match="min_interval"):
        load_config(write(tmp_path, '[aggregator]\nmin_interval = "2h"\nmax_interval = "1h"'))


def test_retention_default_per_feed_override_and_forever(tmp_path):
    text = (
        '[aggregator]\nretention = "180d"\n'
        '[[feeds]]\nurl = "https://example.org/a"\n'
        '[[feeds]]\nurl = "https://example.org/b"\nretention = "4w"\n'
        '[[feeds]]\nurl = "https://example.org/c"\nretention = "0"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.retention == 180 * 86400
    assert [f.retention for f in config.feeds] == [180 * 86400, 28 * 86400, None]
    kept = load_config(write(tmp_path, '[[feeds]]\nurl = "https://example.org/a"\nretention = "30d"'))
    assert kept.retention is None, "without the key entries are kept forever"
    assert kept.feeds[0].retention == 30 * 86400
    assert load_config(write(tmp_path, "[aggregator]\nretention = 0")).retention is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[aggregator]\nretention = "6m"', "aggregator.retention"),  # six minutes, not months
        ('[aggregator]\nretention = "12h"', "aggregator.retention"),
        ('[aggregator]\nretention = "half a year"', "aggregator.retention"),
        ("[aggregator]\nretention = false", "aggregator.retention"),
        ('[[feeds]]\nurl = "https://example.org/a"\nretention = "-5d"', "feeds[0] (https://example.org/a).retention"),
        ("[aggregator]\nretention = inf", "aggregator.retention"),
        ("[aggregator]\nretention = nan", "aggregator.retention"),
        ('[aggregator]\nretention = "99999999999w"', "aggregator.retention"),  # past what a date can hold
    ],
)
def test_bad_retention_names_the_key_and_the_way_to_keep_forever(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: key '{where}': must be at least a day and at most 100 years")
    assert '"0" to keep entries forever' in message


TEN_YEARS = "must be at most 3650 days"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('[aggregator]\ninterval = "3651d"', "aggregator.interval", TEN_YEARS),
        ('[aggregator]\nmax_interval = "99999999999w"', "aggregator.max_interval", TEN_YEARS),
        ('[aggregator]\ninterval = "' + "9" * 400 + 's"', "aggregator.interval", TEN_YEARS),  # a float's inf
        ("[aggregator]\ninterval = 1" + "0" * 400, "aggregator.interval", TEN_YEARS),  # too large for a float
        ("[aggregator]\ninterval = inf", "aggregator.interval", TEN_YEARS),
        ("[aggregator]\ninterval = nan", "aggregator.interval", TEN_YEARS),
        ('[dedup]\nwindow = "11000d"', "dedup.window", TEN_YEARS),
        ('[[feeds]]\nurl = "https://example.org/a"\ninterval = inf', "feeds[0] (https://example.org/a).interval", TEN_YEARS),
        ('[aggregator]\ntimeout = "2d"', "aggregator.timeout", "must be at most 1 day"),
        ('[aggregator]\nextract_timeout = "25h"', "aggregator.extract_timeout", "must be at most 1 day"),
    ],
    ids=["days", "weeks", "400-digits", "big-int", "inf", "nan", "window", "feed", "timeout", "extract-timeout"],
)
def test_durations_must_be_finite_and_bounded(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: key '{where}': duration {problem}, got ")


def test_feed_url_with_broken_brackets_is_a_config_error(tmp_path):
    path = write(tmp_path, '[[feeds]]\nurl = "http://[::1"\n[[feeds]]\nurl = "http://[x]/"')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).splitlines() == [
        f"{path}: key 'feeds[0] (http://[::1).url': not a valid URL: 'http://[::1' (Invalid IPv6 URL)",
        f"{path}: key 'feeds[1] (http://[x]/).url': not a valid URL: 'http://[x]/' "
        "('x' does not appear to be an IPv4 or IPv6 address)",
    ]
