"""Typed records passed between the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .dedup import DedupSettings, Fingerprint


@dataclass(frozen=True)
class FeedConfig:
    url: str
    name: str | None = None
    interval: float = 1800.0
    auto_interval: bool = False
    full_text: bool = True
    tags: tuple[str, ...] = ()
    dedup: bool = True
    retention: float | None = None  # seconds entries are kept; None: forever


@dataclass(frozen=True)
class OutputConfig:
    name: str = "all"
    title: str = "Merged feed"
    max_entries: int = 100
    tags: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str | None = None

    @property
    def public_url(self) -> str:
        """Where subscribers reach the server; used for the feeds' self links."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: Path
    database: Path
    output_dir: Path
    interval: float = 1800.0
    auto_interval: bool = False
    concurrency: int = 32
    timeout: float = 20.0
    full_text: bool = True
    allow_private_addresses: bool = False
    user_agent: str = ""
    host_concurrency: int = 2
    extract_timeout: float = 30.0
    min_interval: float = 300.0
    max_interval: float = 86400.0
    server: ServerConfig = field(default_factory=ServerConfig)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    outputs: tuple[OutputConfig, ...] = (OutputConfig(),)
    feeds: tuple[FeedConfig, ...] = ()
    retention: float | None = None  # the default; feeds no longer configured keep entries this long


@dataclass(frozen=True)
class FeedState:
    """What the store remembers of a feed between polls."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    moved_to: str | None = None
    body_hash: str | None = None
    error_count: int = 0
    ttl: float | None = None
    publish_interval: float | None = None


@dataclass(frozen=True)
class FetchResult:
    """A completed HTTP exchange for one feed or page."""

    url: str
    final_url: str
    status: int
    headers: dict[str, str]
    body: bytes = b""
    permanent_redirect: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)
class ParsedEntry:
    guid: str
    link: str | None
    title: str | None
    author: str | None
    published: str | None
    updated: str | None
    summary: str | None
    content: str | None
    language: str | None = None
    url: str | None = None
    content_hash: str = ""
    fingerprint: Fingerprint | None = None
    summary_text: str | None = None  # the words of summary and content, for the search index
    content_text: str | None = None


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    site_url: str | None
    language: str | None
    entries: tuple[ParsedEntry, ...]
    warning: str | None = None
    ttl: float | None = None
    publish_interval: float | None = None


@dataclass(frozen=True)
class ArticleJob:
    """An entry whose page is to be fetched and its article extracted."""

    entry_id: int
    feed_url: str
    url: str
    attempts: int = 0


@dataclass(frozen=True)
class PollResult:
    """The outcome of polling one feed, as reported to the user."""

    url: str
    status: str
    http_status: int | None = None
    new: int = 0
    updated: int = 0
    duplicates: int = 0
    error: str | None = None
    warning: str | None = None
    moved_to: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None
