"""One poll pass: fetch → parse → dedup/store for every feed, full-text articles, then the outputs.

``poll_feed`` is the one orchestrator of a feed; it records each feed's error
and moves on, so a broken feed never stops the others. Article jobs start as
soon as their feed is stored, so pages are fetched and extracted while other
feeds are still being polled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from .articles import ArticleSettings, ArticleStage
from .exceptions import ConfigError, FeedError, StorageError
from .fetch import Fetcher, FetchSettings
from .generate import outputs_current, write_outputs
from .schedule import Hints, Interval, base_interval, next_poll, response_hints, retry_after
from .storage import Store
from .storage.articles import ArticleOutcome
from .storage.store import body_hash
from .timeutil import iso, utcnow
from .types import Config, FeedConfig, FeedState, FetchResult, PollResult
from .workers import WorkerPool

log = logging.getLogger(__name__)

INLINE_PARSE_BELOW = 4
UNCHANGED_BATCH = 200


class PassProgress(Protocol):
    def feed_done(self, result: PollResult) -> None: ...

    def articles_queued(self, count: int) -> None: ...

    def article_done(self, outcome: ArticleOutcome) -> None: ...


@dataclass
class PollContext:
    config: Config
    store: Store
    fetcher: Fetcher
    pool: WorkerPool
    articles: ArticleStage
    inline_parse: bool = False
    unchanged_batch: int = UNCHANGED_BATCH
    unchanged: list[tuple[str, FetchResult, str, str]] = field(default_factory=list)

    def record_unchanged(self, url: str, result: FetchResult, now: str, next_poll_at: str) -> None:
        """Polls that brought nothing new only update feed state: they are written in batches."""
        self.unchanged.append((url, result, now, next_poll_at))
        if len(self.unchanged) >= self.unchanged_batch:
            self.flush()

    def flush(self) -> None:
        if self.unchanged:
            batch, self.unchanged = self.unchanged, []
            self.store.record_unchanged(batch)


@dataclass
class PassSummary:
    results: list[PollResult] = field(default_factory=list)
    articles: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def total(self, attribute: str) -> int:
        return sum(getattr(r, attribute) for r in self.results)

    @property
    def failed(self) -> list[PollResult]:
        return [r for r in self.results if not r.ok]

    @property
    def changed(self) -> bool:
        """Whether the pass stored anything the merged feeds show."""
        return bool(self.total("new") or self.total("updated") or self.articles.get("done"))

    def line(self) -> str:
        feeds = len(self.results)
        text = (
            f"polled {feeds} feed{'s' if feeds != 1 else ''} in {self.seconds:.1f}s: "
            f"{self.count('ok')} updated, {self.count('not_modified')} not modified, "
            f"{len(self.failed)} failed; {self.total('new')} new entries, "
            f"{self.total('updated')} changed, {self.total('duplicates')} duplicates"
        )
        if self.articles:
            done = ", ".join(f"{count} {status}" for status, count in sorted(self.articles.items()))
            text += f"; articles: {done}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "feeds": len(self.results),
            "ok": self.count("ok"),
            "not_modified": self.count("not_modified"),
            "failed": len(self.failed),
            "new": self.total("new"),
            "updated": self.total("updated"),
            "duplicates": self.total("duplicates"),
            "articles": dict(self.articles),
            "seconds": round(self.seconds, 3),
            "results": [asdict(r) for r in self.results],
        }


def select_feeds(config: Config, only: Sequence[str] = ()) -> list[FeedConfig]:
    if not only:
        return list(config.feeds)
    by_url = {feed.url: feed for feed in config.feeds}
    unknown = [url for url in only if url not in by_url]
    if unknown:
        raise ConfigError(f"{config.path}: not a configured feed: {', '.join(unknown)}")
    return [by_url[url] for url in dict.fromkeys(only)]


def fetch_settings(config: Config) -> FetchSettings:
    return FetchSettings(
        timeout=config.timeout,
        user_agent=config.user_agent,
        allow_private=config.allow_private_addresses,
        max_connections=max(config.concurrency, 8),
    )


def article_settings(config: Config) -> ArticleSettings:
    return ArticleSettings(
        concurrency=config.concurrency, per_host=config.host_concurrency, time_limit=config.extract_timeout
    )


async def poll_feeds(
    config: Config, store: Store, feeds: Sequence[FeedConfig], progress: PassProgress | None = None
) -> PassSummary:
    """Poll ``feeds`` now, ``config.concurrency`` at a time, extract their new articles, rewrite every output."""
    started = time.monotonic()
    store.sync_feeds(config.feeds, iso(utcnow()))
    store.configure_dedup(config.dedup, config.feeds)
    states = store.feed_states(feed.url for feed in feeds)
    summary = PassSummary()
    async with WorkerPool() as pool, Fetcher(fetch_settings(config)) as fetcher:
        articles = ArticleStage(store, fetcher, pool, article_settings(config), progress)
        context = PollContext(config, store, fetcher, pool, articles, len(feeds) < INLINE_PARSE_BELOW)
        articles.submit(store.articles.due([f.url for f in feeds if f.full_text], iso(utcnow())))
        limit = asyncio.Semaphore(config.concurrency)

        async def one(feed: FeedConfig) -> None:
            async with limit:
                result = await poll_feed(context, feed, states.get(feed.url, FeedState(feed.url)))
            summary.results.append(result)
            if progress:
                progress.feed_done(result)

        try:
            await asyncio.gather(*(one(feed) for feed in feeds))
            summary.articles = await articles.drain()
        finally:
            context.flush()
            articles.flush()
    if summary.changed or not outputs_current(config):
        write_outputs(config, store)
    summary.seconds = time.monotonic() - started
    return summary


async def poll_feed(context: PollContext, feed: FeedConfig, state: FeedState) -> PollResult:
    started = time.monotonic()
    try:
        result = await context.fetcher.fetch(
            state.moved_to or feed.url, etag=state.etag, last_modified=state.last_modified
        )
        outcome = await _store_result(context, feed, state, result)
    except FeedError as e:
        outcome = _record_failure(context, feed, state, e)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - one feed's bug must not stop the pass
        log.exception("unexpected error polling %s", feed.url)
        outcome = _record_failure(context, feed, state, e)
    return replace(outcome, seconds=round(time.monotonic() - started, 3))


def _due(
    context: PollContext, feed: FeedConfig, now: datetime, *, publish_every: float | None, hints: Hints, errors: int = 0
) -> str:
    config = context.config
    interval = Interval(feed.interval, feed.auto_interval, config.min_interval, config.max_interval)
    seconds = base_interval(interval, publish_every)
    due = next_poll(now, seconds, hints=hints, errors=errors, jitter=random.random())
    return iso(due + timedelta(microseconds=1_000_000 - due.microsecond) if due.microsecond else due)


async def _store_result(
    context: PollContext, feed: FeedConfig, state: FeedState, result: FetchResult
) -> PollResult:
    now = utcnow()
    hints = response_hints(result.headers, now)
    moved = result.permanent_redirect
    if result.not_modified or (state.body_hash and body_hash(result.body) == state.body_hash):
        due = _due(context, feed, now, publish_every=state.publish_interval, hints=replace(hints, ttl=state.ttl))
        context.record_unchanged(feed.url, result, iso(now), due)
        return PollResult(url=feed.url, status="not_modified", http_status=result.status, moved_to=moved)
    parsed = await context.pool.parse(result.body, result.final_url, result.headers, inline=context.inline_parse)
    every = parsed.publish_interval or state.publish_interval
    due = _due(context, feed, now, publish_every=every, hints=replace(hints, ttl=parsed.ttl))
    counts = context.store.store_feed(
        feed.url, parsed, result, now=iso(utcnow()), next_poll_at=due, full_text=feed.full_text
    )
    context.articles.submit(counts.jobs)
    return PollResult(
        url=feed.url,
        status="ok",
        http_status=result.status,
        new=counts.new,
        updated=counts.updated,
        duplicates=counts.duplicates,
        warning=parsed.warning,
        moved_to=moved,
    )


def _record_failure(context: PollContext, feed: FeedConfig, state: FeedState, error: Exception) -> PollResult:
    now = utcnow()
    message = str(error) or type(error).__name__
    status = getattr(error, "status", None)
    hints = Hints(retry_after=retry_after(getattr(error, "retry_after", None), now))
    due = _due(context, feed, now, publish_every=state.publish_interval, hints=hints, errors=state.error_count + 1)
    context.store.record_error(feed.url, error=message, status=status, now=iso(now), next_poll_at=due)
    return PollResult(url=feed.url, status="error", http_status=status, error=message)
