"""Logging set-up and the adapter that puts a call's callSid on every line about it.

Level policy: ERROR a bug or a failed call; WARNING a dropped subscriber, malformed input,
audio or transcription lost; INFO one line per call start and end, clients joining and
leaving; DEBUG per-message detail (never on the hot path unless guarded).

LOG_FORMAT=json writes each record as one JSON object per line (`JsonFormatter`): the same
messages, never a secret more, with the callSid and any figures passed as `extra` as fields.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "twilio_dg_proxy"

# The attributes every LogRecord has: anything else on a record was passed as `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, worker (if
    any), callSid (for a call's lines), the record's `extra` fields, and the traceback."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        call_sid = getattr(record, "call_sid", None)
        if call_sid is not None:
            entry["callSid"] = call_sid
            message = message.removeprefix(f"[{call_sid}] ")  # the text format's prefix
        entry["message"] = message
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key != "call_sid":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, *, worker: int | None = None, log_format: str = "text") -> None:
    """Send the project's logs to stderr at `level`: as text with timestamps (each line of
    worker `worker` (`WORKERS`) says `worker N`, as its lines mix with the others' on
    stderr), or with `log_format` "json" as one JSON object per line."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(worker))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        who = "" if worker is None else f"worker {worker} "
        logging.basicConfig(
            level=level,
            format=f"%(asctime)s %(levelname)-7s {who}%(name)s: %(message)s",
        )
    logging.getLogger(LOGGER_NAME).setLevel(level)
    # websockets logs failed handshakes at INFO with tracebacks, and at DEBUG every request
    # header (Authorization, ?token=): never below WARNING.
    logging.getLogger("websockets").setLevel(max(logging.getLevelName(level), logging.WARNING))


def get_logger(part: str) -> logging.Logger:
    """The named logger of one part of the project (`twilio_dg_proxy.<part>`)."""
    return logging.getLogger(f"{LOGGER_NAME}.{part}")


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with `[<callSid>]`, and puts `call_sid` on every record (with
    the line's own `extra`, if any: the JSON format shows both as fields)."""

    def __init__(self, logger: logging.Logger, call_sid: str) -> None:
        super().__init__(logger, {"call_sid": call_sid})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = extra | dict(kwargs.get("extra") or {})
        return f"[{extra.get('call_sid', '?')}] {msg}", kwargs
