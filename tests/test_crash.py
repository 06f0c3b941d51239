"""SIGKILL at random moments, then restart: the store stays whole and the next pass finishes the work.

``aggregator poll`` runs as a real subprocess against many fixture feeds on the session test
server: some feeds answer slowly (so kills land while feeds are in flight), some have
``full_text`` (so article writes happen too), and every round the feeds grow by an entry and
edit one (so every pass has inserts and updates to do). Each run is killed with SIGKILL at a
seeded random moment: after its start (start-up, migrations, fetching) or just after its first
commit (while it writes). Just before the kill, the committed entries are read; after it the store
must pass SQLite's integrity check (FTS5's own runs at the end), keep the full-text index in step, hold no (feed_url, guid) twice, still hold every
entry (and every extracted article) read before the kill, and its stories must be whole:
``duplicate_of`` names an existing original, never another duplicate. Finally one uninterrupted
pass must store every entry the feeds list and bring every article to a final state.
The daemon (``aggregator run``) gets the same treatment once: killed mid-work, restarted, nothing lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import feedparser
from conftest import cli_env, render_config
from server import FixtureServer

SEED = 20261105
FEEDS = 24
FIRST_ITEMS = 10
KILLS = 8
KILL_AFTER = (0.25, 2.2)
KILL_AFTER_COMMIT = 0.8
PAGES = ("en_science", "de_politik", "fr_culture", "ru_cyrillic")
WORDS = (
    "Rathaus Brücke Haushalt Schule Bahnhof Gemeinderat Fußgänger Straße council river budget "
    "harbour library festival station museum election energy climate research hospital housing "
    "Wärmepumpe Übergang Förderung Verkehr Ausschuss Baustelle rail district weather report"
).split()
FINAL_STATES = {"done", "skipped"}


# --- the fixture feeds --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedPlan:
    """One fixture feed: where it is served, how slowly, whether its pages are extracted."""

    index: int
    path: str
    delay: float
    full_text: bool

    def guids(self, round_: int) -> set[str]:
        return {item_guid(self.index, n) for n in range(FIRST_ITEMS + round_)}


def plan_feeds(count: int = FEEDS, seed: int = SEED) -> list[FeedPlan]:
    """Every fourth feed is slow (0.3–1.2 s), every fourth full-text; the rest answer at once."""
    rng = random.Random(seed)
    return [
        FeedPlan(i, f"/crash/{i}.xml", rng.uniform(0.3, 1.2) if i % 4 == 1 else 0.0, i % 4 == 2)
        for i in range(count)
    ]


def item_guid(feed: int, n: int) -> str:
    return f"urn:crash:{feed}:{n}"


def item_link(server: FixtureServer, plan: FeedPlan, n: int) -> str:
    """Full-text items link to real article pages; every fifth item of a plain feed shares the
    previous feed's link, so stories span feeds (``duplicate_of``)."""
    if plan.full_text:
        return server.url(f"/pages/{PAGES[n % len(PAGES)]}.html?feed={plan.index}&n={n}")
    feed = plan.index - 1 if n % 5 == 0 and plan.index else plan.index
    return server.url(f"/story/{feed}/{n}")


def item_xml(server: FixtureServer, plan: FeedPlan, n: int, round_: int) -> str:
    rng = random.Random(plan.index * 1000 + n)
    text = " ".join(rng.choices(WORDS, k=40))
    if n == 0:
        text += f" (revision {round_})"  # edited every round: an update, and its article is due again
    title = " ".join(rng.sample(WORDS, 4))
    return (
        f"<item><title>{title} {plan.index}-{n}</title><link>{escape(item_link(server, plan, n))}</link>"
        f'<guid isPermaLink="false">{item_guid(plan.index, n)}</guid>'
        f"<pubDate>Thu, 05 Nov 2026 {n % 24:02d}:{plan.index % 60:02d}:00 GMT</pubDate>"
        f"<description>{text}</description></item>"
    )


def feed_xml(server: FixtureServer, plan: FeedPlan, round_: int) -> str:
    items = "".join(item_xml(server, plan, n, round_) for n in reversed(range(FIRST_ITEMS + round_)))
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>Crash feed {plan.index}</title><link>{server.base_url}/</link>"
        f"<description>Feed {plan.index}</description>{items}</channel></rss>"
    )


def serve_round(server: FixtureServer, plans: list[FeedPlan], round_: int) -> None:
    for plan in plans:
        server.route(plan.path, body=feed_xml(server, plan, round_), content_type="application/rss+xml",
                     delay=plan.delay)
    for page in PAGES:
        server.route(f"/pages/{page}.html", file=f"pages/{page}.html", delay=0.05)


def feed_tables(server: FixtureServer, plans: list[FeedPlan]) -> list[dict[str, object]]:
    return [{"url": server.url(plan.path), "full_text": plan.full_text} for plan in plans]


def expected_entries(server: FixtureServer, plans: list[FeedPlan], round_: int) -> set[tuple[str, str]]:
    return {(server.url(plan.path), guid) for plan in plans for guid in plan.guids(round_)}


# --- processes ------------------------------------------------------------------------------------


def spawn(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m aggregator --config CONFIG ARGS``, its output to ``log`` (a pipe could fill up)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), *args],
            cwd=config.parent, env=cli_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )


def children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.update(int(child) for child in text.split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_kill(rng: random.Random, round_: int, database: Path, entries: int) -> None:
    """Even rounds: a random moment after the start (start-up, migrations, fetching, the first writes).
    Odd rounds: a random moment just after the run's first commit, while it writes."""
    if round_ % 2 == 0:
        time.sleep(rng.uniform(*KILL_AFTER))
        return
    wait_until(lambda: len(snapshot(database).entries) > entries, 15)
    time.sleep(rng.uniform(0.0, KILL_AFTER_COMMIT))


def kill_hard(process: subprocess.Popen[bytes]) -> set[int]:
    """SIGKILL the process alone (not its worker processes) and reap it; return the workers it had."""
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    return workers


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# --- the store, read as a user would (read-only, so a hot WAL stays for the next start to recover) --


@dataclass(frozen=True)
class Snapshot:
    entries: frozenset[tuple[int, str, str]]
    articles: frozenset[int]

    def __or__(self, other: Snapshot) -> Snapshot:
        return Snapshot(self.entries | other.entries, self.articles | other.articles)


@contextlib.contextmanager
def read_only(database: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def snapshot(database: Path) -> Snapshot:
    if not database.exists():
        return Snapshot(frozenset(), frozenset())
    with read_only(database) as conn:
        try:
            rows = conn.execute("SELECT id, feed_url, guid, article_text IS NOT NULL FROM entries").fetchall()
        except sqlite3.OperationalError as e:  # killed before the first migration was committed
            assert "no such table" in str(e), e
            return Snapshot(frozenset(), frozenset())
    return Snapshot(frozenset(row[:3] for row in rows), frozenset(row[0] for row in rows if row[3]))


def check_store(database: Path, before: Snapshot) -> Snapshot:
    """Every invariant a crash must not break; returns the store's state now."""
    after = snapshot(database)
    if not database.exists() or not after.entries and not before.entries:
        return after
    with read_only(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        twice = conn.execute("SELECT feed_url, guid FROM entries GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
        assert twice == [], f"stored twice: {twice}"
        broken = conn.execute(
            """SELECT d.id, d.duplicate_of, o.id, o.duplicate_of FROM entries d LEFT JOIN entries o ON o.id = d.duplicate_of
            WHERE d.duplicate_of IS NOT NULL AND (o.id IS NULL OR o.duplicate_of IS NOT NULL)"""
        ).fetchall()
        assert broken == [], f"duplicate_of pointing at a missing entry or another duplicate: {broken}"
        indexed = conn.execute("SELECT count(*), (SELECT count(*) FROM entries) FROM entries_fts").fetchone()
        assert indexed[0] == indexed[1], "the full-text index is out of step with entries"
    lost = before.entries - after.entries
    assert not lost, f"{len(lost)} committed entries lost, e.g. {sorted(lost)[:3]}"
    unextracted = before.articles - after.articles
    assert not unextracted, f"extracted articles lost: {sorted(unextracted)[:5]}"
    return after


def fts_integrity(database: Path) -> None:
    """FTS5's own check; it takes a writable connection, so it runs once the writers are done."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        conn.execute("INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check')")


def stored_entries(database: Path) -> set[tuple[str, str]]:
    with read_only(database) as conn:
        return set(conn.execute("SELECT feed_url, guid FROM entries").fetchall())


def article_states(database: Path) -> dict[str | None, int]:
    with read_only(database) as conn:
        rows = conn.execute(
            "SELECT extraction_status, count(*) FROM entries WHERE extraction_status IS NOT NULL GROUP BY 1"
        )
        return dict(rows.fetchall())


def assert_complete(database: Path, expected: set[tuple[str, str]]) -> None:
    missing = expected - stored_entries(database)
    assert not missing, f"{len(missing)} entries never stored, e.g. {sorted(missing)[:3]}"
    states = article_states(database)
    assert states and set(states) <= FINAL_STATES, f"articles not in a final state: {states}"
    fts_integrity(database)


# --- the tests ----------------------------------------------------------------------------------


def test_sigkill_during_poll_loses_nothing_and_the_next_pass_completes(http: FixtureServer, tmp_path: Path):
    plans = plan_feeds()
    config = tmp_path / "feeds.toml"
    config.write_text(
        render_config(tmp_path, feed_tables(http, plans), timeout="10s", concurrency=8, host_concurrency=16),
        encoding="utf-8",
    )
    database, log = tmp_path / "agg.db", tmp_path / "poll.log"
    rng = random.Random(SEED)
    state = Snapshot(frozenset(), frozenset())
    orphans: set[int] = set()
    for round_ in range(KILLS):
        serve_round(http, plans, round_)
        process = spawn(config, "poll", log=log)
        wait_for_kill(rng, round_, database, len(state.entries))
        before = snapshot(database)
        orphans |= kill_hard(process)
        state = check_store(database, before | state)
    assert wait_until(lambda: not any(alive(pid) for pid in orphans), 5), "worker processes outlived a killed poll"
    assert state.entries, "no kill landed after the first commit: the delays are too short to test anything"

    final = spawn(config, "poll", log=log)
    assert final.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
    check_store(database, state)
    assert_complete(database, expected_entries(http, plans, KILLS - 1))
    assert not feedparser.parse((tmp_path / "public" / "all.atom").read_bytes()).bozo


def test_sigkill_of_the_daemon_then_restart_loses_nothing(http: FixtureServer, tmp_path: Path):
    plans = plan_feeds(12, SEED + 1)
    serve_round(http, plans, 0)
    port = _free_port()
    text = render_config(tmp_path, feed_tables(http, plans), timeout="10s", concurrency=8, host_concurrency=16)
    config = tmp_path / "feeds.toml"
    config.write_text(text + f'\n[server]\nhost = "127.0.0.1"\nport = {port}\n', encoding="utf-8")
    database, log = tmp_path / "agg.db", tmp_path / "run.log"
    expected = expected_entries(http, plans, 0)

    daemon = spawn(config, "run", log=log)
    try:
        assert wait_until(lambda: len(snapshot(database).entries) >= len(expected) // 3, 20), log.read_text()
        before = snapshot(database)
        workers = kill_hard(daemon)
        check_store(database, before)
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 5), "workers outlived the daemon"

        daemon = spawn(config, "run", log=log)
        assert wait_until(lambda: expected <= stored_entries(database) and _articles_final(database), 30), (
            f"{len(expected - stored_entries(database))} entries missing, articles {article_states(database)}\n"
            + log.read_text(errors="replace")[-3000:]
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    check_store(database, before)
    assert_complete(database, expected)


def _articles_final(database: Path) -> bool:
    states = article_states(database)
    return bool(states) and set(states) <= FINAL_STATES


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- what the crash test found --------------------------------------------------------------------


def test_an_edited_original_sharing_its_link_with_a_duplicate_stays_the_original(tmp_path: Path):
    """Feeds 0 and 1 share a link, and feed 0 edits that entry every round: the original once joined
    its own story (``duplicate_of = id``), leaving the story without an original."""
    from aggregator.parse import keyed
    from aggregator.storage import Store
    from aggregator.types import FeedConfig, FetchResult, ParsedEntry, ParsedFeed

    def store(feed: str, summary: str) -> None:
        entry = keyed(ParsedEntry(guid="g", link="http://news.test/story", title="Story", author=None,
                                  published="2026-11-05T08:00:00Z", updated=None, summary=summary, content=None))
        result = FetchResult(feed, feed, 200, {}, summary.encode())
        parsed = ParsedFeed(title=None, site_url=None, language=None, entries=(entry,))
        opened.store_feed(feed, parsed, result, now="2026-11-05T09:00:00Z", next_poll_at="2026-11-05T10:00:00Z")

    a, b = "http://a.test/feed", "http://b.test/feed"
    with Store.open(tmp_path / "agg.db") as opened:
        opened.sync_feeds([FeedConfig(a), FeedConfig(b)], "2026-11-05T00:00:00Z")
        store(a, "<p>first</p>")
        store(b, "<p>copy</p>")
        store(a, "<p>first, edited</p>")
        rows = opened.db.execute("SELECT feed_url, id, duplicate_of FROM entries ORDER BY id").fetchall()
    (_, original, none), (_, _, points_at) = rows
    assert none is None and points_at == original


def test_opening_a_store_mends_stories_that_point_at_themselves(tmp_path: Path):
    from aggregator.storage import Store

    with Store.open(tmp_path / "agg.db") as opened:
        opened.sync_feeds([], "2026-11-05T00:00:00Z")
        opened.db.execute("INSERT INTO feeds (url, added_at) VALUES ('http://a.test/feed', '2026-11-05T00:00:00Z')")
        opened.db.execute(
            """INSERT INTO entries (id, feed_url, guid, first_seen, content_hash, duplicate_of, duplicate_rule)
            VALUES (1, 'http://a.test/feed', 'g', '2026-11-05T00:00:00Z', 'h', 1, 'url')"""
        )
        opened.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm010_retention'")
        opened.db.execute("DROP INDEX entries_feed_date")
        opened.db.execute("DROP TABLE pruned_entries")
    with Store.open(tmp_path / "agg.db") as reopened:
        assert reopened.db.execute("SELECT duplicate_of, duplicate_rule FROM entries").fetchall() == [(None, None)]
