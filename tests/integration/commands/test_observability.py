"""Observability of the proxy as a real process: /readyz through a drain (SIGTERM), JSON
logs line by line, and with `--workers 2` one scrape of /metrics summing both workers."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ...redis_server import RedisServer
from ...timing import S
from ..helpers import ServerProcess


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5 * S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_readyz_answers_503_while_draining_and_new_calls_are_refused() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with ServerProcess.started(
            DEEPGRAM_URL=deepgram.url, DRAIN_TIMEOUT=str(60 * S), LOG_LEVEL="INFO"
        ) as server:
            base = f"http://127.0.0.1:{server.port}"
            assert (await asyncio.to_thread(get, f"{base}/readyz"))[0] == 200
            call = SimulatedCall()
            async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                await deepgram.next_stream(timeout=5 * S)
                server.process.send_signal(signal.SIGTERM)
                await server.log_until("draining: 1 call(s)")
                ready, body = await asyncio.to_thread(get, f"{base}/readyz")
                alive, _ = await asyncio.to_thread(get, f"{base}/healthz")
                with pytest.raises(InvalidStatus) as refused:
                    await connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None)
                await twilio.send(call.stop())
            assert await server.process.wait() == 0
    assert ready == 503 and json.loads(body) == {"status": "not ready", "problems": ["draining"]}
    assert alive == 200
    assert refused.value.response.status_code == 503


async def test_json_logs_are_one_object_per_line_with_the_callsid() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with ServerProcess.started(
            "--port", "0", DEEPGRAM_URL=deepgram.url, LOG_FORMAT="json", LOG_LEVEL="INFO"
        ) as server:
            call = SimulatedCall()
            n = 8000
            audio = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}
            async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as twilio:
                for _, message in call.script(audio):  # type: ignore[arg-type]
                    await twilio.send(message)
                await twilio.wait_closed()
            log = server.startup + await server.log_until("call ended")
            server.process.send_signal(signal.SIGTERM)
            log += await server.stderr()
            assert await server.process.wait() == 0
    entries = [json.loads(line) for line in log.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    about_call = [e for e in entries if e.get("callSid") == call.call_sid]
    assert [e["message"].split(":")[0] for e in about_call][0] == "call started"
    (ended,) = [e for e in about_call if e["message"].startswith("call ended")]
    assert ended["packets"] == 100 and ended["deepgram_bytes"] == 2 * n
    assert ended["ended"] == "normal" and ended["level"] == "INFO"


def scrape(port: int) -> dict[str, float]:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if not sample.labels
    }


async def test_one_scrape_sums_every_worker(redis_server: RedisServer) -> None:
    calls = 6
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with ServerProcess.started(
            "--port",
            "0",
            "--workers",
            "2",
            REDIS_URL=redis_server.url,
            DEEPGRAM_URL=deepgram.url,
            LOG_LEVEL="INFO",
        ) as server:
            for _ in range(calls):  # each on whichever worker the kernel picks
                call = SimulatedCall()
                async with connect(f"ws://127.0.0.1:{server.port}/twilio", proxy=None) as ws:
                    await ws.send(call.connected())
                    await ws.send(call.start())
                    await ws.send(call.stop())
                    await ws.wait_closed()
            async with asyncio.timeout(10 * S):
                while True:  # each worker copies its totals to its file every second
                    samples = await asyncio.to_thread(scrape, server.port)
                    if samples["twilio_dg_proxy_calls_started_total"] == calls:
                        break
                    await asyncio.sleep(0.2)  # how often to look, not how long: unscaled
            server.process.send_signal(signal.SIGTERM)
            assert await server.process.wait() == 0
    # `ready` is 1 per worker: both workers' files were read, and summed.
    assert samples["twilio_dg_proxy_ready"] == 2
    assert samples["twilio_dg_proxy_calls_active"] == 0
    assert samples["twilio_dg_proxy_deepgram_streams_opened_total"] == calls
