"""The full-text stage: fetch each queued entry's page, extract its article in the pool, record the outcome.

Fetching and extraction overlap: every job is its own task, so pages keep
arriving while the pool extracts. Outcomes are written in small batches.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from .exceptions import FetchError, TooLargeError
from .extract import ExtractionFailed, not_html
from .fetch import PAGE_ACCEPT, PAGE_MAX_BYTES, Fetcher
from .politeness import HostGate, HostPaused, host_of
from .schedule import article_retry_at, retry_after
from .storage import Store
from .storage.articles import MAX_ATTEMPTS, ArticleOutcome
from .timeutil import iso, utcnow
from .types import ArticleJob
from .workers import TaskTimedOut, WorkerCrashed, WorkerPool

FLUSH_EVERY = 50
DEFAULT_HOST_PAUSE = timedelta(seconds=60)


class ArticleProgress(Protocol):
    def articles_queued(self, count: int) -> None: ...

    def article_done(self, outcome: ArticleOutcome) -> None: ...


@dataclass(frozen=True)
class ArticleSettings:
    concurrency: int = 32
    per_host: int = 2
    time_limit: float = 30.0


class ArticleStage:
    def __init__(
        self, store: Store, fetcher: Fetcher, pool: WorkerPool, settings: ArticleSettings,
        progress: ArticleProgress | None = None,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.pool = pool
        self.settings = settings
        self.gate = HostGate(settings.per_host)
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self._budget = asyncio.Semaphore(settings.concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._unsaved: list[ArticleOutcome] = []
        self._queued: set[int] = set()
        self._running: set[int] = set()

    def submit(self, jobs: Iterable[ArticleJob]) -> None:
        fresh = [job for job in jobs if job.entry_id not in self._queued]
        self._queued.update(job.entry_id for job in fresh)
        self._tasks.extend(asyncio.create_task(self._run(job)) for job in fresh)
        if fresh and self.progress:
            self.progress.articles_queued(len(fresh))

    async def drain(self) -> Counter[str]:
        """Wait for every submitted job, then save what is left unsaved."""
        while self._tasks:
            tasks, self._tasks = self._tasks, []
            await asyncio.gather(*tasks)
        self.flush()
        return self.counts

    async def cancel(self) -> None:
        """Stop every job not finished yet; their entries stay pending for a later pass."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flush()

    def forget_finished(self) -> None:
        """Drop finished tasks (a long-running daemon keeps submitting)."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._queued = {job for job in self._queued if job in self._running}

    def flush(self) -> None:
        if self._unsaved:
            outcomes, self._unsaved = self._unsaved, []
            self.store.articles.record(outcomes, iso(utcnow()))

    async def _run(self, job: ArticleJob) -> None:
        self._running.add(job.entry_id)
        try:
            outcome = await self._attempt(job)
        except Exception as e:  # noqa: BLE001 - one page must not stop the pass
            outcome = _failed(job, f"unexpected error: {type(e).__name__}: {e}", utcnow())
        finally:
            self._running.discard(job.entry_id)
        self.counts[outcome.status if outcome.counts_as_attempt else "deferred"] += 1
        self._unsaved.append(outcome)
        if len(self._unsaved) >= FLUSH_EVERY:
            self.flush()
        if self.progress:
            self.progress.article_done(outcome)

    async def _attempt(self, job: ArticleJob) -> ArticleOutcome:
        """Fetch, then extract; ``_budget`` bounds the pages held in memory from fetch to extraction."""
        try:
            async with self.gate.slot(job.url):
                await self._budget.acquire()
                try:
                    page = await self.fetcher.fetch(job.url, max_bytes=PAGE_MAX_BYTES, accept=PAGE_ACCEPT)
                except BaseException:
                    self._budget.release()
                    raise
        except HostPaused as e:
            return ArticleOutcome(job.entry_id, "pending", str(e), next_at=iso(e.until), counts_as_attempt=False)
        except TooLargeError as e:
            return ArticleOutcome(job.entry_id, "skipped", f"too large: {e}")
        except FetchError as e:
            return self._fetch_failed(job, e)
        try:
            content_type = page.headers.get("content-type")
            reason = not_html(content_type, page.body)
            if reason:
                return ArticleOutcome(job.entry_id, "skipped", reason)
            return await self._extract(job, page.body, page.final_url, content_type)
        finally:
            self._budget.release()

    def _fetch_failed(self, job: ArticleJob, error: FetchError) -> ArticleOutcome:
        now = utcnow()
        if error.status in (429, 503):
            until = retry_after(error.retry_after, now) or now + DEFAULT_HOST_PAUSE
            self.gate.pause(host_of(job.url), until)
            reason = f"{error}; the host asked for a pause until {until:%Y-%m-%d %H:%M:%S} UTC"
            return ArticleOutcome(job.entry_id, "pending", reason, next_at=iso(until), counts_as_attempt=False)
        return _failed(job, str(error), now)

    async def _extract(self, job: ArticleJob, body: bytes, url: str, content_type: str | None) -> ArticleOutcome:
        try:
            article = await self.pool.extract(body, url, content_type, self.settings.time_limit)
        except ExtractionFailed as e:
            return _failed(job, f"empty extraction: {e}", utcnow())
        except TaskTimedOut as e:
            return _failed(job, f"time limit: {e}", utcnow())
        except WorkerCrashed as e:
            return _failed(job, f"extractor crashed: {e}", utcnow())
        return ArticleOutcome(
            job.entry_id, "done", None, text=article.text, html=article.html,
            author=article.author, published=article.published, language=article.language,
            fingerprint=article.fingerprint,
        )


def _failed(job: ArticleJob, reason: str, now: datetime) -> ArticleOutcome:
    retry = article_retry_at(job.attempts + 1, now, max_attempts=MAX_ATTEMPTS)
    return ArticleOutcome(job.entry_id, "failed", reason, next_at=iso(retry) if retry else None)
