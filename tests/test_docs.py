from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from aggregator.cli import main
from aggregator.storage import Store

ROOT = Path(__file__).parent.parent


def documented_columns(table: str) -> set[str]:
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    section = text.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


def test_every_column_is_documented(tmp_path):
    with Store.open(tmp_path / "agg.db") as store:
        shadow = {f"entries_fts_{part}" for part in ("data", "idx", "content", "docsize", "config")}
        tables = [t for t in store.db.table_names() if t not in shadow and t != "_sqlite_migrations"]
        assert {"feeds", "entries", "entries_fts", "pruned_entries"} <= set(tables) and "entry_bands" not in tables
        for table in (*tables, *store.db.view_names()):
            columns = {column.name for column in store.db[table].columns}
            assert columns == documented_columns(table), table


def test_every_command_has_help_and_a_readme_line():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    runner = CliRunner()
    for name, command in main.commands.items():
        assert command.help, name
        assert f"`aggregator {name}" in readme, name
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "--config" in result.output, name


def test_readme_quick_start_matches_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && python -m pytest" in readme
    assert "pip install" in ci and "-e '.[test]'" in ci and "-m pytest" in ci
