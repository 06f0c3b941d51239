"""Subscriptions in and out as OPML: ``aggregator import-opml`` and ``export-opml``.

``feeds.toml`` stays the source of truth. Importing appends ``[[feeds]]`` tables to the end of
the file as text, so everything already in it (comments, order, formatting) is kept byte for
byte; the result is loaded with :func:`aggregator.config.load_config` before it replaces the
original, atomically. Exporting writes OPML 2.0 with one folder per feed's first tag.

Parsing uses the standard library's expat with entity declarations and external entities
refused (what defusedxml does), and is strict: a file that is not well-formed XML is an error,
not a guess. See :func:`parse_opml` for why this is not listparser.

Tag mapping: every enclosing folder outline and every segment of every path in an outline's
``category`` attribute becomes one tag, whitespace collapsed and lower-cased, first occurrence
kept: ``<outline text="News"><outline text="Germany"><outline category="/Politik,/news" …>``
gives ``["news", "germany", "politik"]``. Separate segments rather than ``"news/germany"``
because ``[[outputs]] tags`` select feeds carrying *one of* the tags: an output for ``news``
should get the German news too. Lower-cased because readers treat folder names case-blind
while tags compare exactly.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.parsers import expat

from .config import _url_identity, load_config
from .exceptions import AggregatorError, ConfigError
from .timeutil import iso, utcnow
from .types import Config, FeedConfig

__all__ = [
    "OpmlError",
    "OpmlFeed",
    "Skipped",
    "ImportReport",
    "parse_opml",
    "plan_import",
    "import_opml",
    "export_opml",
    "toml_string",
]


class OpmlError(AggregatorError):
    """The OPML file is unreadable or malformed, or the import could not be written."""


# ---------------------------------------------------------------------------
# Reading OPML
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpmlFeed:
    url: str
    name: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    url: str | None
    name: str | None
    code: str  # "exists", "duplicate", "no_url", "bad_url"
    reason: str


@dataclass
class ParsedOpml:
    feeds: list[OpmlFeed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    title: str | None = None


class _Refused(Exception):
    pass


def _refuse(*_: object) -> None:
    raise _Refused("entity declarations and external entities are not allowed in OPML")


def _parse_xml(data: bytes) -> ET.Element:
    """A strict, hardened parse: expat with entity declarations and external entities refused."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = ET.TreeBuilder()
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.buffer_text = True
    parser.Parse(data, True)
    return builder.close()


def _local(tag: str) -> str:
    return tag.rpartition(":")[2].lower()


def _attrs(element: ET.Element) -> dict[str, str]:
    """Attribute names case-blind (``xmlUrl``, ``xmlurl`` and ``XMLURL`` all occur in the wild)."""
    return {_local(key): value for key, value in element.attrib.items()}


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def _tag(text: str) -> str:
    return _clean(text).lower()


def _category_tags(value: str) -> list[str]:
    """``"/News/Germany,/Tech"`` → ``["news", "germany", "tech"]`` (OPML 2.0: comma-separated, slash-delimited)."""
    return [_tag(segment) for path in value.split(",") for segment in path.split("/") if _tag(segment)]


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def parse_opml(data: bytes, source: str = "OPML") -> ParsedOpml:
    """Feeds (URL, name, tags) and skipped outlines, in document order.

    Why not listparser (0.20): it reads OPML with an HTML parser in recovery mode, so a truncated
    or broken file is silently accepted (``bozo`` stays false) and yields whatever it guessed; it
    merges repeated URLs and treats an outline without ``xmlUrl`` as a folder, both silently, so
    neither can be reported; and given a ``str`` that starts with ``http`` it fetches it.
    The format is small enough that a strict walk over a hardened expat parse is the safer choice.

    Rules: an outline with a non-empty ``xmlUrl`` is a feed; one without it but with child
    outlines is a folder (its ``text``/``title`` becomes a tag of every feed inside); one with
    neither is skipped ("no xmlUrl"). The name is ``text``, else ``title``, whitespace collapsed,
    dropped when empty or equal to the URL. A URL seen before in the file (compared as
    ``feeds.toml`` compares URLs: scheme and host case-blind) is skipped as a duplicate and its
    tags are merged into the first occurrence, so a feed filed in two folders carries both.
    """
    try:
        root = _parse_xml(data)
    except expat.ExpatError as e:
        raise OpmlError(
            f"{source}: malformed OPML: XML error at line {e.lineno}, column {e.offset + 1}: {expat.ErrorString(e.code)}"
        ) from e
    except _Refused as e:
        raise OpmlError(f"{source}: {e}") from e
    if _local(root.tag) != "opml":
        raise OpmlError(f"{source}: not an OPML file (the root element is <{root.tag}>, not <opml>)")
    body = next((child for child in root if _local(child.tag) == "body"), None)
    if body is None:
        raise OpmlError(f"{source}: not an OPML file (no <body> element)")
    head = next((child for child in root if _local(child.tag) == "head"), None)
    title_element = next((c for c in head if _local(c.tag) == "title"), None) if head is not None else None

    result = ParsedOpml(title=_clean(title_element.text) or None if title_element is not None else None)
    order: list[str] = []  # identities, in document order
    found: dict[str, OpmlFeed] = {}
    # Iterative depth-first walk (no recursion limit on deeply nested files): (element, folder tags).
    stack: list[tuple[ET.Element, tuple[str, ...]]] = [
        (child, ()) for child in reversed(body) if _local(child.tag) == "outline"
    ]
    while stack:
        element, folders = stack.pop()
        attrs = _attrs(element)
        children = [child for child in element if _local(child.tag) == "outline"]
        label = _clean(attrs.get("text")) or _clean(attrs.get("title"))
        url = attrs.get("xmlurl", "").strip()
        if not url:
            if children:
                inner = folders + ((_tag(label),) if _tag(label) else ())
                stack.extend((child, inner) for child in reversed(children))
            else:
                result.skipped.append(Skipped(None, label or None, "no_url", "no xmlUrl (not a feed)"))
            continue
        # A feed outline with outlines inside (rare): they are walked with the same folders.
        stack.extend((child, folders) for child in reversed(children))
        name = label if label and label != url else None
        if not _http_url(url):
            result.skipped.append(Skipped(url, name, "bad_url", "not an http(s) URL"))
            continue
        if any(ch.isspace() or not ch.isprintable() for ch in url):
            result.skipped.append(Skipped(url, name, "bad_url", "not a valid URL (contains spaces or control characters)"))
            continue
        tags = tuple(dict.fromkeys([*folders, *_category_tags(attrs.get("category", ""))]))
        identity = _url_identity(url)
        if identity in found:
            first = found[identity]
            found[identity] = OpmlFeed(first.url, first.name, tuple(dict.fromkeys([*first.tags, *tags])))
            result.skipped.append(Skipped(url, name, "duplicate", f"duplicate in this file of <{first.url}>"))
            continue
        found[identity] = OpmlFeed(url, name, tags)
        order.append(identity)
    result.feeds = [found[identity] for identity in order]
    return result


def read_opml(path: str | os.PathLike[str]) -> ParsedOpml:
    """Parse the OPML file at ``path``: its bytes are handed to the parser, nothing is ever fetched."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OpmlError(f"{path}: cannot read: {e.strerror or e}") from e
    return parse_opml(data, str(path))


# ---------------------------------------------------------------------------
# Importing into feeds.toml
# ---------------------------------------------------------------------------


@dataclass
class ImportReport:
    config: str
    source: str
    dry_run: bool
    added: list[OpmlFeed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "source": self.source,
            "dry_run": self.dry_run,
            "added": [{"url": f.url, "name": f.name, "tags": list(f.tags)} for f in self.added],
            "skipped": [asdict(s) for s in self.skipped],
            "summary": {"added": len(self.added), "skipped": len(self.skipped)},
        }

    def lines(self) -> list[str]:
        out = []
        for feed in self.added:
            tags = f" [{', '.join(feed.tags)}]" if feed.tags else ""
            out.append(f"+ {_who(feed.name, feed.url)}{tags}")
        for skip in self.skipped:
            out.append(f"  skipped {_who(skip.name, skip.url)}: {skip.reason}")
        verb = "would add" if self.dry_run else "added"
        feeds = "feed" if len(self.added) == 1 else "feeds"
        tail = " (dry run: nothing written)" if self.dry_run else ""
        out.append(f"{verb} {len(self.added)} {feeds} to {self.config}, skipped {len(self.skipped)}{tail}")
        return out


def _who(name: str | None, url: str | None) -> str:
    parts = [p for p in (name, f"<{url}>" if url else None) if p]
    return " ".join(parts) or "(untitled outline)"


def plan_import(parsed: ParsedOpml, existing: Iterable[FeedConfig]) -> tuple[list[OpmlFeed], list[Skipped]]:
    """Split the OPML's feeds into those to add and those already configured (left as they are)."""
    configured = {_url_identity(feed.url): feed for feed in existing}
    added: list[OpmlFeed] = []
    skipped = list(parsed.skipped)
    for feed in parsed.feeds:
        present = configured.get(_url_identity(feed.url))
        if present is not None:
            same = "" if present.url == feed.url else f" as <{present.url}>"
            skipped.append(Skipped(feed.url, feed.name, "exists", f"already in the configuration{same}; left as it is"))
        else:
            added.append(feed)
    return added, skipped


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_TOML_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest kept as UTF-8."""
    return '"' + _TOML_NEEDS_ESCAPE.sub(lambda m: _TOML_ESCAPES.get(m[0], f"\\u{ord(m[0]):04X}"), value) + '"'


def render_feeds(feeds: Sequence[OpmlFeed], source: str, newline: str = "\n") -> str:
    """``[[feeds]]`` tables for ``feeds``, after a comment saying where they came from."""
    when = iso(utcnow())
    origin = "".join(ch if ch.isprintable() else "?" for ch in Path(source).name)
    lines = [f"# Imported from {origin} by `aggregator import-opml` on {when}"]
    for feed in feeds:
        lines += ["", "[[feeds]]", f"url = {toml_string(feed.url)}"]
        if feed.name:
            lines.append(f"name = {toml_string(feed.name)}")
        if feed.tags:
            lines.append(f"tags = [{', '.join(toml_string(tag) for tag in feed.tags)}]")
    return newline.join(lines) + newline


def import_opml(opml_path: str | os.PathLike[str], config_path: str | os.PathLike[str], *, dry_run: bool = False) -> ImportReport:
    """Append the OPML's new feeds to the configuration file; see the module docstring.

    Raises :class:`ConfigError` when the configuration is unusable to begin with and
    :class:`OpmlError` when the OPML is or the new file would be; the original stays untouched.
    """
    config_path = Path(config_path)
    config = load_config(config_path)
    parsed = read_opml(opml_path)
    added, skipped = plan_import(parsed, config.feeds)
    report = ImportReport(str(config_path), str(opml_path), dry_run, added, skipped)
    if added and not dry_run:
        _append(config_path, added, str(opml_path))
    return report


def _append(config_path: Path, feeds: Sequence[OpmlFeed], source: str) -> None:
    # Edit the file the link points at, so a symlinked feeds.toml stays a symlink.
    target = Path(os.path.realpath(config_path))
    try:
        original = target.read_bytes()
        mode = target.stat().st_mode & 0o7777
    except OSError as e:
        raise ConfigError(f"{config_path}: cannot read: {e.strerror or e}") from e
    text = original.decode("utf-8", errors="replace")
    newline = "\r\n" if "\r\n" in text else "\n"
    separator = b"" if not original or original.endswith(b"\n") else newline.encode()
    if original.strip():
        separator += newline.encode()  # one blank line before the imported block
    updated = original + separator + render_feeds(feeds, source, newline).encode("utf-8")

    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".import")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(updated)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        try:
            load_config(temp)
        except ConfigError as e:
            message = str(e).replace(str(temp), str(config_path))
            raise OpmlError(
                f"{config_path}: not changed: with the imported feeds appended it would not load "
                f"(feeds can only be appended to a file that lists them as [[feeds]] tables):\n{message}"
            ) from e
        if target.read_bytes() != original:
            raise OpmlError(f"{config_path}: not changed: the file was modified while importing; run the import again")
        os.replace(temp, target)
    except OSError as e:
        raise OpmlError(f"{config_path}: not changed: cannot write: {e.strerror or e}") from e
    finally:
        temp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Exporting
# ---------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("", value)


@dataclass(frozen=True)
class StoredFeed:
    title: str | None
    site_url: str | None


def stored_feeds(database: Path) -> dict[str, StoredFeed]:
    """Titles and site URLs from the store, read-only; an absent database is not created.

    Raises :class:`sqlite3.Error` when the file is there but cannot be read.
    """
    if not database.is_file():
        return {}
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT url, title, site_url FROM feeds").fetchall()
    finally:
        conn.close()
    return {url: StoredFeed(title or None, site_url or None) for url, title, site_url in rows}


def build_opml(config: Config, stored: dict[str, StoredFeed] | None = None, *, now: datetime | None = None) -> bytes:
    """OPML 2.0 of the configured feeds, UTF-8.

    One folder outline per first tag (in the order the tags first occur; untagged feeds at the
    top level, in place); a feed's other tags go in its ``category`` attribute as ``/tag`` paths,
    so importing the file gives back the same URLs, names and tags. A feed without a configured
    name is labelled with its own title from the store, else its URL (which import drops again).
    """
    stored = stored or {}
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = "aggregator subscriptions"
    ET.SubElement(head, "dateCreated").text = format_datetime(now or datetime.now(UTC), usegmt=True)
    body = ET.SubElement(root, "body")
    folders: dict[str, ET.Element] = {}
    for feed in config.feeds:
        known = stored.get(feed.url)
        label = _xml_text(feed.name or (known.title if known else None) or feed.url)
        parent = body
        if feed.tags:
            first = feed.tags[0]
            if first not in folders:
                folders[first] = ET.SubElement(body, "outline", text=_xml_text(first), title=_xml_text(first))
            parent = folders[first]
        outline = ET.SubElement(parent, "outline", type="rss", text=label, title=label, xmlUrl=_xml_text(feed.url))
        if known and known.site_url:
            outline.set("htmlUrl", _xml_text(known.site_url))
        if len(feed.tags) > 1:
            outline.set("category", ",".join(f"/{_xml_text(tag)}" for tag in feed.tags[1:]))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def export_opml(config: Config, *, warn: Any = None) -> tuple[bytes, int]:
    """The OPML document and the number of feeds in it; an unreadable store only costs the htmlUrls."""
    try:
        stored = stored_feeds(config.database)
    except sqlite3.Error as e:
        if warn:
            warn(f"{config.database}: cannot read site URLs from the database ({e}); exporting without them")
        stored = {}
    return build_opml(config, stored), len(config.feeds)


def dumps_report(report: ImportReport) -> str:
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2)
