"""Start-up choices of the `serve` command: the event loop, the garbage collector, and the
options that override settings."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from twilio_dg_proxy.__main__ import build_parser
from twilio_dg_proxy.commands.serve import GC_YOUNG_THRESHOLD, load_settings, tune_gc
from twilio_dg_proxy.event_loop import event_loop_factory
from twilio_dg_proxy.workers import WorkerSpec


def test_the_proxy_runs_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory, name = event_loop_factory()
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert name.startswith("uvloop ")


def test_without_uvloop_the_proxy_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    factory, name = event_loop_factory()
    assert factory is asyncio.new_event_loop
    assert name == "asyncio (uvloop is not installed)"


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """tune_gc changes the whole process: undo it for the tests that follow."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_start_up_made_and_collects_young_objects_less_often() -> None:
    made_at_start_up: list[object] = []  # a container: the collector tracks it
    assert any(obj is made_at_start_up for obj in gc.get_objects())
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert not any(obj is made_at_start_up for obj in gc.get_objects())  # not traversed again
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


def test_workers_option_overrides_the_workers_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    parser, _ = build_parser("serve")
    env_file = str(tmp_path / "empty.env")
    (tmp_path / "empty.env").write_text("")
    args = parser.parse_args(["--env-file", env_file])
    assert load_settings(args, workers=args.workers).workers == 4
    args = parser.parse_args(["--env-file", env_file, "--workers", "3"])
    assert load_settings(args, workers=args.workers).workers == 3


def test_the_demos_workers_option_is_not_the_workers_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKERS", raising=False)
    parser, _ = build_parser("demo")  # its --workers are the offline engine's processes
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    args = parser.parse_args(["--env-file", str(env_file), "--workers", "3"])
    assert load_settings(args).workers == 1


def test_the_internal_worker_option_parses_into_a_spec() -> None:
    parser, _ = build_parser("serve")
    assert parser.parse_args([]).worker is None
    assert parser.parse_args(["--worker", "2,7"]).worker == WorkerSpec(2, 7)
    assert "--worker " not in parser.format_help()
