from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from aggregator.exceptions import ParseError
from aggregator.parse import _date, keyed, parse_feed
from aggregator.types import ParsedEntry

DATA = Path(__file__).parent / "data"
BASE = "http://127.0.0.1:8000"
FEEDS = sorted(p for p in DATA.glob("*.xml") if (DATA / f"{p.stem}.expected.json").exists() and p.stem != "garbage")


def parse_fixture(name: str):
    return parse_feed((DATA / name).read_bytes(), f"{BASE}/{name}", {"content-type": "application/xml"})


def absolute(link: str | None) -> str | None:
    return BASE + link if link and link.startswith("/") else link


@pytest.mark.parametrize("path", FEEDS, ids=lambda p: p.stem)
def test_fixture_expectations(path):
    expected = json.loads((DATA / f"{path.stem}.expected.json").read_text(encoding="utf-8"))
    parsed = parse_fixture(path.name)
    assert parsed.title == expected["title"]
    assert len(parsed.entries) == len(expected["entries"])
    for entry, want in zip(parsed.entries, expected["entries"], strict=True):
        assert entry.title == want["title"]
        assert entry.link == absolute(want["link"])
        assert entry.published == want["published"]
        if want["guid"] is not None:
            assert entry.guid == absolute(want["guid"])
        if "author" in want:
            assert entry.author == want["author"]
        for text in want.get("summary_contains", []):
            assert text in entry.summary
        for text in want.get("content_contains", []):
            assert text in entry.content
        for text in want.get("summary_forbidden", []):
            assert text not in (entry.summary or "") + (entry.content or "")
    assert (parsed.warning is not None) == bool(expected.get("bozo"))


def test_title_only_entries_get_stable_distinct_guids():
    first = parse_fixture("title_only.xml")
    second = parse_fixture("title_only.xml")
    guids = [e.guid for e in first.entries]
    assert len(set(guids)) == len(guids) == 3
    assert all(g.startswith("hash:") for g in guids)
    assert guids == [e.guid for e in second.entries]


def test_german_text_survives_both_encodings():
    utf8 = parse_fixture("german_umlauts.xml")
    latin1 = parse_fixture("german_latin1.xml")
    text = " ".join(f"{e.title} {e.summary}" for e in utf8.entries + latin1.entries)
    for char in "äöüÄÖÜß»«„“–":
        assert char in text


def test_guid_fallbacks_link_then_hash():
    body = b"""<rss version="2.0"><channel><title>t</title>
    <item><title>A</title><link>/a</link></item>
    <item><title>B</title><pubDate>Tue, 10 Nov 2026 10:00:00 GMT</pubDate></item>
    <item><title>B</title><pubDate>Wed, 11 Nov 2026 10:00:00 GMT</pubDate></item>
    <item><description>only a body</description></item>
    <item></item>
    </channel></rss>"""
    parsed = parse_feed(body, "http://h.test/feed", {})
    assert [e.title for e in parsed.entries] == ["A", "B", "B", None]
    assert parsed.entries[0].guid == "http://h.test/a"
    assert len({e.guid for e in parsed.entries}) == 4


def test_duplicate_guids_inside_one_feed_keep_the_first():
    body = b"""<rss version="2.0"><channel><title>t</title>
    <item><guid>x</guid><title>first</title></item><item><guid>x</guid><title>second</title></item>
    </channel></rss>"""
    assert [e.title for e in parse_feed(body, "http://h.test/", {}).entries] == ["first"]


def test_dates_normalised_to_utc():
    body = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:x</id><updated>2026-11-10T10:00:00+02:00</updated>
    <entry><id>urn:1</id><title>a</title><published>2026-11-10T10:00:00+02:00</published><updated>2026-11-10T23:30:00-05:00</updated></entry>
    </feed>"""
    (entry,) = parse_feed(body, "http://h.test/", {}).entries
    assert entry.published == "2026-11-10T08:00:00Z"
    assert entry.updated == "2026-11-11T04:30:00Z"


def test_html_title_becomes_text_and_markup_is_sanitised():
    body = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:x</id>
    <entry><id>urn:1</id><title type="html">Tom &amp;amp; &lt;b&gt;Jerry&lt;/b&gt;</title>
    <content type="html">&lt;p onmouseover="x()"&gt;Hi &lt;img src="/i.png" onerror="y()"&gt;&lt;a href="javascript:z()"&gt;l&lt;/a&gt;&lt;/p&gt;&lt;script&gt;bad()&lt;/script&gt;</content></entry>
    </feed>"""
    (entry,) = parse_feed(body, "http://h.test/feeds/a.xml", {}).entries
    assert entry.title == "Tom & Jerry"
    assert entry.content == '<p>Hi <img src="http://h.test/i.png"><a rel="noopener noreferrer">l</a></p>'


@pytest.mark.parametrize("body", [b"", b"this is not a feed", b"\x89PNG\r\n\x1a\n\x00\x00", b"<html><body>hello</body></html>"])
def test_not_a_feed(body):
    with pytest.raises(ParseError, match="not a feed"):
        parse_feed(body, "http://h.test/", {"content-type": "text/html"})


def test_parse_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ParseError("http://h.test/", "not a feed")))
    assert (error.url, str(error)) == ("http://h.test/", "not a feed")


@pytest.mark.parametrize(
    ("fields", "iso"),
    [
        ((2024, 2, 31, 0, 0, 0, 0, 1, 0), None),  # no such day
        ((2024, 1, 1, 24, 0, 0, 0, 1, 0), None),
        ((2024, 12, 31, 23, 59, 60, 0, 1, 0), "2024-12-31T23:59:59Z"),  # a leap second
        ((2024, 1, 1, 0, 0, 61, 0, 1, 0), "2024-01-01T00:00:59Z"),
        ((2000000000, 1, 1, 0, 0, 0, 0, 1, 0), None),  # past year 9999
        ((-(2**31), 1, 1, 0, 0, 0, 0, 1, 0), None),
        ((2024, 1, 1, 0, 0, 0, 0, 1, 2**40), "2024-01-01T00:00:00Z"),  # an absurd DST flag is ignored
        ((2026, 11, 10, 8, 0, 0, 1, 314, 0), "2026-11-10T08:00:00Z"),
        ((1969, 12, 31, 23, 59, 59, 2, 365, 0), None),  # before 1970: a placeholder
    ],
)
def test_impossible_dates_become_none(fields, iso):
    assert _date(time.struct_time(fields)) == iso


def test_a_malformed_entry_link_leaves_the_entry_without_url_and_the_feed_intact():
    body = b"""<rss version="2.0"><channel><title>t</title>
    <item><guid>1</guid><title>bad</title><link>http://[x]/</link></item>
    <item><guid>2</guid><title>good</title><link>/good</link></item>
    </channel></rss>"""
    bad, good = parse_feed(body, "http://h.test/feed", {}).entries
    assert (bad.title, bad.link, bad.url) == ("bad", None, None)
    assert (good.link, good.url) == ("http://h.test/good", "http://h.test/good")
    assert keyed(ParsedEntry("g", "http://[x]/", "t", None, None, None, None, None)).url is None


def test_an_html_page_with_a_malformed_feed_link_names_the_good_one():
    page = b"""<html><head><title>site</title>
    <link rel="alternate" type="application/rss+xml" href="http://[x]/feed">
    <link rel="alternate" type="application/atom+xml" href="/atom.xml"></head></html>"""
    with pytest.raises(ParseError, match="links to the feed http://h.test/atom.xml"):
        parse_feed(page, "http://h.test/", {"content-type": "text/html"})


def test_base_resolution_is_memoised_and_each_document_keeps_its_own_base():
    import feedparser.mixin

    def atom(base: str) -> bytes:
        return f"""<feed xmlns="http://www.w3.org/2005/Atom" xml:base="{base}"><title>t</title>
          <entry xml:base="sub/"><id>1</id><title>a</title><link href="a.html"/></entry>
          <entry><id>2</id><title>b</title><link href="b.html"/></entry></feed>""".encode()

    one = parse_feed(atom("http://one.test/x/"), f"{BASE}/one.xml")
    two = parse_feed(atom("http://two.test/y/"), f"{BASE}/two.xml")
    assert [e.link for e in one.entries] == ["http://one.test/x/sub/a.html", "http://one.test/x/b.html"]
    assert [e.link for e in two.entries] == ["http://two.test/y/sub/a.html", "http://two.test/y/b.html"]
    assert feedparser.mixin.make_safe_absolute_uri.cache_info().hits > 0


def test_feedparser_dicts_answer_plain_keys_directly_and_aliases_as_before():
    import feedparser
    from feedparser.util import FeedParserDict

    assert FeedParserDict.get.__module__ == "aggregator.parse"
    with pytest.warns(DeprecationWarning):
        entry = feedparser.parse(
            b"""<rss version="2.0"><channel><title>t</title><item><guid>1</guid><title>a</title>
            <description>Stra\xc3\x9fe</description><category>Lokales</category><pubDate>Fri, 01 Nov 2024 08:26:00 GMT</pubDate>
            <enclosure url="http://one.test/a.mp3" type="audio/mpeg" length="1"/></item></channel></rss>"""
        ).entries[0]
        assert entry["updated"] == entry["published"]  # feedparser's fallback, with its warning
    assert entry.get("summary") == entry["description"] == "Straße" and entry.get("description") == "Straße"
    assert entry["category"] == "Lokales" and "category" in entry and entry.get("guid") == "1"
    assert entry["enclosures"][0]["href"] == "http://one.test/a.mp3" and entry.get("license") is None
    assert entry.get("missing", "default") == "default" and "missing" not in entry and not entry.has_key("missing")
    with pytest.raises(KeyError):
        entry["missing"]
    entry["description"] = "neu"
    assert dict.__getitem__(entry, "summary") == "neu" and not dict.__contains__(entry, "description")
    with pytest.raises(AttributeError):
        entry.missing


def test_links_are_joined_with_the_base_only_when_urljoin_would_change_them():
    import feedparser.mixin
    import feedparser.urls

    assert feedparser.mixin._urljoin is not feedparser.urls._urljoin
    for base, uri in [("http://one.test/x/", "http://two.test/a?b#c"), ("http://one.test/x/", "a.html"),
                      ("https://one.test/", "http://two.test/p;q"), ("", "http:///three.test//a"), ("http://h/", "HTTP://h/A")]:
        assert feedparser.mixin._urljoin(base, uri) == feedparser.urls._urljoin(base, uri)
    parsed = parse_feed(
        b"""<feed xmlns="http://www.w3.org/2005/Atom" xml:base="http://one.test/x/"><title>t</title>
        <entry><id>1</id><title>a</title><link href="http://two.test/b.html"/></entry>
        <entry><id>2</id><title>b</title><link href="c.html"/></entry></feed>""",
        f"{BASE}/atom.xml",
    )
    assert [e.link for e in parsed.entries] == ["http://two.test/b.html", "http://one.test/x/c.html"]


def test_an_elements_text_reaches_feedparser_in_one_piece(monkeypatch):
    """An escaped HTML description is one text, not one piece per entity reference."""
    import feedparser.mixin

    pieces: list[str] = []
    handle_data = feedparser.mixin._FeedParserMixin.handle_data

    def counting(self, text, escape=1):
        pieces.append(text)
        return handle_data(self, text, escape)

    monkeypatch.setattr(feedparser.mixin._FeedParserMixin, "handle_data", counting)
    paragraphs = "".join(f"&lt;p&gt;Absatz {i} &amp;mdash; Grüße&lt;/p&gt;" for i in range(20))
    parsed = parse_feed(
        f"""<rss version="2.0"><channel><title>t</title><item><guid>1</guid><title>a</title>
        <description>{paragraphs}</description></item></channel></rss>""".encode(),
        f"{BASE}/one.xml",
    )
    assert parsed.entries[0].summary.count("<p>") == 20 and "Absatz 19 — Grüße" in parsed.entries[0].summary
    assert len(pieces) < 20, f"{len(pieces)} pieces of text"


def test_content_parameters_are_copied_per_entry():
    from feedparser.util import FeedParserDict

    from aggregator.parse import _content_params_copy

    params = FeedParserDict(type="text/html", language="de", base="http://one.test/", value=None)
    copied = _content_params_copy(params)
    copied["value"] = "Straße"
    assert type(copied) is FeedParserDict and params["value"] is None and copied["type"] == "text/html"
    nested = FeedParserDict(type="text/html", extra=["a"])
    deep = _content_params_copy(nested)
    deep["extra"].append("b")
    assert nested["extra"] == ["a"]
    parsed = parse_feed(
        b"""<rss version="2.0"><channel><title>t</title>
        <item><guid>1</guid><title>a</title><description>&lt;p&gt;eins&lt;/p&gt;</description></item>
        <item><guid>2</guid><title>b</title><description>zwei</description></item></channel></rss>""",
        f"{BASE}/two.xml",
    )
    assert [e.summary for e in parsed.entries] == ["<p>eins</p>", "zwei"]
