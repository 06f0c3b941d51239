"""Content that attacks subscribers: the XSS corpus end to end.

``tests/data/xss/vectors.json`` is put into every field of an RSS feed, an Atom feed, a feed too broken
for an XML parser and full-text article pages, all served from the 127.0.0.1 fixture server. The real CLI
polls them and regenerates the outputs; then every output a subscriber can reach is parsed and walked:
the stored ``content``/``summary``/``article_html`` columns, the Atom, RSS and JSON files, and the same
files and the index page as ``aggregator.serve`` answers them.

Markup is parsed twice, by lxml and by the standard library's HTML tokenizer, and each attribute value is
entity-decoded and stripped of the whitespace and control characters browsers ignore before its URL
scheme is judged, so an encoding trick cannot pass as harmless text.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import httpx
import lxml.etree
import lxml.html
import pytest

from aggregator.config import load_config
from appserver import AppServer
from aggregator.serve import _STYLE, Health, build_app

CORPUS_FILE = Path(__file__).parent / "data" / "xss" / "vectors.json"
CORPUS: dict[str, Any] = json.loads(CORPUS_FILE.read_text(encoding="utf-8"))
GROUPS = {name: vectors for name, vectors in CORPUS.items() if not name.startswith("_") and name != "links"}
VECTORS: list[str] = [vector for vectors in GROUPS.values() for vector in vectors]
LINKS: list[str] = CORPUS["links"]

FORBIDDEN_TAGS = frozenset({
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "param", "base", "meta",
    "link", "form", "input", "button", "svg", "math", "template", "portal", "isindex", "noscript", "xml",
})
URL_ATTRIBUTES = frozenset({
    "href", "src", "action", "formaction", "background", "poster", "cite", "longdesc", "data", "codebase",
    "dynsrc", "lowsrc", "ping", "classid", "archive", "manifest", "icon", "profile", "usemap", "url", "uri",
})
SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):", re.IGNORECASE)
_RAW_TAG = re.compile(r"<\s*/?\s*(script|iframe|object|embed|style)\b", re.IGNORECASE)
_IGNORED_IN_URLS = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_NOT_IN_URLS = re.compile(r"[\x00-\x20\"'<>`\\]")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
XHTML = "http://www.w3.org/1999/xhtml"


# --- the checks -----------------------------------------------------------------------------------


def url_scheme(value: str) -> str | None:
    """The scheme a browser would see in an attribute value: entities decoded, tabs, newlines and
    leading/trailing control characters and spaces dropped; None for a relative URL."""
    text = _IGNORED_IN_URLS.sub("", html.unescape(value)).strip(_C0_AND_SPACE)
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def url_problems(where: str, value: str) -> list[str]:
    scheme = url_scheme(value)
    return [] if scheme is None or scheme in SAFE_SCHEMES else [f"{where}={value!r}: a {scheme}: URL"]


def attribute_problems(tag: str, name: str, value: str) -> list[str]:
    name = name.lower()
    found = []
    if name.startswith("on"):
        found.append(f"<{tag} {name}=…>: an event handler")
    is_url = name in URL_ATTRIBUTES or name.endswith("srcset")  # a URL's text may say anything
    if name == "style" or ("expression(" in value.lower() and not is_url):
        found.append(f"<{tag} {name}={value!r}>: a style")
    if name.endswith("srcset"):  # every word: a URL or its descriptor
        for word in value.replace(",", " ").split():
            found += url_problems(f"<{tag} {name}", word)
    elif name in URL_ATTRIBUTES or name.endswith(":href"):
        found += url_problems(f"<{tag} {name}", value)
    return found


class _StartTags(HTMLParser):
    """Every start tag with its attributes as the standard library's HTML5-style tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, [(name, value or "") for name, value in attrs]))


def start_tags(markup: str, *, document: bool = False) -> list[tuple[str, list[tuple[str, str]]]]:
    tokens = _StartTags()
    tokens.feed(markup)
    tokens.close()
    markup = _XML_INVALID.sub("", markup)  # lxml takes none; dropping one can join a tag name, never split one
    parse = lxml.html.document_fromstring if document else partial(lxml.html.fragment_fromstring, create_parent="div")
    root = parse(markup)
    tree = [(el.tag.lower(), list(el.attrib.items())) for el in root.iter() if isinstance(el.tag, str)]
    return tokens.found + tree


def html_problems(markup: str | None, *, allowed: frozenset[str] = frozenset(), document: bool = False) -> list[str]:
    """What in an HTML fragment could run script, load active content or restyle the reader's page."""
    if not markup or not markup.strip():
        return []
    found = [f"raw {m.group()!r}" for m in _RAW_TAG.finditer(markup) if m.group(1).lower() not in allowed]
    for tag, attributes in start_tags(markup, document=document):
        if tag in FORBIDDEN_TAGS - allowed:
            found.append(f"a <{tag}> element")
        for name, value in attributes:
            found += attribute_problems(tag, name, value)
    return found


def link_problems(where: str, url: str | None) -> list[str]:
    """A link in a feed: http(s) and a valid URL (nothing a naive consumer could break out of)."""
    if url is None:
        return []
    found = url_problems(where, url)
    if _NOT_IN_URLS.search(url):
        found.append(f"{where}={url!r}: not a valid URL")
    return found


# --- the XML and JSON outputs ---------------------------------------------------------------------

HTML_ELEMENTS = {"description", "encoded"}  # an RSS item's: readers render these as HTML
TEXT_ELEMENTS = {"title", "summary", "content", "subtitle", "rights", "name", "creator", "description"}
LINK_ELEMENTS = {"link", "uri", "comments", "docs"}


def xml_problems(document: bytes) -> list[str]:
    """Walk an Atom or RSS document: text stays text, HTML content is safe, links are http(s)."""
    root = lxml.etree.fromstring(document)
    found = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            found.append(f"a comment or processing instruction: {element!r}")
            continue
        found += _xml_element_problems(element)
    return found


def _xml_element_problems(element: lxml.etree._Element) -> list[str]:
    name = lxml.etree.QName(element)
    tag, where = name.localname, f"<{name.localname}>"
    found = [f"{where} in the XHTML namespace"] if name.namespace == XHTML else []
    found += [f"a <{tag}> element"] if tag.lower() in FORBIDDEN_TAGS - {"link"} else []
    for attribute, value in element.attrib.items():
        attribute = lxml.etree.QName(attribute).localname
        found += attribute_problems(tag, attribute, value)
        found += link_problems(f"{where} {attribute}", value) if attribute in ("href", "url", "uri") else []
    kind = element.get("type")
    if (tag in HTML_ELEMENTS and element.getparent().tag == "item") or kind in ("html", "text/html"):
        found += [f"{where}: {problem}" for problem in html_problems(element.text)]
    elif tag in TEXT_ELEMENTS and kind in (None, "text") and len(element):
        found.append(f"{where} holds elements, not text")
    if tag in LINK_ELEMENTS and not element.attrib:
        found += link_problems(where, (element.text or "").strip())
    return found


JSON_LINKS = {"url", "external_url", "feed_url", "home_page_url", "image", "banner_image", "icon", "favicon", "avatar"}


def json_problems(value: Any, where: str = "$") -> list[str]:
    """Walk a JSON Feed: ``content_html`` is safe HTML, every address is an http(s) URL."""
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in json_problems(item, f"{where}[{index}]")]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        if key == "content_html":
            found += [f"{where}.content_html: {problem}" for problem in html_problems(item)]
        elif key in JSON_LINKS and isinstance(item, str | None):
            found += link_problems(f"{where}.{key}", item)
        else:
            found += json_problems(item, f"{where}.{key}")
    return found


def index_problems(page: str) -> list[str]:
    """The index page is a whole document whose only style and meta elements are the server's own."""
    root = lxml.html.document_fromstring(page)
    styles = [style.text for style in root.iter("style")]
    found = [] if styles == [_STYLE] else [f"unexpected styles: {styles!r}"]
    metas = [meta.getparent().tag for meta in root.iter("meta")]
    found += [] if metas == ["head", "head"] else [f"unexpected meta elements in {metas!r}"]
    return found + html_problems(page, allowed=frozenset({"style", "meta"}), document=True)


# --- the fixture feeds and pages ------------------------------------------------------------------

PAGES = 10
TITLE_ONLY = "<script>alert(1)</script> A title and nothing else"
FEED_TITLE = '<script>alert("feed")</script> Hostile "feed" <img src=x onerror=alert(1)>'
FEED_NAME = "<img src=x onerror=alert('name')> named feed"
OUTPUT_TITLE = "<script>alert('output')</script> Merged & safe"


def xml_safe(vectors: list[str]) -> list[str]:
    return [vector for vector in vectors if not _XML_INVALID.search(vector)]


def _cdata(text: str) -> str:
    return f"<![CDATA[{text}]]>" if "]]>" not in text else escape(text)


def _date(number: int) -> str:
    return f"Mon, 01 Jan 2024 {number // 3600 % 24:02d}:{number // 60 % 60:02d}:{number % 60:02d} GMT"


def _link(links: list[str], i: int, pages: list[str] = ()) -> str:
    """The i-th item's link: its article page, else one of ``links`` made unique (no two items are one story)."""
    if i < len(pages):
        return pages[i]
    link, hash_mark, fragment = links[i % len(links)].partition("#")
    return f"{link}{'&' if '?' in link else '?'}item={i}{hash_mark}{fragment}"


def rss_feed(vectors: list[str], links: list[str], *, pages: list[str] = (), title: str = FEED_TITLE) -> str:
    """Every vector as an item's title, description, content:encoded and author; the first items link
    to the article ``pages``, the others to one of ``links``."""
    items = [
        f"<item><title>{escape(vector)}</title><link>{escape(_link(links, i, pages))}</link>"
        f'<guid isPermaLink="false">rss-{i}</guid><pubDate>{_date(i)}</pubDate>'
        f"<description>{escape(vector)}</description>"
        f"<content:encoded>{_cdata(f'<p>Item {i}.</p>{vector}')}</content:encoded>"
        f"<dc:creator>{escape(vector)}</dc:creator></item>"
        for i, vector in enumerate(vectors)
    ]
    items.append(f'<item><title>{escape(TITLE_ONLY)}</title><guid isPermaLink="false">title-only</guid></item>')
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<channel><title>{escape(title)}</title><link>javascript:alert(1)</link>"
        f"<description>{escape(VECTORS[0])}</description>"
        + "\n".join(items) + "</channel></rss>\n"
    )


def _xhtml(vector: str) -> str | None:
    """The vector as Atom XHTML content, when it is well-formed XML."""
    markup = f'<div xmlns="{XHTML}">{vector}</div>'
    try:
        lxml.etree.fromstring(markup)
    except lxml.etree.XMLSyntaxError:
        return None
    return markup


def _atom_entry(i: int, vector: str, link: str) -> str:
    xhtml = _xhtml(vector)
    content = (
        f'<content type="xhtml">{xhtml}</content>' if xhtml else f'<content type="html">{escape(vector)}</content>'
    )
    base = ' xml:base="javascript:alert(1)//"' if i % 3 == 0 else ""
    return (
        f"<entry{base}><id>urn:x-test:atom-{i}</id>"
        f"<updated>2024-01-02T00:{i // 60 % 60:02d}:{i % 60:02d}Z</updated>"
        f'<title type="{"html" if i % 2 else "text"}">{escape(vector)}</title>'
        f"<link rel=\"alternate\" href={quoteattr(link)}/>"
        f"<author><name>{escape(vector)}</name><uri>{escape(link)}</uri></author>"
        f'<summary type="html">{escape(vector)}</summary>{content}</entry>'
    )


def atom_feed(vectors: list[str], links: list[str]) -> str:
    entries = [_atom_entry(i, vector, _link(links, i)) for i, vector in enumerate(vectors)]
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
        f'<id>urn:x-test:atom</id><title type="html">{escape(FEED_TITLE)}</title>'
        "<updated>2024-01-02T00:00:00Z</updated>"
        '<link rel="alternate" href="http://example.org/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"/>'
        + "\n".join(entries) + "</feed>\n"
    )


def article_page(number: int, vectors: list[str]) -> str:
    """A news article whose paragraphs each end in a vector, raw; the page's author is one too."""
    filler = (
        "The council met on Tuesday evening to discuss the harbour works, the new cycle lanes and the budget "
        "for the coming year, and residents filled the public gallery to follow a debate that ran late."
    )
    paragraphs = "\n".join(
        f"<p>Paragraph {i} of report {number}. {filler} {vector}</p>" for i, vector in enumerate(vectors)
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Report {number}</title>'
        f'<meta name="author" content={quoteattr(vectors[0])}><script>alert("head")</script></head>'
        f'<body onload="alert(1)"><article><h1>Report {number}</h1>\n{paragraphs}\n</article></body></html>\n'
    )


def chunks(items: list[str], count: int) -> list[list[str]]:
    size = -(-len(items) // count)
    return [items[start : start + size] for start in range(0, len(items), size)]


# --- one poll over everything, shared by the tests ------------------------------------------------


@dataclass
class Polled:
    config: Path
    public: Path
    database: Path
    pages: int


class _Health:
    def health(self) -> Health:
        return Health(True, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z")


@pytest.fixture(scope="module")
def polled(server, tmp_path_factory, run_cli_many) -> Polled:
    """The feeds and pages served, ``aggregator poll`` then ``aggregator generate`` run once."""
    from conftest import render_config

    directory = tmp_path_factory.mktemp("xss")
    pages = [f"/xss/page-{n}.html" for n in range(PAGES)]
    for n, part in enumerate(chunks(VECTORS, PAGES)):
        server.route(pages[n], body=article_page(n, part), content_type="text/html; charset=utf-8")
    safe = xml_safe(VECTORS)
    page_links = [server.url(page) for page in pages]
    rss_type, atom_type = "application/rss+xml", "application/atom+xml"
    server.route("/xss/rss.xml", body=rss_feed(safe, xml_safe(LINKS), pages=page_links), content_type=rss_type)
    server.route("/xss/atom.xml", body=atom_feed(safe, xml_safe(LINKS)), content_type=atom_type)
    server.route("/xss/broken.xml", body=rss_feed(VECTORS, LINKS, title=VECTORS[-1]), content_type=rss_type)
    server.route("/xss/moved.xml", redirect="javascript:alert('<script>alert(1)</script>')", status=302)
    feeds = [
        {"url": server.url("/xss/rss.xml"), "tags": ["rss"], "full_text": True},
        {"url": server.url("/xss/atom.xml"), "tags": ["atom"]},
        {"url": server.url("/xss/broken.xml"), "tags": ["broken"], "name": FEED_NAME},
        {"url": server.url("/xss/moved.xml"), "name": FEED_NAME + " (moved)"},
    ]
    outputs = [{"name": "all", "title": OUTPUT_TITLE, "max_entries": 5000}] + [
        {"name": tag, "tags": [tag], "max_entries": 5000} for tag in ("rss", "atom", "broken")
    ]
    config = directory / "feeds.toml"
    config.write_text(render_config(directory, feeds, outputs, timeout="10s"), encoding="utf-8")
    for command in ("poll", "generate"):
        [done] = run_cli_many([{"args": [command], "cwd": directory, "config": config}])
        assert done.returncode == 0, done.stderr
    return Polled(config, directory / "public", directory / "agg.db", len(pages))


OUTPUT_FILES = [f"{name}.{fmt}" for name in ("all", "rss", "atom", "broken") for fmt in ("atom", "rss", "json")]


def output_problems(name: str, body: bytes) -> list[str]:
    if name.endswith(".json"):
        return json_problems(json.loads(body))
    return xml_problems(body)


# --- the tests ------------------------------------------------------------------------------------


def test_corpus_is_large_and_varied() -> None:
    assert len(VECTORS) >= 120 and len(set(VECTORS)) == len(VECTORS)
    assert len(GROUPS) >= 10 and len(LINKS) >= 10
    # every vector is unsafe before sanitising: the checks recognise what they guard against
    raw = [vector for vector in VECTORS if html_problems(vector)]
    assert len(raw) >= 0.8 * len(VECTORS), [v for v in VECTORS if v not in raw][:20]
    assert all(url_problems("link", link) or _NOT_IN_URLS.search(link) for link in LINKS)


def _rows(database: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_stored_markup_is_safe(polled: Polled) -> None:
    rows = _rows(polled.database, "SELECT id, feed_url, link, content, summary, article_html FROM entries")
    assert len(rows) >= 2 * len(xml_safe(VECTORS)), "the corpus did not reach the store"
    problems = [
        f"entry {row['id']} {column}: {problem}"
        for row in rows
        for column in ("content", "summary", "article_html")
        for problem in html_problems(row[column])
    ]
    problems += [f"entry {row['id']}: {p}" for row in rows for p in url_problems("link", row["link"] or "")]
    assert problems == []
    assert sum(1 for row in rows if row["content"]) >= len(xml_safe(VECTORS)), "content was dropped, not sanitised"


def test_article_pages_are_extracted_safely(polled: Polled) -> None:
    sql = "SELECT link, extraction_status, extraction_error, article_html FROM entries WHERE link LIKE '%/xss/page-%'"
    rows = _rows(polled.database, sql)
    done = [row for row in rows if row["article_html"]]
    assert len(done) >= polled.pages // 2, [tuple(row)[:3] for row in rows]
    assert all("council met on Tuesday" in row["article_html"] for row in done)
    assert [f"{row['link']}: {problem}" for row in done for problem in html_problems(row["article_html"])] == []


def test_feed_addresses_are_http_or_nothing(polled: Polled) -> None:
    rows = _rows(polled.database, "SELECT url, site_url FROM feeds")
    assert [problem for row in rows for problem in url_problems(row["url"], row["site_url"] or "")] == []


@pytest.mark.parametrize("name", OUTPUT_FILES)
def test_written_outputs_are_safe(polled: Polled, name: str) -> None:
    body = (polled.public / name).read_bytes()
    assert output_problems(name, body) == []


@pytest.mark.parametrize("fmt", ["atom", "rss", "json"])
def test_outputs_carry_the_corpus(polled: Polled, fmt: str) -> None:
    """Not vacuous: the outputs hold an item for most vectors of each well-formed feed (some items are
    one story by their links, the article pages are near-duplicates of each other)."""
    for name in ("rss", "atom"):
        body = (polled.public / f"{name}.{fmt}").read_bytes()
        marker = {"atom": b"<entry>", "rss": b"<item>"}.get(fmt)
        count = body.count(marker) if marker else len(json.loads(body)["items"])
        assert count >= 0.8 * len(xml_safe(VECTORS)), f"{name}.{fmt}: {count} items"


def _json_items(polled: Polled) -> list[dict[str, Any]]:
    return json.loads((polled.public / "rss.json").read_text(encoding="utf-8"))["items"]


def test_a_title_is_text_everywhere(polled: Polled) -> None:
    """A title that looks like markup is shown as text: escaped in content_html, text in Atom and RSS."""
    [item] = [item for item in _json_items(polled) if item["title"] == TITLE_ONLY]
    body = lxml.html.fragment_fromstring(item["content_html"], create_parent="div")
    assert body[0].tag == "p" and body[0].text_content() == TITLE_ONLY
    assert html_problems(item["content_html"]) == []
    for fmt, tag in (("atom", "{http://www.w3.org/2005/Atom}title"), ("rss", "title")):
        root = lxml.etree.fromstring((polled.public / f"rss.{fmt}").read_bytes())
        titles = [element for element in root.iter(tag) if element.text == TITLE_ONLY]
        assert titles and all(len(t) == 0 and t.get("type") in (None, "text") for t in titles), fmt


def test_feed_and_output_titles_are_text(polled: Polled) -> None:
    document = json.loads((polled.public / "all.json").read_text(encoding="utf-8"))
    assert document["title"] == OUTPUT_TITLE
    sources = {item["_aggregator"]["source"]["title"] for item in document["items"]}
    assert FEED_TITLE in sources
    also = [item["content_html"] for item in document["items"] if "Also reported by" in item["content_html"]]
    assert also, "no story reported by two feeds: the 'also reported by' line went untested"
    assert [problem for markup in also for problem in html_problems(markup)] == []


@pytest.fixture(scope="module")
def served(polled: Polled) -> Iterator[httpx.Client]:
    with AppServer(build_app(load_config(polled.config), _Health())) as client:
        yield client


@pytest.mark.parametrize("name", OUTPUT_FILES)
def test_served_feeds_are_safe(polled: Polled, served: httpx.Client, name: str) -> None:
    response = served.get(f"/feeds/{name}", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (polled.public / name).read_bytes()
    assert output_problems(name, response.content) == []


def test_index_page_is_safe(served: httpx.Client) -> None:
    response = served.get("/")
    assert response.status_code == 200
    assert "script-src" not in response.headers["content-security-policy"]  # nothing allowed to run
    assert index_problems(response.text) == []
    text = lxml.html.document_fromstring(response.text).text_content()
    for shown in (FEED_NAME, OUTPUT_TITLE, FEED_TITLE):
        assert shown in text, f"{shown!r} is not shown as text"
