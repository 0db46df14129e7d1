"""The benchmark's lean fake Deepgram answers as the synthetic engine does: the same messages
(but for the request id, the time and the benchmark's stamp), the same closes, the same
refusals, over real loopback sockets with websockets' own client."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from twilio_dg_proxy.commands.bench.fake_server import LeanDeepgram
from twilio_dg_proxy.commands.bench.measure import fake_stamp
from twilio_dg_proxy.deepgram_server_protocol import DATA_REASON, EMPTY_FRAME_REASON
from twilio_dg_proxy.engine.synthetic import SyntheticEngine

from ...timing import S

STEREO = "?encoding=mulaw&sample_rate=8000&channels=2&multichannel=true"
MONO = "?encoding=mulaw&sample_rate=8000&channels=1"
# Speech on both channels, 1.5 windows of 250 ms: one final per channel, then the rest.
AUDIO = bytes((i * 7) % 0x7F for i in range(6000))

Script = list[bytes | str]


@asynccontextmanager
async def lean() -> AsyncIterator[str]:
    async with LeanDeepgram.serving(result_ms=250) as fake:
        yield fake.url


@asynccontextmanager
async def engine() -> AsyncIterator[str]:
    async with SyntheticEngine(result_ms=250) as fake:
        yield fake.url


Server = Callable[[], AbstractAsyncContextManager[str]]


async def run(server: Server, script: Script, query: str = STEREO) -> tuple[list[Any], int, str]:
    """Send `script` (100 ms chunks of audio and text), then read until the server closes:
    every message (without what differs between runs), the close code and reason."""
    async with server() as url, connect(url + query) as ws:
        for message in script:
            await ws.send(message)
        received: list[Any] = []
        async with asyncio.timeout(5 * S):
            try:
                while True:
                    received.append(await ws.recv())
            except ConnectionClosed:
                pass
        assert ws.close_code is not None
        return [_comparable(m) for m in received], ws.close_code, ws.close_reason or ""


def _comparable(text: Any) -> Any:
    assert isinstance(text, str)
    message = json.loads(text)
    if message["type"] == "Results":
        assert fake_stamp(text.encode()) is not None  # the benchmark can read its stamp
        del message["fake"]
    message["metadata"] = message.get("metadata", {}) | {"request_id": "-"}
    message.pop("request_id", None)
    message.pop("created", None)
    return message


def chunked(audio: bytes, size: int = 1600) -> Script:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


SCRIPTS: dict[str, Script] = {
    "audio then CloseStream": [
        *chunked(AUDIO),
        '{"type": "KeepAlive"}',
        '{"type": "Finalize"}',
        *chunked(AUDIO[:1000]),
        '{"type": "CloseStream"}',
    ],
    "a text that is no control": [*chunked(AUDIO[:4800]), "hello"],
    "an empty binary frame": [*chunked(AUDIO[:4800]), b""],
}


@pytest.mark.parametrize("query", [STEREO, STEREO + "&interim_results=true", MONO])
@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_the_lean_fake_answers_as_the_engine_does(name: str, query: str) -> None:
    script = SCRIPTS[name]
    expected = await run(engine, script, query)
    assert await run(lean, script, query) == expected
    assert expected[0]  # it answered something


async def test_the_metadata_hashes_every_byte_received() -> None:
    messages, code, _ = await run(lean, [*chunked(AUDIO), '{"type": "CloseStream"}'])
    assert code == 1000
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["sha256"] == hashlib.sha256(AUDIO).hexdigest()


async def test_the_closes_are_the_engines() -> None:
    assert (await run(lean, SCRIPTS["a text that is no control"]))[1:] == (1008, DATA_REASON)
    assert (await run(lean, SCRIPTS["an empty binary frame"]))[1:] == (1011, EMPTY_FRAME_REASON)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/listen?encoding=linear16&sample_rate=8000&channels=1", 400), ("/v2/listen", 404)],
)
async def test_a_bad_upgrade_is_refused_as_deepgram_would(path: str, status: int) -> None:
    async with LeanDeepgram.serving(result_ms=250) as fake:
        base = fake.url.removesuffix("/v1/listen")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base + path):
                pass
    response = refused.value.response
    assert response.status_code == status
    assert "dg-error" in response.headers and "dg-request-id" in response.headers
    assert json.loads(response.body)["err_code"]


async def test_streams_are_handed_out_in_the_order_opened() -> None:
    async with LeanDeepgram.serving(result_ms=250) as fake:
        async with connect(fake.url + STEREO), connect(fake.url + STEREO):
            first = await fake.next_stream(timeout=2 * S)
            second = await fake.next_stream(timeout=2 * S)
            assert fake.streams == [first, second]
        for stream in fake.streams:
            async with asyncio.timeout(2 * S):
                await stream.closed.wait()
            assert stream.close_code == 1000  # the client's close, recorded
