"""Merged feeds: Atom 1.0, RSS 2.0 and JSON Feed 1.1, written atomically.

Rendering is pure (:func:`render_atom`, :func:`render_rss`, :func:`render_json`
take :class:`Item` records); :func:`write_outputs` is the I/O edge.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from feedgen.feed import FeedGenerator

from . import __version__
from .sanitize import plain_text
from .similarity import words
from .storage import EntryRow, Store
from .timeutil import iso, parse_iso
from .types import Config, OutputConfig

FORMATS = ("atom", "rss", "json")
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NOT_IN_URLS = re.compile(r"[\x00-\x20\"'<>\\^`{|}\x7f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Source:
    title: str
    url: str
    site_url: str | None


@dataclass(frozen=True)
class Also:
    """Another feed that carried the same story."""

    feed_title: str
    feed_url: str
    link: str | None


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    link: str | None
    published: datetime
    updated: datetime
    author: str | None
    summary_html: str | None
    body_html: str
    body_text: str | None
    language: str | None
    source: Source
    also: tuple[Also, ...] = ()


@dataclass(frozen=True)
class FeedMeta:
    title: str
    self_url: str
    home_url: str
    updated: datetime


def item_from_row(row: EntryRow, also: Sequence[Also] = ()) -> Item:
    published = _time(row.published) or parse_iso(row.first_seen)
    published = min(published, parse_iso(row.first_seen))
    body = row.article_html or row.content or row.summary
    title = _clean(row.title) or _title_from(body) or "Untitled"
    return Item(
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"{row.feed_url}\n{row.guid}").urn,
        title=title,
        link=_link(row.link),
        published=published,
        updated=max(_time(row.updated) or published, published),
        author=_clean(row.author),
        summary_html=_clean(row.summary) if row.summary and row.summary != body else None,
        body_html=_clean(body) or f"<p>{html.escape(title)}</p>",
        body_text=_clean(row.article_text),
        language=row.language,
        source=Source(
            title=_clean(row.feed_title) or row.feed_url, url=row.feed_url, site_url=_link(row.feed_site_url)
        ),
        also=tuple(also),
    )


def _with_also(body: str, also: Sequence[Also]) -> str:
    """The body with a closing line naming the other feeds that reported the story."""
    if not also:
        return body
    links = ", ".join(
        f'<a href="{html.escape(a.link, quote=True)}">{html.escape(a.feed_title)}</a>' if a.link else html.escape(a.feed_title)
        for a in also
    )
    return f"{body}\n<p>Also reported by: {links}</p>"


def _time(text: str | None) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None


def _clean(text: str | None) -> str | None:
    return _XML_INVALID.sub("", text) if text else None


def _link(url: str | None) -> str | None:
    """A link as a valid URL: spaces, quotes, angle brackets and control characters percent-encoded."""
    return _NOT_IN_URLS.sub(lambda m: f"%{ord(m.group()):02X}", url) if url else None


def _title_from(body: str | None) -> str | None:
    text = plain_text(body)
    if not text:
        return None
    return text if len(text) <= 80 else text[:79].rstrip() + "…"


def _generator(meta: FeedMeta, items: Sequence[Item], fmt: str) -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("dc")
    fg.id(meta.self_url)
    fg.title(_clean(meta.title))
    fg.author({"name": "aggregator"})
    fg.link(href=meta.self_url, rel="self", type=_MEDIA_TYPES[fmt])
    fg.link(href=meta.home_url, rel="alternate")
    fg.description(_clean(meta.title))
    fg.updated(meta.updated)
    fg.lastBuildDate(meta.updated)
    fg.generator("aggregator", version=__version__)
    for item in items:
        _add_entry(fg, item)
    return fg


def _add_entry(fg: FeedGenerator, item: Item) -> None:
    fe = fg.add_entry(order="append")
    fe.id(item.id)
    fe.guid(item.id, permalink=False)
    fe.title(item.title)
    if item.link:
        fe.link(href=item.link, rel="alternate")
    fe.published(item.published)
    fe.updated(item.updated)
    if item.author:
        fe.author({"name": item.author})
        fe.dc.dc_creator(item.author)
    if item.summary_html:
        fe.summary(item.summary_html, type="html")
    fe.content(_with_also(item.body_html, item.also), type="html")
    fe.source(url=item.source.url, title=item.source.title)


def render_atom(meta: FeedMeta, items: Sequence[Item]) -> bytes:
    return _generator(meta, items, "atom").atom_str(pretty=True, encoding="UTF-8")


def render_rss(meta: FeedMeta, items: Sequence[Item]) -> bytes:
    return _generator(meta, items, "rss").rss_str(pretty=True, encoding="UTF-8")


def render_json(meta: FeedMeta, items: Sequence[Item]) -> bytes:
    document = {
        "version": JSON_FEED_VERSION,
        "title": meta.title,
        "home_page_url": meta.home_url,
        "feed_url": meta.self_url,
        "items": [_json_item(item) for item in items],
    }
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def _json_item(item: Item) -> dict[str, object]:
    data: dict[str, object] = {"id": item.id, "title": item.title}
    if item.link:
        data["url"] = item.link
    data["content_html"] = _with_also(item.body_html, item.also)
    if item.body_text:
        data["content_text"] = item.body_text
    if item.summary_html:
        data["summary"] = plain_text(item.summary_html)
    data["date_published"] = _rfc3339(item.published)
    data["date_modified"] = _rfc3339(item.updated)
    if item.author:
        data["authors"] = [{"name": item.author}]
    if item.language:
        data["language"] = item.language
    source = {"title": item.source.title, "feed_url": item.source.url}
    if item.source.site_url:
        source["home_page_url"] = item.source.site_url
    data["_aggregator"] = {
        "about": "https://jsonfeed.org/version/1.1#extensions",
        "source": source,
        "also_reported_by": [{"title": a.feed_title, "feed_url": a.feed_url, "url": a.link} for a in item.also],
    }
    return data


def _rfc3339(moment: datetime) -> str:
    return iso(moment)


_MEDIA_TYPES = {"atom": "application/atom+xml", "rss": "application/rss+xml", "json": "application/feed+json"}
_RENDERERS = {"atom": render_atom, "rss": render_rss, "json": render_json}


KEYWORD_LOOKAHEAD = 10


def keywords_match(output: OutputConfig, text: str) -> bool:
    """Whether an entry's title and text pass the output's keyword filters (case and accents ignored).

    With ``include``, one of the words or phrases must occur; none of ``exclude`` may.
    """
    if not output.include and not output.exclude:
        return True
    haystack = f" {' '.join(words(text))} "
    found = lambda phrase: f" {' '.join(words(phrase))} " in haystack  # noqa: E731
    return (not output.include or any(map(found, output.include))) and not any(map(found, output.exclude))


def _selected(store: Store, config: Config, output: OutputConfig) -> list[EntryRow]:
    """The newest stories of an output; keyword filters look further back to fill ``max_entries``."""
    filtered = bool(output.include or output.exclude)
    limit = output.max_entries * (KEYWORD_LOOKAHEAD if filtered else 1)
    rows = store.entries_for_output(output_feed_urls(config, output), limit)
    if not filtered:
        return rows
    kept = [row for row in rows if keywords_match(output, _searchable(row))]
    return kept[: output.max_entries]


def _searchable(row: EntryRow) -> str:
    return " ".join(filter(None, (row.title, plain_text(row.summary), plain_text(row.content), row.article_text)))


def output_feed_urls(config: Config, output: OutputConfig) -> list[str] | None:
    """The feeds an output draws from; None for every feed."""
    if not output.tags:
        return None
    wanted = set(output.tags)
    return [feed.url for feed in config.feeds if wanted.intersection(feed.tags)]


def output_paths(config: Config, output: OutputConfig) -> dict[str, Path]:
    return {fmt: config.output_dir / f"{output.name}.{fmt}" for fmt in FORMATS}


def outputs_current(config: Config) -> bool:
    """Every output file exists and is newer than the configuration that shapes it."""
    try:
        since = config.path.stat().st_mtime
        return all(
            path.stat().st_mtime >= since for output in config.outputs for path in output_paths(config, output).values()
        )
    except OSError:
        return False


def write_outputs(config: Config, store: Store) -> list[Path]:
    """Render every configured output from the store; each file replaced atomically."""
    written: list[Path] = []
    config.output_dir.mkdir(parents=True, exist_ok=True)
    for output in config.outputs:
        rows = _selected(store, config, output)
        also = store.also_reported_by(rows)
        items = [
            item_from_row(row, [Also(s.feed_title, s.feed_url, _link(s.link)) for s in also[row.id]]) for row in rows
        ]
        for fmt, path in output_paths(config, output).items():
            meta = _meta(config, output, fmt, items)
            _write_atomic(path, _RENDERERS[fmt](meta, items))
            written.append(path)
    return written


def _meta(config: Config, output: OutputConfig, fmt: str, items: Sequence[Item]) -> FeedMeta:
    base = config.server.public_url
    updated = max((item.updated for item in items), default=_EPOCH)
    return FeedMeta(
        title=output.title,
        self_url=f"{base}/feeds/{output.name}.{fmt}",
        home_url=f"{base}/",
        updated=updated,
    )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
