"""Structured logs: one JSON object per line, carrying the request id and tenant of the request."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.core.context import request_id_var, tenant_var

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "event_fields"}
# A record with these attributes and nothing else carries no `extra=` keys: the access log's
# line (one per request) skips looking for them. One encoder, built once: json.dumps builds
# one per call when given `default`.
_PLAIN_RECORD = len(vars(logging.makeLogRecord({}))) + 1  # its attributes and event_fields
_ENCODER = json.JSONEncoder(default=str)


def _add_context(fields: dict[str, Any]) -> None:
    """The request id and tenant of the request being served, when there is one."""
    request_id = request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    tenant = tenant_var.get()
    if tenant:
        fields["tenant"] = tenant


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        _add_context(entry)
        fields = getattr(record, "event_fields", None)
        if fields:
            entry.update(fields)
        if len(record.__dict__) > _PLAIN_RECORD or not fields:
            for key in record.__dict__.keys() - _RESERVED:  # `extra=` keys, usually none
                if not key.startswith("_"):
                    entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "event_fields", None) or {})
        _add_context(fields)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str, fmt: str) -> None:
    # What no line of ours shows (the source file and line, thread, process names) is not
    # gathered for every record either: the logging HOWTO's "Optimization" settings. The
    # access log writes a line per request, so this is on the request path.
    logging._srcfile = None  # noqa: SLF001
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_tessera", False):
            root.removeHandler(existing)
    handler._tessera = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
