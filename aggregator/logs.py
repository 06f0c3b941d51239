"""Logging set-up: plain text for people, one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .types import PollResult

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def setup_logging(level: str = "warning", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "uvicorn.access", "uvicorn.error", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_poll(logger: logging.Logger, result: PollResult) -> None:
    """One line per poll: feed, status, new entries, duration."""
    fields = {
        "event": "poll", "feed": result.url, "status": result.status, "http_status": result.http_status,
        "new": result.new, "updated": result.updated, "duplicates": result.duplicates, "duration": result.seconds,
    }
    if result.error:
        fields["error"] = result.error
    text = f"poll {result.url} {result.status} new={result.new} updated={result.updated} {result.seconds:.3f}s"
    if result.error:
        text += f": {result.error}"
    logger.log(logging.WARNING if result.error else logging.INFO, text, extra={"fields": fields})
