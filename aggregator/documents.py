"""Response bodies made fit to parse, before feedparser sees them. Pure: bytes in, bytes out.

* A DOCTYPE that declares entities keeps only short literal ones: nothing
  expands ("billion laughs") and nothing is loaded (external entities).
* Control characters, which XML forbids, are removed.
* A body whose declared charset is wrong but which is UTF-8, or whose UTF-8 is
  broken in places, is read as the UTF-8 it (mostly) is.
* An HTML page is recognised whatever its Content-Type, with the feeds it links to.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser

from .urls import absolute_url

HTML_NOT_FEED = "the address serves an HTML page, not a feed"


@dataclass(frozen=True)
class HtmlPage:
    """An HTML page served where a feed was expected, with the feeds it links to in page order."""

    url: str
    feed_links: tuple[str, ...] = ()

    def problem(self) -> str:
        if not self.feed_links:
            return f"{HTML_NOT_FEED} (no feed link found)"
        return f"{HTML_NOT_FEED}; it links to the feed {self.feed_links[0]}"


@dataclass(frozen=True)
class Document:
    """A response body made fit for feedparser, and what was repaired on the way."""

    body: bytes
    headers: dict[str, str]
    repairs: tuple[str, ...] = ()


# --- before feedparser: entities, control characters, charset ---------------------------------

_WIDE = (
    (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF16_LE, "utf-16"),
)
_WIDE_BY_ZEROS = {
    (False, True, False, True): "utf-16-le", (True, False, True, False): "utf-16-be",
    (False, True, True, True): "utf-32-le", (True, True, True, False): "utf-32-be",
}
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES_BUT_ESCAPE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")  # ISO-2022 escapes with ESC
_BOM = "\ufeff|\u00ef\u00bb\u00bf"  # decoded, or UTF-8's as Latin-1
_PROLOG_PART = re.compile(rf"{_BOM}|\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_XML_DECLARATION = re.compile(rf"(?:{_BOM})?\s*(?:<\?xml\s[^>]*\?>)?")
_ELEMENT = re.compile(r"<[A-Za-z_]")
_DOCTYPE_MARK = re.compile(r"""["'\[\]>]|<!--|<\?""")
_DOCTYPE_SKIP = {'"': '"', "'": "'", "<!--": "-->", "<?": "?>"}  # what runs to what, '>' and ']' included
_DOCTYPE_NAME = re.compile(r"<!DOCTYPE\s+([^\s\[>]+)")
_SAFE_ENTITY = re.compile(r"""<!ENTITY\s+([A-Za-z_][\w.-]*)\s+"(&#x?[0-9A-Fa-f]{1,8};|[^&%"<]{0,32})"\s*>""")
_XML_ENCODING = re.compile(rb"""^((?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["'])([A-Za-z0-9._:-]+)(["'])""")
_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_SINGLE_BYTE = ("ascii", "latin_1", "iso8859", "cp125", "mac_roman")
NOT_UTF8 = "not valid UTF-8 (its charset is missing or wrong): bytes that are not UTF-8 were read as Windows-1252"


def prepared(body: bytes, headers: dict[str, str]) -> Document:
    """``body`` with entity declarations defused, control characters removed and its charset set right."""
    codec = _wide_codec(body)
    body, entities = _without_entities(body, codec or "latin-1")
    body, controls = (body, 0) if codec else _without_controls(body, headers)
    document = Document(body, headers) if codec else _charset_repaired(body, headers)
    repairs = (
        "its XML entity declarations were ignored (entities are never expanded)" if entities else None,
        f"{controls} control character{'s' if controls != 1 else ''} removed" if controls else None,
    )
    return replace(document, repairs=(*(r for r in repairs if r), *document.repairs))


def _wide_codec(body: bytes) -> str | None:
    """UTF-16 or UTF-32, from the byte order mark or the zero bytes of the first characters; None for
    ASCII-compatible bodies."""
    marked = next((codec for start, codec in _WIDE if body.startswith(start)), None)
    return marked or _WIDE_BY_ZEROS.get(tuple(byte == 0 for byte in body[:4]))


def _without_entities(body: bytes, codec: str) -> tuple[bytes, bool]:
    """A prolog declaring entities becomes the XML declaration and a DOCTYPE of its short literal entities:
    nothing expands, nothing is loaded, and feedparser finds no other declaration to keep."""
    if codec == "latin-1" and b"<!ENTITY" not in body:
        return body, False
    text = body.decode(codec, errors="replace")
    end = _prolog_end(text)
    prolog = text[:end]
    if "<!ENTITY" not in prolog:
        return body, False
    declaration = match.group().strip() if (match := _XML_DECLARATION.match(prolog)) else ""
    kept = f"{declaration}\n{_safe_doctype(prolog)}"
    return (kept + text[end:]).encode(codec), prolog.count("<!ENTITY") > kept.count("<!ENTITY")


def _prolog_end(text: str) -> int:
    """Where the first element starts, after the DOCTYPE (whose quoted strings may hold anything)."""
    span = _doctype_span(text)
    element = _ELEMENT.search(text, span[1] if span else 0)
    return element.start() if element else len(text)


def _safe_doctype(prolog: str) -> str:
    """A DOCTYPE declaring only the prolog's entities whose value is a character reference or short text."""
    entities = "".join(f'<!ENTITY {n} "{v}">\n' for n, v in _SAFE_ENTITY.findall(prolog))
    name = _DOCTYPE_NAME.search(prolog)
    return f"<!DOCTYPE {name.group(1) if name else 'feed'} [\n{entities}]>\n" if entities else ""


def _doctype_span(text: str) -> tuple[int, int] | None:
    """Where the document type declaration is, quoted strings, comments and internal subset included."""
    position = 0
    while part := _PROLOG_PART.match(text, position):
        position = part.end()
    if not text.startswith("<!DOCTYPE", position):
        return None
    return position, _doctype_end(text, position)


def _doctype_end(text: str, position: int) -> int:
    """Just after the ``>`` that closes the DOCTYPE; the end of the text when nothing does. Linear in the text."""
    depth = 0
    while mark := _DOCTYPE_MARK.search(text, position):
        token = mark.group()
        if token in _DOCTYPE_SKIP:
            closed = text.find(_DOCTYPE_SKIP[token], mark.end())
            if closed < 0:
                return len(text)
            position = closed + len(_DOCTYPE_SKIP[token])
            continue
        position = mark.end()
        depth += {"[": 1, "]": -1}.get(token, 0)
        if token == ">" and depth <= 0:
            return position
    return len(text)


def _without_controls(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, int]:
    """The body without control characters, and how many there were (no copy when there are none)."""
    charset = _declared_charset(body, headers) or ""
    pattern = _CONTROL_BYTES_BUT_ESCAPE if "2022" in charset else _CONTROL_BYTES
    return pattern.subn(b"", body) if pattern.search(body) else (body, 0)


def _charset_repaired(body: bytes, headers: dict[str, str]) -> Document:
    """A UTF-8 body read as UTF-8 whatever it claims; broken UTF-8 mended byte by byte."""
    declared = _declared_charset(body, headers)
    if body.isascii() or not _utf8_or_single_byte(declared):
        return Document(body, headers)
    if _valid_utf8(body):
        if not declared or _is_utf8(declared):
            return Document(body, headers)
        return _read_as_utf8(body, headers, f"declared as {declared} but written in UTF-8; read as UTF-8")
    if declared and not _is_utf8(declared):
        return Document(body, headers)
    mended = body.decode("utf-8", errors=_WINDOWS_1252).encode("utf-8")
    return _read_as_utf8(mended, headers, NOT_UTF8)


def _valid_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _declared_charset(body: bytes, headers: Mapping[str, str]) -> str | None:
    in_header = _CHARSET.search(headers.get("content-type", ""))
    in_document = _XML_ENCODING.match(body[:512])
    if in_header:
        return in_header.group(1)
    return in_document.group(2).decode("ascii") if in_document else None


def _utf8_or_single_byte(charset: str | None) -> bool:
    if charset is None:
        return True
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return False
    return name == "utf-8" or name.startswith(_SINGLE_BYTE)


def _is_utf8(charset: str) -> bool:
    return charset.lower().replace("_", "-") in ("utf-8", "utf8")


def _read_as_utf8(body: bytes, headers: dict[str, str], note: str) -> Document:
    """UTF-8 in the XML declaration and the Content-Type, so that feedparser reads it so."""
    media_type = headers.get("content-type", "").split(";")[0].strip() or "application/xml"
    declared = _XML_ENCODING.sub(rb"\g<1>utf-8\g<3>", body, count=1)
    return Document(declared, {**headers, "content-type": f"{media_type}; charset=utf-8"}, (note,))


def _windows_1252(error: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: each byte that is not UTF-8 as the Windows-1252 (else Latin-1) character."""
    assert isinstance(error, UnicodeDecodeError)
    data = error.object[error.start : error.end]
    return "".join(_byte_1252(byte) for byte in data), error.end


def _byte_1252(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


_WINDOWS_1252 = "aggregator-windows-1252"
codecs.register_error(_WINDOWS_1252, _windows_1252)


# --- HTML pages: recognised, and the feeds they link to --------------------------------------

_HTML_START = re.compile(  # comments and PIs that cannot run past their end: no backtracking blow-up
    rb"(?:\xef\xbb\xbf)?(?:\s|<!--(?:[^-]|-(?!->))*-->|<\?(?:[^?]|\?(?!>))*\?>)*"
    rb"<(?:!doctype\s+html|html|head|body)[\s>]",
    re.IGNORECASE,
)
FEED_LINK_TYPES = ("application/rss+xml", "application/atom+xml", "application/rdf+xml")


def looks_like_html(body: bytes) -> bool:
    """Whether the body is an HTML page (its DOCTYPE or first element says so), whatever its Content-Type."""
    return _HTML_START.match(body[:8192]) is not None


def feed_links(body: bytes, url: str) -> tuple[str, ...]:
    """The RSS and Atom feeds an HTML page announces with ``<link rel="alternate">``, in page order."""
    finder = _FeedLinks()
    try:
        finder.feed(body.decode("utf-8", errors="replace"))
        finder.close()
    except _HeadDone:
        pass
    links = (absolute_url(href, url) for href in finder.hrefs)
    return tuple(dict.fromkeys(link for link in links if link))


class _HeadDone(Exception):
    """The page's head is over: feed links are only announced there."""


class _FeedLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            raise _HeadDone
        values = {name: (value or "") for name, value in attrs}
        media_type = values.get("type", "").split(";")[0].strip().lower()
        if tag == "link" and "alternate" in values.get("rel", "").lower().split() and media_type in FEED_LINK_TYPES:
            self.hrefs.append(values.get("href", ""))
