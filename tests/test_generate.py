from __future__ import annotations

import json
from datetime import UTC, datetime

import feedparser
import pytest

from aggregator.generate import FeedMeta, Item, Source, item_from_row, render_atom, render_json, render_rss
from aggregator.storage import EntryRow

META = FeedMeta(title="Nachrichten »aktuell«", self_url="http://h.test/feeds/all.atom", home_url="http://h.test/",
                updated=datetime(2026, 11, 20, tzinfo=UTC))


def row(**kw) -> EntryRow:
    base = dict(
        id=1, feed_url="http://src.test/feed", guid="g1", url="http://n.test/a", link="http://n.test/a?x=1",
        title="Grüße aus Köln – »Test«", author="Jürgen", published="2026-11-19T08:00:00Z", updated=None,
        summary="<p>Kurz</p>", content="<p>Lang und ausführlich 😀</p>", article_text=None, article_html=None,
        language="de", first_seen="2026-11-19T09:00:00Z", duplicate_of=None, feed_title="Quelle",
        feed_site_url="http://src.test/",
    )
    return EntryRow(**{**base, **kw})


ITEMS = [item_from_row(row()), item_from_row(row(id=2, guid="g2", title=None, link=None, summary=None, content=None))]


@pytest.mark.parametrize("render", [render_atom, render_rss])
def test_xml_outputs_parse_back_cleanly(render):
    parsed = feedparser.parse(render(META, ITEMS))
    assert parsed.bozo == 0
    assert parsed.feed.title == META.title
    first = parsed.entries[0]
    assert first.title == "Grüße aus Köln – »Test«"
    assert first.link == "http://n.test/a?x=1"
    assert "Lang und ausführlich 😀" in first.content[0].value
    assert first.source.title == "Quelle"
    assert parsed.entries[1].title == "Untitled"


def test_atom_source_and_ids_are_stable():
    text = render_atom(META, ITEMS).decode("utf-8")
    assert text.count("<source>") == 2 and 'href="http://src.test/feed"' in text
    assert render_atom(META, ITEMS) == render_atom(META, [item_from_row(row()), ITEMS[1]])


def test_rss_source_url_and_content_encoded():
    text = render_rss(META, ITEMS).decode("utf-8")
    assert '<source url="http://src.test/feed">Quelle</source>' in text
    assert "<content:encoded>" in text and "<dc:creator>Jürgen</dc:creator>" in text


def test_json_feed_1_1():
    document = json.loads(render_json(META, ITEMS))
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    first = document["items"][0]
    assert first["title"] == "Grüße aus Köln – »Test«"
    assert first["content_html"] == "<p>Lang und ausführlich 😀</p>"
    assert first["summary"] == "Kurz"
    assert first["date_published"] == "2026-11-19T08:00:00Z"
    assert first["authors"] == [{"name": "Jürgen"}]
    assert first["_aggregator"]["source"] == {"title": "Quelle", "feed_url": "http://src.test/feed", "home_page_url": "http://src.test/"}
    assert len({item["id"] for item in document["items"]}) == 2


def test_article_body_preferred_and_text_carried():
    item = item_from_row(row(article_html="<p>Artikel</p>", article_text="Artikel"))
    assert item.body_html == "<p>Artikel</p>" and item.body_text == "Artikel"
    assert json.loads(render_json(META, [item]))["items"][0]["content_text"] == "Artikel"


def test_future_dates_are_capped_at_first_seen():
    item = item_from_row(row(published="2099-01-01T00:00:00Z"))
    assert item.published == datetime(2026, 11, 19, 9, tzinfo=UTC)


def test_control_characters_do_not_break_xml():
    item = item_from_row(row(title="bad\x00 \x0bchars\x1f", content="<p>x\x08y</p>"))
    for render in (render_atom, render_rss):
        parsed = feedparser.parse(render(META, [item]))
        assert parsed.bozo == 0 and parsed.entries[0].title == "bad chars"


def test_empty_output_is_valid():
    for render in (render_atom, render_rss):
        assert feedparser.parse(render(META, [])).bozo == 0
    assert json.loads(render_json(META, []))["items"] == []


def test_item_requires_no_network_fields():
    item = Item(id="urn:x", title="t", link=None, published=META.updated, updated=META.updated, author=None,
                summary_html=None, body_html="<p>t</p>", body_text=None, language=None,
                source=Source(title="s", url="http://s.test/", site_url=None))
    assert feedparser.parse(render_atom(META, [item])).bozo == 0


def test_also_reported_by_in_every_format():
    from aggregator.generate import Also

    also = [Also("Zweite Quelle", "http://b.test/feed", "http://b.test/story?a=1&b=2"), Also("Dritte", "http://c.test/feed", None)]
    item = item_from_row(row(), also)
    atom = feedparser.parse(render_atom(META, [item]))
    assert atom.bozo == 0
    content = atom.entries[0].content[0].value
    assert "Also reported by" in content and "Zweite Quelle" in content and "Dritte" in content
    assert 'href="http://b.test/story?a=1&amp;b=2"' in content
    assert [link["href"] for link in atom.entries[0].links] == ["http://n.test/a?x=1"]
    rss = feedparser.parse(render_rss(META, [item]))
    assert rss.bozo == 0 and "Zweite Quelle" in rss.entries[0].content[0].value
    extension = json.loads(render_json(META, [item]))["items"][0]["_aggregator"]
    assert extension["also_reported_by"][0] == {"title": "Zweite Quelle", "feed_url": "http://b.test/feed", "url": "http://b.test/story?a=1&b=2"}


def test_keyword_filters_per_output(tmp_path):
    from aggregator.config import load_config
    from aggregator.generate import keywords_match, write_outputs
    from aggregator.parse import keyed
    from aggregator.storage import Store
    from aggregator.types import FeedConfig, FetchResult, OutputConfig, ParsedEntry, ParsedFeed

    config_path = tmp_path / "feeds.toml"
    config_path.write_text(
        '[aggregator]\nfull_text = false\n'
        '[[outputs]]\nname = "all"\n'
        '[[outputs]]\nname = "verkehr"\ninclude = ["Straßenbahn", "neue Brücke"]\nexclude = ["Fußball"]\n'
        '[[feeds]]\nurl = "http://src.test/feed"\n',
        encoding="utf-8",
    )
    config = load_config(config_path)
    assert config.outputs[1].include == ("Straßenbahn", "neue Brücke") and config.outputs[1].exclude == ("Fußball",)
    titles = ["STRASSENBAHN fährt bald", "Die neue Brücke ist offen", "Straßenbahn zum Fußball-Stadion", "Wetter"]
    entries = tuple(
        keyed(ParsedEntry(guid=str(i), link=f"http://n.test/{i}", title=t, author=None,
                          published=f"2026-11-2{i}T08:00:00Z", updated=None, summary="<p>Text</p>", content=None))
        for i, t in enumerate(titles)
    )
    with Store.open(config.database) as store:
        store.sync_feeds([FeedConfig("http://src.test/feed")], "2026-11-25T00:00:00Z")
        store.store_feed("http://src.test/feed", ParsedFeed("Quelle", None, None, entries),
                         FetchResult("u", "u", 200, {}, b"x"), now="2026-11-25T09:00:00Z", next_poll_at="2026-11-25T10:00:00Z")
        write_outputs(config, store)
    shown = {name: [i["title"] for i in json.loads((config.output_dir / f"{name}.json").read_text())["items"]]
             for name in ("all", "verkehr")}
    assert len(shown["all"]) == 4
    assert sorted(shown["verkehr"]) == ["Die neue Brücke ist offen", "STRASSENBAHN fährt bald"]
    assert keywords_match(OutputConfig(include=("brücke",)), "Brückenbau") is False


def test_keyword_filter_keys_are_validated(tmp_path):
    from aggregator.config import load_config
    from aggregator.exceptions import ConfigError

    path = tmp_path / "feeds.toml"
    path.write_text('[[outputs]]\nname = "x"\ninclude = "tram"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"outputs\[0\] \(x\)\.include"):
        load_config(path)
