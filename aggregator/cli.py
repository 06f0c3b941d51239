"""The ``aggregator`` command line: thin commands over the library."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import __version__
from .config import load_config, resolve_config_path
from .exceptions import AggregatorError, ConfigError, StorageError
from .fetch import preload_tls
from .logs import FORMATS, setup_logging
from .generate import write_outputs
from .pipeline import PassSummary, poll_feeds, select_feeds
from .progress import terminal_progress
from .stats import collect, render_text
from .storage import Store
from .types import Config


LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


class UsageFailure(click.ClickException):
    """A bad configuration or an unusable database: exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"aggregator: error: {self.format_message()}", err=True)


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` accepted before or after the command; the later one wins."""

    @click.option("--config", "config_path", metavar="PATH", help="feeds.toml to use.")
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str | None = None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        chosen = config_path or (ctx.obj or {}).get("config_path")
        return func(*args, config_path=chosen, **kwargs)

    return wrapper


@contextmanager
def failures() -> Iterator[None]:
    try:
        yield
    except (ConfigError, StorageError) as e:
        raise UsageFailure(str(e)) from e
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e


def open_config(config_path: str | None) -> Config:
    return load_config(resolve_config_path(config_path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", help="feeds.toml to use (else $AGGREGATOR_CONFIG, else ./feeds.toml).")
@click.option("--log-level", type=LEVELS, help="Logging threshold (default: warning; info for run).")
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True, help="Log lines as text or JSON.")
@click.version_option(__version__, prog_name="aggregator")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str | None, log_format: str) -> None:
    """Poll RSS/Atom feeds, store them in SQLite and publish merged feeds."""
    ctx.obj = {"config_path": config_path, "log_level": log_level, "log_format": log_format}
    setup_logging(log_level or "warning", log_format)


@main.command()
@config_option
@click.option("--feed", "feed_urls", multiple=True, metavar="URL", help="Poll only this feed (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass's result as JSON.")
def poll(config_path: str | None, feed_urls: tuple[str, ...], as_json: bool) -> None:
    """Fetch every (or each named) feed now, store new entries, rewrite the outputs.

    Exits 0 when the pass ran, even if some feeds failed (they are reported).
    """
    preload_tls()
    with failures():
        config = open_config(config_path)
        feeds = select_feeds(config, feed_urls)
        with Store.open(config.database) as store, terminal_progress(len(feeds), enabled=not as_json) as progress:
            summary = asyncio.run(poll_feeds(config, store, feeds, progress))
    _report(summary, as_json)


def _report(summary: PassSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(summary.line())
    for result in summary.failed:
        click.echo(f"  failed: {result.url}: {result.error}", err=True)
    for result in summary.results:
        if result.moved_to:
            click.echo(f"  moved: {result.url} now lives at {result.moved_to}; update feeds.toml", err=True)
        if result.warning:
            click.echo(f"  warning: {result.url}: {result.warning}", err=True)


@main.command()
@config_option
@click.option("--log-level", "run_log_level", type=LEVELS, help="Logging threshold (default: info).")
@click.option("--log-format", "run_log_format", type=click.Choice(FORMATS), help="Log lines as text or JSON.")
def run(config_path: str | None, run_log_level: str | None, run_log_format: str | None) -> None:
    """Run the daemon: poll each feed on its schedule and serve the merged feeds over HTTP.

    Reloads feeds.toml on SIGHUP and when the file changes; stops cleanly on SIGTERM or SIGINT.
    """
    from .daemon import Daemon

    preload_tls()
    settings = click.get_current_context().obj or {}
    setup_logging(run_log_level or settings.get("log_level") or "info", run_log_format or settings.get("log_format", "text"))
    with failures():
        daemon = Daemon(resolve_config_path(config_path))
        asyncio.run(daemon.run())


@main.command()
@config_option
def generate(config_path: str | None) -> None:
    """Rewrite every merged feed from the database."""
    with failures():
        config = open_config(config_path)
        with Store.open(config.database) as store:
            paths = write_outputs(config, store)
    click.echo(f"wrote {len(paths)} files to {config.output_dir}")


@main.command("import-opml")
@config_option
@click.argument("opml_file", metavar="FILE")
@click.option("--dry-run", is_flag=True, help="Show what would be added; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def import_opml_command(config_path: str | None, opml_file: str, dry_run: bool, as_json: bool) -> None:
    """Append the feeds of an OPML FILE to feeds.toml as [[feeds]] tables.

    Folders and categories become tags; feeds already configured are left as they are.
    The file is only replaced once the result loads; exits 1 on a malformed OPML file.
    """
    from .opml import dumps_report, import_opml

    with failures():
        report = import_opml(opml_file, resolve_config_path(config_path), dry_run=dry_run)
    click.echo(dumps_report(report) if as_json else "\n".join(report.lines()))


@main.command("export-opml")
@config_option
@click.option("--output", "-o", metavar="FILE", help="Write the OPML to FILE instead of standard output.")
def export_opml_command(config_path: str | None, output: str | None) -> None:
    """Write the configured feeds as OPML 2.0, one folder per feed's first tag."""
    from pathlib import Path

    from .opml import export_opml

    with failures():
        config = open_config(config_path)
        data, count = export_opml(config, warn=lambda message: click.echo(f"aggregator: warning: {message}", err=True))
    if not output or output == "-":
        click.get_binary_stream("stdout").write(data)
        return
    try:
        Path(output).write_bytes(data)
    except OSError as e:
        raise click.ClickException(f"{output}: cannot write: {e.strerror or e}") from e
    click.echo(f"wrote {count} feed{'' if count == 1 else 's'} to {output}")


@main.command()
@config_option
@click.argument("entry_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the story as JSON.")
def explain(config_path: str | None, entry_id: int, as_json: bool) -> None:
    """Show the story ENTRY_ID belongs to: its original, every member and why each one joined."""
    from . import explain as story

    with failures():
        config = open_config(config_path)
        with Store.open(config.database) as store:
            members = store.story(entry_id)
    if not members:
        raise click.ClickException(f"no entry {entry_id} in {config.database}")
    click.echo(json.dumps(story.as_dict(entry_id, members), ensure_ascii=False, indent=2) if as_json
               else story.render_text(entry_id, members))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(config_path: str | None, as_json: bool) -> None:
    """Feeds, entries, errors and last polls."""
    with failures():
        config = open_config(config_path)
        with Store.open(config.database) as store:
            result = collect(store)
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(render_text(result))


@main.command()
@config_option
@click.argument("query", nargs=-1, required=True)
@click.option("--feed", metavar="URL", help="Only entries of this feed (its URL or name).")
@click.option("--since", metavar="WHEN", help="Only entries published since a date (2026-11-01) or within a duration (7d).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many stories.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search(config_path: str | None, query: tuple[str, ...], feed: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Full-text search over the stored entries, one hit per story, best first.

    QUERY is words and "quoted phrases", all of which must occur; -word excludes a word,
    word* matches its prefix. Case and diacritics are ignored (brucke finds Brücke).
    """
    from . import search as searching

    with failures():
        config = open_config(config_path)
        with Store.open(config.database) as store:
            hits = searching.search(store, " ".join(query), feed=feed, since=since, limit=limit)
    if as_json:
        click.echo(json.dumps([hit.as_dict() for hit in hits], ensure_ascii=False, indent=2))
    elif hits:
        bold = (lambda text: click.style(text, bold=True)) if click.get_text_stream("stdout").isatty() else None
        click.echo(searching.render_text(hits, emphasis=bold))
    else:
        click.echo("no entries match", err=True)
