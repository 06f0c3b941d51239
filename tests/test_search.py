"""Full-text search (aggregator.search, the ``search`` command) and the ``stories``/``feed_health`` views."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import pytest
from sqlite_utils import Database

from aggregator.exceptions import StorageError
from aggregator.parse import keyed
from aggregator.search import SearchError, fts_query, render_text, search, since_moment
from aggregator.storage import Store
from aggregator.storage.articles import ArticleOutcome
from aggregator.storage.schema import migrations
from aggregator.storage.store import FeedFailed, FeedWrite
from aggregator.types import FeedConfig, FetchResult, ParsedEntry, ParsedFeed

NOW = "2026-11-20T10:00:00Z"
LATER = "2026-11-20T11:00:00Z"
A, B, C = "http://a.test/feed", "http://b.test/feed", "http://c.test/feed"

BRIDGE = keyed(ParsedEntry(
    guid="a1", link="http://news.test/bruecke", title="Neue Brücke über den Rhein eröffnet",
    author=None, published="2026-11-19T08:00:00Z", updated=None,
    summary='<p>Die <a href="http://news.test/person" rel="noopener noreferrer">Bürgermeisterin</a> gab die '
            "<strong>Brü</strong>cke für Fußgänger frei.</p><figure><img src=\"http://news.test/b.jpg\"></figure>",
    content=None,
))
STREET = keyed(ParsedEntry(
    guid="a2", link="http://news.test/strasse", title="Sperrung der Hauptstraße",
    author=None, published="2026-11-02T08:00:00Z", updated=None,
    summary="<p>Die Straße bleibt bis Freitag gesperrt; Umleitung über die Brückenallee.</p>", content=None,
))
OLD_BRIDGE = keyed(ParsedEntry(
    guid="b1", link="http://other.test/old", title="Alte Brücke wird abgerissen",
    author=None, published="2026-10-01T08:00:00Z", updated=None,
    summary="<p>Der Abriss der maroden Holzbrücke am Stadtpark beginnt im Winter, sagt das Bauamt.</p>", content=None,
))
BRIDGE_SYNDICATED = keyed(ParsedEntry(
    guid="c1", link="http://news.test/bruecke?utm_source=rss", title="Rhein: Fußgänger feiern die Brücke",
    author=None, published="2026-11-19T09:00:00Z", updated=None,
    summary="<p>Agenturmeldung zur Eröffnung am Rheinufer mit vielen Gästen.</p>", content=None,
))


def parsed(*entries: ParsedEntry, title: str) -> ParsedFeed:
    return ParsedFeed(title=title, site_url=None, language=None, entries=entries)


def ok(url: str, moved_to: str | None = None) -> FetchResult:
    return FetchResult(url=url, final_url=moved_to or url, status=200, headers={}, body=b"<rss/>", permanent_redirect=moved_to)


def fill(store: Store) -> None:
    store.sync_feeds([FeedConfig(A, name="Stadtanzeiger"), FeedConfig(B), FeedConfig(C)], NOW)
    store.store_feed(A, parsed(BRIDGE, STREET, title="Anzeiger"), ok(A), now=NOW, next_poll_at=LATER)
    store.store_feed(B, parsed(OLD_BRIDGE, title="Blatt B"), ok(B), now=NOW, next_poll_at=LATER)
    store.store_feed(C, parsed(BRIDGE_SYNDICATED, title="Agentur C"), ok(C), now=NOW, next_poll_at=LATER)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "agg.db") as store:
        fill(store)
        yield store


def entry_id(store: Store, guid: str) -> int:
    return store.scalar("SELECT id FROM entries WHERE guid = ?", [guid])


def titles(hits) -> list[str]:
    return [hit.title for hit in hits]


def test_german_words_match_with_or_without_their_diacritics(store):
    for query in ("Brücke", "brücke", "BRÜCKE", "brucke", "Bürgermeisterin", "burgermeisterin", "Fußgänger", "FUßGÄNGER", "fußganger"):
        assert entry_id(store, "a1") in {hit.story_id for hit in search(store, query)}, query
    assert search(store, "buergermeisterin") == []  # no transliteration: ü is u, not ue


def test_sharp_s_is_a_letter_of_its_own(store):
    assert titles(search(store, "Straße")) == ["Sperrung der Hauptstraße"]
    assert titles(search(store, "STRAẞE")) == ["Sperrung der Hauptstraße"]  # capital ẞ folds to ß
    assert search(store, "strasse") == []
    assert titles(search(store, "Hauptstraße")) == ["Sperrung der Hauptstraße"]


def test_words_are_anded_and_phrases_keep_their_order(store):
    assert titles(search(store, "Brücke Rhein")) == ["Neue Brücke über den Rhein eröffnet"]
    assert titles(search(store, '"neue Brücke"')) == ["Neue Brücke über den Rhein eröffnet"]
    assert search(store, '"Brücke neue"') == []
    assert titles(search(store, "Brücke -Rhein")) == ["Alte Brücke wird abgerissen"]
    assert {hit.title for hit in search(store, "Brück*")} == {
        "Neue Brücke über den Rhein eröffnet", "Sperrung der Hauptstraße", "Alte Brücke wird abgerissen"
    }


def test_snippets_mark_the_terms_and_carry_no_markup(store):
    (hit,) = search(store, "Bürgermeisterin")
    assert "**Bürgermeisterin**" in hit.snippet
    assert "<" not in hit.snippet and "href" not in hit.snippet
    assert "Brücke für Fußgänger" in hit.snippet  # the inline tag inside the word left it whole
    (phrase,) = search(store, '"neue brucke"')
    assert "**Neue Brücke**" in phrase.snippet
    assert "[1m" in render_text([hit], emphasis=lambda text: f"\x1b[1m{text}\x1b[0m")


def test_markup_is_not_indexed(store):
    for query in ("href", "noopener", "strong", "figure", "img", "jpg", "p"):
        assert search(store, query) == [], query


def test_feed_since_and_limit_filter_the_hits(store):
    assert titles(search(store, "Brücke", feed=B)) == ["Alte Brücke wird abgerissen"]
    assert titles(search(store, "Brücke", feed="Stadtanzeiger")) == ["Neue Brücke über den Rhein eröffnet"]
    with pytest.raises(SearchError, match="no such feed"):
        search(store, "Brücke", feed="http://nowhere.test/")
    assert "Alte Brücke wird abgerissen" not in titles(search(store, "Brück*", since="2026-11-01"))
    recent = search(store, "Brück*", since="7d", now=datetime(2026, 11, 20, tzinfo=UTC))
    assert titles(recent) == ["Neue Brücke über den Rhein eröffnet"]
    assert len(search(store, "Brück*", limit=1)) == 1
    with pytest.raises(SearchError, match="since"):
        search(store, "Brücke", since="last week")


def test_one_hit_per_story(store):
    original, copy = entry_id(store, "a1"), entry_id(store, "c1")
    assert store.scalar("SELECT duplicate_of FROM entries WHERE id = ?", [copy]) == original
    both = search(store, "Rhein Fußgänger")  # both members of the story match
    assert [(hit.story_id, hit.id in {original, copy}) for hit in both] == [(original, True)]
    (only_copy,) = search(store, "Agenturmeldung")
    assert (only_copy.id, only_copy.story_id, only_copy.feed_title) == (copy, original, "Agentur C")


def test_updated_entries_are_reindexed_and_deleted_ones_vanish(store):
    renamed = keyed(ParsedEntry(**{**vars(OLD_BRIDGE), "title": "Holzsteg gesperrt", "url": None, "content_hash": ""}))
    store.store_feed(B, parsed(renamed, title="Blatt B"), ok(B), now=LATER, next_poll_at=LATER)
    assert titles(search(store, "Holzsteg")) == ["Holzsteg gesperrt"]
    assert search(store, "abgerissen") == []
    store.db.execute("DELETE FROM entries WHERE guid = 'b1'")
    assert search(store, "Holzsteg") == []
    assert store.scalar("SELECT count(*) FROM entries_fts") == store.scalar("SELECT count(*) FROM entries")


def test_article_text_is_searchable(store):
    street = entry_id(store, "a2")
    store.articles.record([ArticleOutcome(street, "done", text="Die Stadtwerke erneuern die Wasserleitung.")], LATER)
    (hit,) = search(store, "Wasserleitung")
    assert hit.id == street and "**Wasserleitung**" in hit.snippet


def test_malformed_queries_raise_a_clear_error(store):
    for query in ('"neue Brücke', "-", "", "  ", "-Brücke", '""', "*"):
        with pytest.raises(SearchError):
            search(store, query)
    for query in ("AND", "OR", "NOT Brücke", "NEAR(a b)", "title:Brücke", "^Brücke", "a+b", "(Brücke"):
        search(store, query)  # taken literally, never an FTS5 syntax error
    assert fts_query('Brücke -alt "neue Brücke" brü*') == '("Brücke" AND "neue Brücke" AND "brü"*) NOT "alt"'


def test_index_is_kept_by_triggers_for_any_connection(store):
    """A plain sqlite3 connection (no functions registered) writes entries; the index follows."""
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute(
            """INSERT INTO entries (feed_url, guid, title, summary, first_seen, content_hash)
            VALUES (?, 'raw', 'Handarbeit', '<p>Eingefügt &amp; gefunden: <em>Fähre</em></p>', ?, 'x')""",
            [B, NOW],
        )
    conn.close()
    (hit,) = search(store, "fahre gefunden")
    assert hit.snippet == "Eingefügt & **gefunden**: **Fähre**"


def test_the_index_takes_the_words_aggregator_wrote(store):
    """Entries carry the words of their HTML (computed while parsing); the triggers index those."""
    row = store.db.execute("SELECT id, summary_text FROM entries WHERE guid = 'a1'").fetchone()
    assert row[1] == "Die Bürgermeisterin gab die Brücke für Fußgänger frei."
    assert store.scalar("SELECT summary FROM entries_fts WHERE rowid = ?", [row[0]]) == row[1]
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute(
            """INSERT INTO entries (feed_url, guid, title, summary, summary_text, first_seen, content_hash)
            VALUES (?, 'words', 'Eigene Wörter', '<p>Markup</p>', 'Seilbahn über den Rhein', ?, 'y')""",
            [B, NOW],
        )
    conn.close()
    assert titles(search(store, "Seilbahn")) == ["Eigene Wörter"]


def test_html_changed_without_its_words_is_stripped_again(store):
    """Someone edits the HTML but not its words: the index follows the HTML, not the stale words."""
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute("UPDATE entries SET summary = '<p>Neu: <b>Seil</b>bahn statt Brücke</p>' WHERE guid = 'a1'")
    conn.close()
    assert titles(search(store, "Seilbahn")) == ["Neue Brücke über den Rhein eröffnet"]
    assert search(store, "Bürgermeisterin") == []


def index_rows(store: Store) -> list[tuple]:
    return store.db.execute("SELECT rowid, title, summary FROM entries_fts ORDER BY rowid").fetchall()


def test_a_write_transaction_indexes_its_entries_together(store):
    """store_feeds indexes new and changed entries in one statement: the rows are the triggers' rows,
    a feed rolled back alone leaves nothing behind, and the marker is gone when the batch commits."""
    renamed = keyed(ParsedEntry(**{**vars(OLD_BRIDGE), "title": "Holzsteg gesperrt", "url": None, "content_hash": ""}))
    ferry = keyed(ParsedEntry(**{**vars(STREET), "guid": "a3", "title": "Fähre fährt wieder", "link": "http://news.test/f"}))
    outcomes = store.store_feeds([
        FeedWrite(B, parsed(renamed, title="Blatt B"), ok(B), LATER, LATER),
        FeedWrite("http://unknown.test/feed", parsed(keyed(ParsedEntry(**{**vars(STREET), "guid": "x"})), title="?"),
                  ok("http://unknown.test/feed"), LATER, LATER),
        FeedWrite(A, parsed(ferry, BRIDGE, STREET, title="Anzeiger"), ok(A), LATER, LATER),
    ])
    assert [type(o).__name__ for o in outcomes] == ["StoreCounts", "StorageError", "StoreCounts"]
    assert store.scalar("SELECT count(*) FROM entries_fts_deferred") == 0
    assert titles(search(store, "Holzsteg")) == ["Holzsteg gesperrt"] and search(store, "abgerissen") == []
    assert titles(search(store, "Fähre")) == ["Fähre fährt wieder"]
    indexed = index_rows(store)
    assert [row[0] for row in indexed] == [row[0] for row in store.db.execute("SELECT id FROM entries ORDER BY id")]
    store.db.execute("INSERT INTO entries_fts (entries_fts) VALUES ('rebuild')")  # what the triggers would have written
    assert index_rows(store) == indexed
    store.db.execute("INSERT INTO entries_fts (entries_fts, rank) VALUES ('integrity-check', 1)")


def test_a_feed_stored_in_one_transaction_becomes_one_index_segment(tmp_path):
    """Indexed row by row, the 60 entries made a segment each (17 index pages after merging); together, one."""
    entries = tuple(
        keyed(ParsedEntry(guid=str(i), link=f"http://a.test/{i}", title=f"Brücke {i}", author=None, published=None,
                          updated=None, summary=f"<p>Wort{i} und Text {i * 7}</p>", content=None))
        for i in range(60)
    )
    with Store.open(tmp_path / "agg.db") as store:
        store.sync_feeds([FeedConfig(A)], NOW)
        store.store_feed(A, parsed(*entries, title="Anzeiger"), ok(A), now=NOW, next_poll_at=LATER)
        assert store.scalar("SELECT count(*) FROM entries_fts") == 60
        assert store.scalar("SELECT count(*) FROM entries_fts_data") <= 4  # averages, structure, one leaf page
        assert len(search(store, "Brücke", limit=100)) == 60


def test_a_failed_write_leaves_the_triggers_on(store, monkeypatch):
    """The marker that sets the triggers aside is rolled back with the transaction that failed."""
    def boom(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_record_success", boom)
    with pytest.raises(StorageError, match="disk I/O error"):
        store.store_feed(A, parsed(keyed(ParsedEntry(**{**vars(STREET), "guid": "z"})), title="A"), ok(A), now=LATER, next_poll_at=LATER)
    assert store.scalar("SELECT count(*) FROM entries_fts_deferred") == 0
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute("INSERT INTO entries (feed_url, guid, title, first_seen, content_hash) VALUES (?, 'raw', 'Seilbahn', ?, 'x')", [B, NOW])
    conn.close()
    assert titles(search(store, "Seilbahn")) == ["Seilbahn"]


def test_sqlite_utils_finds_the_index(store):
    rows = list(store.db["entries_fts"].search("brücke", columns=["title"]))
    assert {row["title"] for row in rows} >= {"Alte Brücke wird abgerissen"}


def test_migration_backfills_an_existing_database(tmp_path):
    """A store from before m005 (written as that version did, with plain SQL) gets its entries indexed."""
    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(path))
    migrations.apply(db, stop_before="m005_full_text_search")
    assert "entries_fts" not in db.table_names()
    db["feeds"].insert({"url": A, "name": "Stadtanzeiger", "added_at": NOW})
    for number, entry in enumerate((BRIDGE, STREET, OLD_BRIDGE), 1):
        db["entries"].insert({
            "id": number, "feed_url": A, "guid": entry.guid, "url": entry.url, "link": entry.link, "title": entry.title,
            "summary": entry.summary, "published": entry.published, "first_seen": NOW, "content_hash": entry.content_hash,
            "duplicate_of": 1 if number == 3 else None,
        })
    db.close()
    with Store.open(path) as store:
        assert titles(search(store, "Bürgermeisterin")) == ["Neue Brücke über den Rhein eröffnet"]
        assert search(store, "href") == []
        assert store.scalar("SELECT count(*) FROM entries_fts") == 3
        assert store.db.execute("SELECT id, member_count FROM stories ORDER BY id").fetchall() == [(1, 2), (2, 1)]


def test_stories_view_counts_members_and_sources(store):
    rows = store.db.execute("SELECT id, title, member_count, sources, feed_urls FROM stories ORDER BY id").fetchall()
    story = {row[1]: row for row in rows}
    bridge = story["Neue Brücke über den Rhein eröffnet"]
    assert bridge[0] == entry_id(store, "a1")
    assert bridge[2] == 2
    assert json.loads(bridge[3]) == ["Stadtanzeiger", "Agentur C"]
    assert json.loads(bridge[4]) == [A, C]
    assert story["Alte Brücke wird abgerissen"][2:4] == (1, '["Blatt B"]')
    assert "Rhein: Fußgänger feiern die Brücke" not in story


def test_feed_health_view_says_how_each_feed_is(tmp_path):
    with Store.open(tmp_path / "agg.db") as store:
        d, e = "http://d.test/feed", "http://e.test/feed"
        store.sync_feeds([FeedConfig(A), FeedConfig(B), FeedConfig(C), FeedConfig(d), FeedConfig(e)], NOW)
        store.store_feed(A, parsed(STREET, title="Anzeiger"), ok(A), now=NOW, next_poll_at=LATER)
        store.store_feeds([FeedFailed(B, "HTTP 404 Not Found", 404, NOW, LATER)])
        store.store_feed(C, parsed(title="C"), ok(C, moved_to="http://c.test/new"), now=NOW, next_poll_at=LATER)
        store.store_feed(d, parsed(title="D"), ok(d, moved_to="http://d.test/new"), now=NOW, next_poll_at=LATER)
        store.store_feeds([FeedFailed(d, "timed out", None, LATER, LATER)])
        rows = store.db.execute("SELECT url, status, last_error, error_count, entry_count, moved_to FROM feed_health").fetchall()
    health = {row[0]: row[1:] for row in rows}
    assert health[A] == ("ok", None, 0, 1, None)
    assert health[B] == ("failing", "HTTP 404 Not Found", 1, 0, None)
    assert health[C] == ("moved", None, 0, 0, "http://c.test/new")
    assert health[d][:2] == ("failing", "timed out")
    assert health[e] == ("never polled", None, 0, 0, None)


# --- the command, as a subprocess -------------------------------------------------------------


def test_search_command_end_to_end(tmp_path, write_config, run_cli):
    config = write_config([A, B, C])
    with Store.open(tmp_path / "agg.db") as store:
        fill(store)

    text = run_cli("search", "Brücke", "Rhein", config=config)
    assert text.returncode == 0, text.stderr
    assert "Neue Brücke über den Rhein eröffnet\nhttp://news.test/bruecke\n" in text.stdout
    assert "**Brücke**" in text.stdout and "2026-11-19  Stadtanzeiger" in text.stdout

    as_json = run_cli("search", "brück*", "--json", "--limit", "2", "--since", "2026-10-15", config=config)
    assert as_json.returncode == 0, as_json.stderr
    hits = json.loads(as_json.stdout)
    assert len(hits) == 2 and {"id", "story_id", "feed_url", "feed_title", "snippet", "rank"} <= hits[0].keys()
    assert all(hit["published"] >= "2026-10-15" for hit in hits)

    bad = run_cli("search", '"neue Brücke', config=config)
    assert bad.returncode == 1
    assert "unbalanced double quote" in bad.stderr and "Traceback" not in bad.stderr

    nothing = run_cli("search", "Zeppelin", "--json", config=config)
    assert (nothing.returncode, json.loads(nothing.stdout)) == (0, [])


def test_search_command_exits_2_on_a_bad_config(tmp_path, run_cli):
    broken = tmp_path / "feeds.toml"
    broken.write_text("[aggregator]\ninterval = \n", encoding="utf-8")
    done = run_cli("search", "Brücke", config=broken)
    assert done.returncode == 2 and "feeds.toml" in done.stderr and "Traceback" not in done.stderr


def test_since_a_duration_longer_than_the_calendar_means_everything() -> None:
    now = datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert since_moment("1000000d", now) == "0001-01-01T00:00:00Z"
    assert since_moment("7d", now) == "2026-11-13T10:00:00Z"
