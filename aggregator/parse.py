"""Feed bytes in, typed :class:`ParsedFeed` out. Pure: no network, no database.

feedparser's own sanitiser is switched off: it is slow and incomplete. Every
piece of markup is sanitised once here with nh3, and relative URLs are resolved
against the entry's base (``xml:base``) or the feed's own address.

Before feedparser sees a document, :mod:`.documents` makes it safe and readable
(entities, control characters, charset) or recognises it as an HTML page.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import html
import json
import re
import xml.sax.expatreader
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import feedparser
import feedparser.api
import feedparser.mixin
import feedparser.urls
from feedparser.util import FeedParserDict

from .dedup import Fingerprint, body_text, boilerplate, fingerprint_of, fingerprints_of
from .documents import HtmlPage, feed_links, looks_like_html, prepared
from .exceptions import ParseError
from .sanitize import collapse_space, html_blocks, plain_text, sanitize_html
from .schedule import feed_ttl, publish_interval
from .types import ParsedEntry, ParsedFeed
from .urls import absolute_url, canonical_url, is_plain_http

_XML_POSITION = re.compile(r"^<unknown>:(\d+):(\d+):")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
TITLE_MAX = 1000
EARLIEST_DATE = "1970-01-01T00:00:01Z"
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def _memoise_base_resolution() -> None:
    """feedparser resolves the current base URI against the element's own at every start tag (``xml:base``
    may change it): a urljoin per element, a fifth of its parsing time. The function is pure and its
    arguments repeat through a document, so it is memoised; a feedparser that no longer calls it is left alone."""
    resolve = getattr(feedparser.urls, "make_safe_absolute_uri", None)
    if resolve is not None and getattr(feedparser.mixin, "make_safe_absolute_uri", None) is resolve:
        feedparser.mixin.make_safe_absolute_uri = functools.lru_cache(maxsize=256)(resolve)


def _content_params_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy`` for feedparser: its content parameters (type, language, base: strings) are copied
    at the end of every text element, and for a dict of strings a copy of the dict is a deep copy."""
    if type(value) is FeedParserDict and all(v is None or type(v) is str for v in value.values()):
        return FeedParserDict(value)
    return copy.deepcopy(value, memo)


def _copy_content_params_shallowly() -> None:
    if getattr(feedparser.mixin, "copy", None) is copy:
        feedparser.mixin.copy = SimpleNamespace(deepcopy=_content_params_copy)


# The keys FeedParserDict (feedparser 6.0) answers for with something other than its own item.
_ALIASED_KEYS = frozenset({"category", "enclosures", "license", "updated", "updated_parsed"})


def _plain_keys_as_a_dict() -> None:
    """FeedParserDict checks every key against its aliases (``description`` for ``summary``, ``category``
    from ``tags``...) in Python: feedparser reads its content parameters through it at every text
    element, a sixth of its parsing time. Keys that are no alias now go straight to the dict, with the
    same results; the aliases keep feedparser's own code. Only for feedparser 6.0, whose aliases these are."""
    cls = FeedParserDict
    if not feedparser.__version__.startswith("6.0.") or cls.__getitem__.__module__ != "feedparser.util":
        return
    aliased = _ALIASED_KEYS | frozenset(cls.keymap)
    mapped = frozenset(cls.keymap)
    getitem, contains, get, setitem = cls.__getitem__, cls.__contains__, cls.get, cls.__setitem__

    def __getitem__(self: FeedParserDict, key: Any) -> Any:
        return getitem(self, key) if key in aliased else dict.__getitem__(self, key)

    def __contains__(self: FeedParserDict, key: Any) -> bool:
        return contains(self, key) if key in aliased else dict.__contains__(self, key)

    def get_(self: FeedParserDict, key: Any, default: Any = None) -> Any:
        return get(self, key, default) if key in aliased else dict.get(self, key, default)

    def __setitem__(self: FeedParserDict, key: Any, value: Any) -> None:
        if key in mapped:
            setitem(self, key, value)
        else:
            dict.__setitem__(self, key, value)

    cls.__getitem__, cls.__contains__, cls.get, cls.__setitem__ = __getitem__, __contains__, get_, __setitem__
    cls.has_key = __contains__


def _plain_links_as_they_are() -> None:
    """feedparser joins every link with the document's base (``urljoin`` after a regex): a link that is
    already an absolute http(s) URL with nothing to respell comes back unchanged, without the work."""
    join = getattr(feedparser.mixin, "_urljoin", None)
    if join is None or join is not getattr(feedparser.urls, "_urljoin", None):
        return

    def _urljoin(base: str, uri: str) -> str:
        return uri if type(uri) is str and is_plain_http(uri) else join(base, uri)

    feedparser.mixin._urljoin = _urljoin


class _TextBufferingExpatParser(xml.sax.expatreader.ExpatParser):
    """The standard library's expat reader with ``buffer_text`` on: an element's text reaches feedparser
    in one piece instead of one per entity or character reference (an escaped HTML description has
    dozens), each a trip through its Python handlers."""

    def reset(self) -> None:
        super().reset()
        self._parser.buffer_text = True


def create_parser() -> xml.sax.expatreader.ExpatParser:
    """This module as a SAX driver (``xml.sax.make_parser`` imports a driver module and calls this)."""
    return _TextBufferingExpatParser()


def _buffer_text() -> None:
    """feedparser asks ``xml.sax`` for the first driver in its ``PREFERRED_XML_PARSERS``: this module first.
    Every document of feedparser's own test corpus parses to the same result."""
    drivers = getattr(feedparser.api, "PREFERRED_XML_PARSERS", None)
    if isinstance(drivers, list) and __name__ not in drivers:
        drivers.insert(0, __name__)


_memoise_base_resolution()
_copy_content_params_shallowly()
_plain_keys_as_a_dict()
_plain_links_as_they_are()
_buffer_text()


def parse_feed(body: bytes, url: str, headers: Mapping[str, str] | None = None) -> ParsedFeed:
    """Parse a feed document fetched from ``url`` (the final address after redirects)."""
    document = read_document(body, url, headers)
    if isinstance(document, HtmlPage):
        raise ParseError(url, document.problem())
    return document


def read_document(body: bytes, url: str, headers: Mapping[str, str] | None = None) -> ParsedFeed | HtmlPage:
    """The feed in ``body``, or, when it is an HTML page, the feeds that page links to."""
    if looks_like_html(body):
        return HtmlPage(url, feed_links(body, url))
    document = prepared(body, _response_headers(headers, url))
    data = feedparser.parse(
        document.body,
        response_headers=document.headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    return _converted(data, url, document.repairs)


def not_later_than(feed: ParsedFeed, moment: str) -> ParsedFeed:
    """The feed with dates after ``moment`` (when it was read) brought back to it: nothing is published in the
    future, and such a date would keep an entry at the top of the merged feeds for good."""
    if all(max(e.published or "", e.updated or "") <= moment for e in feed.entries):
        return feed
    return replace(feed, entries=tuple(_not_after(entry, moment) for entry in feed.entries))


def _not_after(entry: ParsedEntry, moment: str) -> ParsedEntry:
    published = min(entry.published, moment) if entry.published else None
    updated = min(entry.updated, moment) if entry.updated else None
    return replace(entry, published=published, updated=updated)


def _response_headers(headers: Mapping[str, str] | None, url: str) -> dict[str, str]:
    """Lower-case names; the body is already decoded; relative links resolve against ``url``."""
    lowered = {k.lower(): v for k, v in (headers or {}).items() if k.lower() != "content-encoding"}
    return {**lowered, "content-location": url}


def _converted(data: Any, url: str, repairs: tuple[str, ...]) -> ParsedFeed:
    entries = _entries(data.entries, url)
    problem = _problem(data)
    if not entries and not data.get("version"):
        detail = f" ({problem})" if problem else ""
        raise ParseError(url, f"not a feed: no RSS or Atom document found{detail}")
    feed = data.feed
    warnings = (*repairs, f"malformed feed: {problem}" if problem else None)
    return ParsedFeed(
        title=_title(feed.get("title"), feed.get("title_detail")),
        site_url=absolute_url(feed.get("link"), url),
        language=_language(feed.get("language")),
        entries=entries,
        warning="; ".join(w for w in warnings if w) or None,
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
    """The entries, each once; feedparser's dicts are let go as they are converted, so that a feed of
    10,000 items is not held twice."""
    seen: set[str] = set()
    entries = []
    raw_entries.reverse()
    while raw_entries:
        raw = raw_entries.pop()
        if not raw:
            continue
        entry = _entry(dict(raw), feed_url)
        if entry.guid not in seen:
            seen.add(entry.guid)
            entries.append(entry)
    return keyed_entries(entries)


def keyed_entries(entries: Sequence[ParsedEntry]) -> tuple[ParsedEntry, ...]:
    """A feed document's entries, each keyed; fingerprints leave out the paragraphs the feed repeats."""
    blocks = [(html_blocks(e.summary), html_blocks(e.content)) for e in entries]
    repeated = boilerplate([content or summary for summary, content in blocks])
    prints = fingerprints_of(
        (e.title, body_text(content or summary, repeated)) for e, (summary, content) in zip(entries, blocks, strict=True)
    )
    return tuple(_keyed(e, b, p) for e, b, p in zip(entries, blocks, prints, strict=True))


def _entry(raw: dict[str, Any], feed_url: str) -> ParsedEntry:
    """One entry from feedparser's (copied, plain) dict: no key aliasing, no deprecated fallbacks."""
    base = _base(raw, feed_url)
    link = absolute_url(raw.get("link"), base)
    title = _title(raw.get("title"), raw.get("title_detail"))
    summary = _html(raw.get("summary"), raw.get("summary_detail"), base)
    content = _content(raw.get("content"), base)
    if summary and summary == content:
        summary = None
    updated = _date(raw.get("updated_parsed"))
    published = _date(raw.get("published_parsed")) or updated
    return ParsedEntry(
        guid=_guid(raw, link, title, published, summary or content),
        link=link,
        title=title,
        author=_author(raw),
        published=published,
        updated=updated,
        summary=summary,
        content=content,
        language=_entry_language(raw),
    )


def keyed(
    entry: ParsedEntry, repeated: frozenset[str] = frozenset(), blocks: tuple[list[str], list[str]] | None = None
) -> ParsedEntry:
    """The entry with what the store recognises it by: canonical URL, content hash, text fingerprint
    (of its text without ``repeated``, the paragraphs its feed carries in many entries), and the
    words of its summary and content (``blocks``, when already split into paragraphs)."""
    summary, content = blocks or (html_blocks(entry.summary), html_blocks(entry.content))
    return _keyed(entry, (summary, content), fingerprint_of(entry.title, body_text(content or summary, repeated)))


def _keyed(entry: ParsedEntry, blocks: tuple[list[str], list[str]], fingerprint: Fingerprint | None) -> ParsedEntry:
    parts = (entry.title, entry.link, entry.author, entry.published, entry.updated, entry.summary, entry.content)
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
    summary, content = blocks
    return replace(
        entry,
        url=canonical_url(entry.link) if entry.link else None,
        content_hash=digest,
        fingerprint=fingerprint,
        summary_text=" ".join(summary) or None,
        content_text=" ".join(content) or None,
    )


def _base(raw: Any, feed_url: str) -> str:
    for key in ("title_detail", "summary_detail"):
        detail = raw.get(key)
        if detail and detail.get("base"):
            return _base_url(detail["base"], feed_url)
    return feed_url


@functools.lru_cache(maxsize=256)
def _base_url(base: str, against: str) -> str:
    """An element's base resolved against its parent's (``against`` when it is not a usable URL); the
    same few pairs come back for every entry of a document."""
    return absolute_url(base, against) or against


def _guid(raw: Any, link: str | None, title: str | None, published: str | None, body: str | None) -> str:
    """The feed's id, else the link, else a hash of title and date (of everything, for an entry without a title)."""
    guid = _printable(raw.get("id"))
    if guid and guid.strip():
        return guid.strip()
    if link:
        return link
    if title:
        basis = f"{title}\x1f{published or ''}"
    else:
        basis = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
    return "hash:" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


def _title(value: Any, detail: Any) -> str | None:
    """Plain text of a title, cut at a word after ``TITLE_MAX`` characters (some feeds put whole articles there)."""
    text = _text(value, detail)
    if not text or len(text) <= TITLE_MAX:
        return text
    cut = text[:TITLE_MAX]
    return (cut.rsplit(" ", 1)[0] if " " in cut[TITLE_MAX // 2 :] else cut).rstrip() + "…"


def _text(value: Any, detail: Any) -> str | None:
    value = _printable(value)
    if value is None:
        return None
    if detail and detail.get("type") in _HTML_TYPES:
        return plain_text(value)
    return _clean_space(value)


def _printable(value: Any) -> str | None:
    """The string without control characters (XML forbids them, and they only garble text); None for non-strings."""
    return _CONTROL.sub("", value) if isinstance(value, str) else None


def _html(value: Any, detail: Any, base: str) -> str | None:
    value = _printable(value)
    if not value or not value.strip():
        return None
    if detail and detail.get("type") not in (*_HTML_TYPES, None):
        value = html.escape(value)
    if detail and detail.get("base"):
        base = _base_url(detail["base"], base)
    return sanitize_html(value, base)


def _content(items: Any, base: str) -> str | None:
    if not items:
        return None
    best = next((c for c in items if c.get("type") in _HTML_TYPES), items[0])
    return _html(best.get("value"), best, base)


def _date(parsed: Any) -> str | None:
    """ISO 8601 of feedparser's UTC time tuple; None when missing, impossible (February 31st, a year past 9999)
    or before 1970 (a placeholder). A leap second (60, or 61 in a struct_time) becomes 59."""
    if not parsed:
        return None
    try:
        moment = datetime(*parsed[:5], min(parsed[5], 59))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    text = moment.isoformat() + "Z"
    return text if text >= EARLIEST_DATE else None


def _clean_space(value: Any) -> str | None:
    value = _printable(value)
    if value is None:
        return None
    return collapse_space(value) or None


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

