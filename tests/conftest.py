from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server import FixtureServer

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[FixtureServer]:
    fixture_server = FixtureServer(data_dir)
    fixture_server.start()
    yield fixture_server
    fixture_server.stop()


@pytest.fixture
def http(server: FixtureServer) -> Iterator[FixtureServer]:
    server.reset()
    yield server
    server.reset()


# ---------------------------------------------------------------------------
# Helpers for the fetch / poll / CLI tests: a feeds.toml writer, the CLI as a
# subprocess, a read-only SQLite opener and a one-pass library poll.
# ---------------------------------------------------------------------------

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(header: str, table: Mapping[str, Any]) -> list[str]:
    return [header, *(f"{key} = {_toml_value(value)}" for key, value in table.items()), ""]


def render_config(
    directory: Path,
    feeds: Sequence[str | Mapping[str, Any]] = (),
    outputs: Sequence[Mapping[str, Any]] | None = None,
    **aggregator_keys: Any,
) -> str:
    """feeds.toml text: database and output_dir inside ``directory``, private addresses allowed,
    no full-text extraction, a short timeout, at most 4 fetches at once.
    ``aggregator_keys`` override or add [aggregator] keys."""
    section: dict[str, Any] = {
        "database": str(directory / "agg.db"),
        "output_dir": str(directory / "public"),
        "allow_private_addresses": True,
        "full_text": False,
        "timeout": "2s",
        # FixtureServer listens with socketserver's default backlog of 5: a burst of more simultaneous
        # connects has the excess SYNs dropped and retried after 1 s, i.e. spurious short timeouts.
        "concurrency": 4,
        "user_agent": "aggregator-tests/1.0 (+http://127.0.0.1/)",
    }
    section.update(aggregator_keys)
    lines = _toml_table("[aggregator]", section)
    for output in outputs or ():
        lines += _toml_table("[[outputs]]", output)
    for feed in feeds:
        lines += _toml_table("[[feeds]]", {"url": feed} if isinstance(feed, str) else feed)
    return "\n".join(lines)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(feeds=[url or {url=, tags=, ...}], outputs=[...], **aggregator_keys) -> Path``.

    Writes ``<dir>/feeds.toml`` (``dir`` defaults to the test's tmp_path) and returns its path.
    The database is ``<dir>/agg.db`` and the outputs go to ``<dir>/public``.
    """

    def write(
        feeds: Sequence[str | Mapping[str, Any]] = (),
        outputs: Sequence[Mapping[str, Any]] | None = None,
        *,
        directory: Path | None = None,
        name: str = "feeds.toml",
        **aggregator_keys: Any,
    ) -> Path:
        where = directory or tmp_path
        where.mkdir(parents=True, exist_ok=True)
        path = where / name
        path.write_text(render_config(where, feeds, outputs, **aggregator_keys), encoding="utf-8")
        return path

    return write


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(proxy, None)
    env.update(extra or {})
    return env


def start_cli(
    *args: str,
    cwd: Path,
    config: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m aggregator [--config C] *args`` without a TTY, capturing text output."""
    command = [sys.executable, "-m", "aggregator"]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.Popen(
        [*command, *args],
        cwd=cwd,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def finish_cli(process: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, config=None, env=None, cwd=None)``: ``python -m aggregator [--config C] *args``.

    Runs in ``tmp_path`` (so no stray ./feeds.toml is picked up), without a TTY, capturing text output.
    """

    def run(
        *args: str,
        config: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return finish_cli(start_cli(*args, cwd=cwd or tmp_path, config=config, env=env), timeout)

    return run


@pytest.fixture(scope="session")
def run_cli_many() -> Callable[..., list[subprocess.CompletedProcess[str]]]:
    """``run_cli_many([dict(args=[...], cwd=..., config=..., env=...), ...])``: CLI runs side by side.

    For independent runs (no shared database), so a batch costs one interpreter start-up, not N.
    """

    def run(calls: Sequence[Mapping[str, Any]]) -> list[subprocess.CompletedProcess[str]]:
        processes = [
            start_cli(*call["args"], cwd=call["cwd"], config=call.get("config"), env=call.get("env"))
            for call in calls
        ]
        return [finish_cli(process) for process in processes]

    return run


def open_db(path: Path | str) -> sqlite3.Connection:
    """A read-only connection with rows addressable by column name."""
    path = Path(path)
    assert path.exists(), f"no database at {path}"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


@pytest.fixture
def db() -> Iterator[Callable[[Path | str], sqlite3.Connection]]:
    """``db(path) -> sqlite3.Connection`` (read-only, sqlite3.Row); closed after the test."""
    opened: list[sqlite3.Connection] = []

    def connect(path: Path | str) -> sqlite3.Connection:
        conn = open_db(path)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def poll_once() -> Callable[..., Any]:
    """``poll_once(config_path, only=()) -> PassSummary``: one library pass (fetch, store, generate)."""
    from aggregator.config import load_config
    from aggregator.pipeline import poll_feeds, select_feeds
    from aggregator.storage import Store

    def poll(config_path: Path, only: Sequence[str] = ()) -> Any:
        config = load_config(config_path)
        with Store.open(config.database) as store:
            return asyncio.run(poll_feeds(config, store, select_feeds(config, only)))

    return poll
