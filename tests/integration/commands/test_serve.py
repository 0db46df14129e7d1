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
from websockets.asyncio.client import connect

from twilio_dg_proxy.config import settings_table
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ...timing import S
from ..helpers import ServerProcess


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
    async with asyncio.timeout(20 * S):
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
    assert "pick another with --port N or PORT=N in .env" in err


async def test_server_starts_from_an_env_file_answers_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("PORT=0\nDEEPGRAM_URL=ws://127.0.0.1:9/v1/listen\nLOG_LEVEL=INFO\n")
    async with ServerProcess.started("--env-file", str(env_file)) as server:
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/healthz")
        assert json.loads(status)["status"] == "ok"
        server.process.send_signal(signal.SIGTERM)
        log = server.startup + await server.stderr()
        assert await server.process.wait() == 0
    assert "shutting down" in log
    assert "DEEPGRAM_API_KEY is not set" not in log  # not needed for a local URL


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url) as response:
        return response.read().decode(), response.headers["Content-Type"]


async def test_sigterm_lets_a_call_finish_and_its_watcher_gets_every_result_then_close() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        # The call never ends on its own: the drain timeout only bounds how long the test waits.
        drain_timeout = str(0.3 * S)
        async with ServerProcess.started(
            DEEPGRAM_URL=deepgram.url, DRAIN_TIMEOUT=drain_timeout
        ) as server:
            call = SimulatedCall()
            url = f"ws://127.0.0.1:{server.port}"
            async with connect(f"{url}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                async with connect(f"{url}/client", proxy=None) as watcher:
                    while call.call_sid not in json.loads(await watcher.recv()):
                        await watcher.close()  # the call is not listed yet: ask again
                        watcher = await connect(f"{url}/client", proxy=None)
                    await watcher.send(call.call_sid)
                    audio = {
                        "inbound": pattern("inbound", 8000),
                        "outbound": pattern("outbound", 8000),
                    }
                    for _, message in call.frames(audio):  # type: ignore[arg-type]
                        await twilio.send(message)
                    # Some results have flowed before the signal: the watcher has one.
                    async with asyncio.timeout(5 * S):
                        first = await watcher.recv()
                    server.process.send_signal(signal.SIGTERM)
                    received = [first, *[m async for m in watcher]]
                    await twilio.wait_closed()
            log = await server.stderr()
            assert await server.process.wait() == 0
        assert received[-1] == "close" and watcher.close_code == 1000
        assert received[:-1] == deepgram.streams[0].sent  # nothing lost, Metadata included
        assert twilio.close_code == 1001
        assert "ending 1 call(s) still running after the drain timeout" in log


async def test_a_second_signal_exits_at_once() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with ServerProcess.started(
            DEEPGRAM_URL=deepgram.url, DRAIN_TIMEOUT="60", LOG_LEVEL="INFO"
        ) as server:
            call = SimulatedCall()
            async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                await deepgram.next_stream(timeout=5 * S)
                server.process.send_signal(signal.SIGTERM)
                assert server.process.stderr is not None
                line = ""
                async with asyncio.timeout(5 * S):
                    while "draining: 1 call(s)" not in line:  # it has taken the first signal
                        line = (await server.process.stderr.readline()).decode()
                        assert line, "the server exited instead of draining"
                assert server.process.returncode is None  # draining: the call goes on
                server.process.send_signal(signal.SIGINT)
                async with asyncio.timeout(5 * S):
                    assert await server.process.wait() == 130


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TRANSCRIPTS_FILE": "/nonexistent-dir/t.sqlite3"}, "SQLite: unable to open"),
        ({"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"}, "PostgreSQL cannot be reached"),
    ],
    ids=["sqlite", "postgresql"],
)
async def test_a_store_that_cannot_be_opened_stops_start_up_with_status_1(
    env: dict[str, str], says: str
) -> None:
    code, _, err = await run(env={"DEEPGRAM_URL": "ws://127.0.0.1:9/v1/listen"} | env)
    assert code == 1
    assert "the transcript store cannot be opened" in err and says in err
    assert "Traceback" not in err and "hunter2" not in err
