"""GET /metrics during and after real calls (a normal one, packet loss, a Deepgram drop, an
evicted watcher, refused connections), read with prometheus_client's own parser; where it is
served (token, separate port, off); and the Grafana dashboard's queries against a scrape."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from twilio_dg_proxy.deepgram import Pings
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import (
    RunningProxy,
    TwilioPeer,
    Watcher,
    drained,
    pausing_client,
    running_proxy,
    until,
)

SECOND = 8000
ROOT = Path(__file__).resolve().parents[2]
Samples = dict[str, float]


def audio(seconds: float) -> dict[str, bytes]:
    n = int(seconds * SECOND)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Status, Content-Type and body of a GET (errors included)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels: `name{a="x",b="y"}` (sorted)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def scrape(port: int, headers: dict[str, str] | None = None) -> Samples:
    status, content_type, body = await asyncio.to_thread(
        get, f"http://127.0.0.1:{port}/metrics", headers
    )
    assert status == 200, body
    assert content_type.startswith("text/plain; version=")  # the text format
    return parse(body)


def m(name: str, **labels: str) -> str:
    """The key of a sample in `parse`'s result."""
    prefixed = f"twilio_dg_proxy_{name}"
    if not labels:
        return prefixed
    return prefixed + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


async def test_a_normal_call_is_counted_during_and_after() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                await twilio.send_all(call.frames(audio(1.0)))  # type: ignore[arg-type]
                stream = await deepgram.next_stream()
                await until(lambda: stream.audio_bytes >= 2 * SECOND * 0.8)
                during = await scrape(proxy.port)
                await twilio.stop()
                transcript = await watcher.transcript()
            await until(lambda: not proxy.server.hub.active_calls())
            await until(lambda: proxy.server.hub.counters.transcripts_stored == 1)
            after = await scrape(proxy.port)
    assert during[m("calls_active")] == 1 and during[m("subscribers")] == 1
    assert during[m("calls_started_total")] == 1
    assert during[m("calls_ended_total", how="normal")] == 0
    assert during[m("audio_sent_bytes_total")] >= 2 * SECOND * 0.8
    assert during[m("audio_latency_seconds_count")] >= 8  # one per 100 ms chunk
    assert after[m("calls_active")] == 0 and after[m("subscribers")] == 0
    assert after[m("calls_started_total")] == 1
    assert after[m("calls_ended_total", how="normal")] == 1
    assert after[m("deepgram_streams_opened_total")] == 1
    assert after[m("deepgram_open_seconds_count")] == 1
    assert after[m("audio_sent_bytes_total")] == 2 * SECOND * 1.0 == len(stream.audio)
    sent = len(deepgram.streams[0].sent)
    assert len(transcript) == sent
    assert after[m("results_published_total")] == sent
    assert after[m("results_delivered_total")] == sent  # one watcher
    assert after[m("fanout_latency_seconds_count")] == sent
    assert after[m("late_packets_total")] == 0
    assert after[m("audio_gaps_filled_seconds_total")] == 0
    assert after[m("transcripts_total", outcome="stored")] == 1
    assert after[m("transcripts_total", outcome="lost")] == 0
    assert after[m("webhook_events_total", outcome="dropped")] == 0  # no WEBHOOK_URL
    assert after["process_cpu_seconds_total"] > 0  # a single process exposes its own figures


async def test_packet_loss_and_late_packets_are_counted() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            lost = {"inbound": {3, 4, 20}, "outbound": {10, 11}}
            async with TwilioPeer.started(proxy, call) as twilio:
                frames = call.frames(audio(1.0), drop=lost)  # type: ignore[arg-type]
                await twilio.send_all(frames)
                await twilio.send_all(frames[5:7])  # again: their audio is gone by now
                await twilio.stop()
            await until(lambda: not proxy.server.hub.active_calls())
            after = await scrape(proxy.port)
    assert after[m("late_packets_total")] == 2
    # Five 20 ms frames lost mid-track: 0.1 s of silence filled in.
    assert after[m("audio_gaps_filled_seconds_total")] == pytest.approx(0.1)
    assert after[m("calls_ended_total", how="normal")] == 1


async def test_a_deepgram_drop_is_a_failure_then_a_reconnect_by_its_reason() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, {"deepgram_pings": Pings(0.2, 0.2)}) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                first = await deepgram.next_stream()
                sending = asyncio.create_task(
                    twilio.send_all(call.frames(audio(1.6)), speed=2)  # type: ignore[arg-type]
                )
                await until(lambda: first.audio_bytes >= 2 * SECOND * 0.4)
                await deepgram.drop(first)
                await sending
                await until(lambda: proxy.server.hub.counters.deepgram_reconnects == 1)
                during = await scrape(proxy.port)
                await twilio.stop()
            await until(lambda: not proxy.server.hub.active_calls())
            after = await scrape(proxy.port)
    assert during[m("deepgram_failures_total", reason="closed")] == 1
    assert during[m("deepgram_reconnects_total", reason="closed")] == 1
    assert during[m("deepgram_streams_opened_total")] == 2
    assert after[m("calls_ended_total", how="normal")] == 1
    assert after[m("deepgram_reconnects_total", reason="unreachable")] == 0


async def test_an_evicted_watcher_is_counted() -> None:
    async with FakeDeepgram(result_ms=20) as deepgram:
        async with running_proxy(deepgram.url, CLIENT_QUEUE_SIZE="200") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                slow = await pausing_client(proxy.port, "/client")
                assert call.call_sid in json.loads(await slow.recv())
                await slow.send(call.call_sid)
                await until(lambda: proxy.server.hub.subscriber_count() == 1)
                sending = asyncio.create_task(
                    twilio.send_all(call.frames(audio(60)), speed=20)  # type: ignore[arg-type]
                )
                await until(lambda: proxy.server.hub.counters.evicted == 1, within=20 * S)
                during = await scrape(proxy.port)
                await drained(slow)
                await sending
                await twilio.stop()
    assert during[m("watchers_evicted_total")] == 1
    assert during[m("subscribers")] == 0  # evicted: no longer a subscriber


async def test_refusals_are_counted_by_reason() -> None:
    token = "watcher-token-0123456789"
    async with FakeDeepgram() as deepgram:
        async with running_proxy(deepgram.url, CLIENT_TOKENS=token, MAX_CALLS="1") as proxy:
            with pytest.raises(InvalidStatus):  # no token: 401
                await connect(proxy.client_url, proxy=None)
            # A malformed Twilio stream: closed with 1008, a call ended for bad input.
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                await twilio.ws.send('{"event": "media", "sequenceNumber": "x"}')
                await twilio.ws.wait_closed()
            assert twilio.ws.close_code == 1008
            await until(lambda: not proxy.server.hub.active_calls())
            # An unknown callSid on /client: bad input too.
            headers = {"Authorization": f"Bearer {token}"}
            async with connect(proxy.client_url, proxy=None, additional_headers=headers) as ws:
                await ws.recv()
                await ws.send("CA-not-a-call")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()  # the `error:` line
                    await ws.recv()
            # Over MAX_CALLS: refused for limits.
            async with TwilioPeer.started(proxy, SimulatedCall()):
                with pytest.raises(InvalidStatus):
                    await connect(proxy.twilio_url, proxy=None)
            after = await scrape(proxy.port)
    assert after[m("refusals_total", reason="auth")] == 1
    assert after[m("refusals_total", reason="bad_input")] == 2
    assert after[m("refusals_total", reason="limits")] == 1
    assert after[m("calls_ended_total", how="bad_input")] == 1


async def test_the_event_loop_lag_is_sampled(proxy: RunningProxy) -> None:
    async with asyncio.timeout(5 * S):
        while (await scrape(proxy.port))[m("event_loop_lag_seconds_count")] < 2:  # noqa: ASYNC110 (over HTTP)
            await asyncio.sleep(0.1)  # how often to look, not how long: unscaled


async def test_metrics_behind_a_token() -> None:
    token = "metrics-token-0123456789"
    async with FakeDeepgram() as deepgram:
        async with running_proxy(deepgram.url, METRICS_TOKEN=token) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/metrics"
            status, _, _ = await asyncio.to_thread(get, url)
            wrong, _, _ = await asyncio.to_thread(get, url, {"Authorization": "Bearer nope"})
            samples = await scrape(proxy.port, {"Authorization": f"Bearer {token}"})
            health, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{proxy.port}/healthz")
    assert (status, wrong, health) == (401, 401, 200)
    assert m("calls_active") in samples


async def test_metrics_on_their_own_port_and_not_beside_healthz() -> None:
    async with FakeDeepgram() as deepgram:
        async with running_proxy(deepgram.url, METRICS_PORT="0") as proxy:
            metrics_port = proxy.server.observability.metrics_port
            assert metrics_port is not None and metrics_port != proxy.port
            samples = await scrape(metrics_port)
            here, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{proxy.port}/metrics")
            other, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{metrics_port}/healthz")
    assert m("calls_active") in samples
    assert (here, other) == (404, 404)


async def test_metrics_off() -> None:
    async with FakeDeepgram() as deepgram:
        async with running_proxy(deepgram.url, METRICS="false") as proxy:
            status, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{proxy.port}/metrics")
            ready, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{proxy.port}/readyz")
    assert (status, ready) == (404, 200)


# Metric names in a PromQL expression (the dashboard's); suffixes are part of sample names.
METRIC = re.compile(r"\btwilio_dg_proxy_[a-z_]+\b")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    found: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.update(METRIC.findall(target["expr"]))
    return found


async def test_every_metric_the_dashboard_queries_exists_in_a_scrape(proxy: RunningProxy) -> None:
    queried = dashboard_metrics()
    assert len(queried) >= 10
    samples = await scrape(proxy.port)
    names = {key.split("{")[0] for key in samples}
    assert sorted(queried - names) == []
