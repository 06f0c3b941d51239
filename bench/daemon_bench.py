"""Daemon benchmark: ``aggregator run`` scheduling many feeds on a local server, then serving.

Starts ``feedserver.py`` (no ``<ttl>``, request log on) in its own process and
``aggregator run --log-format json`` on a fresh database with every feed on a
1-minute interval.  After the cold first pass has polled every feed once and
the daemon has caught up with the feeds that fell due meanwhile, it measures
for ``--minutes``: polls per second sustained, scheduling lateness
(actual start minus the planned ``feeds.next_poll_at``), the daemon's CPU and
peak memory.  Then, with the daemon still polling, it drives
``/feeds/all.atom`` with and without ``If-None-Match`` and finally stops the
daemon with SIGTERM.

Planned start: a watcher thread reads ``feeds.next_poll_at`` from the database
(read-only) every ``--sample-every`` seconds and keeps every value it has seen
per feed.  Actual start: the poll's JSON log line, ``time`` (milliseconds)
minus ``duration``.  A poll's planned start is the latest value seen for that
feed that is not after its actual start.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from feedserver import fetch_requests, fetch_stats, start_server, stop_server
from poll_bench import aggregator_available, aggregator_command
from proctree import TreeMemorySampler, process_tree, tree_memory_kb

LATENESS_P99_TARGET_S = 5.0
MEMORY_TARGET_MB = 200.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BUCKET_S = 10.0


class BenchError(RuntimeError):
    pass


# --- set-up -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, base_url: str, args: argparse.Namespace, port: int) -> Path:
    lines = [
        "[aggregator]",
        f"database = {json.dumps(str(workdir / 'agg.db'))}",
        f"output_dir = {json.dumps(str(workdir / 'public'))}",
        f'interval = "{args.interval}"',
        "full_text = false",
        "allow_private_addresses = true",
        f"concurrency = {args.concurrency}",
        f"host_concurrency = {args.host_concurrency}",
        "",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
    ]
    for i in range(args.feeds):
        lines += ["[[feeds]]", f'url = "{base_url}/feeds/{i}.xml"', ""]
    path = workdir / "feeds.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def epoch(iso_text: str) -> float:
    """``2024-11-01T12:00:00Z`` or ``...00.123Z`` as Unix time."""
    return datetime.fromisoformat(iso_text).timestamp()


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- CPU from /proc ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and of its reaped children (cutime + cstime), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def tree_cpu_s(root: int) -> float:
    return sum(process_cpu_s(pid) for pid in process_tree(root))


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class CpuMark:
    at: float
    daemon: float
    server: float
    bench: float
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, daemon_pid: int, server_pid: int) -> CpuMark:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = machine_busy_s()
        return cls(time.monotonic(), tree_cpu_s(daemon_pid), tree_cpu_s(server_pid),
                   usage.ru_utime + usage.ru_stime, busy, total)


def cpu_percent(start: CpuMark, end: CpuMark) -> dict[str, float]:
    """Each party's CPU as % of one core over the span; ``others`` is the rest of the machine."""
    span = end.at - start.at
    daemon, server, bench = (end.daemon - start.daemon, end.server - start.server, end.bench - start.bench)
    busy = end.machine_busy - start.machine_busy
    cores = (end.machine_total - start.machine_total) / span if span else 0.0
    pct = {name: round(100 * seconds / span, 1) for name, seconds in
           (("daemon", daemon), ("feed_server", server), ("bench_client", bench), ("machine_busy", busy))}
    pct["others"] = round(pct["machine_busy"] - pct["daemon"] - pct["feed_server"] - pct["bench_client"], 1)
    pct["machine_cores"] = round(cores, 2)
    return pct


# --- watching the schedule --------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    at: float
    polled: int
    due: int
    overdue: float | None  # seconds since the earliest next_poll_at; None while a feed was never polled
    tree_mb: float | None = None


class ScheduleWatcher(threading.Thread):
    """Reads ``feeds.next_poll_at`` every ``interval`` seconds; keeps each feed's planned times."""

    def __init__(self, db_path: Path, daemon_pid: int, interval: float, memory_every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.db_path = db_path
        self.daemon_pid = daemon_pid
        self.interval = interval
        self.memory_every = memory_every
        self.planned: dict[str, list[float]] = {}
        self.samples: list[Sample] = []
        self.errors = 0
        self._last: dict[str, str] = {}
        self._epochs: dict[str, float] = {}
        self._stop_event = threading.Event()
        self._conn: sqlite3.Connection | None = None

    def run(self) -> None:
        next_memory = 0.0
        while not self._stop_event.is_set():
            sample = self._sample()
            if sample is not None and time.monotonic() >= next_memory:
                sample.tree_mb = round(tree_memory_kb(self.daemon_pid)[0] / 1024, 1)
                next_memory = time.monotonic() + self.memory_every
            self._stop_event.wait(self.interval)
        if self._conn is not None:
            self._conn.close()

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and self.db_path.exists():
            self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=2.0)
        return self._conn

    def _sample(self) -> Sample | None:
        try:
            conn = self._connect()
            if conn is None:
                return None
            now = time.time()
            rows = conn.execute("SELECT url, next_poll_at, last_polled_at FROM feeds").fetchall()
            due = conn.execute("SELECT count(*) FROM feeds WHERE next_poll_at IS NULL OR next_poll_at <= ?",
                               [iso_now()]).fetchone()[0]
            earliest, never = conn.execute("SELECT min(next_poll_at), count(*) - count(next_poll_at) FROM feeds").fetchone()
        except sqlite3.Error:
            self.errors += 1
            return None
        polled = self._remember(rows)
        overdue = None if never or earliest is None else round(max(now - epoch(earliest), 0.0), 3)
        sample = Sample(now, polled, int(due), overdue)
        self.samples.append(sample)
        return sample

    def _remember(self, rows: list[tuple[str, str | None, str | None]]) -> int:
        polled = 0
        for url, next_poll_at, last_polled_at in rows:
            polled += last_polled_at is not None
            if next_poll_at is None or self._last.get(url) == next_poll_at:
                continue
            self._last[url] = next_poll_at
            seconds = self._epochs.get(next_poll_at)
            if seconds is None:
                seconds = self._epochs[next_poll_at] = epoch(next_poll_at)
            self.planned.setdefault(url, []).append(seconds)
        return polled

    @property
    def polled(self) -> int:
        return self.samples[-1].polled if self.samples else 0

    def settled(self, threshold: float, hold: float) -> bool:
        """Whether no feed has been overdue by more than ``threshold`` seconds for the last ``hold`` seconds."""
        since = time.time() - hold
        recent = [s for s in self.samples[-int(4 * hold / self.interval) - 4:] if s.at >= since]
        enough = len(recent) >= 0.8 * hold / self.interval
        return enough and all(s.overdue is not None and s.overdue <= threshold for s in recent)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- the daemon's poll log --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poll:
    feed: str
    status: str
    start: float
    end: float


def read_log(path: Path) -> tuple[list[Poll], Counter[str], list[str]]:
    """Polls from the JSON log, counts of lines per level, and the first non-poll warnings/errors."""
    polls: list[Poll] = []
    levels: Counter[str] = Counter()
    problems: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            levels["not_json"] += 1
            if len(problems) < 10:
                problems.append(line[:300])
            continue
        levels[record.get("level", "?")] += 1
        if record.get("event") == "poll":
            end = epoch(record["time"])
            polls.append(Poll(record["feed"], record["status"], end - float(record["duration"]), end))
        elif record.get("level") in ("warning", "error", "critical") and len(problems) < 10:
            problems.append(line[:300])
    return polls, levels, problems


def planned_for(poll: Poll, planned: Sequence[float], previous_start: float | None) -> float | None:
    """The latest planned time seen for the feed not after the poll's start (1 s of slack for rounding).

    None when the only candidate was already planned before the feed's previous poll started: the
    watcher missed the value this poll was scheduled by.
    """
    index = bisect.bisect_right(planned, poll.start + 1.0)
    if not index:
        return None
    value = planned[index - 1]
    if previous_start is not None and value <= previous_start:
        return None
    return value


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def spread(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values), "p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3), "max": round(max(values), 3), "min": round(min(values), 3),
    }


@dataclass(slots=True)
class ScheduleResult:
    window_s: float
    polls: int
    polls_per_s: float
    planned: int
    planned_per_s: float
    nominal_per_s: float
    statuses: dict[str, int]
    lateness: dict[str, float | int]
    lateness_by_minute: list[dict[str, float | int]]
    rate_per_bucket: dict[str, float | int]
    unmatched: int
    request_minus_start: dict[str, float | int]
    server_requests: int
    due_backlog: dict[str, float | int]
    oldest_overdue: dict[str, float | int]


def schedule_result(
    polls: list[Poll], watcher: ScheduleWatcher, window: tuple[float, float], feeds: int, interval_s: float,
    requests: dict[int, list[float]],
) -> ScheduleResult:
    w0, w1 = window
    previous: dict[str, float] = {}
    lateness: list[tuple[float, float]] = []
    unmatched = 0
    in_window: list[Poll] = []
    for poll in sorted(polls, key=lambda p: p.start):
        prior = previous.get(poll.feed)
        previous[poll.feed] = poll.start
        if not w0 <= poll.start < w1:
            continue
        in_window.append(poll)
        planned = planned_for(poll, watcher.planned.get(poll.feed, ()), prior)
        if planned is None:
            unmatched += 1
        else:
            lateness.append((poll.start, poll.start - planned))
    span = w1 - w0
    planned = sum(1 for values in watcher.planned.values() for v in values if w0 <= v < w1)
    return ScheduleResult(
        window_s=round(span, 1),
        polls=len(in_window),
        polls_per_s=round(len(in_window) / span, 1),
        planned=planned,
        planned_per_s=round(planned / span, 1),
        nominal_per_s=round(feeds / interval_s, 1),
        statuses=dict(Counter(p.status for p in in_window)),
        lateness=spread([late for _, late in lateness]),
        lateness_by_minute=by_minute(lateness, w0, w1),
        rate_per_bucket=bucket_rates(in_window, w0, w1),
        unmatched=unmatched,
        request_minus_start=request_offsets(in_window, requests),
        server_requests=sum(1 for times in requests.values() for t in times if w0 <= t < w1),
        due_backlog=spread([s.due for s in watcher.between(w0, w1)]),
        oldest_overdue=spread([s.overdue for s in watcher.between(w0, w1) if s.overdue is not None]),
    )


def by_minute(lateness: list[tuple[float, float]], w0: float, w1: float) -> list[dict[str, float | int]]:
    minutes = max(math.ceil((w1 - w0) / 60), 1)
    groups: list[list[float]] = [[] for _ in range(minutes)]
    for start, late in lateness:
        groups[min(int((start - w0) // 60), minutes - 1)].append(late)
    return [{"minute": i + 1, **spread(group)} for i, group in enumerate(groups)]


def bucket_rates(polls: list[Poll], w0: float, w1: float) -> dict[str, float | int]:
    buckets = max(int((w1 - w0) // BUCKET_S), 1)
    counts = [0] * buckets
    for poll in polls:
        index = int((poll.start - w0) // BUCKET_S)
        if index < buckets:
            counts[index] += 1
    rates = [count / BUCKET_S for count in counts]
    return {"bucket_s": BUCKET_S, "min": min(rates), "median": statistics.median(rates), "max": max(rates)}


def request_offsets(polls: list[Poll], requests: dict[int, list[float]]) -> dict[str, float | int]:
    """Seconds from a poll's logged start to the feed server receiving its request: checks the log's times."""
    offsets = []
    for poll in polls:
        times = requests.get(int(poll.feed.rsplit("/", 1)[1].split(".")[0]), [])
        index = bisect.bisect_left(times, poll.start - 0.05)
        if index < len(times) and times[index] <= poll.end + 0.05:
            offsets.append(times[index] - poll.start)
    return spread(offsets)


# --- serving ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ServeResult:
    mode: str
    round: int
    seconds: float
    requests: int
    requests_per_s: float
    statuses: dict[str, int]
    body_bytes: int
    latency_ms: dict[str, float | int]
    cpu: dict[str, float] = field(default_factory=dict)


async def hammer(url: str, headers: dict[str, str], seconds: float, clients: int) -> tuple[Counter[int], int, list[float]]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    size = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def client() -> None:
            nonlocal size
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[response.status] += 1
                size = max(size, len(body))

        await asyncio.gather(*(client() for _ in range(clients)))
    return statuses, size, latencies


async def current_etag(url: str) -> str:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for _ in range(60):
            async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                await response.read()
                if response.status == 200 and "ETag" in response.headers:
                    return response.headers["ETag"]
            await asyncio.sleep(1)
    raise BenchError(f"{url} did not answer 200 with an ETag")


SERVE_MODES = ("plain", "if-none-match")


def serve_bench(url: str, args: argparse.Namespace, daemon_pid: int, server_pid: int) -> list[ServeResult]:
    """``--serve-rounds`` rounds, each mode for ``--serve-seconds``, alternating, so load bursts hit both."""
    etag = asyncio.run(current_etag(url))
    results = []
    for round_ in range(1, args.serve_rounds + 1):
        for mode in SERVE_MODES:
            headers = {"Accept-Encoding": "gzip", **({"If-None-Match": etag} if mode == "if-none-match" else {})}
            start = CpuMark.take(daemon_pid, server_pid)
            statuses, size, latencies = asyncio.run(hammer(url, headers, args.serve_seconds, args.serve_clients))
            end = CpuMark.take(daemon_pid, server_pid)
            span = end.at - start.at
            count = sum(statuses.values())
            results.append(ServeResult(
                mode=mode, round=round_, seconds=round(span, 2), requests=count, requests_per_s=round(count / span, 1),
                statuses={str(k): v for k, v in sorted(statuses.items())}, body_bytes=size,
                latency_ms=spread([1000 * s for s in latencies]), cpu=cpu_percent(start, end),
            ))
    return results


def serve_summary(results: list[ServeResult]) -> dict[str, dict[str, Any]]:
    """Per mode: median requests/s over the rounds, each round's, all statuses, median latencies and CPU."""
    summary = {}
    for mode in SERVE_MODES:
        rounds = [r for r in results if r.mode == mode]
        if not rounds:
            continue
        statuses: Counter[str] = Counter()
        for r in rounds:
            statuses.update(r.statuses)
        summary[mode] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in rounds),
            "rounds": [r.requests_per_s for r in rounds],
            "statuses": dict(statuses),
            "body_bytes": max(r.body_bytes for r in rounds),
            "latency_p50_ms": statistics.median(r.latency_ms["p50"] for r in rounds),
            "latency_p99_ms": statistics.median(r.latency_ms["p99"] for r in rounds),
            "daemon_cpu": statistics.median(r.cpu["daemon"] for r in rounds),
            "client_cpu": statistics.median(r.cpu["bench_client"] for r in rounds),
        }
    return summary


# --- the run ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    config: dict[str, Any]
    environment: dict[str, Any]
    warmup: Warmup
    schedule: ScheduleResult
    cpu_window: dict[str, float]
    memory: dict[str, Any]
    serving: list[ServeResult]
    exit_code: int
    stop_s: float
    log_levels: dict[str, int]
    log_problems: list[str]
    watcher_errors: int

    def checks(self) -> list[tuple[str, str, bool]]:
        p99 = self.schedule.lateness.get("p99", math.inf)
        peak = self.memory["peak_mb"]
        conditional = serve_summary(self.serving).get("if-none-match", {})
        only_304 = set(conditional.get("statuses", ())) == {"304"}
        lateness = f"p99 scheduling lateness {p99:.2f} s" if self.schedule.lateness.get("n") else "no polls measured"
        return [
            (lateness, f"< {LATENESS_P99_TARGET_S:g} s", p99 < LATENESS_P99_TARGET_S),
            (f"peak memory {peak:.1f} MB", f"< {MEMORY_TARGET_MB:g} MB", peak < MEMORY_TARGET_MB),
            (f"daemon exit code on SIGTERM {self.exit_code}", "0", self.exit_code == 0),
            ("conditional requests all answered 304", "yes", only_304),
        ]

    def to_json(self) -> dict[str, Any]:
        document = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        document["schedule"] = asdict(self.schedule)
        document["warmup"] = asdict(self.warmup)
        document["serving"] = [asdict(s) for s in self.serving]
        document["serving_summary"] = serve_summary(self.serving)
        document["checks"] = [{"name": n, "target": t, "passed": p} for n, t, p in self.checks()]
        return document


def log(message: str, quiet: bool) -> None:
    print(message, file=sys.stderr if quiet else sys.stdout, flush=True)


def wait_for(proc: subprocess.Popen[bytes], done: Callable[[], bool], progress: Callable[[], str],
             deadline: float, phase: str, quiet: bool) -> float:
    """Seconds until ``done()``; BenchError if the daemon exits or ``deadline`` (monotonic) passes."""
    started = time.monotonic()
    next_report = started + 15
    while not done():
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode} during the {phase}")
        if time.monotonic() > deadline:
            raise BenchError(f"{phase} not finished in time: {progress()}")
        if time.monotonic() >= next_report:
            log(f"  {phase}: {progress()}", quiet)
            next_report += 15
        time.sleep(0.25)
    return time.monotonic() - started


@dataclass(slots=True)
class Warmup:
    cold_pass_s: float
    catch_up_s: float | None
    catch_up_max_backlog: int | None
    catch_up_max_overdue_s: float | None


def warm_up(proc: subprocess.Popen[bytes], watcher: ScheduleWatcher, args: argparse.Namespace) -> Warmup:
    """The cold first pass, then (unless ``--settle 0``) until no feed is overdue by more than ``--settle`` s."""
    deadline = time.monotonic() + args.warmup_timeout

    def state() -> str:
        last = watcher.samples[-1] if watcher.samples else None
        return f"{watcher.polled}/{args.feeds} polled" + (f", due {last.due}, oldest overdue {last.overdue} s"
                                                          if last else "")

    cold = wait_for(proc, lambda: watcher.polled >= args.feeds, state, deadline, "first pass", args.json)
    log(f"first pass done in {cold:.1f} s", args.json)
    if args.settle <= 0:
        return Warmup(round(cold, 1), None, None, None)
    started = time.time()
    catch_up = wait_for(proc, lambda: watcher.settled(args.settle, args.settle_hold), state, deadline,
                        "catch-up", args.json)
    samples = watcher.between(started, time.time())
    log(f"caught up in {catch_up:.1f} s", args.json)
    return Warmup(round(cold, 1), round(catch_up, 1), max((s.due for s in samples), default=None),
                  max((s.overdue or 0.0 for s in samples), default=None))


def measure_window(proc: subprocess.Popen[bytes], watcher: ScheduleWatcher, seconds: float, server_pid: int,
                   quiet: bool) -> tuple[float, float, CpuMark, CpuMark]:
    start_mark = CpuMark.take(proc.pid, server_pid)
    w0 = time.time()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode} during the measured window")
        time.sleep(min(left, 30.0))
        samples = watcher.samples[-20:]
        memory = next((s.tree_mb for s in reversed(samples) if s.tree_mb is not None), None)
        if samples and left > 1:
            log(f"  {seconds - max(left - 30, 0):.0f}/{seconds:.0f} s: due backlog now {samples[-1].due}, "
                f"max of last 10 s {max(s.due for s in samples)}; oldest overdue {samples[-1].overdue} s; "
                f"tree PSS {memory} MB", quiet)
    end_mark = CpuMark.take(proc.pid, server_pid)
    return w0, time.time(), start_mark, end_mark


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, float, float]:
    """SIGTERM; (exit code, seconds to exit, ru_maxrss MB). Killed (exit -9) after ``timeout``."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - started, usage.ru_maxrss / 1024


def run_bench(args: argparse.Namespace, workdir: Path, base_url: str, server_pid: int) -> Results:
    port = free_port()
    config = write_config(workdir, base_url, args, port)
    cmd = [*aggregator_command(), "--config", str(config), "run", "--log-level", "info", "--log-format", "json"]
    log_path = workdir / "daemon.log"
    environment = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT)
    memory = TreeMemorySampler(proc.pid, interval=0.2)
    watcher = ScheduleWatcher(workdir / "agg.db", proc.pid, args.sample_every)
    memory.start()
    watcher.start()
    try:
        log(f"daemon pid {proc.pid} on port {port}; first pass over {args.feeds} feeds", args.json)
        warmup = warm_up(proc, watcher, args)
        log(f"measuring for {args.minutes:g} min", args.json)
        w0, w1, cpu0, cpu1 = measure_window(proc, watcher, args.minutes * 60, server_pid, args.json)
        watcher.stop()
        memory_window_end = tree_memory_kb(proc.pid)[0] / 1024
        log(f"serving: {args.serve_rounds} rounds of {args.serve_seconds:g} s per mode, {args.serve_clients} clients",
            args.json)
        serving = serve_bench(f"http://127.0.0.1:{port}/feeds/all.atom", args, proc.pid, server_pid)
    finally:
        exit_code, stop_s, max_rss = stop_daemon(proc) if proc.poll() is None else (proc.returncode, 0.0, 0.0)
        memory.stop()
        if watcher.is_alive():
            watcher.stop()
    environment["loadavg_after"] = os.getloadavg()
    polls, levels, problems = read_log(log_path)
    schedule = schedule_result(polls, watcher, (w0, w1), args.feeds, interval_seconds(args.interval),
                               fetch_requests(base_url))
    timeline = [s.tree_mb for s in watcher.samples if s.tree_mb is not None and w0 <= s.at < w1]
    return Results(
        config={k: v for k, v in vars(args).items() if k != "json"},
        environment=environment,
        warmup=warmup,
        schedule=schedule,
        cpu_window=cpu_percent(cpu0, cpu1),
        memory={
            "peak_tree_pss_mb": round(memory.peak_mb, 1), "peak_processes": memory.peak_processes,
            "ru_maxrss_mb": round(max_rss, 1), "peak_mb": round(max(memory.peak_mb, max_rss), 1),
            "tree_pss_window_start_mb": timeline[0] if timeline else None,
            "tree_pss_window_end_mb": round(memory_window_end, 1),
            "tree_pss_window_max_mb": max(timeline) if timeline else None,
        },
        serving=serving,
        exit_code=exit_code,
        stop_s=round(stop_s, 2),
        log_levels=dict(levels),
        log_problems=problems,
        watcher_errors=watcher.errors,
    )


def interval_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


# --- report -----------------------------------------------------------------------------------


def print_report(r: Results) -> None:
    s = r.schedule
    late = s.lateness
    print()
    print(f"{r.config['feeds']} feeds x {r.config['items']} items, interval {r.config['interval']}, "
          f"concurrency {r.config['concurrency']}, host_concurrency {r.config['host_concurrency']} (one local host)")
    print(f"load average before {r.environment['loadavg_before'][0]:.2f}, after {r.environment['loadavg_after'][0]:.2f} "
          f"on {r.environment['cpus']} CPUs")
    w = r.warmup
    print(f"first (cold) pass: {w.cold_pass_s:.1f} s", end="")
    if w.catch_up_s is None:
        print("; window starts right after it (--no-settle)")
    else:
        print(f"; then caught up (no feed > {r.config['settle']:g} s overdue for {r.config['settle_hold']:g} s) "
              f"in {w.catch_up_s:.1f} s, backlog up to {w.catch_up_max_backlog} due, oldest up to "
              f"{w.catch_up_max_overdue_s:.0f} s overdue")
    print()
    print(f"measured window              {s.window_s:.0f} s")
    print(f"polls in window              {s.polls} ({', '.join(f'{v} {k}' for k, v in sorted(s.statuses.items()))})")
    print(f"polls/s sustained            {s.polls_per_s:.1f} (planned in window {s.planned_per_s:.1f}/s = {s.planned}; "
          f"feeds/interval {s.nominal_per_s:.1f})")
    print(f"polls/s per {BUCKET_S:g} s bucket        min {s.rate_per_bucket['min']:.1f}, "
          f"median {s.rate_per_bucket['median']:.1f}, max {s.rate_per_bucket['max']:.1f}")
    if late.get("n"):
        print(f"lateness s (start - planned) p50 {late['p50']:.3f}  p90 {late['p90']:.3f}  p99 {late['p99']:.3f}  "
              f"max {late['max']:.3f}  (n={late['n']}, unmatched {s.unmatched})")
        for minute in s.lateness_by_minute:
            if minute.get("n"):
                print(f"  minute {minute['minute']}: p50 {minute['p50']:.3f}  p99 {minute['p99']:.3f}  "
                      f"max {minute['max']:.3f}  (n={minute['n']})")
    if s.due_backlog.get("n"):
        print(f"due backlog (feeds due, sampled) p50 {s.due_backlog['p50']:g}  p99 {s.due_backlog['p99']:g}  "
              f"max {s.due_backlog['max']:g}")
    if s.oldest_overdue.get("n"):
        print(f"oldest overdue s (sampled)    p50 {s.oldest_overdue['p50']:.2f}  p99 {s.oldest_overdue['p99']:.2f}  "
              f"max {s.oldest_overdue['max']:.2f}")
    if s.request_minus_start.get("n"):
        print(f"server got request after logged start: p50 {1000 * s.request_minus_start['p50']:.1f} ms, "
              f"p99 {1000 * s.request_minus_start['p99']:.1f} ms; server saw {s.server_requests} requests in window")
    c = r.cpu_window
    print(f"CPU, % of one core           daemon {c['daemon']:.1f}  feed server {c['feed_server']:.1f}  "
          f"bench {c['bench_client']:.1f}  others {c['others']:.1f}  (machine busy {c['machine_busy']:.1f} of "
          f"{100 * c['machine_cores']:.0f})")
    m = r.memory
    print(f"memory MB                    peak tree PSS {m['peak_tree_pss_mb']:.1f} ({m['peak_processes']} procs), "
          f"ru_maxrss {m['ru_maxrss_mb']:.1f}; tree PSS window start {m['tree_pss_window_start_mb']}, "
          f"end {m['tree_pss_window_end_mb']}")
    print()
    print(f"{'serving /feeds/all.atom':<24} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  {'daemon/client CPU %':>19}  "
          "statuses; req/s per round")
    for mode, sv in serve_summary(r.serving).items():
        print(f"{mode:<24} {sv['requests_per_s']:>8.1f} {sv['latency_p50_ms']:>7.1f} {sv['latency_p99_ms']:>7.1f}  "
              f"{sv['daemon_cpu']:>10.0f} / {sv['client_cpu']:<6.0f}  {json.dumps(sv['statuses'])}; {sv['rounds']}")
    plain = serve_summary(r.serving).get("plain", {})
    print(f"(medians over {r.config['serve_rounds']} rounds of {r.config['serve_seconds']:g} s, "
          f"{r.config['serve_clients']} clients, Accept-Encoding: gzip, 200 body {plain.get('body_bytes', 0)} bytes; "
          "the daemon keeps polling meanwhile)")
    print(f"daemon stopped by SIGTERM in {r.stop_s:.2f} s, exit code {r.exit_code}; log lines {r.log_levels}")
    for line in r.log_problems:
        print(f"  log: {line}")
    print()
    for name, target, passed in r.checks():
        print(f"{'PASS' if passed else 'FAIL'}  {name} (target {target})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5, help="items per feed (small keeps the cold pass short)")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the measured window")
    parser.add_argument("--interval", default="1m", help='every feed\'s interval, "<n>s", "<n>m" or "<n>h"')
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--host-concurrency", type=int, default=64)
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between reads of next_poll_at")
    parser.add_argument("--serve-seconds", type=float, default=5.0, help="per serving mode and round")
    parser.add_argument("--serve-rounds", type=int, default=3, help="rounds of (plain, if-none-match)")
    parser.add_argument("--serve-clients", type=int, default=32)
    parser.add_argument("--settle", type=float, default=LATENESS_P99_TARGET_S,
                        help="after the first pass, wait until no feed is more than this many seconds overdue "
                             "(0: start measuring right after the first pass)")
    parser.add_argument("--settle-hold", type=float, default=10.0, help="... for this many seconds in a row")
    parser.add_argument("--warmup-timeout", type=float, default=1200.0,
                        help="give up if the first pass and the catch-up take longer")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, database, log)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not aggregator_available():
        print("aggregator.cli is not importable; pip install -e .", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agg-daemon-bench-"))
    server, base_url = start_server(args.feeds, args.items, timeout=300, ttl=0, request_log=True)
    try:
        log(f"feed server: {base_url} ({args.feeds} feeds x {args.items} items); work dir {workdir}", args.json)
        results = run_bench(args, workdir, base_url, server.pid)
        log(f"feed server counters: {fetch_stats(base_url)}", args.json)
    except BenchError as error:
        print(f"benchmark failed: {error}; see {workdir / 'daemon.log'}", file=sys.stderr)
        return 1
    finally:
        stop_server(server)
    if args.json:
        print(json.dumps(results.to_json(), indent=2))
    else:
        print_report(results)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not args.json:
        print(f"work dir kept: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
