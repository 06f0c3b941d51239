"""Article extraction: page bytes in, :class:`Article` out. Pure and CPU-bound: runs in the worker pool.

Decoding follows the HTML standard's order: byte-order mark, then the
``Content-Type`` charset, then ``<meta>``, then detection. trafilatura finds
the article body (comments off); the result is sanitised once with nh3.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from .dedup import Fingerprint, fingerprint_of
from .sanitize import sanitize_html

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_HTML_LANG = re.compile(rb"""<html[^>]*\slang\s*=\s*["']?([A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_WHATWG_ALIASES = {
    **dict.fromkeys(("iso-8859-1", "latin-1", "latin1", "ascii", "us-ascii"), "cp1252"),
    **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "csshiftjis", "windows-31j"), "cp932"),
}
_NOT_FOR_PAGES = {"undefined", "idna", "punycode", "unicode_escape", "raw_unicode_escape", "utf-7"}
_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "pre", "dt", "dd", "figcaption", "td", "th"}
_SPACE = re.compile(r"[ \t\r\f\v]*\n[ \t\r\f\v]*|[ \t\r\f\v]{2,}")

_NOT_A_CONTAINER = "[not(self::html or self::body or self::main or self::article)][not(.//h1 or .//article or .//main)]"
_BOILERPLATE = [
    "contains(concat(' ', normalize-space(@class), ' '), ' ad ')",
    "contains(@class, 'advert') or contains(@class, 'anzeige') or contains(@id, 'advert')",
    "contains(@class, 'sponsor') or contains(@class, 'promo') or contains(@class, 'newsletter')",
    "contains(@class, 'cookie') or contains(@id, 'cookie') or contains(@class, 'consent') or contains(@id, 'consent')",
    "contains(@class, 'related') or contains(@class, 'recommend') or contains(@class, 'teaser-list')",
    "contains(@class, 'read-more') or contains(@class, 'readmore')",
    "contains(@class, 'share') or contains(@class, 'social')",
    "@role='complementary' or @role='navigation' or @aria-hidden='true'",
    "self::aside or self::nav or self::footer or self::form or self::noscript",
]
PRUNE_XPATH = [f"//*[{test}]{_NOT_A_CONTAINER}" for test in _BOILERPLATE] + [
    f"//*[self::td or self::div][.//ul/li/a][not(.//p[string-length(normalize-space()) > 80])]{_NOT_A_CONTAINER}",
]
MIN_TEXT_CHARS = 100


@dataclass(frozen=True)
class Article:
    text: str
    html: str
    title: str | None = None
    author: str | None = None
    published: str | None = None
    language: str | None = None
    fingerprint: Fingerprint | None = None


class ExtractionFailed(Exception):
    """The page yielded no article; the message says why, in words."""


def not_html(content_type: str | None, body: bytes) -> str | None:
    """Why a response is not an HTML page, or None when it is one."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("text/html", "application/xhtml+xml"):
        return None
    if media and media not in ("application/octet-stream", "text/plain"):
        return f"not HTML ({media})"
    head = body[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return None
    return f"not HTML ({media or 'no content type'})"


def decode_html(body: bytes, content_type: str | None = None) -> str:
    """The page as text, charset from BOM, header, ``<meta>``, else detection."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(encoding, errors="replace")
    declared = _header_charset(content_type) or _meta_charset(body[:4096])
    if declared:
        return body.decode(declared, errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode(_detect(body), errors="replace")


def _detect(body: bytes) -> str:
    """The likeliest encoding; windows-1252 wins a tie, being by far the most common on the web."""
    import charset_normalizer

    matches = charset_normalizer.from_bytes(body[:65536])
    best = matches.best()
    if best is None:
        return "cp1252"
    if any(m.encoding == "cp1252" and m.chaos <= best.chaos for m in matches):
        return "cp1252"
    return best.encoding


def _header_charset(content_type: str | None) -> str | None:
    match = _HEADER_CHARSET.search(content_type or "")
    return _known_codec(match.group(1)) if match else None


def _meta_charset(head: bytes) -> str | None:
    match = _META_CHARSET.search(head)
    codec = _known_codec(match.group(1).decode("ascii", errors="ignore")) if match else None
    return "utf-8" if codec and codec.startswith("utf-16") else codec


def _known_codec(name: str) -> str | None:
    """A text encoding Python knows by that label, or None (``rot13``, ``base64`` and the like are refused)."""
    name = _WHATWG_ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_FOR_PAGES:
        return None
    return info.name


def extract_article(body: bytes, url: str, content_type: str | None = None) -> Article:
    """The article in a page: plain text (paragraphs separated by blank lines), safe HTML and metadata.

    trafilatura is imported here, in the worker processes, to keep it out of the main process's memory.
    """
    import trafilatura
    from trafilatura.htmlprocessing import build_html_output
    from trafilatura.settings import Extractor

    page = decode_html(body, content_type)
    options = Extractor(
        output_format="python", comments=False, links=True, images=True, formatting=True,
        tables=True, with_metadata=True, url=url,
    )
    document = trafilatura.bare_extraction(page, options=options, prune_xpath=PRUNE_XPATH)
    if document is None or document.body is None:
        raise ExtractionFailed("no article found in the page")
    markup = sanitize_html(build_html_output(document, False), url)
    text = _plain_text(markup)
    if not markup or len(text) < MIN_TEXT_CHARS:
        raise ExtractionFailed(f"the extracted article is empty or too short ({len(text)} characters)")
    return Article(
        text=text,
        html=markup,
        fingerprint=fingerprint_of(document.title, text),
        title=document.title or None,
        author=document.author or None,
        published=_iso_date(document.date),
        language=document.language or _page_language(body[:8192]),
    )


def _plain_text(markup: str | None) -> str:
    import lxml.html

    if not markup:
        return ""
    root = lxml.html.fragment_fromstring(markup, create_parent="div")
    paragraphs = []
    for element in root.iter(*_BLOCKS):
        if any(child.tag in _BLOCKS for child in element.iterdescendants()):
            continue
        text = _SPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", element.text_content()).strip()
        if text:
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _iso_date(value: str | None) -> str | None:
    if not value or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    return f"{value}T00:00:00Z"


def _page_language(head: bytes) -> str | None:
    match = _HTML_LANG.search(head)
    return match.group(1).decode("ascii").lower() if match else None
