"""Prometheus metrics of one daemon, kept in a registry of their own.

The daemon records into a :class:`Metrics` instance; ``GET /metrics`` renders it.
A fresh instance per daemon (or test) shares nothing with any other.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .types import PollResult

POLL_STATUSES = ("ok", "not_modified", "error")
ENTRY_KINDS = ("new", "updated", "duplicate")
EXTRACTION_STATUSES = ("done", "failed", "skipped", "deferred")
POLL_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class Metrics:
    """Counters, a histogram and gauges of polling, storing, extraction and scheduling."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._polls = self._counter("aggregator_polls", "Feed polls by outcome.", "status", POLL_STATUSES)
        self._poll_errors = Counter(
            "aggregator_poll_errors", "Feed polls that failed (network, HTTP status or parse).", registry=self.registry
        )
        self._entries = self._counter(
            "aggregator_entries_stored",
            "Entries written: new stories, updated entries, and new entries duplicating a stored story.",
            "kind",
            ENTRY_KINDS,
        )
        self._extractions = self._counter(
            "aggregator_extractions", "Article extractions by outcome.", "status", EXTRACTION_STATUSES
        )
        self._poll_seconds = Histogram(
            "aggregator_poll_duration_seconds", "Time to poll one feed, fetch to store.",
            buckets=POLL_SECONDS_BUCKETS, registry=self.registry,
        )
        self._feeds = Gauge("aggregator_feeds", "Configured feeds.", registry=self.registry)
        self._failing = Gauge("aggregator_feeds_failing", "Feeds whose last poll failed.", registry=self.registry)
        self._running = Gauge(
            "aggregator_scheduler_running", "1 while the poll scheduler runs, else 0.", registry=self.registry
        )

    def _counter(self, name: str, documentation: str, label: str, values: tuple[str, ...]) -> Counter:
        counter = Counter(name, documentation, [label], registry=self.registry)
        for value in values:
            counter.labels(value)
        return counter

    def record_poll(self, result: PollResult) -> None:
        status = result.status if result.status in POLL_STATUSES else "error"
        self._polls.labels(status).inc()
        if status == "error":
            self._poll_errors.inc()
        self._entries.labels("new").inc(max(result.new - result.duplicates, 0))
        self._entries.labels("duplicate").inc(max(result.duplicates, 0))
        self._entries.labels("updated").inc(max(result.updated, 0))
        self._poll_seconds.observe(max(result.seconds, 0.0))

    def record_extraction(self, status: str) -> None:
        if status not in EXTRACTION_STATUSES:
            raise ValueError(f"unknown extraction status {status!r} (known: {', '.join(EXTRACTION_STATUSES)})")
        self._extractions.labels(status).inc()

    def set_feed_counts(self, total: int, failing: int) -> None:
        self._feeds.set(total)
        self._failing.set(failing)

    def set_scheduler_running(self, running: bool) -> None:
        self._running.set(1 if running else 0)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition: ``(body, content type)``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
