"""Cold and warm poll benchmark: the ``aggregator`` CLI against the ``reader`` library.

Starts ``feedserver.py`` in its own process, then for each run polls every feed
once on a fresh database (cold) and once more on the same database (warm, all
304).  Each poller runs in a child process; wall time, the child's peak RSS
(``ru_maxrss`` from ``os.wait4``) and the peak PSS summed over the child and
its descendants (sampled from ``/proc``) are taken per process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from feedserver import fetch_stats, start_server, stop_server  # noqa: E402
from proctree import TreeMemorySampler  # noqa: E402

COLD_TARGET = 3.0
WARM_TARGET = 5.0
RSS_TARGET_MB = 150.0


@dataclass(slots=True)
class ProcessResult:
    seconds: float
    cpu_s: float  # user + system time of the process and the children it waited for
    max_rss_mb: float
    tree_mb: float
    tree_processes: int
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 15) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-lines:])


@dataclass(slots=True)
class OursRun:
    cold_s: float
    warm_s: float
    max_rss_mb: float
    tree_mb: float
    tree_processes: int
    entries: int | None
    cold_requests: dict[str, int]
    warm_requests: dict[str, int]
    cold_self_s: float | None = None
    warm_self_s: float | None = None
    cold_cpu_s: float = 0.0


@dataclass(slots=True)
class ReaderRun:
    workers: int
    cold_s: float
    warm_s: float
    max_rss_mb: float
    tree_mb: float
    tree_processes: int
    entries: int | None
    process_s: float
    requests: dict[str, int]
    cold_cpu_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Summary:
    label: str
    cold_s: float
    warm_s: float
    max_rss_mb: float
    tree_mb: float
    entries: int | None

    @property
    def peak_mb(self) -> float:
        return max(self.max_rss_mb, self.tree_mb)


class BenchError(RuntimeError):
    pass


def run_measured(cmd: Sequence[str], cwd: Path, timeout: float) -> ProcessResult:
    """Run ``cmd`` to completion; wall time and the child's own peak RSS."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=err, text=True)
        sampler = TreeMemorySampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            sampler.stop()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcessResult(
            seconds=seconds,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_mb=usage.ru_maxrss / 1024,
            tree_mb=sampler.peak_mb,
            tree_processes=sampler.peak_processes,
            returncode=proc.returncode,
            stdout=out.read(),
            stderr=err.read(),
        )


def request_delta(base_url: str, action: Callable[[], ProcessResult]) -> tuple[ProcessResult, dict[str, int]]:
    before = fetch_stats(base_url)
    result = action()
    after = fetch_stats(base_url)
    return result, {key: after[key] - before.get(key, 0) for key in after}


def aggregator_command() -> list[str]:
    sibling = Path(sys.executable).with_name("aggregator")
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("aggregator")
    if found:
        return [found]
    return [sys.executable, "-m", "aggregator"]


def aggregator_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import aggregator.cli"], capture_output=True)
    return probe.returncode == 0


def feed_urls(base_url: str, n_feeds: int) -> list[str]:
    return [f"{base_url}/feeds/{i}.xml" for i in range(n_feeds)]


def write_config(workdir: Path, urls: Sequence[str], concurrency: int, timeout: float | None = None) -> Path:
    lines = [
        "[aggregator]",
        f"database = {json.dumps(str(workdir / 'agg.db'))}",
        f"output_dir = {json.dumps(str(workdir / 'public'))}",
        "full_text = false",
        "allow_private_addresses = true",
        f"concurrency = {concurrency}",
        *([f'timeout = "{timeout:g}s"'] if timeout is not None else []),
        "",
    ]
    for url in urls:
        lines += ["[[feeds]]", f"url = {json.dumps(url)}", ""]
    path = workdir / "feeds.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def count_entries(db_path: Path) -> int | None:
    if not db_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    except sqlite3.Error:
        return None


def reported_seconds(text: str) -> float | None:
    """The ``seconds`` field of ``poll --json`` output, if there is one."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError:
        return None
    seconds = report.get("seconds") if isinstance(report, dict) else None
    return float(seconds) if isinstance(seconds, int | float) else None


def checked(result: ProcessResult, what: str) -> ProcessResult:
    if result.returncode != 0:
        raise BenchError(f"{what} exited with {result.returncode}:\n{result.tail()}")
    return result


def run_ours(base_url: str, n_feeds: int, concurrency: int, timeout: float) -> OursRun:
    with tempfile.TemporaryDirectory(prefix="agg-bench-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir, feed_urls(base_url, n_feeds), concurrency)
        cmd = [*aggregator_command(), "--config", str(config), "poll", "--json"]
        cold, cold_requests = request_delta(base_url, lambda: run_measured(cmd, workdir, timeout))
        checked(cold, "aggregator cold poll")
        entries = count_entries(workdir / "agg.db")
        warm, warm_requests = request_delta(base_url, lambda: run_measured(cmd, workdir, timeout))
        checked(warm, "aggregator warm poll")
    return OursRun(
        cold_s=cold.seconds,
        warm_s=warm.seconds,
        max_rss_mb=max(cold.max_rss_mb, warm.max_rss_mb),
        tree_mb=max(cold.tree_mb, warm.tree_mb),
        tree_processes=max(cold.tree_processes, warm.tree_processes),
        entries=entries,
        cold_requests=cold_requests,
        warm_requests=warm_requests,
        cold_self_s=reported_seconds(cold.stdout),
        warm_self_s=reported_seconds(warm.stdout),
        cold_cpu_s=cold.cpu_s,
    )


def run_reader(base_url: str, n_feeds: int, workers: int, timeout: float, search: bool = False) -> ReaderRun:
    with tempfile.TemporaryDirectory(prefix="reader-bench-") as tmp:
        workdir = Path(tmp)
        cmd = [
            sys.executable, str(BENCH_DIR / "reader_poll.py"),
            "--db", str(workdir / "reader.db"),
            "--base-url", base_url,
            "--feeds", str(n_feeds),
            "--workers", str(workers),
            *(["--search"] if search else []),
        ]
        result, requests = request_delta(base_url, lambda: run_measured(cmd, workdir, timeout))
        checked(result, f"reader_poll (workers={workers})")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return ReaderRun(
        workers=workers,
        cold_s=report["cold"]["seconds"],
        warm_s=report["warm"]["seconds"],
        max_rss_mb=result.max_rss_mb,
        tree_mb=result.tree_mb,
        tree_processes=result.tree_processes,
        entries=report["entries"],
        process_s=result.seconds,
        requests=requests,
        cold_cpu_s=report["cold"].get("cpu_seconds", 0.0),
        detail=report,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(slots=True)
class Check:
    name: str
    value: float
    target: str
    passed: bool


@dataclass(slots=True)
class BenchResults:
    feeds: int
    items: int
    runs: int
    ours_runs: list[OursRun] = field(default_factory=list)
    reader_runs: list[ReaderRun] = field(default_factory=list)

    @property
    def expected_entries(self) -> int:
        return self.feeds * self.items

    def ours(self) -> Summary | None:
        if not self.ours_runs:
            return None
        return Summary(
            label="aggregator",
            cold_s=median([r.cold_s for r in self.ours_runs]),
            warm_s=median([r.warm_s for r in self.ours_runs]),
            max_rss_mb=median([r.max_rss_mb for r in self.ours_runs]),
            tree_mb=median([r.tree_mb for r in self.ours_runs]),
            entries=self.ours_runs[-1].entries,
        )

    def reader_by_workers(self) -> dict[int, Summary]:
        groups: dict[int, list[ReaderRun]] = {}
        for run in self.reader_runs:
            groups.setdefault(run.workers, []).append(run)
        return {
            workers: Summary(
                label=f"reader w={workers}",
                cold_s=median([r.cold_s for r in group]),
                warm_s=median([r.warm_s for r in group]),
                max_rss_mb=median([r.max_rss_mb for r in group]),
                tree_mb=median([r.tree_mb for r in group]),
                entries=group[-1].entries,
            )
            for workers, group in sorted(groups.items())
        }

    def reader_best(self) -> Summary | None:
        per_workers = self.reader_by_workers()
        if not per_workers:
            return None
        cold_w = min(per_workers, key=lambda w: per_workers[w].cold_s)
        warm_w = min(per_workers, key=lambda w: per_workers[w].warm_s)
        return Summary(
            label=f"reader best (cold w={cold_w}, warm w={warm_w})",
            cold_s=per_workers[cold_w].cold_s,
            warm_s=per_workers[warm_w].warm_s,
            max_rss_mb=per_workers[cold_w].max_rss_mb,
            tree_mb=per_workers[cold_w].tree_mb,
            entries=per_workers[cold_w].entries,
        )

    def ours_in_process(self) -> tuple[float, float] | None:
        """Median pass time as the CLI reports it: the same span reader's update_feeds() is timed over."""
        cold = [r.cold_self_s for r in self.ours_runs if r.cold_self_s is not None]
        warm = [r.warm_self_s for r in self.ours_runs if r.warm_self_s is not None]
        if not cold or not warm:
            return None
        return median(cold), median(warm)

    def checks(self) -> list[Check]:
        ours, reader = self.ours(), self.reader_best()
        checks: list[Check] = []
        in_process = self.ours_in_process()
        if ours is not None and reader is not None and in_process is not None:
            cold_ratio = reader.cold_s / in_process[0]
            warm_ratio = reader.warm_s / in_process[1]
            checks.append(Check("cold speed-up reader/ours", cold_ratio, f">= {COLD_TARGET:g}x", cold_ratio >= COLD_TARGET))
            checks.append(Check("warm speed-up reader/ours", warm_ratio, f">= {WARM_TARGET:g}x", warm_ratio >= WARM_TARGET))
        if ours is not None:
            peak = ours.peak_mb
            checks.append(Check("aggregator peak memory MB", peak, f"< {RSS_TARGET_MB:g}", peak < RSS_TARGET_MB))
        return checks

    def to_json(self) -> dict[str, Any]:
        ours, reader = self.ours(), self.reader_best()
        return {
            "config": {"feeds": self.feeds, "items": self.items, "runs": self.runs},
            "ours": asdict(ours) if ours else None,
            "reader_best": asdict(reader) if reader else None,
            "reader_by_workers": {str(w): asdict(s) for w, s in self.reader_by_workers().items()},
            "checks": [asdict(c) for c in self.checks()],
            "ours_runs": [asdict(r) for r in self.ours_runs],
            "reader_runs": [asdict(r) for r in self.reader_runs],
        }


def format_entries(entries: int | None, expected: int) -> str:
    if entries is None:
        return "n/a"
    return f"{entries}" + ("" if entries == expected else f" (expected {expected})")


def format_table(rows: Sequence[Summary], expected_entries: int) -> list[str]:
    width = max(len(row.label) for row in rows)
    header = f"{'system':<{width}}  {'cold s':>8}  {'warm s':>8}  {'peak RSS MB':>11}  {'tree PSS MB':>11}  entries"
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.label:<{width}}  {row.cold_s:>8.3f}  {row.warm_s:>8.3f}  {row.max_rss_mb:>11.1f}  "
            f"{row.tree_mb:>11.1f}  {format_entries(row.entries, expected_entries)}"
        )
    return lines


def format_counts(counts: dict[str, int]) -> str:
    return f"{counts.get('feed_200', 0)}x200 {counts.get('feed_304', 0)}x304"


def format_requests(results: BenchResults) -> list[str]:
    lines = [
        f"server saw, aggregator run {i}: cold {format_counts(r.cold_requests)}, warm {format_counts(r.warm_requests)}"
        for i, r in enumerate(results.ours_runs, 1)
    ]
    lines += [
        f"server saw, reader w={r.workers}: cold+warm {format_counts(r.requests)}"
        for r in results.reader_runs[: len(results.reader_by_workers())]
    ]
    return lines


def format_self_reported(results: BenchResults) -> list[str]:
    cold = [r.cold_self_s for r in results.ours_runs if r.cold_self_s is not None]
    warm = [r.warm_self_s for r in results.ours_runs if r.warm_self_s is not None]
    if not cold or not warm:
        return []
    line = f"aggregator self-reported poll time (median): cold {median(cold):.3f}s, warm {median(warm):.3f}s"
    reader = results.reader_best()
    if reader is not None and min(cold + warm) > 0:
        line += f"; reader/ours in-process: cold {reader.cold_s / median(cold):.2f}x, warm {reader.warm_s / median(warm):.2f}x"
    return [line]


def format_cpu(results: BenchResults) -> list[str]:
    """CPU time of the cold passes, and the cold speed-up that much CPU allows on this machine's cores."""
    ours = [r.cold_cpu_s for r in results.ours_runs if r.cold_cpu_s]
    per_workers = results.reader_by_workers()
    if not ours or not per_workers:
        return []
    cores = len(os.sched_getaffinity(0))
    workers = min(per_workers, key=lambda w: per_workers[w].cold_s)  # as reader_best() chooses
    theirs = median([r.cold_cpu_s for r in results.reader_runs if r.workers == workers and r.cold_cpu_s])
    bound = per_workers[workers].cold_s / (median(ours) / cores)
    return [
        (
            f"cold pass CPU time (median): aggregator {median(ours):.2f}s (CLI process and its workers, start-up "
            f"included), reader w={workers} {theirs:.2f}s (update_feeds() in-process)"
        ),
        (
            f"with that much CPU on {cores} core(s), a CPU-bound cold speed-up is {bound:.2f}x (reader's cold time / "
            "our CPU time per core; ours includes start-up, partly before the timed pass)"
        ),
    ]


def format_checks(checks: Sequence[Check]) -> list[str]:
    return [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.value:.2f} (target {c.target})" for c in checks]


def print_report(results: BenchResults) -> None:
    rows = [s for s in (results.ours(),) if s is not None]
    rows += list(results.reader_by_workers().values())
    rows += [s for s in (results.reader_best(),) if s is not None]
    if not rows:
        return
    print()
    print(f"{results.feeds} feeds x {results.items} items, medians of {results.runs} run(s)")
    print("\n".join(format_table(rows, results.expected_entries)))
    print("peak RSS: ru_maxrss of the poller process; tree PSS: peak PSS summed over it and its child processes.")
    if results.ours_runs:
        print("aggregator times in the table are CLI process wall time (startup included); reader times are")
        print("update_feeds() in-process. The speed-up checks compare like with like: both in-process.")
    print("\n".join(format_self_reported(results) + format_cpu(results) + format_requests(results)))
    print("\n".join(format_checks(results.checks())))


def parse_workers(text: str) -> list[int]:
    try:
        workers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    if not workers or min(workers) < 1:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return workers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reader-workers", type=parse_workers, default=[1, 4, 8, 16])
    parser.add_argument("--concurrency", type=int, default=32, help="aggregator.concurrency in feeds.toml")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill a poller after this many seconds")
    parser.add_argument("--skip-reader", action="store_true")
    parser.add_argument(
        "--reader-search", action="store_true",
        help="enable reader's full-text search and count update_search() in its passes (aggregator indexes during the pass)",
    )
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    return parser.parse_args(argv)


def log(message: str, quiet: bool) -> None:
    print(message, file=sys.stderr if quiet else sys.stdout, flush=True)


def run_bench(args: argparse.Namespace, base_url: str) -> BenchResults:
    results = BenchResults(feeds=args.feeds, items=args.items, runs=args.runs)
    log(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", args.json)
    for run in range(1, args.runs + 1):
        if not args.skip_ours:
            ours = run_ours(base_url, args.feeds, args.concurrency, args.timeout)
            results.ours_runs.append(ours)
            log(f"run {run}: aggregator cold {ours.cold_s:.3f}s warm {ours.warm_s:.3f}s rss {ours.max_rss_mb:.1f}MB "
                f"tree {ours.tree_mb:.1f}MB/{ours.tree_processes} procs entries {ours.entries}", args.json)
        if not args.skip_reader:
            for workers in args.reader_workers:
                reader = run_reader(base_url, args.feeds, workers, args.timeout, args.reader_search)
                results.reader_runs.append(reader)
                log(f"run {run}: reader w={workers} cold {reader.cold_s:.3f}s warm {reader.warm_s:.3f}s "
                    f"rss {reader.max_rss_mb:.1f}MB tree {reader.tree_mb:.1f}MB entries {reader.entries}", args.json)
    log(f"load average after: {os.getloadavg()[0]:.2f}", args.json)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_ours and not aggregator_available():
        print("aggregator.cli is not importable; use --skip-ours", file=sys.stderr)
        return 2
    server, base_url = start_server(args.feeds, args.items)
    try:
        log(f"feed server: {base_url} ({args.feeds} feeds x {args.items} items)", args.json)
        results = run_bench(args, base_url)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        stop_server(server)
    if args.json:
        print(json.dumps(results.to_json(), indent=2))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
