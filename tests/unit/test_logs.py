"""LOG_FORMAT=json: one JSON object per record, the callSid and a line's figures as fields."""

from __future__ import annotations

import json
import logging

from twilio_dg_proxy.logs import CallLog, JsonFormatter


def record_of(
    log: logging.LoggerAdapter[logging.Logger] | logging.Logger, *args: object, **kwargs: object
) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = log.logger if isinstance(log, logging.LoggerAdapter) else log
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log.info(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    (record,) = records
    return record


def test_a_call_line_has_its_callsid_and_figures_as_fields() -> None:
    log = CallLog(logging.getLogger("twilio_dg_proxy.test"), "CA123")
    figures = {"packets": 100, "duration_s": 2.0}
    record = record_of(log, "call ended after %(duration_s).1f s", figures, extra=figures)
    entry = json.loads(JsonFormatter(worker=2).format(record))
    assert entry["callSid"] == "CA123" and entry["worker"] == 2
    assert entry["message"] == "call ended after 2.0 s"  # the text format's prefix removed
    assert (entry["packets"], entry["duration_s"]) == (100, 2.0)
    assert (entry["level"], entry["logger"]) == ("INFO", "twilio_dg_proxy.test")
    assert entry["time"].endswith("+00:00")
    assert "call_sid" not in entry


def test_text_lines_keep_their_callsid_prefix() -> None:
    log = CallLog(logging.getLogger("twilio_dg_proxy.test"), "CA123")
    record = record_of(log, "call started")
    assert record.getMessage() == "[CA123] call started"


def test_a_line_not_about_a_call_has_no_callsid_and_a_traceback_is_kept() -> None:
    logger = logging.getLogger("twilio_dg_proxy.test2")
    try:
        raise ValueError("boom")
    except ValueError:
        record = record_of(logger, "failed", exc_info=True)
    entry = json.loads(JsonFormatter().format(record))
    assert "callSid" not in entry and "worker" not in entry
    assert "ValueError: boom" in entry["exception"]
