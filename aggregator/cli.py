"""The ``aggregator`` command line: thin commands over the library."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import __version__
from .config import load_config, resolve_config_path
from .exceptions import AggregatorError, ConfigError, StorageError
from .generate import write_outputs
from .pipeline import PassSummary, poll_feeds, select_feeds
from .progress import terminal_progress
from .stats import collect, render_text
from .storage import Store
from .types import Config


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
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.version_option(__version__, prog_name="aggregator")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """Poll RSS/Atom feeds, store them in SQLite and publish merged feeds."""
    ctx.obj = {"config_path": config_path}
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command()
@config_option
@click.option("--feed", "feed_urls", multiple=True, metavar="URL", help="Poll only this feed (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass's result as JSON.")
def poll(config_path: str | None, feed_urls: tuple[str, ...], as_json: bool) -> None:
    """Fetch every (or each named) feed now, store new entries, rewrite the outputs.

    Exits 0 when the pass ran, even if some feeds failed (they are reported).
    """
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
def generate(config_path: str | None) -> None:
    """Rewrite every merged feed from the database."""
    with failures():
        config = open_config(config_path)
        with Store.open(config.database) as store:
            paths = write_outputs(config, store)
    click.echo(f"wrote {len(paths)} files to {config.output_dir}")


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
