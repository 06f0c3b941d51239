"""The ``aggregator`` command's entry point.

A pass over many feeds parses them in worker processes, each of which first has to load the parsing
stack (feedparser, nh3, numpy): about a quarter of a second of CPU. For ``poll`` over a feed list
long enough to use them, and for ``run``, they are started here, before the command line and the rest
of the package are loaded: they load on the other cores meanwhile, and the pass begins with them ready.
Deciding costs a scan of the arguments and of the config file's text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence

from .config import resolve_config_path
from .workerproc import INLINE_PARSE_BELOW, default_workers

_VALUED = {"--config", "--log-level", "--log-format", "--feed"}  # options that take a value
_FEED_TABLE = re.compile(rb"^[ \t]*\[\[[ \t]*feeds[ \t]*\]\]", re.MULTILINE)

_prestarted: list[subprocess.Popen[bytes]] = []


def main() -> None:
    if default_workers() > 1 and parses_in_workers(sys.argv[1:]):
        prestart()
    from .cli import main as cli

    cli()


def parses_in_workers(args: Sequence[str]) -> bool:
    """Whether the command line is a daemon, or a pass over enough feeds to parse them in workers.

    Errs towards no: a pass started without its workers starts them itself.
    """
    command, config, named_feeds = None, None, False
    pending = None
    for arg in args:
        if pending:
            config = arg if pending == "--config" else config
            pending = None
            continue
        name, has_value, value = arg.partition("=")
        if name in _VALUED:
            named_feeds = named_feeds or name == "--feed"
            if has_value:
                config = value if name == "--config" else config
            else:
                pending = name
        elif name in ("-h", "--help", "--version"):
            return False
        elif command is None and not arg.startswith("-"):
            command = arg
    if command == "run":
        return True
    return command == "poll" and not named_feeds and _feed_count(config) >= INLINE_PARSE_BELOW


def _feed_count(config: str | None) -> int:
    """The ``[[feeds]]`` tables in the config file the command will read; 0 when it is unreadable."""
    try:
        return len(_FEED_TABLE.findall(resolve_config_path(config).read_bytes()))
    except OSError:
        return 0


def prestart(count: int | None = None) -> None:
    """Start ``count`` workers (one per core) now, for the pool to take when it starts its own.

    Each loads the parsing stack (``--preload``) on a core of its own while this process goes on
    loading. Workers nobody takes end with this process: their input closes.
    """
    for _ in range(count or default_workers()):
        _prestarted.append(subprocess.Popen(
            [sys.executable, "-m", "aggregator.workerproc", "--preload"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        ))


def take_prestarted() -> subprocess.Popen[bytes] | None:
    """A worker :func:`prestart` started that is still running, or None."""
    while _prestarted:
        worker = _prestarted.pop(0)
        if worker.poll() is None:
            return worker
    return None
