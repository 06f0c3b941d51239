"""Crash-restart loop: SIGKILL ``aggregator poll`` at random moments, many times, and check the store.

Starts ``feedserver.py`` in its own process. Round ``r`` polls the first ``(r + 1) * --per-round``
feeds, so every pass has new feeds to store besides the conditional GETs of the ones before; every
``--full-text-every``-th feed has ``full_text = true`` (article pages fetched and extracted). Each
pass is killed with SIGKILL at a seeded random moment: even rounds some time after the start, odd
rounds soon after the run's first commit of new entries (while it writes). Just before the kill the committed entries
are read (read-only); after it the store is checked: ``PRAGMA integrity_check``, foreign keys, the
full-text index in step with ``entries``, no (feed_url, guid) twice, no entry or extracted article
read before any kill missing, ``duplicate_of`` naming an existing original, never a duplicate, and
worker processes gone. Finally one uninterrupted pass must exit 0, store every entry the feeds list
and leave no article unfinished; FTS5's own integrity check runs on the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from feedserver import GUID_NAMESPACE, start_server, stop_server  # noqa: E402

FINAL_STATES = {"done", "skipped"}


@dataclass(frozen=True)
class Snapshot:
    entries: frozenset[tuple[int, str, str]] = frozenset()
    articles: frozenset[int] = frozenset()

    def __or__(self, other: Snapshot) -> Snapshot:
        return Snapshot(self.entries | other.entries, self.articles | other.articles)


@dataclass
class KillResult:
    round: int
    after_s: float
    mid_pass: bool
    entries: int
    stored_by_run: int
    problems: list[str]


@dataclass
class Report:
    kills: list[KillResult] = field(default_factory=list)
    final_exit: int | None = None
    final_seconds: float = 0.0
    missing_after_final: int = 0
    unfinished_articles: dict[str, int] = field(default_factory=dict)
    final_problems: list[str] = field(default_factory=list)
    entries: int = 0
    expected: int = 0

    def count(self, word: str) -> int:
        return sum(1 for kill in self.kills for problem in kill.problems if problem.startswith(word))

    @property
    def passed(self) -> bool:
        clean = not any(kill.problems for kill in self.kills) and not self.final_problems
        return clean and self.final_exit == 0 and not self.missing_after_final and not self.unfinished_articles


# --- the store ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(database: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def snapshot(database: Path) -> Snapshot:
    if not database.exists():
        return Snapshot()
    with read_only(database) as conn:
        try:
            rows = conn.execute("SELECT id, feed_url, guid, article_text IS NOT NULL FROM entries").fetchall()
        except sqlite3.OperationalError:  # killed before the first migration was committed
            return Snapshot()
    return Snapshot(frozenset(row[:3] for row in rows), frozenset(row[0] for row in rows if row[3]))


CHECKS = {
    "integrity": "SELECT group_concat(integrity_check, '; ') FROM pragma_integrity_check() WHERE integrity_check <> 'ok' HAVING count(*)",
    "foreign keys": "SELECT count(*) FROM pragma_foreign_key_check() HAVING count(*) > 0",
    "duplicate entries": "SELECT count(*) FROM (SELECT 1 FROM entries GROUP BY feed_url, guid HAVING count(*) > 1) HAVING count(*) > 0",
    "broken stories": """SELECT count(*) FROM entries d LEFT JOIN entries o ON o.id = d.duplicate_of
        WHERE d.duplicate_of IS NOT NULL AND (o.id IS NULL OR o.duplicate_of IS NOT NULL) HAVING count(*) > 0""",
    "full-text index": "SELECT count(*) FROM entries HAVING count(*) <> (SELECT count(*) FROM entries_fts)",
}


def problems(database: Path, before: Snapshot) -> tuple[list[str], Snapshot]:
    """Every broken invariant, as ``"<check>: <detail>"``; and what the store holds now."""
    after = snapshot(database)
    found = []
    if after.entries or before.entries:
        with read_only(database) as conn:
            for name, sql in CHECKS.items():
                row = conn.execute(sql).fetchone()
                if row is not None:
                    found.append(f"{name}: {row[0]}")
    if lost := before.entries - after.entries:
        found.append(f"lost entries: {len(lost)}")
    if lost := before.articles - after.articles:
        found.append(f"lost articles: {len(lost)}")
    return found, after


def fts_integrity(database: Path) -> list[str]:
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
            conn.execute("INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check')")
    except sqlite3.Error as e:
        return [f"integrity: entries_fts: {e}"]
    return []


def stored(database: Path) -> tuple[set[tuple[str, str]], dict[str, int]]:
    with read_only(database) as conn:
        entries = set(conn.execute("SELECT feed_url, guid FROM entries").fetchall())
        states = dict(conn.execute(
            "SELECT extraction_status, count(*) FROM entries WHERE extraction_status IS NOT NULL GROUP BY 1"
        ).fetchall())
    return entries, states


# --- the poller ---------------------------------------------------------------------------------------


def feed_url(base_url: str, index: int) -> str:
    return f"{base_url}/feeds/{index}.xml"


def expected_entries(base_url: str, feeds: int, items: int) -> set[tuple[str, str]]:
    return {
        (feed_url(base_url, i), f"urn:uuid:{uuid.uuid5(GUID_NAMESPACE, f'{i}/{j}')}")
        for i in range(feeds) for j in range(items)
    }


def write_config(workdir: Path, base_url: str, feeds: int, full_text_every: int) -> Path:
    lines = [
        "[aggregator]",
        f"database = {json.dumps(str(workdir / 'agg.db'))}",
        f"output_dir = {json.dumps(str(workdir / 'public'))}",
        "full_text = false", "allow_private_addresses = true", "concurrency = 32", "host_concurrency = 16",
        'timeout = "30s"', "",
    ]
    for i in reversed(range(feeds)):  # the newest round's feeds first: every pass starts by storing entries
        lines += ["[[feeds]]", f"url = {json.dumps(feed_url(base_url, i))}"]
        lines += ["full_text = true", ""] if full_text_every and i % full_text_every == 0 else [""]
    path = workdir / "feeds.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "poll"],
            cwd=config.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )


def children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            found.update(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def orphans_gone(pids: set[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


# --- the loop ----------------------------------------------------------------------------------------


def wait_for_kill(args: argparse.Namespace, rng: random.Random, round_: int, database: Path, entries: int) -> None:
    """Even rounds: a random moment after the start (start-up, migrations, fetching, writing).
    Odd rounds: a random moment soon after the run's first commit of new entries, while it writes."""
    if round_ % 2 == 0:
        time.sleep(rng.uniform(args.min_delay, args.max_delay))
        return
    deadline = time.monotonic() + args.max_delay * 3
    while len(snapshot(database).entries) <= entries and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, args.after_commit))


def kill_round(args: argparse.Namespace, workdir: Path, config: Path, rng: random.Random, seen: Snapshot,
               round_: int) -> tuple[KillResult, Snapshot]:
    database = workdir / "agg.db"
    started = time.monotonic()
    process = spawn(config, workdir / "poll.log")
    wait_for_kill(args, rng, round_, database, len(seen.entries))
    delay = time.monotonic() - started
    before = snapshot(database) | seen
    mid_pass = process.poll() is None
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    found, after = problems(database, before)
    if not orphans_gone(workers):
        found.append(f"orphan workers: {sorted(p for p in workers if alive(p))}")
    stored_by_run = len(after.entries) - len(seen.entries)
    return KillResult(round_, round(delay, 3), mid_pass, len(after.entries), stored_by_run, found), before | after


def final_pass(args: argparse.Namespace, workdir: Path, config: Path, base_url: str, seen: Snapshot,
               report: Report) -> None:
    database = workdir / "agg.db"
    started = time.monotonic()
    process = spawn(config, workdir / "poll.log")
    report.final_exit = process.wait(timeout=args.timeout)
    report.final_seconds = round(time.monotonic() - started, 2)
    found, _ = problems(database, seen)
    report.final_problems = found + fts_integrity(database)
    feeds = args.kills * args.per_round
    expected = expected_entries(base_url, feeds, args.items)
    entries, states = stored(database)
    report.expected, report.entries = len(expected), len(entries)
    report.missing_after_final = len(expected - entries)
    report.unfinished_articles = {state: n for state, n in states.items() if state not in FINAL_STATES}


def run(args: argparse.Namespace, base_url: str) -> Report:
    report, seen, rng = Report(), Snapshot(), random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="agg-crash-") as tmp:
        workdir = Path(tmp)
        for round_ in range(args.kills):
            config = write_config(workdir, base_url, (round_ + 1) * args.per_round, args.full_text_every)
            result, seen = kill_round(args, workdir, config, rng, seen, round_)
            report.kills.append(result)
            log(f"kill {round_ + 1:>2}/{args.kills} after {result.after_s:5.2f}s "
                f"({'mid-pass' if result.mid_pass else 'pass over'}): {result.entries} entries "
                f"(+{result.stored_by_run}), "
                f"{'; '.join(result.problems) or 'store intact'}", args.json)
        final_pass(args, workdir, config, base_url, seen, report)
    return report


# --- output --------------------------------------------------------------------------------------------


def log(message: str, quiet_stdout: bool) -> None:
    print(message, file=sys.stderr if quiet_stdout else sys.stdout, flush=True)


def print_report(report: Report, args: argparse.Namespace) -> None:
    mid = sum(kill.mid_pass for kill in report.kills)
    writing = sum(kill.stored_by_run > 0 for kill in report.kills)
    print()
    print(f"kills: {len(report.kills)} ({mid} mid-pass, {writing} after the run had committed new entries); "
          f"even rounds killed {args.min_delay}-{args.max_delay}s after the start, odd rounds up to "
          f"{args.after_commit}s after the run's first commit; seed {args.seed}")
    for word in ("integrity", "foreign keys", "duplicate entries", "lost entries", "lost articles", "broken stories",
                 "full-text index", "orphan workers"):
        print(f"  {word + ':':<20} {report.count(word)} kills with a problem")
    print(f"final pass: exit {report.final_exit} in {report.final_seconds}s; {report.entries} of {report.expected} "
          f"entries stored, {report.missing_after_final} missing; unfinished articles: {report.unfinished_articles or 'none'}")
    print(f"final checks: {'; '.join(report.final_problems) or 'all clean'}")
    print("PASS" if report.passed else "FAIL")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--per-round", type=int, default=40, help="feeds added each round")
    parser.add_argument("--items", type=int, default=10, help="entries per feed")
    parser.add_argument("--full-text-every", type=int, default=8, help="every Nth feed has full_text (0: none)")
    parser.add_argument("--min-delay", type=float, default=0.5, help="earliest kill, seconds after the start")
    parser.add_argument("--max-delay", type=float, default=3.0, help="latest kill")
    parser.add_argument("--after-commit", type=float, default=1.0,
                        help="odd rounds: latest kill, seconds after the run's first new entries are committed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="for the final, uninterrupted pass")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout, progress on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server, base_url = start_server(args.kills * args.per_round, args.items, ttl=0)
    try:
        report = run(args, base_url)
    finally:
        stop_server(server)
    if args.json:
        print(json.dumps(asdict(report) | {"passed": report.passed}, indent=2))
    else:
        print_report(report, args)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
