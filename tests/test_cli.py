"""The ``aggregator`` command line, run as a subprocess against the fixture server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from server import FixtureServer

FEED_PATH = "/rss2_basic.xml"


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


# --- bad configuration -----------------------------------------------------------------------


def _write(tmp_path: Path, text: str, aggregator: str = "") -> Path:
    path = tmp_path / "feeds.toml"
    path.write_text(
        f'[aggregator]\ndatabase = "{tmp_path / "agg.db"}"\noutput_dir = "{tmp_path / "public"}"\n'
        f"allow_private_addresses = true\n{aggregator}\n{text}",
        encoding="utf-8",
    )
    return path


FEED_A = "http://127.0.0.1:9/a.xml"  # never fetched: every case here stops at the configuration
FEED_B = "http://127.0.0.1:9/b.xml"

BAD_CONFIGS: dict[str, tuple[str, str, list[str]]] = {
    "unknown_feed_key": (
        "",
        f'[[feeds]]\nurl = "{FEED_A}"\nintervall = "5m"\n',
        ["feeds[0]", FEED_A, "intervall", "unknown key"],
    ),
    "bad_duration": (
        "",
        f'[[feeds]]\nurl = "{FEED_A}"\n\n[[feeds]]\nurl = "{FEED_B}"\ninterval = "5 parsecs"\n',
        ["feeds[1]", FEED_B, "interval", "5 parsecs"],
    ),
    "duplicate_urls": (
        "",
        f'[[feeds]]\nurl = "{FEED_A}"\n\n[[feeds]]\nurl = "{FEED_A}"\n',
        ["feeds[1]", "feeds[0]", "url", "duplicate", FEED_A],
    ),
    "non_http_url": (
        "",
        '[[feeds]]\nurl = "ftp://127.0.0.1/feed.xml"\n',
        ["feeds[0]", "url", "ftp://127.0.0.1/feed.xml", "http"],
    ),
    "unknown_aggregator_key": (
        "",
        "[aggregator.extra]\nx = 1\n",
        ["aggregator.extra", "unknown key"],
    ),
    "bad_timeout": (
        'timeout = "soon"',
        "",
        ["aggregator.timeout", "soon"],
    ),
    "invalid_toml": (
        "",
        f'[[feeds]]\nurl = "{FEED_A}\n',
        ["TOML"],
    ),
}


SEVERAL_ERRORS = f'[[feeds]]\nurl = "{FEED_A}"\nintervall = "5m"\n\n[[feeds]]\nurl = "{FEED_B}"\ninterval = "x"\n'


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory, run_cli_many) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """``poll`` on every bad configuration, all started at once; case → (directory, result)."""
    cases: dict[str, tuple[Path, dict[str, object]]] = {}
    for case, (aggregator, text, _) in BAD_CONFIGS.items():
        directory = tmp_path_factory.mktemp(case)
        cases[case] = directory, {"args": ["poll"], "cwd": directory, "config": _write(directory, text, aggregator)}
    directory = tmp_path_factory.mktemp("several")
    cases["several"] = directory, {"args": ["poll"], "cwd": directory, "config": _write(directory, SEVERAL_ERRORS)}
    directory = tmp_path_factory.mktemp("missing")
    cases["missing"] = directory, {"args": ["poll"], "cwd": directory, "config": directory / "nowhere" / "feeds.toml"}
    directory = tmp_path_factory.mktemp("default")  # no --config, no $AGGREGATOR_CONFIG, no ./feeds.toml
    cases["default"] = directory, {"args": ["stats"], "cwd": directory}
    results = run_cli_many([call for _, call in cases.values()])
    return {case: (directory, result) for (case, (directory, _)), result in zip(cases.items(), results)}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_file_key_and_feed(bad_config_runs, case: str) -> None:
    _, _, words = BAD_CONFIGS[case]
    directory, done = bad_config_runs[case]
    config = directory / "feeds.toml"

    assert done.returncode == 2, (done.stdout, done.stderr)
    message = only_line(done.stderr)
    assert message.startswith("aggregator: error: ")
    assert str(config) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (directory / "agg.db").exists()  # nothing starts on a bad config
    assert not (directory / "public").exists()


def test_several_config_errors_reported_together(bad_config_runs) -> None:
    directory, done = bad_config_runs["several"]
    assert done.returncode == 2
    assert "intervall" in done.stderr and "feeds[0]" in done.stderr
    assert FEED_B in done.stderr and "feeds[1]" in done.stderr and "'x'" in done.stderr
    assert not (directory / "agg.db").exists()


def test_missing_config_file_exits_2(bad_config_runs) -> None:
    directory, done = bad_config_runs["missing"]
    missing = directory / "nowhere" / "feeds.toml"
    assert done.returncode == 2
    message = only_line(done.stderr)
    assert str(missing) in message and "not found" in message
    assert not (directory / "nowhere").exists()


def test_default_config_is_feeds_toml_in_working_directory(bad_config_runs) -> None:
    directory, done = bad_config_runs["default"]
    assert done.returncode == 2
    assert "feeds.toml" in done.stderr and "not found" in done.stderr
    assert list(directory.iterdir()) == []


# --- where the configuration comes from ---------------------------------------------------------


@pytest.fixture(scope="module")
def config_source_runs(tmp_path_factory, run_cli_many) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """``generate`` with the configuration given in each supported way, all started at once.

    Each configuration writes its outputs to ``<root>/<label>/public``, which shows which one was used.
    """
    from conftest import render_config

    root = tmp_path_factory.mktemp("sources")
    configs = {}
    for label in ("before", "after", "early", "late", "env", "flag"):
        (root / label).mkdir()
        configs[label] = root / label / "feeds.toml"
        configs[label].write_text(render_config(root / label), encoding="utf-8")
    calls = {
        "before": {"args": ["--config", str(configs["before"]), "generate"]},
        "after": {"args": ["generate", "--config", str(configs["after"])]},
        "both": {"args": ["--config", str(configs["early"]), "generate", "--config", str(configs["late"])]},
        "env": {"args": ["generate"], "env": {"AGGREGATOR_CONFIG": str(configs["env"])}},
        "flag": {
            "args": ["generate", "--config", str(configs["flag"])],
            "env": {"AGGREGATOR_CONFIG": str(root / "missing.toml")},
        },
    }
    results = run_cli_many([{"cwd": root, **call} for call in calls.values()])
    return root, dict(zip(calls, results))


def test_config_flag_before_command(config_source_runs) -> None:
    root, runs = config_source_runs
    assert runs["before"].returncode == 0, runs["before"].stderr
    assert (root / "before" / "public" / "all.atom").is_file()
    assert str(root / "before" / "public") in runs["before"].stdout


def test_config_flag_after_command(config_source_runs) -> None:
    root, runs = config_source_runs
    assert runs["after"].returncode == 0, runs["after"].stderr
    assert (root / "after" / "public" / "all.json").is_file()


def test_config_flag_after_command_wins_over_before(config_source_runs) -> None:
    root, runs = config_source_runs
    assert runs["both"].returncode == 0, runs["both"].stderr
    assert (root / "late" / "public" / "all.rss").is_file()
    assert not (root / "early" / "public").exists()


def test_config_from_environment(config_source_runs) -> None:
    root, runs = config_source_runs
    assert runs["env"].returncode == 0, runs["env"].stderr
    assert (root / "env" / "public" / "all.atom").is_file()


def test_config_flag_beats_environment(config_source_runs) -> None:
    root, runs = config_source_runs
    assert runs["flag"].returncode == 0, runs["flag"].stderr
    assert (root / "flag" / "public" / "all.atom").is_file()


# --- poll output ---------------------------------------------------------------------------------


def test_poll_json_reports_every_feed(http: FixtureServer, write_config, run_cli) -> None:
    good, bad = http.url(FEED_PATH), http.url("/broken.xml")
    http.route("/broken.xml", body="no", status=500)
    config = write_config([good, bad])

    done = run_cli("poll", "--json", config=config)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["feeds"] == 2 and report["ok"] == 1 and report["failed"] == 1 and report["new"] == 5
    results = {r["url"]: r for r in report["results"]}
    assert results.keys() == {good, bad}
    assert results[good]["status"] == "ok" and results[good]["new"] == 5 and results[good]["error"] is None
    assert results[bad]["status"] == "error" and "500" in results[bad]["error"]
    assert results[bad]["http_status"] == 500


def test_poll_without_tty_prints_one_summary_line(http: FixtureServer, write_config, run_cli) -> None:
    config = write_config([http.url(FEED_PATH), http.url("/atom_basic.xml")])

    done = run_cli("poll", config=config)

    assert done.returncode == 0, done.stderr
    line = only_line(done.stdout)
    assert line.startswith("polled 2 feeds")
    assert "2 updated" in line and "0 failed" in line and "9 new" in line
    assert done.stderr == ""  # no progress bar, no noise when nothing failed
    assert "\r" not in done.stdout and "\x1b[" not in done.stdout


def test_stats_text_and_json(http: FixtureServer, write_config, run_cli, run_cli_many, tmp_path: Path) -> None:
    good, bad = http.url(FEED_PATH), http.url("/missing.xml")
    http.route("/missing.xml", body="gone", status=404)
    config = write_config([good, bad])
    assert run_cli("poll", config=config).returncode == 0

    text, as_json = run_cli_many(  # two readers of the same database at once
        [{"args": ["stats"], "cwd": tmp_path, "config": config},
         {"args": ["stats", "--json"], "cwd": tmp_path, "config": config}]
    )

    assert text.returncode == 0, text.stderr
    assert "feeds: 2 (1 failing)" in text.stdout
    assert "entries: 5" in text.stdout
    assert bad in text.stdout and "404" in text.stdout
    assert good in text.stdout
    assert as_json.returncode == 0, as_json.stderr
    stats = json.loads(as_json.stdout)
    assert stats["feeds"] == 2 and stats["entries"] == 5 and stats["failing_feeds"] == 1
    details = {d["url"]: d for d in stats["feed_details"]}
    assert "404" in details[bad]["last_error"] and details[bad]["error_count"] == 1
    assert details[good]["last_error"] is None and details[good]["entries"] == 5
    assert details[good]["name"] == "Feeds Test Daily"


def test_generate_rewrites_outputs_from_database(http: FixtureServer, write_config, run_cli) -> None:
    config = write_config([http.url(FEED_PATH)])
    assert run_cli("poll", config=config).returncode == 0
    public = config.parent / "public"
    before = {fmt: (public / f"all.{fmt}").read_bytes() for fmt in ("atom", "rss", "json")}
    assert len(json.loads(before["json"])["items"]) == 5
    for fmt in before:
        (public / f"all.{fmt}").unlink()
    requests_before = len(http.requests)

    done = run_cli("generate", config=config)

    assert done.returncode == 0, done.stderr
    assert len(http.requests) == requests_before  # from the database, not the network
    for fmt, content in before.items():
        assert (public / f"all.{fmt}").read_bytes() == content


# --- unusable database ---------------------------------------------------------------------------


def test_database_path_is_a_directory(tmp_path: Path, write_config, run_cli_many) -> None:
    directory = tmp_path / "db-dir"
    directory.mkdir()
    config = write_config([], database=str(directory))

    commands = ("poll", "stats", "generate")
    runs = run_cli_many([{"args": [command], "cwd": tmp_path, "config": config} for command in commands])
    for command, done in zip(commands, runs):
        assert done.returncode == 2, (command, done.stderr)
        message = only_line(done.stderr)
        assert str(directory) in message and "database" in message
        assert "Traceback" not in done.stderr


def test_database_file_is_not_sqlite(tmp_path: Path, write_config, run_cli) -> None:
    bogus = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    bogus.write_bytes(content)
    config = write_config(["http://127.0.0.1:9/feed.xml"], database=str(bogus))

    done = run_cli("poll", config=config)

    assert done.returncode == 2, done.stderr
    message = only_line(done.stderr)
    assert str(bogus) in message and "database" in message
    assert bogus.read_bytes() == content  # left untouched
    assert not (tmp_path / "public").exists()


def test_database_is_created_on_first_use_with_schema(tmp_path: Path, write_config, run_cli) -> None:
    config = write_config([], database=str(tmp_path / "deep" / "nested" / "agg.db"))
    done = run_cli("stats", config=config)
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(tmp_path / "deep" / "nested" / "agg.db")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert {"feeds", "entries"} <= tables
