"""Feed bytes in, typed :class:`ParsedFeed` out. Pure: no network, no database.

feedparser's own sanitiser is switched off: it is slow and incomplete. Every
piece of markup is sanitised once here with nh3, and relative URLs are resolved
against the entry's base (``xml:base``) or the feed's own address.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections.abc import Mapping
from typing import Any

import feedparser

from .exceptions import ParseError
from .sanitize import plain_text, sanitize_html
from .types import ParsedEntry, ParsedFeed
from .urls import absolute_url

_SPACE = re.compile(r"\s+")
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
    if warning and not entries and not data.feed.get("title"):
        raise ParseError(url, f"not a feed: {warning}")
    if not entries and not data.get("version") and not data.feed:
        raise ParseError(url, "not a feed: no RSS or Atom document found")
    feed = data.feed
    return ParsedFeed(
        title=_text(feed.get("title"), feed.get("title_detail")),
        site_url=absolute_url(feed.get("link"), url),
        language=_language(feed.get("language")),
        entries=entries,
        warning=f"malformed feed: {warning}" if warning else None,
    )


def _problem(data: Any) -> str | None:
    if not data.get("bozo"):
        return None
    error = data.get("bozo_exception")
    if isinstance(error, feedparser.CharacterEncodingOverride):
        return None
    return str(error) or type(error).__name__


def _entries(raw_entries: list[Any], feed_url: str) -> tuple[ParsedEntry, ...]:
    seen: set[str] = set()
    entries = []
    for raw in raw_entries:
        entry = _entry(raw, feed_url)
        if entry is not None and entry.guid not in seen:
            seen.add(entry.guid)
            entries.append(entry)
    return tuple(entries)


def _entry(raw: Any, feed_url: str) -> ParsedEntry | None:
    base = _base(raw, feed_url)
    link = absolute_url(raw.get("link"), base)
    title = _text(raw.get("title"), raw.get("title_detail"))
    summary = _html(raw.get("summary"), raw.get("summary_detail"), base)
    content = _content(raw.get("content"), base)
    if summary and summary == content:
        summary = None
    if not (title or raw.get("id") or link or summary or content):
        return None
    updated = _date(dict.get(raw, "updated_parsed"))
    published = _date(dict.get(raw, "published_parsed")) or updated
    return ParsedEntry(
        guid=_guid(raw.get("id"), link, title, published, summary or content),
        link=link,
        title=title,
        author=_author(raw),
        published=published,
        updated=updated,
        summary=summary,
        content=content,
        language=_entry_language(raw),
    )


def _base(raw: Any, feed_url: str) -> str:
    for key in ("title_detail", "summary_detail"):
        detail = raw.get(key)
        if detail and detail.get("base"):
            return absolute_url(detail["base"], feed_url) or feed_url
    return feed_url


def _guid(guid: Any, link: str | None, title: str | None, published: str | None, body: str | None) -> str:
    if isinstance(guid, str) and guid.strip():
        return guid.strip()
    if link:
        return link
    basis = "\x1f".join((title or "", published or "", "" if title else body or ""))
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
