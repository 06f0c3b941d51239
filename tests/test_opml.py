"""``aggregator import-opml`` / ``export-opml``: real OPML files, a real feeds.toml, the CLI as a subprocess.

Every address is a ``feeds.test`` placeholder; nothing here is ever fetched.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.config import load_config
from aggregator.opml import OpmlError, import_opml, parse_opml, toml_string

OPML_DIR = Path(__file__).parent / "data" / "opml"
REAL_WORLD = OPML_DIR / "real_world.opml"
MALFORMED = OPML_DIR / "malformed.opml"

# A hand-written config: comments, odd spacing, an [[outputs]] table after the feeds, no final newline.
CONFIG_TEXT = """\
# Jana's feeds; keep this comment.
[aggregator]
database   = "agg.db"        # next to this file
output_dir = "public"
full_text  = false

[[feeds]]
url  = "https://feeds.test/spiegel/index.rss"   # the one already subscribed
name = "Der Spiegel"
tags = ["News", "de"]

[[outputs]]
name = "all"
title = "Alles"
# trailing comment, no newline after it"""

# What real_world.opml adds to CONFIG_TEXT, in document order: folders and category paths become
# lower-cased tags; the feed filed under Nachrichten/Welt and again under Technik gets both.
EXPECTED_ADDED = [
    {
        "url": "https://feeds.test/tagesschau/rss2/",
        "name": "»Tagesschau« – Nachrichten",
        "tags": ["nachrichten", "deutschland"],
    },
    {
        "url": "https://feeds.test/sz/politik.rss",
        "name": "Süddeutsche Zeitung: Politik",
        "tags": ["nachrichten", "deutschland", "politik"],
    },
    {
        "url": "https://feeds.test/heise/atom.xml?seite=1&format=atom",
        "name": "heise online",
        "tags": ["nachrichten", "welt", "technik"],
    },
    {
        "url": "https://feeds.test/golem/rss.php",
        "name": "Golem.de – IT-News für Profis 🖥",
        "tags": ["technik", "tech", "it-news", "nachrichten"],
    },
    {"url": "http://feeds.test/kurt/feed", "name": 'Kurt\'s "Notizen" aus C:\\Temp', "tags": []},
    {"url": "https://feeds.test/untitled.xml", "name": None, "tags": []},
]

EXPECTED_SKIPPED = {
    ("duplicate", "https://feeds.test/heise/atom.xml?seite=1&format=atom", "heise online (Technik)"),
    ("no_url", None, "Bastelblog"),
    ("bad_url", "javascript:alert(document.cookie)", "Böser Link"),
    ("exists", "https://FEEDS.test/spiegel/index.rss", "Der Spiegel – Schlagzeilen"),
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "feeds.toml"
    path.write_bytes(CONFIG_TEXT.encode("utf-8"))
    return path


def toml_feeds(path: Path) -> list[dict[str, object]]:
    """The [[feeds]] tables as written (not as load_config fills in defaults)."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    return [{"url": f["url"], "name": f.get("name"), "tags": f.get("tags", [])} for f in raw.get("feeds", [])]


def skipped_set(report: dict[str, object]) -> set[tuple[object, object, object]]:
    return {(s["code"], s["url"], s["name"]) for s in report["skipped"]}  # type: ignore[index,union-attr]


# ---------------------------------------------------------------------------
# import-opml
# ---------------------------------------------------------------------------


def test_import_appends_new_feeds_and_keeps_the_file(run_cli, config_file: Path) -> None:
    result = run_cli("import-opml", str(REAL_WORLD), config=config_file)
    assert result.returncode == 0, result.stderr

    new_text = config_file.read_bytes().decode("utf-8")
    assert new_text.startswith(CONFIG_TEXT), "the original text must be kept byte for byte"
    assert "# Imported from real_world.opml by `aggregator import-opml`" in new_text
    assert "»Tagesschau«" in new_text and "\\u" not in new_text, "unicode is written as UTF-8, not escaped"

    feeds = toml_feeds(config_file)
    assert feeds[0] == {"url": "https://feeds.test/spiegel/index.rss", "name": "Der Spiegel", "tags": ["News", "de"]}
    assert feeds[1:] == EXPECTED_ADDED
    config = load_config(config_file)
    assert [f.url for f in config.feeds] == ["https://feeds.test/spiegel/index.rss", *(f["url"] for f in EXPECTED_ADDED)]
    assert [o.title for o in config.outputs] == ["Alles"]

    lines = result.stdout.splitlines()
    assert "+ »Tagesschau« – Nachrichten <https://feeds.test/tagesschau/rss2/> [nachrichten, deutschland]" in lines
    assert "+ Kurt's \"Notizen\" aus C:\\Temp <http://feeds.test/kurt/feed>" in lines
    assert "+ <https://feeds.test/untitled.xml>" in lines
    assert sum(line.startswith("+ ") for line in lines) == len(EXPECTED_ADDED)
    skipped = [line for line in lines if line.startswith("  skipped ")]
    assert len(skipped) == 4
    assert any("Bastelblog" in line and "no xmlUrl" in line for line in skipped)
    assert any("javascript:" in line and "not an http(s) URL" in line for line in skipped)
    assert any("heise online (Technik)" in line and "duplicate in this file" in line for line in skipped)
    assert any("FEEDS.test/spiegel" in line and "already in the configuration" in line for line in skipped)
    assert lines[-1] == f"added 6 feeds to {config_file}, skipped 4"


def test_import_json_report_and_second_import_adds_nothing(run_cli, config_file: Path) -> None:
    first = run_cli("import-opml", str(REAL_WORLD), "--json", config=config_file)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["added"] == EXPECTED_ADDED
    assert skipped_set(report) == EXPECTED_SKIPPED
    assert report["summary"] == {"added": 6, "skipped": 4}
    assert report["dry_run"] is False

    after_first = config_file.read_bytes()
    second = run_cli("import-opml", str(REAL_WORLD), "--json", config=config_file)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["added"] == []
    assert {s["code"] for s in again["skipped"]} == {"exists", "duplicate", "no_url", "bad_url"}
    assert sum(s["code"] == "exists" for s in again["skipped"]) == 7
    assert config_file.read_bytes() == after_first, "nothing new: the file is not touched"


def test_dry_run_changes_nothing(run_cli, config_file: Path) -> None:
    before = config_file.stat()
    result = run_cli("import-opml", str(REAL_WORLD), "--dry-run", config=config_file)
    assert result.returncode == 0, result.stderr
    assert config_file.read_bytes() == CONFIG_TEXT.encode("utf-8")
    assert config_file.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["feeds.toml"]
    assert "+ heise online <https://feeds.test/heise/atom.xml?seite=1&format=atom> [nachrichten, welt, technik]" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("would add 6 feeds")
    assert "nothing written" in result.stdout

    as_json = json.loads(run_cli("import-opml", str(REAL_WORLD), "--dry-run", "--json", config=config_file).stdout)
    assert as_json["dry_run"] is True and as_json["added"] == EXPECTED_ADDED
    assert config_file.read_bytes() == CONFIG_TEXT.encode("utf-8")


def test_config_from_environment_and_relative_default(run_cli, config_file: Path, tmp_path: Path) -> None:
    result = run_cli("import-opml", str(REAL_WORLD), "--json", env={"AGGREGATOR_CONFIG": str(config_file)}, cwd=tmp_path / "..")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"] == str(config_file)
    assert len(toml_feeds(config_file)) == 7


def test_malformed_opml_exits_nonzero_and_leaves_config(run_cli, config_file: Path, tmp_path: Path, data_dir: Path) -> None:
    result = run_cli("import-opml", str(MALFORMED), config=config_file)
    assert result.returncode == 1
    assert str(MALFORMED) in result.stderr
    assert "malformed OPML" in result.stderr and "line 6" in result.stderr
    assert result.stdout == ""
    assert config_file.read_bytes() == CONFIG_TEXT.encode("utf-8")

    not_opml = run_cli("import-opml", str(data_dir / "rss2_basic.xml"), config=config_file)
    assert not_opml.returncode == 1
    assert "not an OPML file" in not_opml.stderr and "rss2_basic.xml" in not_opml.stderr

    missing = run_cli("import-opml", str(tmp_path / "nope.opml"), config=config_file)
    assert missing.returncode == 1
    assert "nope.opml" in missing.stderr and "cannot read" in missing.stderr
    assert config_file.read_bytes() == CONFIG_TEXT.encode("utf-8")


def test_bad_config_exits_2_and_is_not_touched(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "feeds.toml"
    bad.write_text('[aggregator]\ninterval = "often"\n', encoding="utf-8")
    result = run_cli("import-opml", str(REAL_WORLD), config=bad)
    assert result.returncode == 2
    assert "aggregator.interval" in result.stderr
    assert bad.read_text(encoding="utf-8") == '[aggregator]\ninterval = "often"\n'


def test_result_that_would_not_load_leaves_original(run_cli, tmp_path: Path) -> None:
    # Feeds as an inline array: appending [[feeds]] tables cannot extend it, so the new file would not
    # load; the original must stay as it was and no temporary file may be left behind.
    path = tmp_path / "feeds.toml"
    text = 'feeds = [{ url = "https://feeds.test/inline.rss" }]\n\n[aggregator]\ndatabase = "agg.db"\n'
    path.write_text(text, encoding="utf-8")
    assert load_config(path).feeds[0].url == "https://feeds.test/inline.rss"
    result = run_cli("import-opml", str(REAL_WORLD), config=path)
    assert result.returncode == 1
    assert "not changed" in result.stderr and str(path) in result.stderr
    assert path.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.toml"]


def test_crlf_config_gets_crlf_lines(tmp_path: Path) -> None:
    path = tmp_path / "feeds.toml"
    original = b'[aggregator]\r\ndatabase = "agg.db"\r\n'
    path.write_bytes(original)
    report = import_opml(REAL_WORLD, path)
    assert len(report.added) == 7
    data = path.read_bytes()
    assert data.startswith(original)
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert len(load_config(path).feeds) == 7


def test_symlinked_config_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real" / "feeds.toml"
    real.parent.mkdir()
    real.write_text('[aggregator]\ndatabase = "agg.db"\n', encoding="utf-8")
    link = tmp_path / "feeds.toml"
    link.symlink_to(real)
    import_opml(REAL_WORLD, link)
    assert link.is_symlink()
    assert len(load_config(real).feeds) == 7


# ---------------------------------------------------------------------------
# export-opml and the round trip
# ---------------------------------------------------------------------------

ROUND_TRIP_FEEDS = [
    {"url": "https://feeds.test/a.rss?x=1&y=2", "name": 'Tom & Jerry <"live">', "tags": ["news", "de", "Politik"]},
    {"url": "https://feeds.test/b.atom", "name": "»Tagesschau« – Übersicht", "tags": ["news"]},
    {"url": "https://feeds.test/c.xml", "name": "Kurt's C:\\Temp", "tags": []},
    {"url": "https://feeds.test/d.xml", "tags": ["blogs", "tech"]},
    {"url": "http://feeds.test/e.xml", "name": "Ärzte ohne Grenzen", "tags": ["spenden"]},
]


def test_export_round_trips_through_import(run_cli, write_config, tmp_path: Path) -> None:
    source = write_config(ROUND_TRIP_FEEDS, directory=tmp_path / "source")
    exported = run_cli("export-opml", config=source)
    assert exported.returncode == 0, exported.stderr
    xml_text = exported.stdout

    # Escaping: & < > and quotes inside attributes; unicode written as UTF-8.
    assert 'xmlUrl="https://feeds.test/a.rss?x=1&amp;y=2"' in xml_text
    assert 'text="Tom &amp; Jerry &lt;&quot;live&quot;&gt;"' in xml_text
    assert "»Tagesschau« – Übersicht" in xml_text
    root = ET.fromstring(xml_text.encode("utf-8"))
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title") and root.findtext("head/dateCreated")
    folders = [o for o in root.find("body") if o.get("xmlUrl") is None]
    assert [f.get("text") for f in folders] == ["news", "blogs", "spenden"]
    first = root.find("body/outline/outline")
    assert first is not None
    assert first.get("type") == "rss" and first.get("title") == 'Tom & Jerry <"live">'
    assert first.get("category") == "/de,/Politik"
    assert first.get("htmlUrl") is None, "no database, so no htmlUrl"

    opml_file = tmp_path / "export.opml"
    opml_file.write_text(xml_text, encoding="utf-8")
    target = write_config([], directory=tmp_path / "target")
    imported = run_cli("import-opml", str(opml_file), "--json", config=target)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["skipped"] == []

    expected = [
        {"url": f["url"], "name": f.get("name"), "tags": [t.lower() for t in f["tags"]]} for f in ROUND_TRIP_FEEDS
    ]
    assert toml_feeds(target) == expected
    assert [f.url for f in load_config(target).feeds] == [f["url"] for f in ROUND_TRIP_FEEDS]


def test_export_to_file_does_not_create_the_database(run_cli, write_config, tmp_path: Path) -> None:
    config = write_config(ROUND_TRIP_FEEDS)
    out = tmp_path / "subs.opml"
    result = run_cli("export-opml", "--output", str(out), config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote 5 feeds to {out}"
    assert not (tmp_path / "agg.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.toml", "subs.opml"]
    parsed = parse_opml(out.read_bytes())
    assert [f.url for f in parsed.feeds] == [f["url"] for f in ROUND_TRIP_FEEDS]


def test_export_takes_site_urls_and_titles_from_the_store(run_cli, write_config, tmp_path: Path) -> None:
    from aggregator.storage import Store

    config_path = write_config(ROUND_TRIP_FEEDS)
    config = load_config(config_path)
    with Store.open(config.database) as store:
        store.sync_feeds(config.feeds, "2024-05-04T09:00:00Z")
    with sqlite3.connect(config.database) as conn:
        conn.execute("UPDATE feeds SET site_url = ?, title = ? WHERE url = ?",
                     ("https://feeds.test/a/?p=1&q=<2>", "A's own title", "https://feeds.test/a.rss?x=1&y=2"))
        conn.execute("UPDATE feeds SET title = ? WHERE url = ?", ("D & Friends", "https://feeds.test/d.xml"))
    conn.close()

    result = run_cli("export-opml", config=config_path)
    assert result.returncode == 0, result.stderr
    assert 'htmlUrl="https://feeds.test/a/?p=1&amp;q=&lt;2&gt;"' in result.stdout
    outlines = {o.get("xmlUrl"): o for o in ET.fromstring(result.stdout.encode()).iter("outline")}
    assert outlines["https://feeds.test/a.rss?x=1&y=2"].get("text") == 'Tom & Jerry <"live">', "the configured name wins"
    assert outlines["https://feeds.test/d.xml"].get("text") == "D & Friends", "unnamed: the feed's own title"
    assert outlines["https://feeds.test/c.xml"].get("htmlUrl") is None


def test_export_of_empty_config(run_cli, write_config) -> None:
    result = run_cli("export-opml", config=write_config([]))
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout.encode())
    assert root.find("body") is not None and len(root.find("body")) == 0


# ---------------------------------------------------------------------------
# The parser and the TOML writer on their own
# ---------------------------------------------------------------------------


def test_parser_refuses_entity_declarations() -> None:
    bomb = b"""<?xml version="1.0"?>
<!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<opml version="2.0"><body><outline text="&b;" xmlUrl="https://feeds.test/x"/></body></opml>"""
    with pytest.raises(OpmlError, match="entity"):
        parse_opml(bomb, "bomb.opml")
    external = b"""<?xml version="1.0"?>
<!DOCTYPE opml [<!ENTITY ext SYSTEM "file:///etc/passwd">]>
<opml version="2.0"><body><outline text="&ext;" xmlUrl="https://feeds.test/x"/></body></opml>"""
    with pytest.raises(OpmlError):
        parse_opml(external, "external.opml")


def test_parser_details() -> None:
    data = """<?xml version="1.0" encoding="ISO-8859-1"?>
<opml version="2.0"><head><title>Latin-1</title></head><body>
  <outline title="Große  Welt">
    <outline text="" title="Nur Titel" xmlurl=" https://feeds.test/t " category="/A/B, /a ,"/>
    <outline text="Leerzeichen" xmlUrl="https://feeds.test/a b"/>
    <outline text="FTP" xmlUrl="ftp://feeds.test/x"/>
  </outline>
</body></opml>""".encode("iso-8859-1")
    parsed = parse_opml(data)
    assert parsed.title == "Latin-1"
    assert [(f.url, f.name, f.tags) for f in parsed.feeds] == [("https://feeds.test/t", "Nur Titel", ("große welt", "a", "b"))]
    assert [s.code for s in parsed.skipped] == ["bad_url", "bad_url"]


@given(st.text())
def test_toml_string_round_trips(value: str) -> None:
    assert tomllib.loads(f"key = {toml_string(value)}")["key"] == value


def test_toml_string_keeps_unicode_and_escapes_the_rest() -> None:
    assert toml_string('»Tagesschau« "Ä" \\ \t\x7f') == '"»Tagesschau« \\"Ä\\" \\\\ \\t\\u007F"'
