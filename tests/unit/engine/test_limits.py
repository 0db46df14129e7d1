"""The engine's stream limit as each entry point declares it: one default for the `engine`
command, the in-process engine's setting and `OfflineEngine`; invalid bounds refused."""

from __future__ import annotations

import pytest

from twilio_dg_proxy.__main__ import build_parser
from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.engine import DEFAULT_MAX_STREAMS
from twilio_dg_proxy.engine.server import OfflineEngine
from twilio_dg_proxy.engine.workers import WorkerPool


def test_the_setting_the_command_and_the_engine_share_one_default() -> None:
    parser, _ = build_parser("engine")
    assert parser.parse_args([]).max_streams == DEFAULT_MAX_STREAMS
    assert Settings().offline_max_streams == DEFAULT_MAX_STREAMS
    assert OfflineEngine().max_streams == DEFAULT_MAX_STREAMS


def test_the_engine_command_takes_max_streams() -> None:
    parser, _ = build_parser("engine")
    assert parser.parse_args(["--max-streams", "7"]).max_streams == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-streams", "0"])


def test_the_setting_reads_offline_max_streams() -> None:
    assert Settings.from_env({"OFFLINE_MAX_STREAMS": "9"}).offline_max_streams == 9


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [({"max_streams": 0}, "max_streams"), ({"decode_timeout_s": 0.0}, "decode_timeout_s")],
)
def test_the_engine_refuses_bounds_that_serve_nothing(
    arguments: dict[str, float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        OfflineEngine(**arguments)  # type: ignore[arg-type]


def test_the_pool_refuses_bounds_that_serve_nothing() -> None:
    with pytest.raises(ValueError, match="size"):
        WorkerPool(0, "model", 1)
    with pytest.raises(ValueError, match="decode_timeout_s"):
        WorkerPool(1, "model", 1, decode_timeout_s=0)
