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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from .articles import ArticleSettings, ArticleStage
from .documents import HTML_NOT_FEED, HtmlPage
from .exceptions import ConfigError, FeedError, FetchError, ParseError, StorageError, TooLargeError
from .fetch import Fetcher, FetchSettings
from .generate import outputs_current, write_outputs
from .parse import not_later_than, read_document
from .schedule import Hints, Interval, base_interval, next_poll, response_hints, retry_after
from .storage import Store
from .storage.articles import ArticleOutcome
from .storage.retention import prune
from .storage.store import FeedFailed, FeedUnchanged, FeedWrite, StoreCounts, body_hash
from .timeutil import iso, utcnow
from .types import Config, FeedConfig, FeedState, FetchResult, ParsedFeed, PollResult
from .workerproc import INLINE_PARSE_BELOW
from .workers import PARSE_TIME_LIMIT, WorkerPool, release_memory
from .writer import StoreWriter

log = logging.getLogger(__name__)

GONE = 410
GONE_NAMED = 3
STORE_CHUNK = 1000


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
    threaded_writes: bool = True
    wait_for_states: bool = False
    writer: StoreWriter = field(init=False)
    _state_errors: list[BaseException] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.writer = StoreWriter(self.store, threaded=self.threaded_writes)

    async def record_state(self, write: FeedUnchanged | FeedFailed) -> None:
        """A poll that only changes its feed's row: written with the next batch. A pass polls each feed
        once and does not wait for it (its StorageError, if any, is raised by :meth:`drain`); the daemon,
        which reads the feed's next poll back from the store, waits (``wait_for_states``)."""
        future = self.writer.submit(write)
        if self.wait_for_states:
            await future
            return
        future.add_done_callback(self._state_written)

    def _state_written(self, future: asyncio.Future[StoreCounts]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._state_errors.append(future.exception())  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Everything polled so far is in the store when this returns."""
        await self.writer.drain()
        self._raise_state_errors()

    async def aclose(self) -> None:
        await self.writer.aclose()
        self._raise_state_errors()

    def _raise_state_errors(self) -> None:
        errors, self._state_errors = self._state_errors, []
        if errors:
            raise errors[0]


@dataclass
class PassSummary:
    results: list[PollResult] = field(default_factory=list)
    articles: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    gone: list[str] = field(default_factory=list)

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
        return text + self._gone_text()

    def _gone_text(self) -> str:
        """The feeds left out because they answered 410 Gone, named (the first few)."""
        if not self.gone:
            return ""
        more = len(self.gone) - GONE_NAMED
        named = ", ".join(self.gone[:GONE_NAMED]) + (f" and {more} more" if more > 0 else "")
        return f"; not polled, gone (HTTP 410): {named} (poll --feed URL to try again)"

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
            "gone": list(self.gone),
            "results": [asdict(r) for r in self.results],
        }


class Selection(list[FeedConfig]):
    """The feeds a pass is to poll. Unless the user ``named`` them, feeds that are gone (410) are left out."""

    def __init__(self, feeds: Iterable[FeedConfig], *, named: bool) -> None:
        super().__init__(feeds)
        self.named = named


def select_feeds(config: Config, only: Sequence[str] = ()) -> Selection:
    if not only:
        return Selection(config.feeds, named=False)
    by_url = {feed.url: feed for feed in config.feeds}
    unknown = [url for url in only if url not in by_url]
    if unknown:
        raise ConfigError(f"{config.path}: not a configured feed: {', '.join(unknown)}")
    return Selection((by_url[url] for url in dict.fromkeys(only)), named=True)


def failing_first(feeds: Sequence[FeedConfig], states: dict[str, FeedState]) -> list[FeedConfig]:
    """Feeds whose last poll failed go first, in their order: one that hangs until the timeout again
    then does so while the others are polled, instead of at the end of the pass."""
    return sorted(feeds, key=lambda feed: feed.url not in states or states[feed.url].error_count == 0)


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
    """Poll ``feeds`` now, ``config.concurrency`` at a time, extract their new articles, rewrite every output.

    A :class:`Selection` of every feed leaves out those that are gone (410); they are named in the summary.
    """
    started = time.monotonic()
    store.sync_feeds(config.feeds, iso(utcnow()))
    store.configure_dedup(config.dedup, config.feeds)
    summary = PassSummary()
    if isinstance(feeds, Selection) and not feeds.named:
        gone = store.gone_feeds(feed.url for feed in feeds)
        summary.gone = [feed.url for feed in feeds if feed.url in gone]
        feeds = [feed for feed in feeds if feed.url not in gone]
    states = store.feed_states(feed.url for feed in feeds)
    feeds = failing_first(feeds, states)
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
            await context.aclose()
            articles.flush()
    pruned = prune(store.db, config, utcnow())  # entries past their retention, outside the feeds' transactions
    if summary.changed or pruned or not outputs_current(config):
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
        if outcome.new + outcome.updated > STORE_CHUNK:
            release_memory()  # a feed of thousands of items is stored: give its memory back
    except FeedError as e:
        outcome = await _record_failure(context, feed, state, e)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - one feed's bug must not stop the pass
        log.exception("unexpected error polling %s", feed.url)
        outcome = await _record_failure(context, feed, state, e)
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
        await context.record_state(FeedUnchanged(feed.url, result, iso(now), due))
        return PollResult(url=feed.url, status="not_modified", http_status=result.status, moved_to=moved)
    result, parsed = await _feed_document(context, feed, result)
    parsed = not_later_than(parsed, iso(now))
    moved = result.permanent_redirect
    every = parsed.publish_interval or state.publish_interval
    due = _due(context, feed, now, publish_every=every, hints=replace(hints, ttl=parsed.ttl))
    counts = await _store(context, FeedWrite(feed.url, parsed, result, iso(utcnow()), due, feed.full_text))
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


async def _store(context: PollContext, write: FeedWrite) -> StoreCounts:
    """A feed's entries, in chunks of ``STORE_CHUNK`` when there are more: each chunk is one write of the
    store writer, so a feed of 10,000 items does not hold it (the feeds waiting behind it, a shutdown)
    for seconds. The oldest chunk goes first; the feed's validators and body hash only with the last,
    so that a pass that stops halfway fetches the feed again and stores the rest."""
    entries = write.parsed.entries
    chunks = [entries[start : start + STORE_CHUNK] for start in range(0, len(entries), STORE_CHUNK)][::-1]
    if len(chunks) < 2:
        return await context.writer.store_feed(write)
    partial = replace(write.result, body=b"", headers={})
    counts = [
        await context.writer.store_feed(replace(write, parsed=replace(write.parsed, entries=chunk), result=partial))
        for chunk in chunks[:-1]
    ]
    counts.append(await context.writer.store_feed(replace(write, parsed=replace(write.parsed, entries=chunks[-1]))))
    return StoreCounts(
        new=sum(c.new for c in counts),
        updated=sum(c.updated for c in counts),
        duplicates=sum(c.duplicates for c in counts),
        jobs=tuple(job for c in counts for job in c.jobs),
    )


async def _feed_document(context: PollContext, feed: FeedConfig, result: FetchResult) -> tuple[FetchResult, ParsedFeed]:
    """The feed in the response; for an HTML page, the feed it links to, fetched and read in its place."""
    document = await _read(context, result)
    if isinstance(document, ParsedFeed):
        return result, document
    return await _linked_feed(context, feed, result, document)


async def _linked_feed(
    context: PollContext, feed: FeedConfig, result: FetchResult, page: HtmlPage
) -> tuple[FetchResult, ParsedFeed]:
    """The first feed an HTML page links to, fetched and read; its address is kept like a permanent redirect's."""
    if not page.feed_links:
        raise ParseError(feed.url, page.problem())
    link = page.feed_links[0]
    try:
        found = await context.fetcher.fetch(link)
    except FetchError as e:
        raise FetchError(feed.url, f"{HTML_NOT_FEED}; the feed it links to, {link}, failed: {e}") from e
    parsed = await _read(context, found)
    if isinstance(parsed, HtmlPage):
        raise ParseError(feed.url, f"{HTML_NOT_FEED}, and the feed it links to, {link}, is an HTML page too")
    note = f"{result.final_url} is a web page, not a feed: read the feed it links to, {link}; put that in feeds.toml"
    warning = "; ".join(w for w in (note, parsed.warning) if w)
    return replace(found, permanent_redirect=found.permanent_redirect or link), replace(parsed, warning=warning)


async def _read(context: PollContext, result: FetchResult) -> ParsedFeed | HtmlPage:
    return await context.pool.run(
        read_document, result.body, result.final_url, dict(result.headers),
        time_limit=PARSE_TIME_LIMIT, inline=context.inline_parse,
    )


async def _record_failure(context: PollContext, feed: FeedConfig, state: FeedState, error: Exception) -> PollResult:
    now = utcnow()
    message = str(error) or type(error).__name__
    status = getattr(error, "status", None)
    if isinstance(error, TooLargeError):
        release_memory()  # up to the size cap was read (or decompressed) and dropped
    if status == GONE:
        return await _record_gone(context, feed, now)
    hints = Hints(retry_after=retry_after(getattr(error, "retry_after", None), now))
    due = _due(context, feed, now, publish_every=state.publish_interval, hints=hints, errors=state.error_count + 1)
    await context.record_state(FeedFailed(feed.url, message, status, iso(now), due))
    return PollResult(url=feed.url, status="error", http_status=status, error=message)


async def _record_gone(context: PollContext, feed: FeedConfig, now: datetime) -> PollResult:
    message = gone_message(feed.url)
    await context.record_state(FeedFailed(feed.url, message, GONE, iso(now), None))
    return PollResult(url=feed.url, status="gone", http_status=GONE, error=message)


def gone_message(url: str) -> str:
    return (
        "HTTP 410 Gone: the publisher has removed this feed, so it is no longer polled (its entries are kept); "
        f"remove it from feeds.toml, or try it again with: aggregator poll --feed {url}"
    )
