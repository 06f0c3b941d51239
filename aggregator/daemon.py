"""``aggregator run``: the long-running service.

APScheduler's AsyncIOScheduler and the HTTP server share one event loop.
``feeds.next_poll_at`` in the database is the truth: every second the
dispatcher takes the feeds that are due, at most ``concurrency`` at once and
``host_concurrency`` per host, one poll per feed at a time, so a restart
resumes the schedule instead of polling everything again. Outputs are rewritten
a moment after polls that stored something (debounced). SIGHUP or a change of
feeds.toml reloads the configuration; an invalid file is logged and the running
configuration kept. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .articles import ArticleStage
from .config import load_config
from .exceptions import ConfigError, StorageError
from .fetch import Fetcher
from .generate import outputs_current, write_outputs
from .logs import log_poll
from .metrics import Metrics
from .pipeline import PollContext, article_settings, fetch_settings, poll_feed
from .politeness import host_of
from .serve import Health, build_app, make_server
from .storage import Store
from .storage.articles import ArticleOutcome
from .storage.retention import batches
from .timeutil import iso, utcnow
from .types import Config, FeedConfig, FeedState, PollResult
from .workers import WorkerPool

log = logging.getLogger("aggregator.daemon")

DISPATCH_EVERY = 1.0
CONFIG_CHECK_EVERY = 2.0
FLUSH_EVERY = 2.0
RETRY_ARTICLES_EVERY = 60.0
GENERATE_DELAY = 2.0
PRUNE_EVERY = 3600.0
STOP_GRACE = 4.0


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.metrics = Metrics()
        self.started_at = iso(utcnow())
        self._config_stamp = _stamp(config_path)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._hosts: Counter[str] = Counter()
        self._stop: asyncio.Event | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._last_success: str | None = None
        self._configured: dict[str, FeedConfig] = {feed.url: feed for feed in self.config.feeds}
        self._unconfigured = 0
        self.store: Store | None = None
        self.context: PollContext | None = None

    def health(self) -> Health:
        running = bool(self._scheduler and self._scheduler.running)
        return Health(scheduler_running=running, last_successful_poll=self._last_success, started_at=self.started_at)

    async def run(self) -> None:
        """Serve and poll until SIGTERM or SIGINT."""
        self._stop = asyncio.Event()
        self.store = Store.open(self.config.database)
        self.store.sync_feeds(self.config.feeds, iso(utcnow()))
        self.store.configure_dedup(self.config.dedup, self.config.feeds)
        self._count_unconfigured()
        self._last_success = self.store.last_success()
        app = build_app(lambda: self.config, self, self.metrics)
        server = make_server(app, self.config.server.host, self.config.server.port)
        async with WorkerPool() as pool:
            fetcher = Fetcher(fetch_settings(self.config))
            articles = ArticleStage(self.store, fetcher, pool, article_settings(self.config), _ArticleMetrics(self))
            self.context = PollContext(self.config, self.store, fetcher, pool, articles, wait_for_states=True)
            serving = asyncio.create_task(server.serve())
            await _until_listening(server, serving)
            self._install_signals()
            self._start_scheduler()
            if not outputs_current(self.config):
                self.schedule_generate(0)
            log.info("aggregator running: %d feeds, serving on %s", len(self.config.feeds), self.config.server.public_url)
            try:
                await self._wait_for_stop(serving)
            finally:
                await self._shut_down(server, serving)
                await self.context.fetcher.aclose()
                self.store.close()

    async def _wait_for_stop(self, serving: asyncio.Task[None]) -> None:
        assert self._stop is not None
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stopping, serving}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if serving.done() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]  # the server could not start: the CLI says why

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload(forced=True)))

    def stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("stopping")
            self._stop.set()

    def _start_scheduler(self) -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        now = utcnow()
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(self._dispatch_job, "interval", seconds=DISPATCH_EVERY, id="dispatch", next_run_time=now, **common)
        scheduler.add_job(self._config_job, "interval", seconds=CONFIG_CHECK_EVERY, id="config", **common)
        scheduler.add_job(self._flush_job, "interval", seconds=FLUSH_EVERY, id="flush", **common)
        scheduler.add_job(self._articles_job, "interval", seconds=RETRY_ARTICLES_EVERY, id="articles",
                          next_run_time=now, **common)
        scheduler.add_job(self._retention_job, "interval", seconds=PRUNE_EVERY, id="retention", next_run_time=now, **common)
        scheduler.start()
        self._scheduler = scheduler
        self.metrics.set_scheduler_running(True)

    async def _dispatch_job(self) -> None:
        self.dispatch()

    def _count_unconfigured(self) -> None:
        assert self.store is not None
        self._unconfigured = max(0, self.store.feed_counts()[0] - len(self._configured))

    def dispatch(self) -> None:
        """Start a poll for every due feed there is room for; the cost is bounded by the room, not the feeds."""
        assert self.store is not None and self._stop is not None
        room = self.config.concurrency - len(self._in_flight)
        if self._stop.is_set() or room <= 0:
            return
        limit = room * 4 + len(self._in_flight) + self._unconfigured
        due = [
            url for url in self.store.due_feeds(iso(utcnow()), limit)
            if url in self._configured and url not in self._in_flight
        ][: room * 4]
        if not due:
            return
        configured = self._configured
        states = self.store.feed_states(due)
        for url in due:
            if len(self._in_flight) >= self.config.concurrency:
                break
            state = states.get(url, FeedState(url))
            host = host_of(state.moved_to or url)
            if self._hosts[host] < self.config.host_concurrency:
                self._start_poll(configured[url], state, host)

    def _start_poll(self, feed: FeedConfig, state: FeedState, host: str) -> None:
        self._hosts[host] += 1
        task = asyncio.create_task(self._poll(feed, state))
        self._in_flight[feed.url] = task

        def done(_: asyncio.Task[None]) -> None:
            self._in_flight.pop(feed.url, None)
            self._hosts[host] -= 1
            if not self._hosts[host]:
                del self._hosts[host]
            if self._stop is not None and not self._stop.is_set():
                asyncio.get_running_loop().call_soon(self.dispatch)

        task.add_done_callback(done)

    async def _poll(self, feed: FeedConfig, state: FeedState) -> None:
        assert self.context is not None
        result = await poll_feed(self.context, feed, state)
        self._after_poll(result)

    def _after_poll(self, result: PollResult) -> None:
        log_poll(log, result)
        self.metrics.record_poll(result)
        if result.ok:
            self._last_success = iso(utcnow())
        if result.new or result.updated:
            self.schedule_generate()

    def schedule_generate(self, delay: float = GENERATE_DELAY) -> None:
        """Rewrite the outputs shortly, once for however many polls store something meanwhile."""
        if self._scheduler is None or self._scheduler.get_job("generate") is not None:
            return
        run_at = utcnow() + timedelta(seconds=delay)
        self._scheduler.add_job(self._generate_job, "date", run_date=run_at, id="generate", misfire_grace_time=None)

    async def _generate_job(self) -> None:
        assert self.store is not None and self.context is not None
        await self.context.drain()
        self.context.articles.flush()
        paths = write_outputs(self.config, self.store)
        log.info("wrote %d output files", len(paths))

    async def _flush_job(self) -> None:
        assert self.store is not None and self.context is not None
        await self.context.drain()
        self.context.articles.flush()
        self.context.articles.forget_finished()
        total, failing = self.store.feed_counts()
        self.metrics.set_feed_counts(total, failing)

    async def _articles_job(self) -> None:
        assert self.store is not None and self.context is not None
        urls = [feed.url for feed in self.config.feeds if feed.full_text]
        self.context.articles.submit(self.store.articles.due(urls, iso(utcnow())))

    async def _retention_job(self) -> None:
        """Prune entries past their retention, one short transaction at a time, polls running in between."""
        assert self.store is not None
        now, total = utcnow(), 0
        try:
            for count in batches(self.store.db, self.config, now):
                total += count
                await asyncio.sleep(0)
        except StorageError as e:
            log.warning("%s; %d pruned, the rest in an hour", e, total)
        if total:
            log.info("pruned %d entries past their retention", total)
            self.schedule_generate()

    async def _config_job(self) -> None:
        await self.reload(forced=False)

    async def reload(self, *, forced: bool) -> None:
        """Apply a changed feeds.toml: new feeds are polled, removed ones no longer, settings take effect."""
        stamp = _stamp(self.config_path)
        if not forced and stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            config = load_config(self.config_path)
        except ConfigError as e:
            log.error("configuration not reloaded, keeping the running one: %s", e)
            return
        self._apply(config)

    def _apply(self, config: Config) -> None:
        assert self.store is not None and self.context is not None
        previous = self.config
        old = {feed.url: feed for feed in previous.feeds}
        self.config = config
        self.context.config = config
        self._configured = {feed.url: feed for feed in config.feeds}
        self.store.sync_feeds(config.feeds, iso(utcnow()))
        self._count_unconfigured()
        self.store.configure_dedup(config.dedup, config.feeds)
        self._bring_forward([f for f in config.feeds if f.url in old and f.interval < old[f.url].interval])
        added = [f.url for f in config.feeds if f.url not in old]
        removed = [url for url in old if url not in {f.url for f in config.feeds}]
        log.info("configuration reloaded: %d feeds (%d added, %d removed)", len(config.feeds), len(added), len(removed))
        if _shapes_outputs(previous) != _shapes_outputs(config):
            self.schedule_generate(0)
        if fetch_settings(previous) != fetch_settings(config):
            self._replace_fetcher(config)
        self.context.articles.settings = article_settings(config)
        self.dispatch()

    def _replace_fetcher(self, config: Config) -> None:
        """New requests use the new settings; the old client is closed once its requests can have ended."""
        assert self.context is not None
        old = self.context.fetcher
        self.context.fetcher = self.context.articles.fetcher = Fetcher(fetch_settings(config))
        asyncio.get_running_loop().call_later(config.timeout + 5, lambda: asyncio.ensure_future(old.aclose()))

    def _bring_forward(self, feeds: list[FeedConfig]) -> None:
        assert self.store is not None
        for feed in feeds:
            self.store.poll_no_later_than([feed.url], iso(utcnow() + timedelta(seconds=feed.interval)))

    async def _shut_down(self, server: object, serving: asyncio.Task[None]) -> None:
        assert self.context is not None and self._stop is not None
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self.metrics.set_scheduler_running(False)
        await self._finish_polls()
        await self.context.articles.cancel()
        await self.context.aclose()
        server.should_exit = True  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(serving, timeout=STOP_GRACE)
        log.info("stopped")

    async def _finish_polls(self) -> None:
        """Let polls in flight end for a moment, then cancel the rest: nothing half-written stays."""
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class _ArticleMetrics:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def articles_queued(self, count: int) -> None:
        return None

    def article_done(self, outcome: ArticleOutcome) -> None:
        self.daemon.metrics.record_extraction(outcome.status if outcome.counts_as_attempt else "deferred")
        if outcome.status == "done":
            self.daemon.schedule_generate()


async def _until_listening(server: object, serving: asyncio.Task[None]) -> None:
    """Polling starts only once the server listens; an address in use fails the start, before any poll."""
    while not getattr(server, "started", False) and not serving.done():
        await asyncio.sleep(0.02)
    if serving.done():
        serving.result()


def _shapes_outputs(config: Config) -> object:
    return config.outputs, config.server, tuple((feed.url, feed.tags) for feed in config.feeds)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
