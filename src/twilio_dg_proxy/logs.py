"""Logging set-up and the adapter that puts a call's callSid on every line about it.

Level policy: ERROR a bug or a failed call; WARNING a dropped subscriber, malformed input,
audio or transcription lost; INFO one line per call start and end, clients joining and
leaving; DEBUG per-message detail (never on the hot path unless guarded).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

LOGGER_NAME = "twilio_dg_proxy"


def setup_logging(level: str, *, worker: int | None = None) -> None:
    """Send the project's logs to stderr with timestamps, at `level`; each line of worker
    `worker` (`WORKERS`) says `worker N`, as its lines mix with the others' on stderr."""
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
    """Prefixes every message with `[<callSid>]`."""

    def __init__(self, logger: logging.Logger, call_sid: str) -> None:
        super().__init__(logger, {"call_sid": call_sid})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['call_sid'] if self.extra else '?'}] {msg}", kwargs
