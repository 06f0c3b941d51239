from __future__ import annotations

import pytest

from aggregator.sanitize import html_blocks, plain_text, sanitize_html

VECTORS = [
    '<script>alert(1)</script>',
    '<img src=x onerror=alert(1)>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<iframe src="http://evil.test/"></iframe>',
    '<object data="http://evil.test/x.swf"></object>',
    '<embed src="http://evil.test/x.swf">',
    '<svg onload=alert(1)>',
    '<body onload=alert(1)>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p style="width: expression(alert(1))">x</p>',
    '<scr<script>ipt>alert(1)</script>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<form action="http://evil.test/"><input type=submit></form>',
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<link rel=stylesheet href="http://evil.test/x.css">',
]
FORBIDDEN = ["<script", "onerror", "onload", "javascript:", "<iframe", "<object", "<embed", "expression(", "data:text", "<form", "<meta", "<base", "<link", "<style", "alert(1)</"]


@pytest.mark.parametrize("vector", VECTORS)
def test_attack_vectors_are_neutralised(vector):
    cleaned = (sanitize_html(f"<p>ok</p>{vector}", "http://h.test/") or "").lower()
    for needle in FORBIDDEN:
        assert needle not in cleaned


def test_keeps_what_readers_need():
    markup = '<h2>Titel</h2><p>»Grüße« <a href="/x">Link</a> <em>kursiv</em></p><ul><li>eins</li></ul><img src="i.png" alt="Bild"><blockquote>Zitat</blockquote>'
    cleaned = sanitize_html(markup, "http://h.test/dir/")
    assert cleaned == (
        '<h2>Titel</h2><p>»Grüße« <a href="http://h.test/x" rel="noopener noreferrer">Link</a> <em>kursiv</em></p>'
        '<ul><li>eins</li></ul><img src="http://h.test/dir/i.png" alt="Bild"><blockquote>Zitat</blockquote>'
    )


def test_empty_markup_is_none():
    assert sanitize_html("") is None and sanitize_html("   ") is None and sanitize_html("<script>x</script>") is None


def test_plain_text():
    assert plain_text("<p>Tom &amp; <b>Jerry</b></p>\n<p>»zwei«</p>") == "Tom & Jerry »zwei«"
    assert plain_text(None) is None


def test_each_base_url_resolves_its_own_relative_links():
    markup = '<p><a href="story">x</a> <img src="../pic.jpg"> <q cite="/quelle">»Zitat«</q></p>'
    one = sanitize_html(markup, "http://one.test/news/")
    two = sanitize_html(markup, "https://two.test/a/b/")
    again = sanitize_html(markup, "http://one.test/news/")
    assert 'href="http://one.test/news/story"' in one and 'src="http://one.test/pic.jpg"' in one
    assert 'cite="http://one.test/quelle"' in one and "»Zitat«" in one
    assert 'href="https://two.test/a/b/story"' in two and 'cite="https://two.test/quelle"' in two
    assert again == one
    assert sanitize_html(markup) == '<p><a rel="noopener noreferrer">x</a> <img> <q>»Zitat«</q></p>'


def test_whitespace_collapses_as_the_unicode_pattern_does() -> None:
    import re
    import sys

    from aggregator.sanitize import collapse_space

    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(r"\s", c)]
    assert {"\u00a0", "\u2003", "\u3000", "\x1c", "\x85"} <= set(spaces)
    for space in spaces:
        text = f"{space}Grüße{space * 2}»aus«{space}Köln{space}"
        assert collapse_space(text) == re.sub(r"\s+", " ", text).strip() == "Grüße »aus« Köln"
    assert collapse_space("a\u200bb") == "a\u200bb"  # a zero-width space is no space
    assert html_blocks("<p>Brü<b>cke</b>\u00a0\u00a0gesperrt</p><p> </p><p>Ende</p>") == ["Brücke gesperrt", "Ende"]
