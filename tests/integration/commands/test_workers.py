"""`serve --workers N` as real processes: N workers behind one port, restarted when they
die, drained on SIGTERM; and the supervisor on its own, sharing one inherited socket (the
path taken where SO_REUSEPORT does not balance)."""

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

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern
from twilio_dg_proxy.workers import Supervisor, WorkerSpec, hold_port

from ...redis_server import RedisServer
from ...timing import S
from ..helpers import ServerProcess
from .test_serve import run

# New connections made to find every worker: the kernel spreads connections over the
# workers by a hash of their addresses, so two workers each answer one in two on average.
ATTEMPTS = 200
NO_DEEPGRAM = "ws://127.0.0.1:9/v1/listen"  # never reached: these tests make no call


def health(port: int) -> dict[str, object]:
    """/healthz, over a new connection."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5 * S) as response:
        body: dict[str, object] = json.loads(response.read())
    return body


async def pids_answering(
    port: int, count: int, *, besides: frozenset[int] | set[int] = frozenset()
) -> set[int]:
    """The pids of the processes answering /healthz on `port`, once `count` distinct ones
    not in `besides` have answered (within ATTEMPTS connections)."""
    seen: set[int] = set()
    for _ in range(ATTEMPTS):
        pid = (await asyncio.to_thread(health, port))["pid"]
        assert isinstance(pid, int)
        seen.add(pid)
        if len(seen - besides) >= count:
            return seen - besides
    raise AssertionError(f"{ATTEMPTS} connections reached only {seen} ({besides} excluded)")


def gone(pid: int) -> bool:
    """True once `pid` has exited and been reaped by its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def redis_env(redis_server: RedisServer) -> dict[str, str]:
    return {"REDIS_URL": redis_server.url, "DEEPGRAM_URL": NO_DEEPGRAM, "LOG_LEVEL": "INFO"}


async def test_two_workers_answer_on_one_port_and_sigterm_stops_them_with_status_0(
    redis_env: dict[str, str],
) -> None:
    async with ServerProcess.started("--port", "0", "--workers", "2", **redis_env) as server:
        pids = await pids_answering(server.port, 2)
        assert server.process.pid not in pids  # the supervisor serves nothing itself
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0
        log = server.startup + await server.stderr()
    assert all(gone(pid) for pid in pids)
    assert log.count("listening on") == 1  # said once, by the supervisor
    for index in (1, 2):
        assert f"worker {index} started (pid " in log
        assert f"worker {index} twilio_dg_proxy.server: shutting down" in log  # its lines say so


async def test_a_killed_worker_is_logged_and_restarted_under_a_new_pid(
    redis_env: dict[str, str],
) -> None:
    async with ServerProcess.started("--port", "0", **redis_env, WORKERS="2") as server:
        pids = await pids_answering(server.port, 2)
        killed = min(pids)
        os.kill(killed, signal.SIGKILL)
        log = await server.log_until("restarting it in")
        assert f"(pid {killed}) was killed by SIGKILL; restarting it in 0.5 s" in log
        assert log.splitlines()[-1].split()[2] == "WARNING"
        await server.log_until("serves again")
        new = await pids_answering(server.port, 1, besides=pids)
        assert killed not in new
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0


async def test_sigterm_lets_a_call_on_a_worker_end_normally(redis_env: dict[str, str]) -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        env = redis_env | {"DEEPGRAM_URL": deepgram.url, "DRAIN_TIMEOUT": "60"}
        async with ServerProcess.started("--port", "0", "--workers", "2", **env) as server:
            pids = await pids_answering(server.port, 2)
            call = SimulatedCall()
            audio = {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
            frames = [message for _, message in call.frames(audio)]  # type: ignore[arg-type]
            half = len(frames) // 2
            async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                stream = await deepgram.next_stream(timeout=5 * S)
                for message in frames[:half]:
                    await twilio.send(message)
                server.process.send_signal(signal.SIGTERM)
                await server.log_until("draining: 1 call(s)")  # the call's worker drains it
                for message in frames[half:]:  # the call goes on to its natural end
                    await twilio.send(message)
                await twilio.send(call.stop())
            async with asyncio.timeout(10 * S):
                await stream.closed.wait()
                assert await server.process.wait() == 0
            log = await server.stderr()
    assert stream.controls[-1] == "CloseStream" and stream.close_code == 1000
    assert stream.audio_bytes == 2 * 8000  # all of it, both tracks
    assert "call ended after" in log and "ending 1 call(s)" not in log
    assert all(gone(pid) for pid in pids)


async def test_a_second_signal_makes_workers_and_supervisor_exit_at_once_with_130(
    redis_env: dict[str, str],
) -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        env = redis_env | {"DEEPGRAM_URL": deepgram.url, "DRAIN_TIMEOUT": "60"}
        async with ServerProcess.started("--port", "0", "--workers", "2", **env) as server:
            pids = await pids_answering(server.port, 2)
            call = SimulatedCall()
            async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                await deepgram.next_stream(timeout=5 * S)
                server.process.send_signal(signal.SIGTERM)
                await server.log_until("draining: 1 call(s)")
                assert server.process.returncode is None  # draining: the call goes on
                server.process.send_signal(signal.SIGINT)
                async with asyncio.timeout(10 * S):
                    assert await server.process.wait() == 130
                log = await server.stderr()
    assert "second signal: exiting now" in log  # said by the worker that was draining
    assert all(gone(pid) for pid in pids)


@pytest.mark.parametrize("how", [("--workers", "2"), ()], ids=["option", "setting"])
async def test_workers_without_redis_url_refuse_to_start_naming_it_with_status_2(
    how: tuple[str, ...],
) -> None:
    code, _, err = await run(*how, env={"WORKERS": "2", "REDIS_URL": ""})
    assert code == 2
    assert "bad setting WORKERS" in err and "REDIS_URL" in err


async def test_help_shows_workers_but_not_the_internal_option() -> None:
    code, out, _ = await run("--help")
    assert code == 0 and "--workers" in out and "--worker " not in out


async def test_a_supervisor_without_so_reuseport_shares_one_listening_socket(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env_file = tmp_path / "worker.env"
    env_file.write_text(f"REDIS_URL={redis_server.url}\nDEEPGRAM_URL={NO_DEEPGRAM}\n")
    with hold_port("127.0.0.1", 0, listen=True) as shared:
        port = shared.getsockname()[1]

        def command(spec: WorkerSpec) -> list[str]:
            return [
                *(sys.executable, "-m", "twilio_dg_proxy", "serve", "--env-file", str(env_file)),
                *("--host", "127.0.0.1", "--port", str(port), "--worker", spec.option()),
            ]

        supervisor = Supervisor(2, command, shared=shared)
        serving = asyncio.Event()
        running = asyncio.create_task(supervisor.run(serving.set))
        try:
            async with asyncio.timeout(20 * S):
                await serving.wait()
            # Whichever worker accepts first takes the connection: both do, given enough.
            assert await pids_answering(port, 2) == set(supervisor.pids.values())
        finally:
            supervisor.stop()
            async with asyncio.timeout(20 * S):
                assert await running == "stopped"


async def test_workers_drain_and_exit_when_their_supervisor_is_killed(
    redis_env: dict[str, str],
) -> None:
    async with ServerProcess.started("--port", "0", "--workers", "2", **redis_env) as server:
        await pids_answering(server.port, 2)
        server.process.kill()
        await server.process.wait()
        # stderr ends once every process writing to it, every worker included, has exited.
        async with asyncio.timeout(10 * S):
            log = await server.stderr()
    assert log.count("the supervisor has gone: stopping") == 2
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", server.port)).close()


async def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_status(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    env = redis_env | {"TLS_CERT": str(garbage), "TLS_KEY": str(garbage)}
    code, _, err = await run("--port", "0", "--workers", "2", env=env)
    assert code == 1
    assert "exited with status 1 before it was serving: stopping" in err
    assert "listening on" not in err


async def test_a_taken_port_is_reported_plainly_by_the_supervisor(
    redis_env: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = await run("--port", port, "--workers", "2", env=redis_env)
    assert code == 1
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err


async def test_watchers_on_both_workers_get_a_call_streamed_by_one_of_them(
    redis_server: RedisServer, deepgram: FakeDeepgram
) -> None:
    env = {"REDIS_URL": redis_server.url, "DEEPGRAM_URL": deepgram.url, "LOG_LEVEL": "INFO"}
    call = SimulatedCall()
    audio: dict[Track, bytes] = {
        "inbound": pattern("inbound", 8000),
        "outbound": pattern("outbound", 8000),
    }
    async with ServerProcess.started("--port", "0", "--workers", "2", **env) as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with connect(f"{url}/twilio", proxy=None) as twilio:
            await twilio.send(call.connected())
            await twilio.send(call.start())
            # Watchers until both workers have some: each connection lands on either.
            watchers = []
            for _ in range(ATTEMPTS):
                ws = await connect(f"{url}/client", proxy=None)
                watchers.append(ws)
                # Both workers list the call, whichever streams it.
                while json.loads(await ws.recv()) != [call.call_sid]:
                    await ws.close()
                    ws = watchers[-1] = await connect(f"{url}/client", proxy=None)
                await ws.send(call.call_sid)
                if len(watchers) >= 2 and await _subscribers_on_both(server.port):
                    break
            for _, text in call.frames(audio):
                await twilio.send(text)
            await twilio.send(call.stop())
            seen = [[m async for m in ws] for ws in watchers]
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0
    (stream,) = deepgram.streams
    assert stream.sent
    for messages in seen:
        assert messages == [*stream.sent, "close"]


async def _subscribers_on_both(port: int) -> bool:
    """Whether each of the two workers has a subscriber, asking /healthz until both answer."""
    counts: dict[int, int] = {}
    for _ in range(ATTEMPTS):
        body = await asyncio.to_thread(health, port)
        pid, subscribers = body["pid"], body["subscribers"]
        assert isinstance(pid, int) and isinstance(subscribers, int)
        counts[pid] = subscribers
        if len(counts) == 2:
            return all(counts.values())
    raise AssertionError(f"{ATTEMPTS} connections reached only {counts}")
