"""The entry point starts the parse workers early, for the commands that use them, and the pool takes them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from aggregator import launch
from aggregator.workers import TaskTimedOut, WorkerPool


def config(tmp_path: Path, feeds: int) -> Path:
    path = tmp_path / "feeds.toml"
    tables = "".join(f'\n[[feeds]]\nurl = "http://127.0.0.1:9/{i}.xml"\n' for i in range(feeds))
    path.write_text(f'[aggregator]\ndatabase = "agg.db"\n{tables}', encoding="utf-8")
    return path


def test_poll_over_enough_feeds_and_run_start_workers_early_and_nothing_else_does(tmp_path, monkeypatch) -> None:
    (tmp_path / "many").mkdir()
    (tmp_path / "few").mkdir()
    many, few = config(tmp_path / "many", 4), config(tmp_path / "few", 3)
    assert launch.parses_in_workers(["--config", str(many), "poll"])
    assert launch.parses_in_workers(["poll", "--json", f"--config={many}"])
    assert launch.parses_in_workers(["--config", str(few), "poll", "--config", str(many)])  # the later one wins
    assert not launch.parses_in_workers(["--config", str(many), "poll", "--config", str(few)])
    assert not launch.parses_in_workers(["--config", str(many), "poll", "--feed", "http://127.0.0.1:9/0.xml"])
    assert not launch.parses_in_workers(["--config", str(many), "poll", "--help"])
    assert not launch.parses_in_workers(["--config", str(many), "stats"])
    assert not launch.parses_in_workers(["--config", str(tmp_path / "missing.toml"), "poll"])
    assert launch.parses_in_workers(["--config", str(few), "run"])
    assert not launch.parses_in_workers(["--config", "poll", "stats"])  # "poll" is the config's path here
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(many))
    assert launch.parses_in_workers(["poll"])
    monkeypatch.delenv("AGGREGATOR_CONFIG")
    monkeypatch.chdir(tmp_path / "few")
    assert not launch.parses_in_workers(["poll"])  # ./feeds.toml


def test_the_pool_takes_the_workers_started_early_and_replaces_them_as_any_other() -> None:
    async def scenario() -> None:
        launch.prestart(2)
        early = [worker.pid for worker in launch._prestarted]
        launch._prestarted[1].kill()  # one that died waiting is not taken
        launch._prestarted[1].wait()
        async with WorkerPool(workers=2) as pool:
            first = await pool.run(os.getpid, time_limit=10)
            assert first == early[0]
            assert launch.take_prestarted() is None
            started = time.monotonic()
            with pytest.raises(TaskTimedOut):
                await pool.run(time.sleep, 30, time_limit=0.5)
            assert time.monotonic() - started < 5
            pids = set(await asyncio.gather(*(pool.run(os.getpid, time_limit=10) for _ in range(4))))
            assert early[0] not in pids and early[1] not in pids and os.getpid() not in pids
            assert await pool.run(sum, [1, 2, 3], time_limit=10) == 6

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
