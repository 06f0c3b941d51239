"""Read and validate ``feeds.toml`` into a frozen :class:`Config`.

Every problem is collected and reported at once; each names the file, the key
and, for feeds and outputs, the entry's index and URL or name.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .exceptions import ConfigError
from .dedup import DedupSettings
from .types import Config, FeedConfig, OutputConfig, ServerConfig

DEFAULT_USER_AGENT = f"aggregator/{__version__} (self-hosted feed aggregator)"
ENV_VAR = "AGGREGATOR_CONFIG"
AUTO = "auto"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_TOP_KEYS = {"aggregator", "server", "outputs", "feeds", "dedup"}
_DEDUP_KEYS = {"enabled", "window", "similarity", "short_similarity", "min_words"}
_AGGREGATOR_KEYS = {
    "database", "output_dir", "interval", "concurrency", "timeout", "full_text",
    "allow_private_addresses", "user_agent", "host_concurrency", "extract_timeout", "min_interval", "max_interval",
    "retention",
}
_SERVER_KEYS = {"host", "port", "base_url"}
_OUTPUT_KEYS = {"name", "title", "max_entries", "tags", "include", "exclude"}
_FEED_KEYS = {"url", "name", "interval", "full_text", "tags", "dedup", "retention"}
KEEP_FOREVER = ("0", 0)
MIN_RETENTION = 86400.0
MAX_RETENTION = 36500 * 86400.0
MAX_INTERVAL = 3650 * 86400.0  # poll intervals and the dedup window: ten years
MAX_TIMEOUT = 86400.0  # one request or one article extraction: a day
_LONGEST = timedelta.max.days * 86400.0


def parse_duration(value: object, most: float = _LONGEST) -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"7d"`` or a bare number of seconds.

    Positive, finite and at most ``most`` (by default, what a :class:`~datetime.timedelta` holds).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(min(value, most + 1))  # an int too large for a float is out of range too
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"invalid duration {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    if not seconds <= most:  # also true for NaN
        raise ValueError(f"duration must be at most {_in_days(most)}, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or _DURATION.sub("", compact).strip():
        raise ValueError(f'invalid duration {text!r} (use e.g. "90s", "15m", "2h", or "auto" for an interval)')
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config``, else ``$AGGREGATOR_CONFIG``, else ``./feeds.toml``."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path("feeds.toml")


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return build_config(raw, path)


def build_config(raw: dict[str, Any], path: Path) -> Config:
    checker = _Checker(path)
    config = checker.config(raw)
    if checker.errors:
        raise ConfigError("\n".join(f"{path}: {error}" for error in checker.errors))
    return config


@dataclass
class _Checker:
    path: Path
    errors: list[str] = field(default_factory=list)

    def config(self, raw: dict[str, Any]) -> Config:
        self._unknown(raw, _TOP_KEYS, "")
        section = self._table(raw, "aggregator")
        base = self.path.parent
        auto = section.get("interval") == AUTO
        interval = 1800.0 if auto else self._duration(section, "interval", "aggregator.interval", 1800.0)
        full_text = self._bool(section, "full_text", "aggregator.full_text", True)
        minimum = self._duration(section, "min_interval", "aggregator.min_interval", 300.0)
        maximum = self._duration(section, "max_interval", "aggregator.max_interval", 86400.0)
        if minimum > maximum:
            self.errors.append("key 'aggregator.min_interval': must not be longer than aggregator.max_interval")
        retention = self._retention(section, "aggregator.retention", None)
        return Config(
            path=self.path,
            database=base / self._str(section, "database", "aggregator.database", "data/aggregator.db"),
            output_dir=base / self._str(section, "output_dir", "aggregator.output_dir", "data/public"),
            interval=interval,
            auto_interval=auto,
            min_interval=minimum,
            max_interval=maximum,
            concurrency=self._int(section, "concurrency", "aggregator.concurrency", 32, 1, 1000),
            timeout=self._duration(section, "timeout", "aggregator.timeout", 20.0, MAX_TIMEOUT),
            full_text=full_text,
            allow_private_addresses=self._bool(
                section, "allow_private_addresses", "aggregator.allow_private_addresses", False
            ),
            user_agent=self._user_agent(section),
            host_concurrency=self._int(section, "host_concurrency", "aggregator.host_concurrency", 2, 1, 64),
            extract_timeout=self._duration(
                section, "extract_timeout", "aggregator.extract_timeout", 30.0, MAX_TIMEOUT
            ),
            server=self._server(self._table(raw, "server")),
            dedup=self._dedup(self._table(raw, "dedup")),
            outputs=self._outputs(raw.get("outputs")),
            feeds=self._feeds(raw.get("feeds"), interval, auto, full_text, retention),
            retention=retention,
        )

    def _table(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.errors.append(f"key '{key}': must be a table ([{key}])")
            return {}
        allowed = {"aggregator": _AGGREGATOR_KEYS, "server": _SERVER_KEYS, "dedup": _DEDUP_KEYS}[key]
        self._unknown(value, allowed, f"{key}.")
        return value

    def _unknown(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.errors.append(f"key '{where}{key}': unknown key (known keys: {known})")

    def _user_agent(self, section: dict[str, Any]) -> str:
        agent = self._str(section, "user_agent", "aggregator.user_agent", DEFAULT_USER_AGENT)
        return agent.replace("<version>", __version__)

    def _server(self, section: dict[str, Any]) -> ServerConfig:
        return ServerConfig(
            host=self._str(section, "host", "server.host", "127.0.0.1"),
            port=self._int(section, "port", "server.port", 8080, 1, 65535),
            base_url=self._url(section["base_url"], "server.base_url") or None if "base_url" in section else None,
        )

    def _dedup(self, section: dict[str, Any]) -> DedupSettings:
        return DedupSettings(
            enabled=self._bool(section, "enabled", "dedup.enabled", True),
            window=self._duration(section, "window", "dedup.window", 3 * 86400.0),
            similarity=self._share(section, "similarity", 0.5),
            short_similarity=self._share(section, "short_similarity", 0.9),
            min_words=self._int(section, "min_words", "dedup.min_words", 80, 1, 10_000),
        )

    def _share(self, section: dict[str, Any], key: str, default: float) -> float:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            self.errors.append(f"key 'dedup.{key}': must be a number above 0 and at most 1, got {value!r}")
            return default
        return float(value)

    def _outputs(self, raw: object) -> tuple[OutputConfig, ...]:
        if raw is None:
            return (OutputConfig(),)
        if not isinstance(raw, list) or not raw:
            self.errors.append("key 'outputs': must be one or more [[outputs]] tables")
            return (OutputConfig(),)
        outputs = [self._output(index, item) for index, item in enumerate(raw)]
        self._duplicates([o.name for o in outputs], "outputs", "name")
        return tuple(outputs)

    def _output(self, index: int, item: object) -> OutputConfig:
        where = f"outputs[{index}]"
        if not isinstance(item, dict):
            self.errors.append(f"key '{where}': must be a table")
            return OutputConfig()
        self._unknown(item, _OUTPUT_KEYS, f"{where}.")
        name = self._str(item, "name", f"{where}.name", "all" if index == 0 else "")
        where = f"{where} ({name})" if name else where
        if not _OUTPUT_NAME.match(name):
            self.errors.append(f"key '{where}.name': must be a file name of letters, digits, '-', '_' or '.', got {name!r}")
        return OutputConfig(
            name=name,
            title=self._str(item, "title", f"{where}.title", "Merged feed" if name == "all" else name),
            max_entries=self._int(item, "max_entries", f"{where}.max_entries", 100, 1, 100_000),
            tags=self._tags(item, f"{where}.tags"),
            include=self._words(item, "include", f"{where}.include"),
            exclude=self._words(item, "exclude", f"{where}.exclude"),
        )

    def _words(self, table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
            self.errors.append(f"key '{where}': must be a list of non-empty strings (words or phrases)")
            return ()
        return tuple(dict.fromkeys(w.strip() for w in value))

    def _feeds(
        self, raw: object, interval: float, auto: bool, full_text: bool, retention: float | None
    ) -> tuple[FeedConfig, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.errors.append("key 'feeds': must be a list of [[feeds]] tables")
            return ()
        feeds = [self._feed(index, item, interval, auto, full_text, retention) for index, item in enumerate(raw)]
        self._duplicates([_url_identity(f.url) for f in feeds if f.url], "feeds", "url")
        return tuple(f for f in feeds if f.url)

    def _feed(
        self, index: int, item: object, interval: float, auto: bool, full_text: bool, retention: float | None
    ) -> FeedConfig:
        where = f"feeds[{index}]"
        if not isinstance(item, dict):
            self.errors.append(f"key '{where}': must be a table")
            return FeedConfig(url="")
        url = item.get("url")
        if isinstance(url, str) and url.strip():
            where = f"{where} ({url.strip()})"
        self._unknown(item, _FEED_KEYS, f"{where}.")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            self.errors.append(f"key '{where}.name': must be a string")
            name = None
        return FeedConfig(
            url=self._url(url, f"{where}.url"),
            name=name or None,
            interval=interval if item.get("interval") == AUTO else self._duration(item, "interval", f"{where}.interval", interval),
            auto_interval=item.get("interval") == AUTO or (auto and "interval" not in item),
            full_text=self._bool(item, "full_text", f"{where}.full_text", full_text),
            tags=self._tags(item, f"{where}.tags"),
            dedup=self._bool(item, "dedup", f"{where}.dedup", True),
            retention=self._retention(item, f"{where}.retention", retention),
        )

    def _url(self, url: object, where: str) -> str:
        if not isinstance(url, str) or not url.strip():
            self.errors.append(f"key '{where}': required, must be an http(s) URL")
            return ""
        url = url.strip()
        try:
            parts = urlsplit(url)
        except ValueError as e:
            self.errors.append(f"key '{where}': not a valid URL: {url!r} ({e})")
            return ""
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            self.errors.append(f"key '{where}': not an http(s) URL: {url!r}")
            return ""
        return url

    def _duplicates(self, values: list[str], key: str, field_name: str) -> None:
        seen: dict[str, int] = {}
        for index, value in enumerate(values):
            if value in seen:
                self.errors.append(
                    f"key '{key}[{index}].{field_name}': duplicate of {key}[{seen[value]}] ({value})"
                )
            else:
                seen[value] = index

    def _str(self, table: dict[str, Any], key: str, where: str, default: str) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or (key in table and not value.strip()):
            self.errors.append(f"key '{where}': must be a non-empty string, got {value!r}")
            return default
        return value

    def _bool(self, table: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.errors.append(f"key '{where}': must be true or false, got {value!r}")
            return default
        return value

    def _int(self, table: dict[str, Any], key: str, where: str, default: int, low: int, high: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.errors.append(f"key '{where}': must be a whole number from {low} to {high}, got {value!r}")
            return default
        return value

    def _duration(
        self, table: dict[str, Any], key: str, where: str, default: float, most: float = MAX_INTERVAL
    ) -> float:
        if key not in table:
            return default
        try:
            return parse_duration(table[key], most)
        except ValueError as e:
            self.errors.append(f"key '{where}': {e}")
            return default

    def _retention(self, table: dict[str, Any], where: str, default: float | None) -> float | None:
        """Seconds entries are kept, at least a day; ``"0"`` (or ``0``) keeps them forever (None)."""
        if "retention" not in table:
            return default
        value = table["retention"]
        if value in KEEP_FOREVER and not isinstance(value, bool):
            return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if not MIN_RETENTION <= seconds <= MAX_RETENTION:  # also false for NaN
            self.errors.append(
                f"key '{where}': must be at least a day and at most 100 years (\"180d\", \"26w\"; \"m\" is "
                f"minutes), or \"0\" to keep entries forever; got {value!r}"
            )
            return default
        return seconds

    def _tags(self, table: dict[str, Any], where: str) -> tuple[str, ...]:
        value = table.get("tags", [])
        if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
            self.errors.append(f"key '{where}': must be a list of non-empty strings")
            return ()
        return tuple(dict.fromkeys(t.strip() for t in value))


def _in_days(seconds: float) -> str:
    days = int(seconds // 86400)
    return "1 day" if days == 1 else f"{days} days"


def _url_identity(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()).geturl()
