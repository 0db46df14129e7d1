"""GET /readyz and the start-up check of Deepgram: ready with a reachable Deepgram that takes
the key; not ready (503, saying why) when it cannot be reached or refuses the key; a refused
key stops start-up unless DEEPGRAM_START_CHECK says to start anyway."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from twilio_dg_proxy.exceptions import ConfigError
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from .helpers import RunningProxy, running_proxy


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
        response.read()
        return int(response.status)


@asynccontextmanager
async def hanging_up() -> AsyncIterator[str]:
    """A host that accepts connections and closes them at once: not a Deepgram."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    async with server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/listen"


async def test_ready_when_deepgram_takes_the_key(proxy: RunningProxy) -> None:
    status, body = await asyncio.to_thread(readyz, proxy.port)
    assert (status, body) == (200, {"status": "ready"})


async def test_the_check_sends_the_key_the_streams_use() -> None:
    async with FakeDeepgram(api_key="right-key") as deepgram:
        async with running_proxy(deepgram.url, DEEPGRAM_API_KEY="right-key") as proxy:
            status, _ = await asyncio.to_thread(readyz, proxy.port)
    assert status == 200


async def test_not_ready_while_deepgram_cannot_be_reached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with hanging_up() as url:
        async with running_proxy(url) as proxy:
            status, body = await asyncio.to_thread(readyz, proxy.port)
            alive = await asyncio.to_thread(healthz, proxy.port)
    assert status == 503 and body["status"] == "not ready"
    problems = body["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    problem = problems[0]
    assert "cannot reach Deepgram" in problem and "/v1/auth/token" in problem
    assert alive == 200  # alive all the same
    assert "not ready until it can be reached" in caplog.text


async def test_a_refused_key_stops_start_up_with_a_clear_message() -> None:
    async with FakeDeepgram(api_key="right-key") as deepgram:
        with pytest.raises(ConfigError) as raised:
            async with running_proxy(deepgram.url, DEEPGRAM_API_KEY="wrong-key-1234"):
                pass
    message = str(raised.value)
    assert message.startswith("DEEPGRAM_API_KEY: ")
    assert "refused the key: HTTP 401: Invalid credentials." in message
    assert "DEEPGRAM_START_CHECK=warn" in message
    assert "wrong-key-1234" not in message


async def test_a_refused_key_with_warn_starts_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with FakeDeepgram(api_key="right-key") as deepgram:
        async with running_proxy(
            deepgram.url, DEEPGRAM_API_KEY="wrong-key-1234", DEEPGRAM_START_CHECK="warn"
        ) as proxy:
            status, body = await asyncio.to_thread(readyz, proxy.port)
    assert status == 503
    assert "refused the key" in json.dumps(body)
    assert "starting anyway" in caplog.text and "wrong-key-1234" not in caplog.text


async def test_with_the_check_off_deepgram_is_not_asked_at_start() -> None:
    async with hanging_up() as url:
        async with running_proxy(url, DEEPGRAM_START_CHECK="off") as proxy:
            status, _ = await asyncio.to_thread(readyz, proxy.port)
    assert status == 200
