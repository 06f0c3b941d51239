"""Feed bytes in, typed :class:`ParsedFeed` out. Pure: no network, no database.

feedparser's own sanitiser is switched off: it is slow and incomplete. Every
piece of markup is sanitised once here with nh3, and relative URLs are resolved
against the entry's base (``xml:base``) or the feed's own address.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import feedparser

from .dedup import fingerprint_of
from .exceptions import ParseError
from .sanitize import plain_text, sanitize_html
from .schedule import feed_ttl, publish_interval
from .types import ParsedEntry, ParsedFeed
from .urls import absolute_url, canonical_url

_SPACE = re.compile(r"\s+")
_XML_POSITION = re.compile(r"^<unknown>:(\d+):(\d+):")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def parse_feed(body: bytes, url: str, headers: Mapping[str, str] | None = None) -> ParsedFeed:
    """Parse a feed document fetched from ``url`` (the final address after redirects)."""
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    response_headers["content-location"] = url
    response_headers.pop("content-encoding", None)
    data = feedparser.parse(
        body,
        response_headers=response_headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    entries = _entries(data.entries, url)
    warning = _problem(data)
    if not entries and not data.get("version"):
        detail = f" ({warning})" if warning else ""
        raise ParseError(url, f"not a feed: no RSS or Atom document found{detail}")
    feed = data.feed
    return ParsedFeed(
        title=_text(feed.get("title"), feed.get("title_detail")),
        site_url=absolute_url(feed.get("link"), url),
        language=_language(feed.get("language")),
        entries=entries,
        warning=f"malformed feed: {warning}" if warning else None,
        ttl=feed_ttl(feed.get("ttl"), feed.get("sy_updateperiod"), feed.get("sy_updatefrequency")),
        publish_interval=publish_interval(e.published for e in entries),
    )


def _problem(data: Any) -> str | None:
    if not data.get("bozo"):
        return None
    error = data.get("bozo_exception")
    if isinstance(error, feedparser.CharacterEncodingOverride | feedparser.NonXMLContentType):
        return None
    text = str(error) or type(error).__name__
    return _XML_POSITION.sub(r"line \1, column \2:", text)


def _entries(raw_entries: list[Any], feed_url: str) -> tuple[ParsedEntry, ...]:
    seen: set[str] = set()
    entries = []
    for raw in raw_entries:
        if not raw:
            continue
        entry = _entry(dict(raw), feed_url)
        if entry.guid not in seen:
            seen.add(entry.guid)
            entries.append(entry)
    return tuple(entries)


def _entry(raw: dict[str, Any], feed_url: str) -> ParsedEntry:
    """One entry from feedparser's (copied, plain) dict: no key aliasing, no deprecated fallbacks."""
    base = _base(raw, feed_url)
    link = absolute_url(raw.get("link"), base)
    title = _text(raw.get("title"), raw.get("title_detail"))
    summary = _html(raw.get("summary"), raw.get("summary_detail"), base)
    content = _content(raw.get("content"), base)
    if summary and summary == content:
        summary = None
    updated = _date(raw.get("updated_parsed"))
    published = _date(raw.get("published_parsed")) or updated
    return keyed(ParsedEntry(
        guid=_guid(raw, link, title, published, summary or content),
        link=link,
        title=title,
        author=_author(raw),
        published=published,
        updated=updated,
        summary=summary,
        content=content,
        language=_entry_language(raw),
    ))


def keyed(entry: ParsedEntry) -> ParsedEntry:
    """The entry with what the store recognises it by: canonical URL, content hash, text fingerprint."""
    parts = (entry.title, entry.link, entry.author, entry.published, entry.updated, entry.summary, entry.content)
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
    return replace(
        entry,
        url=canonical_url(entry.link) if entry.link else None,
        content_hash=digest,
        fingerprint=fingerprint_of(entry.title, plain_text(entry.content or entry.summary)),
    )


def _base(raw: Any, feed_url: str) -> str:
    for key in ("title_detail", "summary_detail"):
        detail = raw.get(key)
        if detail and detail.get("base"):
            return absolute_url(detail["base"], feed_url) or feed_url
    return feed_url


def _guid(raw: Any, link: str | None, title: str | None, published: str | None, body: str | None) -> str:
    """The feed's id, else the link, else a hash of title and date (of everything, for an entry without a title)."""
    guid = raw.get("id")
    if isinstance(guid, str) and guid.strip():
        return guid.strip()
    if link:
        return link
    if title:
        basis = f"{title}\x1f{published or ''}"
    else:
        basis = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
    return "hash:" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


def _text(value: Any, detail: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if detail and detail.get("type") in _HTML_TYPES:
        return plain_text(value)
    return _clean_space(value)


def _html(value: Any, detail: Any, base: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    if detail and detail.get("type") not in (*_HTML_TYPES, None):
        value = html.escape(value)
    if detail and detail.get("base"):
        base = absolute_url(detail["base"], base) or base
    return sanitize_html(value, base)


def _content(items: Any, base: str) -> str | None:
    if not items:
        return None
    best = next((c for c in items if c.get("type") in _HTML_TYPES), items[0])
    return _html(best.get("value"), best, base)


def _date(parsed: Any) -> str | None:
    if not parsed:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)
    except (TypeError, ValueError):
        return None


def _clean_space(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return _SPACE.sub(" ", value).strip() or None


def _author(raw: Any) -> str | None:
    detail = raw.get("author_detail")
    if detail and detail.get("name"):
        return _clean_space(detail["name"])
    return _clean_space(raw.get("author"))


def _language(value: Any) -> str | None:
    text = _clean_space(value)
    return text.lower()[:35] if text else None


def _entry_language(raw: Any) -> str | None:
    for key in ("title_detail", "summary_detail"):
        detail = raw.get(key)
        if detail and detail.get("language"):
            return _language(detail["language"])
    return None
