"""Structured logs: one JSON object per line, as the operator's kopf logs are."""

from __future__ import annotations

import json
import logging


class JsonFormatter(logging.Formatter):
    def __init__(self, **static: str) -> None:
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        entry = {"timestamp": self.formatTime(record), "severity": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage(), **self.static}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_json_logging(**static: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(**static))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
