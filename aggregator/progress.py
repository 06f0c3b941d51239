"""Progress on a terminal: one bar for feeds, one for articles. Silent when not on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .storage.articles import ArticleOutcome
from .types import PollResult


class TerminalProgress:
    def __init__(self, bar: Any, feeds: int) -> None:
        self._bar = bar
        self._feeds = bar.add_task("feeds", total=feeds, failed=0)
        self._articles = bar.add_task("articles", total=0, failed=0)
        self._failed = {self._feeds: 0, self._articles: 0}

    def _advance(self, task: Any, ok: bool) -> None:
        self._failed[task] += not ok
        self._bar.update(task, advance=1, failed=self._failed[task])

    def feed_done(self, result: PollResult) -> None:
        self._advance(self._feeds, result.ok)

    def articles_queued(self, count: int) -> None:
        total = self._bar.tasks[self._articles].total or 0
        self._bar.update(self._articles, total=total + count)

    def article_done(self, outcome: ArticleOutcome) -> None:
        self._advance(self._articles, outcome.status in ("done", "pending"))


@contextmanager
def terminal_progress(feeds: int, *, enabled: bool = True) -> Iterator[TerminalProgress | None]:
    if not enabled or not sys.stderr.isatty() or feeds == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[failed]} failed"),
    )
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        yield TerminalProgress(bar, feeds)
