"""Hostile and broken feeds at scale: a cold pass over 1,000 feeds of which 20 % are faulty, against the
same pass over 1,000 healthy feeds, in the same run.

Two local servers, each in its own process: ``feedserver.py`` with the healthy feeds (and the feeds that
the moved and HTML-page faults lead to), and a fault server started from this file
(``--serve-faults``) with one route per fault mode: responses that stall past the timeout, slow drips,
bodies over the cap, gzip and brotli bombs, redirect loops, 301s, 410 Gone, HTML pages with and
without a feed link, billion laughs, entity expansion, external entities, wrong and missing charsets,
invalid UTF-8, control characters, impossible dates and duplicate guids, enormous titles, and feeds
of 10,000 items. Every fifth feed of the faulty pass is a fault, the modes in turn, shuffled.

Each pass is ``aggregator poll --json`` on a fresh database; its wall time, its own peak RSS and the
peak PSS of its process tree (workers included) are taken as in ``poll_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

BENCH_DIR = Path(__file__).resolve().parent
FAULT_FILES = BENCH_DIR.parent / "tests" / "data" / "faults"
sys.path.insert(0, str(BENCH_DIR))

from feedserver import HOST, _read_line, render_feed, start_server, stop_server
from poll_bench import (
    BenchError,
    aggregator_command,
    checked,
    count_entries,
    run_measured,
    write_config,
)

RATIO_TARGET = 1.5
MEMORY_TARGET_MB = 250.0
SECRET = "fault-bench-secret-3b9e"
# Fault modes whose feeds cannot be read (their poll fails); the others are read despite the fault.
FAILING = ("stall", "drip", "too-large", "gzip-bomb", "brotli-bomb", "loop", "gone", "page")
READABLE = (
    "moved", "html", "laughs", "expansion", "xxe", "wrong-charset", "no-charset", "invalid-utf8", "control",
    "dates", "title",
)
RSS = "application/rss+xml"
HUGE_ITEMS = 10_000


# --- the fault server ------------------------------------------------------------------------------


def many_items(count: int) -> bytes:
    items = "".join(
        f"<item><title>Meldung {i}: Brücke über den Fluss</title><link>http://many.test/{i}</link>"
        f"<guid>http://many.test/{i}</guid><pubDate>Mon, 02 Nov 2026 10:{i % 60:02d}:00 GMT</pubDate>"
        f"<description>Kurzer Text Nummer {i} über die Stadt.</description></item>\n"
        for i in range(count)
    )
    return f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Many</title>{items}</channel></rss>'.encode()


def enormous_title(words: int) -> bytes:
    title = " ".join(f"Wort{i}" for i in range(words))
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Long</title>'
        f"<item><title>{title}</title><link>http://long.test/1</link></item></channel></rss>"
    ).encode()


def html_page(feed_url: str | None) -> bytes:
    link = f'<link rel="alternate" type="application/rss+xml" href="{feed_url}">' if feed_url else ""
    return f'<!DOCTYPE html><html><head><title>A site</title>{link}</head><body><p>Hello.</p></body></html>'.encode()


class FaultApp:
    """One route per fault mode, ``/{mode}/{i}``; moved and HTML pages lead to ``feed_base``'s extra feeds."""

    def __init__(self, feed_base: str, extra_from: int, stall: float, secret_file: str, huge: int) -> None:
        self.feed_base, self.extra_from, self.stall = feed_base, extra_from, stall
        self.drip_body = many_items(40)
        self.large = b"<rss>" + b"x" * (11 * 1024 * 1024) + b"</rss>"
        self.huge = [render_feed(feed_base, 100_000 + i, HUGE_ITEMS, ttl=0)[0] for i in range(huge)]
        self.title = enormous_title(40_000)
        self.files = {path.name: path.read_bytes() for path in FAULT_FILES.iterdir()}
        self.files["external_entity.xml"] = self.files["external_entity.xml"].replace(b"SECRET_PATH", secret_file.encode())

    def target(self, i: int) -> str:
        return f"{self.feed_base}/feeds/{self.extra_from + i}.xml"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        mode, i = request.match_info["mode"], int(request.match_info["i"])
        if mode == "stall":
            await asyncio.sleep(self.stall)
        if mode == "drip":
            return await self.drip(request)
        if mode == "loop":
            return web.Response(status=302, headers={"Location": f"/loop/{i + 1 if i % 2 == 0 else i - 1}"})
        if mode == "moved":
            return web.Response(status=301, headers={"Location": self.target(i)})
        return self.fixed(mode, i)

    def fixed(self, mode: str, i: int) -> web.Response:
        body, content_type, headers = self.content(mode, i)
        status = 410 if mode == "gone" else 200
        return web.Response(body=body, status=status, headers={"Content-Type": content_type, **headers})

    def content(self, mode: str, i: int) -> tuple[bytes, str, dict[str, str]]:
        if mode == "huge":
            return self.huge[i], RSS, {}
        files = self.files
        table: dict[str, tuple[bytes, str, dict[str, str]]] = {
            "stall": (self.drip_body, RSS, {}),
            "too-large": (self.large, RSS, {}),
            "gzip-bomb": (files["bomb.gz"], RSS, {"Content-Encoding": "gzip"}),
            "brotli-bomb": (files["bomb.br"], RSS, {"Content-Encoding": "br"}),
            "gone": (b"This feed has been removed.", "text/plain", {}),
            "html": (html_page(self.target(i)), "text/html; charset=utf-8", {}),
            "page": (html_page(None), "text/html; charset=utf-8", {}),
            "laughs": (files["billion_laughs.xml"], RSS, {}),
            "expansion": (files["entity_expansion.xml"], RSS, {}),
            "xxe": (files["external_entity.xml"], RSS, {}),
            "wrong-charset": (files["wrong_charset.xml"], f"{RSS}; charset=windows-1252", {}),
            "no-charset": (files["no_charset.xml"], "text/xml", {}),
            "invalid-utf8": (files["invalid_utf8.xml"], RSS, {}),
            "control": (files["control_chars.xml"], RSS, {}),
            "dates": (files["dates_and_duplicates.xml"], RSS, {}),
            "title": (self.title, RSS, {}),
        }
        return table[mode]

    async def drip(self, request: web.Request) -> web.StreamResponse:
        """The feed 100 bytes at a time, half a second apart: it would take a minute."""
        response = web.StreamResponse(headers={"Content-Type": RSS, "Content-Length": str(len(self.drip_body))})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            for start in range(0, len(self.drip_body), 100):
                await response.write(self.drip_body[start : start + 100])
                await asyncio.sleep(0.5)
        return response

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{mode}/{i:\\d+}", self.handle)
        return app


async def serve_faults(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    app = FaultApp(args.feed_base, args.extra_from, args.stall, args.secret_file, args.huge).application()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=2048).start()
    print(f"http://{HOST}:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def start_fault_server(
    feed_base: str, args: argparse.Namespace, secret_file: Path
) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--serve-faults", "--feed-base", feed_base,
        "--extra-from", str(args.feeds), "--stall", str(args.stall), "--secret-file", str(secret_file),
        "--huge", str(args.huge),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = _read_line(proc, 120)
    if not line.startswith("http://"):
        stop_server(proc)
        raise BenchError(f"fault server failed to start: {line!r}")
    return proc, line


# --- the passes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The feeds of one pass, in order, each with its mode (``healthy`` or a fault)."""

    feeds: tuple[tuple[str, str], ...]

    @property
    def modes(self) -> Counter[str]:
        return Counter(mode for mode, _ in self.feeds)


def plans(feed_base: str, fault_base: str, args: argparse.Namespace) -> tuple[Plan, Plan]:
    """The healthy pass and the faulty pass: every fifth feed a fault, modes in turn, shuffled."""
    healthy = Plan(tuple(("healthy", f"{feed_base}/feeds/{i}.xml") for i in range(args.feeds)))
    faulty_count = round(args.feeds * args.fault_share)
    modes = ["huge"] * args.huge + list(itertools.islice(itertools.cycle(FAILING + READABLE), faulty_count - args.huge))
    random.Random(7).shuffle(modes)
    every = args.feeds / max(faulty_count, 1)
    fault_slots = {int(k * every + every - 1): mode for k, mode in enumerate(modes)}
    feeds, healthy_index, per_mode = [], 0, Counter[str]()
    for slot in range(args.feeds):
        mode = fault_slots.get(slot)
        if mode is None:
            feeds.append(("healthy", f"{feed_base}/feeds/{healthy_index}.xml"))
            healthy_index += 1
        else:
            feeds.append((mode, f"{fault_base}/{mode}/{_index(mode, per_mode)}"))
    return healthy, Plan(tuple(feeds))


def _index(mode: str, per_mode: Counter[str]) -> int:
    """The fault's number within its mode; moved and HTML pages each lead to feeds of their own."""
    per_mode[mode] += 1
    number = per_mode[mode] - 1
    if mode == "loop":
        return number * 2
    return number + (1000 if mode == "html" else 0)


@dataclass
class PassRun:
    label: str
    seconds: float
    cpu_s: float
    max_rss_mb: float
    tree_mb: float
    entries: int | None
    failed: int
    outcomes: dict[str, dict[str, int]]
    leaked: bool

    @property
    def peak_mb(self) -> float:
        return max(self.max_rss_mb, self.tree_mb)


def run_pass(label: str, plan: Plan, args: argparse.Namespace) -> PassRun:
    with tempfile.TemporaryDirectory(prefix="fault-bench-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir, [url for _, url in plan.feeds], args.concurrency, args.feed_timeout)
        command = [*aggregator_command(), "--config", str(config), "poll", "--json"]
        cpu_before = children_cpu()
        result = checked(run_measured(command, workdir, args.kill_after), f"aggregator poll ({label})")
        cpu = children_cpu() - cpu_before
        report = json.loads(result.stdout)
        leaked = any(SECRET.encode() in path.read_bytes() for path in workdir.glob("agg.db*"))
        return PassRun(
            label, result.seconds, cpu, result.max_rss_mb, result.tree_mb, count_entries(workdir / "agg.db"),
            report["failed"], outcomes(plan, report), leaked,
        )


def children_cpu() -> float:
    """CPU seconds of this process's finished children and theirs: the pass and its workers, once it ended.
    (The two servers are children too, but they only finish at the end of the benchmark.)"""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def outcomes(plan: Plan, report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per mode, how many feeds ended in which poll status."""
    status = {result["url"]: result["status"] for result in report["results"]}
    counts: dict[str, Counter[str]] = {}
    for mode, url in plan.feeds:
        counts.setdefault(mode, Counter())[status.get(url, "missing")] += 1
    return {mode: dict(counter) for mode, counter in sorted(counts.items())}


def unexpected(run: PassRun) -> list[str]:
    """Modes whose feeds did not end as they should: failing ones fail, every other one is read."""
    problems = []
    for mode, counts in run.outcomes.items():
        wanted = ("error", "gone") if mode in FAILING else ("ok",)
        wrong = {status: n for status, n in counts.items() if status not in wanted}
        if wrong:
            problems.append(f"{mode}: {wrong}")
    return problems


# --- report ----------------------------------------------------------------------------------------


def summary(runs: list[PassRun]) -> dict[str, float]:
    return {
        "seconds": statistics.median(r.seconds for r in runs),
        "cpu_s": statistics.median(r.cpu_s for r in runs),
        "peak_mb": statistics.median(r.peak_mb for r in runs),
        "max_rss_mb": statistics.median(r.max_rss_mb for r in runs),
        "tree_mb": statistics.median(r.tree_mb for r in runs),
    }


def report(healthy: list[PassRun], faulty: list[PassRun], plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    ratios = [f.seconds / h.seconds for h, f in zip(healthy, faulty, strict=True)]
    ratio = statistics.median(ratios)
    cpu_ratios = [f.cpu_s / h.cpu_s for h, f in zip(healthy, faulty, strict=True)]
    peak = max(r.peak_mb for r in faulty)
    problems = sorted({p for run in faulty for p in unexpected(run)})
    return {
        "config": {k: v for k, v in vars(args).items() if not k.startswith("serve")},
        "faulty_modes": dict(sorted(plan.modes.items())),
        "healthy": summary(healthy),
        "faulty": summary(faulty),
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "checks": [
            {"name": "faulty/healthy wall time (median of per-run ratios)", "value": ratio,
             "target": f"< {RATIO_TARGET:g}", "passed": ratio < RATIO_TARGET},
            {"name": "faulty pass peak memory MB (max over runs, max of RSS and tree PSS)", "value": peak,
             "target": f"< {MEMORY_TARGET_MB:g}", "passed": peak < MEMORY_TARGET_MB},
            {"name": "every fault ended as it should", "value": len(problems), "target": "0 problems",
             "passed": not problems, "problems": problems},
            {"name": "the secret file never reached the store", "value": sum(r.leaked for r in faulty),
             "target": "0 leaks", "passed": not any(r.leaked for r in faulty)},
        ],
        "runs": [asdict(r) for r in healthy + faulty],
    }


def print_report(document: dict[str, Any]) -> None:
    healthy, faulty = document["healthy"], document["faulty"]
    print(f"\nfaulty modes: {document['faulty_modes']}")
    print(f"{'pass':<8} {'wall s':>8} {'CPU s':>8} {'peak MB':>8} {'RSS MB':>8} {'tree MB':>8}   (medians)")
    for label, row in (("healthy", healthy), ("faulty", faulty)):
        print(f"{label:<8} {row['seconds']:>8.2f} {row['cpu_s']:>8.2f} {row['peak_mb']:>8.1f} "
              f"{row['max_rss_mb']:>8.1f} {row['tree_mb']:>8.1f}")
    print("per-run wall time ratios: " + ", ".join(f"{r:.2f}" for r in document["ratios"]))
    print("per-run CPU time ratios:  " + ", ".join(f"{r:.2f}" for r in document["cpu_ratios"]))
    for check in document["checks"]:
        extra = f" {check['problems']}" if check.get("problems") else ""
        print(f"{'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {check['value']:.2f} (target {check['target']}){extra}")


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20, help="items of each healthy feed")
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--huge", type=int, default=1, help="how many of the faulty feeds have 10,000 items")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--feed-timeout", type=float, default=5.0, help="aggregator's timeout in seconds")
    parser.add_argument("--stall", type=float, default=60.0, help="how long stalled responses hang")
    parser.add_argument("--kill-after", type=float, default=900.0, help="kill a pass after this many seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--serve-faults", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--feed-base", help=argparse.SUPPRESS)
    parser.add_argument("--extra-from", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, feed_base: str, fault_base: str) -> dict[str, Any]:
    healthy_plan, faulty_plan = plans(feed_base, fault_base, args)
    healthy, faulty = [], []
    for run in range(1, args.runs + 1):
        for label, plan, runs in (("healthy", healthy_plan, healthy), ("faulty", faulty_plan, faulty)):
            result = run_pass(label, plan, args)
            runs.append(result)
            print(f"run {run} {label:<7} {result.seconds:6.2f}s CPU {result.cpu_s:6.2f}s peak {result.peak_mb:6.1f} MB "
                  f"entries {result.entries} failed {result.failed}", file=sys.stderr, flush=True)
    return report(healthy, faulty, faulty_plan, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_faults:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_faults(args))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    with tempfile.TemporaryDirectory(prefix="fault-bench-secret-") as secret_dir:
        secret_file = Path(secret_dir) / "secret.txt"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        feeds, feed_base = start_server(args.feeds + 2000, args.items)
        faults = None
        try:
            faults, fault_base = start_fault_server(feed_base, args, secret_file)
            document = measure(args, feed_base, fault_base)
        except BenchError as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            return 1
        finally:
            if faults is not None:
                stop_server(faults)
            stop_server(feeds)
    print(json.dumps(document, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_report(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
