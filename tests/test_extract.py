"""Article extraction (``aggregator/extract.py``) against hand-written news pages.

Fixtures live in ``tests/data/pages/``: each ``NAME.html`` has a ``NAME.expected.json`` beside it with
``url``, ``content_type`` (as the server would send it), ``body_paragraphs`` (exact text of the article
body, in order), ``boilerplate`` (strings from navigation, consent banners, ads, teasers, newsletter
boxes, comments, share bars, footers, scripts and styles that must not survive), ``author``,
``published`` and ``language`` (null = not checked) and, optionally, ``html_contains`` (markup that
must survive sanitising, e.g. an image's alt text or an absolutised link).

``empty_shell.html`` has no expected file on purpose: it is a JavaScript app shell with no article.

Two deliberate relaxations, both trafilatura behaviour rather than bugs:

* No-break spaces (U+00A0, U+202F) are compared as ordinary spaces: trafilatura's ``trim()`` is
  ``" ".join(s.split())``, which folds them, so French typography (``«\u00a0Tartuffe\u00a0»``) comes
  out with plain spaces in both the text and the HTML.
* ``language`` is compared on its primary subtag, case-insensitively: the extractor reports the
  page's ``<html lang>`` as written (``en-US`` -> ``en-us``); which region a page declares is not
  something the expected files pin down.
"""

from __future__ import annotations

import codecs
import html as htmllib
import json
import re
import struct
import time
import zlib
from pathlib import Path

import lxml.html
import pytest

from aggregator.extract import Article, ExtractionFailed, decode_html, extract_article

PAGES = Path(__file__).parent / "data" / "pages"
CASES = sorted(path.name.removesuffix(".expected.json") for path in PAGES.glob("*.expected.json"))

# How each fixture is really encoded (what a browser would use), to check the fixtures themselves.
# ja_cjk is Shift_JIS as the web means it: the WHATWG "shift_jis" label is Windows-31J (Python cp932),
# which includes the NEC/IBM rows (circled digits, 髙) that real Japanese pages use.
SOURCE_ENCODING = {"de_latin1": "iso-8859-1", "ru_cyrillic": "windows-1251", "ja_cjk": "cp932"}

NO_BREAK_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " "})
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
MOJIBAKE = ("\ufffd", "Ã", "Â", "â€")


def _fold(text: str) -> str:
    return text.translate(NO_BREAK_SPACES)


def _expected(name: str) -> dict:
    return json.loads((PAGES / f"{name}.expected.json").read_text(encoding="utf-8"))


def _body(name: str) -> bytes:
    return (PAGES / f"{name}.html").read_bytes()


@pytest.fixture(scope="module")
def extracted() -> dict[str, Article | ExtractionFailed]:
    """Each page extracted once for all the tests below (an ExtractionFailed is kept, not raised)."""
    results: dict[str, Article | ExtractionFailed] = {}
    for name in CASES:
        expected = _expected(name)
        try:
            results[name] = extract_article(_body(name), expected["url"], expected["content_type"])
        except ExtractionFailed as failure:
            results[name] = failure
    return results


def _article(extracted: dict, name: str) -> Article:
    result = extracted[name]
    if isinstance(result, ExtractionFailed):
        pytest.fail(f"{name}: no article extracted ({result})")
    return result


# ---------------------------------------------------------------------------
# The fixtures themselves: sizes, encodings, and that every expectation is grounded in the page.
# ---------------------------------------------------------------------------


def test_all_pages_are_present():
    assert CASES == ["de_latin1", "de_politik", "en_cluttered", "en_science", "fr_culture", "ja_cjk", "ru_cyrillic"]
    assert (PAGES / "empty_shell.html").is_file()


@pytest.mark.parametrize("name", [*CASES, "empty_shell"])
def test_fixture_size(name):
    assert 15_000 <= len(_body(name)) <= 60_000


@pytest.mark.parametrize("name", CASES)
def test_fixture_is_consistent(name):
    """Every expected paragraph is the text of one element of the page, every boilerplate string is
    really on the page (otherwise its absence from the output would prove nothing)."""
    expected = _expected(name)
    assert expected["url"].startswith("http://news.test/")
    assert len(expected["body_paragraphs"]) >= 6
    source = _body(name).decode(SOURCE_ENCODING.get(name, "utf-8"))
    tree = lxml.html.document_fromstring(source)
    blocks = {element.text_content() for element in tree.iter("p", "li", "h2", "blockquote")}
    for paragraph in expected["body_paragraphs"]:
        assert paragraph in blocks, paragraph
    unescaped = htmllib.unescape(source)
    for needle in expected["boilerplate"]:
        assert needle in unescaped, needle


def test_fixture_encodings_are_declared_as_briefed():
    latin1 = _body("de_latin1")
    with pytest.raises(UnicodeDecodeError):
        latin1.decode("utf-8")
    assert latin1.lower().count(b"charset") == 1
    assert b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">' in latin1
    assert "charset" not in _expected("de_latin1")["content_type"]

    cyrillic = _body("ru_cyrillic")
    with pytest.raises(UnicodeDecodeError):
        cyrillic.decode("utf-8")
    assert b"charset" not in cyrillic.lower()
    assert _expected("ru_cyrillic")["content_type"] == "text/html; charset=windows-1251"

    japanese = _body("ja_cjk")
    with pytest.raises(UnicodeDecodeError):
        japanese.decode("utf-8")
    assert b'<meta charset="shift_jis">' in japanese
    assert "charset" not in _expected("ja_cjk")["content_type"]

    french = _body("fr_culture")
    french.decode("utf-8")
    assert b"charset" not in french.lower() and "charset" not in _expected("fr_culture")["content_type"]
    assert b"\xc2\xa0" in french  # real no-break spaces, not &nbsp; entities


# ---------------------------------------------------------------------------
# Extraction of every page with an expected file.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_body_paragraphs_present_in_order(extracted, name):
    article = _article(extracted, name)
    paragraphs = [_fold(p) for p in article.text.split("\n\n")]
    positions = []
    for paragraph in _expected(name)["body_paragraphs"]:
        wanted = _fold(paragraph)
        assert wanted in paragraphs, f"{name}: paragraph missing or altered: {paragraph!r}"
        positions.append(paragraphs.index(wanted))
    assert positions == sorted(positions), f"{name}: paragraphs out of order: {positions}"


@pytest.mark.parametrize("name", CASES)
def test_no_boilerplate(extracted, name):
    article = _article(extracted, name)
    text, markup = article.text, htmllib.unescape(article.html)
    leaks = [needle for needle in _expected(name)["boilerplate"] if needle in text or needle in markup]
    assert not leaks, f"{name}: boilerplate in the article: {leaks}"


@pytest.mark.parametrize("name", CASES)
def test_html_is_safe(extracted, name):
    markup = _article(extracted, name).html
    lowered = markup.lower()
    for needle in ("<script", "<style", "<iframe", "<form", "<noscript", "javascript:"):
        assert needle not in lowered, f"{name}: {needle} in article_html"
    assert not EVENT_HANDLER.search(markup), f"{name}: event handler attribute in article_html"


@pytest.mark.parametrize("name", CASES)
def test_html_keeps_content_markup(extracted, name):
    markup = _article(extracted, name).html
    for needle in _expected(name).get("html_contains", []):
        assert needle in markup, f"{name}: {needle!r} missing from article_html"


@pytest.mark.parametrize("name", CASES)
def test_no_mojibake(extracted, name):
    article = _article(extracted, name)
    for needle in MOJIBAKE:
        assert needle not in article.text, f"{name}: {needle!r} in article_text (wrong decoding)"
        assert needle not in article.html, f"{name}: {needle!r} in article_html (wrong decoding)"


@pytest.mark.parametrize("name", CASES)
def test_text_format(extracted, name):
    """Plain text: paragraphs separated by exactly one blank line, no markup, no stray whitespace."""
    text = _article(extracted, name).text
    assert text == text.strip()
    assert "\n\n\n" not in text
    for paragraph in text.split("\n\n"):
        assert paragraph == paragraph.strip() and paragraph


@pytest.mark.parametrize("name", CASES)
def test_metadata(extracted, name):
    article, expected = _article(extracted, name), _expected(name)
    if expected["author"] is not None:
        assert article.author == expected["author"]
    if expected["published"] is not None:
        assert article.published == expected["published"]
    if expected["language"] is not None:
        assert article.language is not None
        assert article.language.split("-")[0].lower() == expected["language"]
    assert article.title


def test_mean_extraction_time(capsys):
    """Printed, not asserted: timing depends on the machine."""
    rounds = 5
    timings = {}
    for name in CASES:
        expected, body = _expected(name), _body(name)
        started = time.perf_counter()
        for _ in range(rounds):
            try:
                extract_article(body, expected["url"], expected["content_type"])
            except ExtractionFailed:
                pass
        timings[name] = (time.perf_counter() - started) / rounds
    with capsys.disabled():
        print()
        for name, seconds in timings.items():
            print(f"  extract_article {name:<14} {len(_body(name)) / 1024:5.1f} KB  {seconds * 1000:7.1f} ms")
        print(f"  extract_article mean per page: {sum(timings.values()) / len(timings) * 1000:.1f} ms")


# ---------------------------------------------------------------------------
# Pages without an article.
# ---------------------------------------------------------------------------


def test_empty_shell_has_no_article():
    """A JavaScript app shell: header, nav, a <noscript> notice, a loading skeleton, a footer."""
    with pytest.raises(ExtractionFailed):
        extract_article(_body("empty_shell"), "http://news.test/app/article/8f3c2a71", "text/html; charset=utf-8")


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 13) % 256 for x in range(48 * 3)) for y in range(48))
    header = struct.pack(">IIBBBBB", 48, 48, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


_JSON = json.dumps({
    "id": 8812,
    "title": "Council approves tram extension",
    "body": "The city council voted 9 to 4 on Tuesday night to approve a $1.2 billion extension of the tram network. " * 5,
    "tags": ["transit", "council"],
}).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(_png(), "image/png"), (_png(), None), (_JSON, "application/json"), (_JSON, None), (b"", "text/html"), (b" \n\t", None)],
    ids=["png", "png-untyped", "json", "json-untyped", "empty", "whitespace"],
)
def test_non_html_has_no_article(body, content_type):
    with pytest.raises(ExtractionFailed):
        extract_article(body, "http://news.test/api/item/8812", content_type)


# ---------------------------------------------------------------------------
# PRUNE_XPATH must only remove boilerplate, never an ancestor of the article. The same de_politik
# page, with markup that is common in the wild added to an element that CONTAINS the article.
# ---------------------------------------------------------------------------

_DE_POLITIK_VARIANTS = {
    # the WordPress "Cookie Notice" plugin puts cookies-not-set / cookies-set on <body>
    "body-cookie-state-class": (b'<body class="dp-page dp-page--article">', b'<body class="dp-page dp-page--article cookies-not-set">'),
    # consent/newsletter layers add a state class to <body> while they are open
    "body-newsletter-layer-class": (b'<body class="dp-page dp-page--article">', b'<body class="dp-page dp-page--article newsletter-layer-open">'),
    # WordPress post_class(): one class per category and tag, here a post tagged "Social Media"
    "article-wordpress-tag-class": (b'<article class="dp-article"', b'<article class="dp-article post-48213 type-post status-publish category-politik tag-social-media"'),
}


def _assert_de_politik_article(body: bytes) -> None:
    expected = _expected("de_politik")
    try:
        article = extract_article(body, expected["url"], expected["content_type"])
    except ExtractionFailed as failure:
        pytest.fail(f"the whole article was pruned: {failure}")
    paragraphs = article.text.split("\n\n")
    missing = [p for p in expected["body_paragraphs"] if p not in paragraphs]
    assert not missing, f"{len(missing)} of {len(expected['body_paragraphs'])} paragraphs lost; got {article.text[:120]!r}"


@pytest.mark.parametrize("variant", sorted(_DE_POLITIK_VARIANTS))
def test_container_classes_do_not_prune_the_article(variant):
    old, new = _DE_POLITIK_VARIANTS[variant]
    body = _body("de_politik")
    assert body.count(old) == 1
    _assert_de_politik_article(body.replace(old, new))


def test_page_wrapped_in_a_form_keeps_its_article():
    """ASP.NET WebForms wraps the whole page in one <form id="aspnetForm">; //form must not prune it."""
    body = _body("de_politik")
    body = body.replace(b'<main id="main">', b'<form method="post" action="./artikel.aspx?id=48213" id="aspnetForm"><main id="main">', 1)
    body = body.replace(b"</main>", b"</main></form>", 1)
    _assert_de_politik_article(body)


# ---------------------------------------------------------------------------
# decode_html
# ---------------------------------------------------------------------------

RUSSIAN = "Новый мост через реку открыли во вторник — «наконец-то», говорят жители."
GERMAN = "Die Gebühren für die Müllabfuhr steigen „deutlich“ – um 12 € im Jahr, sagt der Bürgermeister. Größere Haushalte zahlen mehr."


def _doc(text: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head>{head}<title>Test</title></head><body><article><p>{text}</p></article></body></html>"


def test_header_charset_wins_over_meta():
    body = _doc(RUSSIAN, '<meta charset="utf-8">').encode("windows-1251")
    assert RUSSIAN in decode_html(body, "text/html; charset=windows-1251")
    assert RUSSIAN in decode_html(body, 'text/html; charset="Windows-1251"')


def test_meta_charset_used_when_header_has_none():
    body = _doc(RUSSIAN, '<meta charset="windows-1251">').encode("windows-1251")
    assert RUSSIAN in decode_html(body, "text/html")
    assert RUSSIAN in decode_html(body, None)
    http_equiv = _doc(GERMAN, '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">').encode("cp1252")
    assert GERMAN in decode_html(http_equiv, "text/html")


def test_unknown_header_charset_falls_through_to_meta():
    body = _doc(RUSSIAN, '<meta charset="windows-1251">').encode("windows-1251")
    assert RUSSIAN in decode_html(body, "text/html; charset=x-no-such-charset")


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
    ids=["utf-8", "utf-16-le", "utf-16-be"],
)
def test_bom_wins_over_header_and_meta(bom, encoding):
    body = bom + _doc(GERMAN, '<meta charset="iso-8859-1">').encode(encoding)
    decoded = decode_html(body, "text/html; charset=iso-8859-1")
    assert GERMAN in decoded
    assert not decoded.startswith("\ufeff")


@pytest.mark.parametrize("label", ["iso-8859-1", "ISO-8859-1", "latin1", "us-ascii"])
def test_latin1_labels_decode_as_windows_1252(label):
    body = _doc("Preis: 12 \x80 \x84Angebot\x93 \x96 jetzt").encode("latin-1")  # bytes 0x80 0x84 0x93 0x96
    assert "Preis: 12 € „Angebot“ – jetzt" in decode_html(body, f"text/html; charset={label}")
    assert "Preis: 12 € „Angebot“ – jetzt" in decode_html(body.replace(b"<head>", f'<head><meta charset="{label}">'.encode()), None)


@pytest.mark.parametrize("label", ["x-no-such-charset", "utf-8lol", "", "  ", "ünïcödé"])
def test_unknown_charset_falls_back_gracefully(label):
    body = _doc(GERMAN).encode("utf-8")
    assert GERMAN in decode_html(body, f"text/html; charset={label}")
    meta = _doc(GERMAN, f'<meta charset="{label}">').encode("utf-8")
    assert GERMAN in decode_html(meta, None)


@pytest.mark.parametrize("label", ["rot13", "base64", "hex", "zlib", "undefined", "idna"])
def test_non_web_codec_names_fall_back_gracefully(label):
    """Python codec names that are not web encodings (codecs.lookup accepts them) must be ignored
    like any other unknown label, not crash the worker or garble the page."""
    body = _doc(GERMAN).encode("utf-8")
    assert GERMAN in decode_html(body, f"text/html; charset={label}")
    meta = _doc(GERMAN, f'<meta charset="{label}">').encode("utf-8")
    assert GERMAN in decode_html(meta, None)


def test_meta_utf16_on_ascii_compatible_page_means_utf8():
    """HTML standard, prescan: a <meta> that says UTF-16 is read as UTF-8 (the prescan itself found
    ASCII bytes, so the page cannot be UTF-16). Misdeclared pages like this exist."""
    body = _doc(GERMAN, '<meta charset="utf-16">').encode("utf-8")
    assert GERMAN in decode_html(body, None)


def test_undeclared_utf8():
    body = _doc(GERMAN + " " + RUSSIAN + " «\u00a0Tartuffe\u00a0» 待機児童").encode("utf-8")
    assert GERMAN + " " + RUSSIAN + " «\u00a0Tartuffe\u00a0» 待機児童" in decode_html(body, None)
    assert GERMAN in decode_html(body, "text/html")


UNDECLARED_1252 = {
    "de": GERMAN,
    "es": "El niño comió una piña en la mañana. ¿Dónde está la estación? Él respondió: «Aquí, junto al café de la esquina», según informó el periódico.",
    "fr": "Le théâtre à Paris : « Les Misérables » revient sur scène. Où est-ce que l'été commence ? Ça dépend de la météo, répète le maître d'hôtel – à côté de la gare, près du cœur de la ville.",
    "pt": "A situação econômica do país não é fácil, disse o ministro às três horas. Ações caíram após a decisão do Banco Central, informou a emissora.",
}


@pytest.mark.parametrize("language", sorted(UNDECLARED_1252))
def test_undeclared_windows_1252(language):
    text = UNDECLARED_1252[language]
    body = _doc(" ".join([text] * 3)).encode("cp1252")
    assert text in decode_html(body, "text/html")
    assert text in decode_html(body, None)


def test_shift_jis_label_is_windows_31j():
    """The WHATWG "shift_jis" label (and sjis, windows-31j, ...) is Windows-31J: Python's cp932, not
    Python's strict JIS X 0208 "shift_jis", which cannot decode circled digits or 髙."""
    text = "対策の柱は①保育士の処遇改善②施設の新設③手続きのデジタル化の３点。社会福祉法人の髙橋誠理事長。"
    body = _doc(text, '<meta charset="shift_jis">').encode("cp932")
    assert text in decode_html(body, None)
    assert text in decode_html(_doc(text).encode("cp932"), "text/html; charset=Shift_JIS")
