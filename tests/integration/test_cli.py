"""The command line, run as a real subprocess: help, bad settings, start-up and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from twilio_dg_proxy.config import settings_table


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twilio_dg_proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=(os.environ | (env or {})),
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_help_documents_every_option_and_setting() -> None:
    code, out, _ = await run("--help")
    assert code == 0
    for option in ("--host", "--port", "--env-file"):
        assert option in out
    for name, _, _ in settings_table():
        assert name in out


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"CHUNK_MS": "0"}, "CHUNK_MS"),
        ({"DEEPGRAM_URL": "x"}, "DEEPGRAM_URL"),
    ],
)
async def test_a_bad_setting_stops_start_up_naming_it_with_status_2(
    env: dict[str, str], variable: str
) -> None:
    code, _, err = await run(env=env)
    assert code == 2
    assert f"bad setting {variable}" in err


async def test_a_missing_env_file_is_a_bad_setting(tmp_path: Path) -> None:
    code, _, err = await run("--env-file", str(tmp_path / "missing.env"))
    assert code == 2 and "missing.env" in err


async def test_a_taken_port_is_reported_plainly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = await run("--port", str(taken.getsockname()[1]))
    assert code == 1
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err


async def test_server_starts_from_an_env_file_answers_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("PORT=0\nDEEPGRAM_URL=ws://127.0.0.1:9/v1/listen\nLOG_LEVEL=INFO\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twilio_dg_proxy",
        "--env-file",
        str(env_file),
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("PORT", "DEEPGRAM_URL")},
    )
    assert process.stderr is not None
    async with asyncio.timeout(20):
        line = ""
        while "listening on" not in line:  # other loggers (asyncio debug) may come first
            line = (await process.stderr.readline()).decode()
            assert line, "the server exited before listening"
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:  # noqa: ASYNC210
            assert json.load(response)["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        rest = (await process.stderr.read()).decode()
        assert await process.wait() == 0
    assert "shutting down" in rest
    assert "DEEPGRAM_API_KEY is not set" not in line + rest  # not needed for a local URL
