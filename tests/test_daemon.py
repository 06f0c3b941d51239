"""End-to-end tests of ``aggregator run``: the daemon as a real subprocess against the fixture server.

Each daemon gets its own directory (database, outputs, feeds.toml), a free port for ``[server]``,
JSON logs on stderr (one object per line) and is always stopped (SIGTERM, then kill) afterwards.
Scenarios that only observe a running daemon share one (module-scoped) to keep the file fast;
scenarios that change a daemon's life (restart, reload, signals) start their own.

The request times come from a FixtureServer that stamps every request as it arrives.
At the end, a few pure unit tests of the scheduling decisions, ``now`` passed in.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import feedparser
import httpx
import pytest
from conftest import DATA_DIR, cli_env, open_db, render_config
from server import FixtureServer, RecordedRequest

from aggregator.schedule import Hints, next_poll

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
ATOM = "application/atom+xml"


# ---------------------------------------------------------------------------
# The fixture server, stamping each request with the moment it arrived
# ---------------------------------------------------------------------------


class TimedServer(FixtureServer):
    """FixtureServer that also records when (wall clock) each request arrived."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._stamps: list[tuple[float, str]] = []
        self._stamps_lock = threading.Lock()

    def _record(self, request: RecordedRequest) -> None:
        with self._stamps_lock:
            self._stamps.append((time.time(), request.path))
        super()._record(request)

    def times(self, path: str) -> list[float]:
        """Arrival times (``time.time()``) of the requests for exactly ``path``, oldest first."""
        with self._stamps_lock:
            return [moment for moment, seen in self._stamps if seen == path]


@pytest.fixture(scope="module")
def feeds() -> Iterator[TimedServer]:
    server = TimedServer(DATA_DIR)
    server.start()
    yield server
    server.stop()


def rss(title: str, items: Sequence[str], *, link: str = "http://daemon.test/") -> str:
    """A small RSS 2.0 feed whose items (titles) have unique guids and links under ``link``."""
    entries = "".join(
        f"<item><title>{item}</title><link>{link}{index}-{abs(hash(item))}</link>"
        f"<guid>{link}{index}-{abs(hash(item))}</guid>"
        f"<pubDate>Thu, 05 Nov 2026 {10 + index:02d}:00:00 GMT</pubDate>"
        f"<description>{item}: text.</description></item>"
        for index, item in enumerate(items)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>{title}</title><link>{link}</link><description>{title}</description>{entries}"
        "</channel></rss>"
    )


# ---------------------------------------------------------------------------
# The daemon as a subprocess
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_config(
    directory: Path, port: int, feeds: Sequence[str | Mapping[str, Any]], *, padding: int = 0, **keys: Any
) -> str:
    """feeds.toml text for a test daemon: conftest's defaults plus ``[server]`` on ``port``."""
    text = render_config(directory, feeds, **keys) + f"\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n"
    return text + ("#" * padding + "\n" if padding else "")


def write_daemon_config(directory: Path, port: int, feeds: Sequence[str | Mapping[str, Any]], **keys: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "feeds.toml"
    path.write_text(daemon_config(directory, port, feeds, **keys), encoding="utf-8")
    return path


def wait_until(condition: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy (returned) or ``timeout`` seconds pass (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def parse_time(text: str) -> float:
    """A log line's ``time`` (``2026-11-26T02:01:07.473Z``) as a ``time.time()`` value."""
    return datetime.fromisoformat(text).timestamp()


def db_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    directory: Path
    config: Path
    port: int
    launched: float  # time.time() just before the process was started
    stderr_path: Path
    stdout_path: Path
    _files: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.directory / "agg.db"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON object logged so far (lines that are not JSON are skipped; see ``stderr()``)."""
        lines = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                document = json.loads(line)
                if isinstance(document, dict):
                    lines.append(document)
        return lines

    def polls(self, feed: str | None = None) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == "poll" and feed in (None, line.get("feed"))]

    def messages(self, containing: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if containing in str(line.get("message", ""))]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=5, trust_env=False, **kwargs)

    def ready(self) -> bool:
        try:
            return self.get("/healthz").status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def send(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """Signal the daemon and wait: ``(exit status, seconds it took)``; killed if it does not exit in time."""
        started = time.monotonic()
        self.send(sig)
        return self.finish(started, timeout)

    def finish(self, signalled: float, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """Wait for the exit of a daemon signalled at ``signalled`` (monotonic); -999 if it had to be killed."""
        try:
            code = self.process.wait(timeout=max(timeout - (time.monotonic() - signalled), 0.1))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            code = -999
        elapsed = time.monotonic() - signalled
        self.close_files()
        return code, elapsed

    def close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()

    def describe(self) -> str:
        return f"daemon log:\n{self.stderr()[-4000:]}"


def launch(config: Path, *, tag: str = "daemon") -> RunningDaemon:
    """Start ``python -m aggregator --config CONFIG run --log-format json`` without waiting."""
    directory = config.parent
    text = config.read_text(encoding="utf-8")
    port = int(text.rsplit("port = ", 1)[1].split()[0])
    stdout_path, stderr_path = directory / f"{tag}.stdout", directory / f"{tag}.stderr"
    out, err = stdout_path.open("wb"), stderr_path.open("wb")
    launched = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--config", str(config), "run", "--log-format", "json"],
        cwd=directory,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
    )
    return RunningDaemon(process, directory, config, port, launched, stderr_path, stdout_path, [out, err])


def wait_ready(daemon: RunningDaemon) -> RunningDaemon:
    ok = wait_until(lambda: daemon.process.poll() is not None or daemon.ready(), READY_TIMEOUT)
    if daemon.process.poll() is not None or not ok:
        daemon.stop(signal.SIGKILL)
        pytest.fail(f"daemon did not answer /healthz within {READY_TIMEOUT}s (exit {daemon.process.returncode})\n"
                    + daemon.describe())
    return daemon


class Daemons:
    """Starts daemons and stops every one of them at teardown (SIGTERM, then kill)."""

    def __init__(self) -> None:
        self.started: list[RunningDaemon] = []

    def launch(self, config: Path, *, tag: str = "daemon") -> RunningDaemon:
        daemon = launch(config, tag=tag)
        self.started.append(daemon)
        return daemon

    def start(self, config: Path, *, tag: str = "daemon") -> RunningDaemon:
        return wait_ready(self.launch(config, tag=tag))

    def stop_all(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.stop(signal.SIGTERM)
            daemon.close_files()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    started = Daemons()
    try:
        yield started
    finally:
        started.stop_all()


@contextlib.contextmanager
def daemon_group() -> Iterator[Daemons]:
    started = Daemons()
    try:
        yield started
    finally:
        started.stop_all()


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def feed_row(database: Path, url: str) -> sqlite3.Row:
    with contextlib.closing(open_db(database)) as conn:
        row = conn.execute("SELECT * FROM feeds WHERE url = ?", [url]).fetchone()
    assert row is not None, f"{url} not in feeds"
    return row


def atom_titles(daemon: RunningDaemon) -> list[str]:
    response = daemon.get("/feeds/all.atom")
    if response.status_code != 200:
        return []
    return [entry.get("title", "") for entry in feedparser.parse(response.content).entries]


# ---------------------------------------------------------------------------
# A fresh daemon with three feeds: first polls, merged feed, HTTP, debounced output writes
# ---------------------------------------------------------------------------

FRESH_FEEDS = {
    "/fresh/de.xml": "german_umlauts.xml", "/fresh/rss.xml": "rss2_basic.xml", "/fresh/atom.xml": "atom_basic.xml"
}
GERMAN_TITLE = "Bürgermeisterin eröffnet neue Fußgängerbrücke über den Rhein"


@dataclass
class Fresh:
    daemon: RunningDaemon
    urls: dict[str, str]


@pytest.fixture(scope="class")
def fresh(feeds: TimedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    for path, file in FRESH_FEEDS.items():
        feeds.route(path, file=file)
    urls = {path: feeds.url(path) for path in FRESH_FEEDS}
    config = write_daemon_config(tmp_path_factory.mktemp("fresh"), free_port(), list(urls.values()), interval="1h")
    with daemon_group() as started:
        daemon = started.start(config)
        wait_until(lambda: all(feeds.hits(path) for path in FRESH_FEEDS), 5)
        # the first round's entries reach the merged feed after the debounce
        wait_until(lambda: len(atom_titles(daemon)) >= 12, 8, step=0.2)
        yield Fresh(daemon, urls)


class TestFreshDaemon:
    """One daemon started on an empty database with three feeds."""

    def test_first_polls_happen_promptly_and_the_merged_feed_serves_them(self, fresh: Fresh, feeds: TimedServer):
        daemon = fresh.daemon
        for path in FRESH_FEEDS:
            times = feeds.times(path)
            assert len(times) == 1, f"{path} requested {len(times)} times, expected once\n{daemon.describe()}"
            late = times[0] - daemon.launched
            assert late < 3.5, f"{path} first requested {late:.1f}s after start\n{daemon.describe()}"
        response = daemon.get("/feeds/all.atom")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(ATOM)
        parsed = feedparser.parse(response.content)
        assert parsed.bozo == 0, parsed.get("bozo_exception")
        titles = [entry.title for entry in parsed.entries]
        assert GERMAN_TITLE in titles
        assert "»Wir müssen jetzt handeln«: Grüne fordern schärfere Klimaziele" in titles
        sources = {entry.get("source", {}).get("title") for entry in parsed.entries}
        assert "Kölner Stadtbote – Nachrichten" in sources
        assert len(titles) >= 12, titles  # 4 German + 5 RSS + 4 Atom items

    def test_every_feed_was_logged_as_a_json_poll_line(self, fresh: Fresh):
        polls = fresh.daemon.polls()
        assert {line["feed"] for line in polls} == set(fresh.urls.values()), fresh.daemon.describe()
        for line in polls:
            assert line["status"] == "ok" and line["new"] > 0, line
            assert isinstance(line["duration"], int | float) and 0 <= line["duration"] < 5
            assert line["level"] == "info" and line["time"].endswith("Z")

    def test_outputs_are_written_once_for_a_round_of_polls(self, fresh: Fresh):
        daemon = fresh.daemon
        polls = daemon.polls()
        assert len(polls) == 3, daemon.describe()
        first, last = min(parse_time(p["time"]) for p in polls), max(parse_time(p["time"]) for p in polls)
        # any write a poll of this round caused has happened GENERATE_DELAY (2 s) after it; allow slack
        wait_until(lambda: time.time() > last + 3.5, 5)
        writes = [parse_time(line["time"]) for line in daemon.messages("output files") if "wrote" in line["message"]]
        after = [moment for moment in writes if moment >= last]
        assert len(after) == 1, f"{len(after)} writes after the round's last poll, expected one\n{daemon.describe()}"
        # at most the start-up write of the (missing) outputs plus the one for the round
        assert len(writes) <= 2, f"{len(writes)} output writes for one round of three feeds\n{daemon.describe()}"
        assert writes[-1] - first < 6

    def test_served_feed_answers_304_to_its_validators_and_gzips(self, fresh: Fresh):
        daemon = fresh.daemon
        plain = daemon.get("/feeds/all.atom", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        etag, modified = plain.headers["etag"], plain.headers["last-modified"]

        again = daemon.get("/feeds/all.atom", headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        since = daemon.get("/feeds/all.atom", headers={"If-Modified-Since": modified, "Accept-Encoding": "identity"})
        assert since.status_code == 304
        older = (datetime.strptime(modified, "%a, %d %b %Y %H:%M:%S GMT") - timedelta(hours=1)).strftime(
            "%a, %d %b %Y %H:%M:%S GMT"
        )
        assert daemon.get("/feeds/all.atom", headers={"If-Modified-Since": older}).status_code == 200

        with httpx.Client(trust_env=False, timeout=5) as client:
            raw = client.send(
                client.build_request("GET", daemon.base_url + "/feeds/all.atom", headers={"Accept-Encoding": "gzip"}),
                stream=True,
            )
            compressed = b"".join(raw.iter_raw())
            raw.close()
        assert raw.status_code == 200 and raw.headers["content-encoding"] == "gzip"
        assert gzip.decompress(compressed) == plain.content
        assert raw.headers["etag"] != etag  # a different representation, a different tag
        gzip_etag = raw.headers["etag"]
        assert daemon.get("/feeds/all.atom", headers={"If-None-Match": gzip_etag}).status_code == 304

    def test_healthz_reports_scheduler_and_database(self, fresh: Fresh):
        response = fresh.daemon.get("/healthz")
        assert response.status_code == 200
        health = response.json()
        assert health["scheduler"]["running"] is True
        assert health["database"]["reachable"] is True
        assert health["status"] == "ok"
        assert health["last_successful_poll"] is not None
        assert health["feeds"]["total"] == 3 and health["feeds"]["failing"] == 0


# ---------------------------------------------------------------------------
# Timing: a 2 s feed polled on time, a 429 with Retry-After pushed back, metrics moving
# ---------------------------------------------------------------------------

FAST, LIMITED = "/timing/fast.xml", "/timing/limited.xml"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in key for k, v in labels.items()) and (key == name or key.startswith(name + "{")):
                total += float(value)
    return total


@pytest.fixture(scope="class")
def timing(feeds: TimedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    feeds.route(FAST, body=rss("Fast feed", ["Fast one", "Fast two"], link="http://fast.test/"))
    feeds.route(LIMITED, status=429, headers={"Retry-After": "30"}, body="slow down", content_type="text/plain")
    config = write_daemon_config(
        tmp_path_factory.mktemp("timing"), free_port(),
        [{"url": feeds.url(FAST), "interval": "2s"}, {"url": feeds.url(LIMITED), "interval": "2s"}],
    )
    with daemon_group() as started:
        daemon = started.start(config)
        daemon.early_metrics = daemon.get("/metrics").text  # type: ignore[attr-defined]
        yield daemon


class TestTiming:
    """One daemon with a 2 s feed and a feed answering 429 with Retry-After: 30."""

    def test_two_second_feed_is_polled_on_time(self, timing: RunningDaemon, feeds: TimedServer):
        wait_until(lambda: len(feeds.times(FAST)) >= 4, 10)
        times = feeds.times(FAST)
        assert len(times) >= 3 and times[2] - timing.launched <= 9.5, (
            f"{len(times)} polls, at {[round(t - timing.launched, 2) for t in times]} s after start\n{timing.describe()}"
        )
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # interval 2 s ±10 %, plus up to 1 s dispatch tick and up to 1 s because next_poll_at is stored
        # rounded up to whole seconds (never down: see test_stored_next_poll_is_never_earlier_than_decided)
        assert all(1.6 <= gap <= 4.3 for gap in gaps), gaps
        assert statistics.mean(gaps) <= 3.7, gaps

    def test_retry_after_pushes_the_next_poll_out(self, timing: RunningDaemon, feeds: TimedServer):
        url = feeds.url(LIMITED)
        assert wait_until(lambda: feeds.times(LIMITED), 5), timing.describe()
        asked = feeds.times(LIMITED)[0]
        row = wait_until(lambda: (r := feed_row(timing.database, url))["last_status"] == 429 and r, 3)
        assert row, f"the 429 was not recorded: {dict(feed_row(timing.database, url))}"
        assert db_time(row["next_poll_at"]) >= asked + 25, (row["next_poll_at"], datetime.fromtimestamp(asked, UTC))
        # 8.5 s: room for two polls of the 2 s feed even with its whole-second slop (gaps up to ~4 s)
        wait_until(lambda: time.time() >= asked + 8.5, 10)
        assert len(feeds.times(LIMITED)) == 1, f"re-polled despite Retry-After: 30\n{timing.describe()}"
        meanwhile = [round(moment - asked, 2) for moment in feeds.times(FAST) if asked < moment <= asked + 8.5]
        assert len(meanwhile) >= 2, f"the other 2 s feed was not kept polling: {meanwhile}\n{timing.describe()}"
        error_lines = timing.polls(url)
        assert error_lines and error_lines[0]["status"] == "error" and error_lines[0]["http_status"] == 429
        assert error_lines[0]["level"] == "warning"

    def test_metrics_count_polls_as_they_happen(self, timing: RunningDaemon):
        before = metric(timing.early_metrics, "aggregator_polls_total")  # type: ignore[attr-defined]
        wait_until(lambda: metric(timing.get("/metrics").text, "aggregator_polls_total") > before, 5, step=0.2)
        now = timing.get("/metrics")
        assert now.status_code == 200 and now.headers["content-type"].startswith("text/plain")
        after = metric(now.text, "aggregator_polls_total")
        assert after > before, f"aggregator_polls_total stayed at {before}\n{now.text}"
        assert metric(now.text, "aggregator_polls_total", status="error") >= 1  # the 429
        assert metric(now.text, "aggregator_polls_total", status="ok") >= 1
        assert metric(now.text, "aggregator_scheduler_running") == 1
        assert metric(now.text, "aggregator_poll_duration_seconds_count") == after


# ---------------------------------------------------------------------------
# Restart resumes the schedule
# ---------------------------------------------------------------------------


def test_restart_does_not_repoll_feeds_that_are_not_due(feeds: TimedServer, tmp_path: Path, daemons: Daemons):
    paths = ["/restart/a.xml", "/restart/b.xml", "/restart/new.xml"]
    for index, path in enumerate(paths):
        feeds.route(path, body=rss(f"Restart {index}", [f"Restart story {index}"], link=f"http://r{index}.test/"))
    port = free_port()
    feed = lambda path: {"url": feeds.url(path), "interval": "1h"}
    config = write_daemon_config(tmp_path, port, [feed(p) for p in paths[:2]])
    first = daemons.start(config, tag="first")
    assert wait_until(lambda: len(first.polls()) >= 2, 5), first.describe()
    code, _ = first.stop()
    assert code == 0, first.describe()
    assert [feeds.hits(p) for p in paths[:2]] == [1, 1]

    write_daemon_config(tmp_path, port, [feed(p) for p in paths])
    second = daemons.start(config, tag="second")
    assert wait_until(lambda: feeds.hits(paths[2]) >= 1, 4), f"the added feed was not polled\n{second.describe()}"
    wait_until(lambda: time.time() >= second.launched + 4.5, 5)
    assert [feeds.hits(p) for p in paths[:2]] == [1, 1], f"restart re-polled feeds not due\n{second.describe()}"
    assert {p["feed"] for p in second.polls()} == {feeds.url(paths[2])}


# ---------------------------------------------------------------------------
# Configuration changes while running
# ---------------------------------------------------------------------------


def test_config_changes_are_applied_without_restart(feeds: TimedServer, tmp_path: Path, daemons: Daemons):
    names = ["base", "replaced", "inplace", "invalid", "hup"]
    paths = {name: f"/reload/{name}.xml" for name in names}
    for name, path in paths.items():
        feeds.route(path, body=rss(f"Reload {name}", [f"Reload story {name}"], link=f"http://{name}.test/"))
    port = free_port()
    base = {"url": feeds.url(paths["base"]), "interval": "2s"}
    entry = lambda name: {"url": feeds.url(paths[name]), "interval": "1h"}
    config = write_daemon_config(tmp_path, port, [base])
    daemon = daemons.start(config)
    assert wait_until(lambda: feeds.hits(paths["base"]), 3)

    # 1. a new file moved into place (how editors and config management write)
    staged = tmp_path / "feeds.toml.new"
    staged.write_text(daemon_config(tmp_path, port, [base, entry("replaced")]), encoding="utf-8")
    os.replace(staged, config)
    changed = time.time()
    assert wait_until(lambda: feeds.hits(paths["replaced"]), 4), f"replaced config not picked up\n{daemon.describe()}"
    assert feeds.times(paths["replaced"])[0] - changed <= 4
    assert wait_until(lambda: "Reload story replaced" in atom_titles(daemon), 4, step=0.2), daemon.describe()

    # 2. the same file rewritten in place
    with config.open("w", encoding="utf-8") as handle:
        handle.write(daemon_config(tmp_path, port, [base, entry("replaced"), entry("inplace")]))
    changed = time.time()
    assert wait_until(lambda: feeds.hits(paths["inplace"]), 4), f"in-place edit not picked up\n{daemon.describe()}"
    assert feeds.times(paths["inplace"])[0] - changed <= 4

    # 3. an invalid file: logged (file and key named), the running configuration kept
    valid = [base, entry("replaced"), entry("inplace")]
    bad = [*valid, {"url": feeds.url(paths["invalid"]), "interval": "soon"}]
    config.write_text(daemon_config(tmp_path, port, bad), encoding="utf-8")
    errors = wait_until(lambda: [e for e in daemon.logs() if e["level"] == "error" and "soon" in e["message"]], 4)
    assert errors, f"invalid configuration not reported\n{daemon.describe()}"
    message = errors[0]["message"]
    assert str(config) in message and "interval" in message and "soon" in message, message
    assert "feeds[3]" in message, message
    # 4. a valid file the watcher cannot notice (same size, same mtime): only SIGHUP loads it
    stat = config.stat()
    text = daemon_config(tmp_path, port, [*valid, entry("hup")])
    size = len(text.encode("utf-8"))
    assert size < stat.st_size, "test set-up: the SIGHUP config must be padded to the invalid one's size"
    padded = daemon_config(tmp_path, port, [*valid, entry("hup")], padding=stat.st_size - size - 1)
    staged.write_bytes(padded.encode("utf-8"))
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(staged, config)  # at no moment does feeds.toml look changed to a (mtime, size) watcher
    assert (config.stat().st_size, config.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    base_hits, quiet_from = feeds.hits(paths["base"]), time.time()
    # longer than one config check (2 s) and than one gap of the 2 s feed (up to ~4 s, whole-second times)
    wait_until(lambda: feeds.hits(paths["base"]) > base_hits and time.time() >= quiet_from + 2.6, 5)
    assert feeds.hits(paths["base"]) > base_hits, f"polling stopped after an invalid config\n{daemon.describe()}"
    assert feeds.hits(paths["invalid"]) == 0 and feeds.hits(paths["hup"]) == 0, daemon.describe()
    assert daemon.process.poll() is None
    daemon.send(signal.SIGHUP)
    hup = time.time()
    assert wait_until(lambda: feeds.hits(paths["hup"]), 3), f"SIGHUP did not reload\n{daemon.describe()}"
    assert feeds.times(paths["hup"])[0] - hup <= 2.5
    assert len(daemon.messages("configuration reloaded")) >= 3, daemon.describe()
    titles = wait_until(lambda: (t := atom_titles(daemon)) and "Reload story inplace" in t and t, 4, step=0.2)
    assert titles and "Reload story replaced" in titles and "Reload story base" in titles, titles
    assert daemon.process.poll() is None


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------


def test_sigterm_and_sigint_stop_cleanly_even_with_a_poll_in_flight(
    feeds: TimedServer, tmp_path: Path, daemons: Daemons
):
    # the slow feed hangs far longer than the 10 s a stop may take, and within the request timeout
    feeds.route("/term/slow.xml", body=rss("Slow", ["Slow story"], link="http://slow.test/"), delay=20)
    feeds.route("/term/quick.xml", body=rss("Quick", ["Quick story"], link="http://quick.test/"))
    feeds.route("/int/quick.xml", body=rss("Int", ["Int story"], link="http://int.test/"))
    term_config = write_daemon_config(
        tmp_path / "term", free_port(), [feeds.url("/term/quick.xml"), feeds.url("/term/slow.xml")], timeout="30s"
    )
    int_config = write_daemon_config(tmp_path / "int", free_port(), [feeds.url("/int/quick.xml")])
    term, interrupt = daemons.launch(term_config), daemons.launch(int_config)
    wait_ready(term)
    wait_ready(interrupt)
    assert wait_until(lambda: feeds.hits("/term/slow.xml") and term.polls(feeds.url("/term/quick.xml")), 5)
    assert wait_until(lambda: interrupt.polls(), 5), interrupt.describe()
    assert not term.polls(feeds.url("/term/slow.xml")), "the slow poll should still be in flight"

    signalled = time.monotonic()
    term.send(signal.SIGTERM)
    interrupt.send(signal.SIGINT)
    (term_code, term_took), (int_code, int_took) = term.finish(signalled), interrupt.finish(signalled)
    assert term_code == 0 and term_took < 10, f"SIGTERM: exit {term_code} after {term_took:.1f}s\n{term.describe()}"
    assert int_code == 0 and int_took < 10, f"SIGINT: exit {int_code} after {int_took:.1f}s\n{interrupt.describe()}"
    for daemon in (term, interrupt):
        assert "Traceback" not in daemon.stderr(), daemon.describe()
        assert daemon.messages("stopped"), daemon.describe()
        assert integrity(daemon.database) == "ok"
    assert feed_row(term.database, feeds.url("/term/quick.xml"))["last_status"] == 200


# ---------------------------------------------------------------------------
# Start-up failures
# ---------------------------------------------------------------------------


def test_bad_config_at_start_exits_2_with_a_clear_message(feeds: TimedServer, tmp_path: Path, daemons: Daemons):
    config = write_daemon_config(tmp_path, free_port(), [{"url": feeds.url("/bad/never.xml"), "interval": "soon"}])
    run = daemons.launch(config)
    code = run.process.wait(timeout=15)
    err = run.stderr()
    assert code == 2, err
    assert "Traceback" not in err and str(config) in err, err
    assert "feeds[0]" in err and "interval" in err and "soon" in err, err
    assert feeds.hits("/bad/never.xml") == 0


@pytest.fixture(scope="module")
def busy_port_run(feeds: TimedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningDaemon, int]]:
    """A daemon started on a port something else listens on: ``(run, exit status)``."""
    feeds.route("/busy/feed.xml", body=rss("Busy", ["Busy story"], link="http://busy.test/"))
    with daemon_group() as started, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        directory = tmp_path_factory.mktemp("busy")
        config = write_daemon_config(directory, holder.getsockname()[1], [feeds.url("/busy/feed.xml")])
        run = started.launch(config)
        code = run.process.wait(timeout=15)
        yield run, code


def test_busy_port_fails_with_a_clear_message_and_no_traceback(busy_port_run: tuple[RunningDaemon, int]):
    run, code = busy_port_run
    err = run.stderr()
    assert code != 0, err
    assert f"127.0.0.1:{run.port}" in err and "in use" in err, err
    assert "Traceback" not in err, err


def test_busy_port_fails_before_polling_and_exits_tidily(busy_port_run: tuple[RunningDaemon, int], feeds: TimedServer):
    """A daemon that cannot serve should not poll (nor claim to serve), and should leave nothing dangling."""
    run, code = busy_port_run
    assert code != 0
    problems = []
    if feeds.hits("/busy/feed.xml"):
        problems.append("polled a feed although it could not start")
    if run.messages("serving on"):
        problems.append("logged 'serving on' although it could not bind")
    problems += [f"asyncio: {line['message'][:120]}" for line in run.logs() if line["logger"] == "asyncio"]
    problems += [f"{line['logger']}: {line['message']}" for line in run.logs() if "exception" in line]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Scheduling decisions, now passed in
# ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 12, 0, 0, 900_000, tzinfo=UTC)


def test_next_poll_honours_a_retry_after_beyond_the_one_day_hint_cap():
    assert next_poll(NOW, 900, hints=Hints(retry_after=NOW + timedelta(days=3))) == NOW + timedelta(days=3)
    assert next_poll(NOW, 900, errors=3, hints=Hints(retry_after=NOW + timedelta(days=3))) == NOW + timedelta(days=3)


def test_next_poll_not_before_raises_and_is_capped():
    assert next_poll(NOW, 900, not_before=NOW + timedelta(hours=2)) == NOW + timedelta(hours=2)
    assert next_poll(NOW, 900, not_before=NOW + timedelta(minutes=5)) == NOW + timedelta(minutes=15)
    assert next_poll(NOW, 900, not_before=NOW + timedelta(days=30)) == NOW + timedelta(days=7)


def test_backoff_after_errors_still_honours_the_feeds_ttl():
    assert next_poll(NOW, 60, errors=2, hints=Hints(ttl=3600)) == NOW + timedelta(hours=1)
    assert next_poll(NOW, 3600, errors=3, hints=Hints(ttl=60)) == NOW + timedelta(hours=4)


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_stored_next_poll_is_never_earlier_than_decided(monkeypatch: pytest.MonkeyPatch, jitter: float):
    """``next_poll_at`` is stored in whole seconds: rounded down, a feed would be due up to 1 s early.

    With ``Retry-After: 30`` at 12:00:00.9 the feed must not be polled before 12:00:30.9, and a 2 s feed
    polled then is not due before 12:00:02.7 (2 s - 10 %); a floor to 12:00:30 / 12:00:02 breaks both.
    """
    from aggregator import pipeline
    from aggregator.types import FeedConfig

    monkeypatch.setattr(pipeline, "random", SimpleNamespace(random=lambda: jitter))
    context = SimpleNamespace(config=SimpleNamespace(min_interval=300.0, max_interval=86400.0))
    feed = FeedConfig(url="http://127.0.0.1/feed.xml", interval=2.0)
    earliest = NOW + timedelta(seconds=2 * (1 + 0.1 * (2 * jitter - 1)))
    due = pipeline._due(context, feed, NOW, publish_every=None, hints=Hints())  # type: ignore[arg-type]
    assert db_time(due) >= earliest.timestamp(), f"stored {due}, decided {earliest.isoformat()}"
    asked = NOW + timedelta(seconds=30)
    due = pipeline._due(context, feed, NOW, publish_every=None, hints=Hints(retry_after=asked))  # type: ignore[arg-type]
    assert db_time(due) >= asked.timestamp(), f"stored {due}, Retry-After until {asked.isoformat()}"
