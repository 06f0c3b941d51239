"""What ``aggregator stats`` reports: a read-only summary of the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .storage import Store


@dataclass(frozen=True)
class FeedStats:
    url: str
    name: str
    entries: int
    last_polled_at: str | None
    last_success_at: str | None
    last_status: int | None
    last_error: str | None
    last_warning: str | None
    error_count: int
    next_poll_at: str | None
    moved_to: str | None
    gone_at: str | None

    @property
    def state(self) -> str:
        """The feed's state in a word: ``never polled``, ``gone`` (410, no longer polled), ``failing`` or ``ok``."""
        if not self.last_polled_at:
            return "never polled"
        if self.gone_at:
            return "gone"
        return "failing" if self.last_error else "ok"


@dataclass(frozen=True)
class Stats:
    feeds: int
    entries: int
    stories: int
    duplicates: int
    failing_feeds: int
    gone_feeds: int
    last_poll_at: str | None
    articles: dict[str, int]
    article_problems: tuple[tuple[str, str, int], ...]
    feed_details: tuple[FeedStats, ...]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def collect(store: Store) -> Stats:
    counts = dict(store.db.execute("SELECT feed_url, count(*) FROM entries GROUP BY feed_url").fetchall())
    details = tuple(
        FeedStats(
            url=row.url,
            name=row.display_name,
            entries=counts.get(row.url, 0),
            last_polled_at=row.last_polled_at,
            last_success_at=row.last_success_at,
            last_status=row.last_status,
            last_error=row.last_error,
            last_warning=row.last_warning,
            error_count=row.error_count,
            next_poll_at=row.next_poll_at,
            moved_to=row.moved_to,
            gone_at=row.gone_at,
        )
        for row in store.feeds()
    )
    duplicates = store.scalar("SELECT count(*) FROM entries WHERE duplicate_of IS NOT NULL") or 0
    entries = sum(counts.values())
    return Stats(
        feeds=len(details),
        entries=entries,
        stories=entries - duplicates,
        duplicates=duplicates,
        failing_feeds=sum(1 for d in details if d.state == "failing"),
        gone_feeds=sum(1 for d in details if d.state == "gone"),
        last_poll_at=max((d.last_polled_at for d in details if d.last_polled_at), default=None),
        articles=store.articles.summary(),
        article_problems=tuple(tuple(row) for row in store.articles.reasons()),
        feed_details=details,
    )


def render_text(stats: Stats) -> str:
    gone = f", {stats.gone_feeds} gone" if stats.gone_feeds else ""
    lines = [
        f"feeds: {stats.feeds} ({stats.failing_feeds} failing{gone})",
        f"entries: {stats.entries} ({stats.stories} stories, {stats.duplicates} duplicates)",
        f"last poll: {stats.last_poll_at or 'never'}",
    ]
    if stats.articles:
        states = ", ".join(f"{count} {state}" for state, count in sorted(stats.articles.items()))
        lines.append(f"articles: {states}")
        for state, reason, count in stats.article_problems:
            lines.append(f"  {count:>6} {state}: {reason}")
    lines.append("")
    for feed in stats.feed_details:
        lines += _feed_lines(feed)
    return "\n".join(lines).rstrip()


def _feed_lines(feed: FeedStats) -> list[str]:
    state = feed.state if feed.state in ("ok", "never polled") else feed.state.upper()
    lines = [f"{state:<12} {feed.entries:>6} entries  {feed.name}  <{feed.url}>"]
    if feed.gone_at:
        lines.append(f"{'':<12} gone since {feed.gone_at}: {feed.last_error}")
    elif feed.last_error:
        lines.append(f"{'':<12} last error ({feed.error_count}x, {feed.last_polled_at}): {feed.last_error}")
    if feed.last_warning:
        lines.append(f"{'':<12} warning: {feed.last_warning}")
    if feed.moved_to:
        lines.append(f"{'':<12} now read from {feed.moved_to}: put that address in feeds.toml")
    return lines
