"""Webhooks end to end: simulated Twilio calls through the proxy and the fake Deepgram, their
events POSTed to real HTTP servers on 127.0.0.1 that verify every signature, fail as told,
hang, or refuse connections."""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from twilio_dg_proxy.exceptions import ConfigError
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.transcripts import is_final_with_text
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern
from twilio_dg_proxy.webhook_protocol import Timing

from ..timing import S
from ..webhook_receiver import HANG, Received, Reply, WebhookReceiver, refusing_url
from .helpers import RunningProxy, TwilioPeer, Watcher, running_proxy, until

SECRET = "webhook-secret-for-tests"
ALL_EVENTS = "call.started,transcript.final,call.ended"
SECOND = 8000  # mu-law bytes per second per track
# Retries at once (a few ms), Retry-After capped at 50 ms, a short flush at shutdown: the
# tests wait for orders and counts, never for the production delays.
FAST = Timing(
    backoff_base_s=0.005, backoff_max_s=0.02, retry_after_max_s=0.05, flush_timeout_s=5 * S
)


@asynccontextmanager
async def webhook_proxy(
    deepgram: FakeDeepgram, *urls: str, timing: Timing = FAST, **env: str
) -> AsyncIterator[RunningProxy]:
    """A proxy sending webhooks to `urls`, signed with SECRET."""
    settings = {"WEBHOOK_URL": ",".join(urls), "WEBHOOK_SECRET": SECRET} | env
    async with running_proxy(deepgram.url, {"webhook_timing": timing}, **settings) as proxy:
        yield proxy


async def run_call(proxy: RunningProxy, seconds: float = 1.0) -> tuple[str, list[str]]:
    """One simulated call watched by one /client watcher: its callSid and everything the
    watcher received, up to `close`."""
    call = SimulatedCall()
    n = int(seconds * SECOND)
    tracks = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(tracks))  # type: ignore[arg-type]
        await twilio.stop()
        return call.call_sid, await watcher.transcript()


def finals(messages: list[str]) -> list[dict[str, Any]]:
    """The final results with words among a watcher's messages, decoded, in order."""
    decoded = [json.loads(m) for m in messages]
    return [m for m in decoded if isinstance(m, dict) and is_final_with_text(m)]


def by_id(received: list[Received]) -> dict[str, list[bytes]]:
    """Every body received, by its webhook-id."""
    bodies: dict[str, list[bytes]] = defaultdict(list)
    for request in received:
        bodies[request.headers["webhook-id"]].append(request.body)
    return bodies


def first_seen(received: list[Received]) -> list[dict[str, Any]]:
    """Each event once, in the order it was first received."""
    seen: dict[str, dict[str, Any]] = {}
    for request in received:
        seen.setdefault(request.headers["webhook-id"], request.event)
    return list(seen.values())


async def test_a_call_delivers_call_started_then_call_ended_with_what_its_watchers_got(
    deepgram: FakeDeepgram,
) -> None:
    async with WebhookReceiver(SECRET) as receiver, webhook_proxy(deepgram, receiver.url) as proxy:
        call_sid, messages = await run_call(proxy)
        await until(lambda: len(receiver.received) >= 2)
        counters = proxy.server.hub.counters
    assert all(r.verified for r in receiver.received), [r.problem for r in receiver.received]
    assert receiver.types() == ["call.started", "call.ended"]
    started, ended = receiver.events()
    assert started["data"]["callSid"] == call_sid
    assert started["data"]["tracks"] == ["inbound", "outbound"]
    transcript = ended["data"]
    assert transcript["call"]["callSid"] == call_sid
    assert transcript["call"]["endReason"] == "call ended"
    assert len(finals(messages)) >= 20  # 10 windows x 2 channels
    assert transcript["results"] == finals(messages)
    assert sorted(s["text"] for s in transcript["segments"]) == sorted(
        r["channel"]["alternatives"][0]["transcript"] for r in finals(messages)
    )
    assert {s["speaker"] for s in transcript["segments"]} == {"Caller", "Callee"}
    assert started["id"] != ended["id"]
    assert [r.headers["webhook-id"] for r in receiver.received] == [started["id"], ended["id"]]
    assert (counters.webhooks_delivered, counters.webhooks_retried) == (2, 0)
    assert (counters.webhooks_failed, counters.webhooks_dropped) == (0, 0)


async def test_transcript_final_events_come_between_start_and_end_in_the_watchers_order(
    deepgram: FakeDeepgram,
) -> None:
    async with (
        WebhookReceiver(SECRET) as receiver,
        webhook_proxy(deepgram, receiver.url, WEBHOOK_EVENTS=ALL_EVENTS) as proxy,
    ):
        call_sid, messages = await run_call(proxy)
        await until(lambda: "call.ended" in receiver.types())
    expected = finals(messages)
    types = receiver.types()
    assert types == ["call.started"] + ["transcript.final"] * len(expected) + ["call.ended"]
    events = receiver.events()
    lines = [e["data"] for e in events[1:-1]]
    assert [line["result"] for line in lines] == expected
    assert all(line["callSid"] == call_sid for line in lines)
    ended = events[-1]["data"]
    assert ended["results"] == expected
    # Each line reads as the same result's line in the whole transcript.
    assert sorted(json.dumps(line["segment"]) for line in lines) == sorted(
        json.dumps(segment) for segment in ended["segments"]
    )
    assert all(r.verified for r in receiver.received)


async def test_an_endpoint_failing_then_recovering_gets_every_event_once_per_id(
    deepgram: FakeDeepgram,
) -> None:
    failures = [
        Reply(500),
        Reply(503),
        Reply(429, {"Retry-After": "3600"}),  # honoured within its cap (50 ms here)
        HANG,  # received, then no answer within WEBHOOK_TIMEOUT_S: sent again, same id
        Reply(502),
    ]
    async with (
        WebhookReceiver(SECRET, failures) as receiver,
        webhook_proxy(
            deepgram, receiver.url, WEBHOOK_EVENTS=ALL_EVENTS, WEBHOOK_TIMEOUT_S="0.5"
        ) as proxy,
    ):
        _, messages = await run_call(proxy)
        await until(lambda: "call.ended" in receiver.types())
        counters = proxy.server.hub.counters
    bodies = by_id(receiver.received)
    delivered = [r.headers["webhook-id"] for r in receiver.delivered()]
    # Every event delivered exactly once; the failed attempts were the same events again.
    assert sorted(delivered) == sorted(set(delivered)) == sorted(bodies)
    assert all(len(set(copies)) == 1 for copies in bodies.values())
    assert sum(len(copies) for copies in bodies.values()) == len(delivered) + len(failures)
    assert max(len(copies) for copies in bodies.values()) > 1
    # In order, the call's events as without failures.
    events = first_seen(receiver.received)
    assert events == receiver.events()
    assert [e["type"] for e in events] == (
        ["call.started"] + ["transcript.final"] * len(finals(messages)) + ["call.ended"]
    )
    assert all(r.verified for r in receiver.received)
    assert counters.webhooks_retried == len(failures)
    assert counters.webhooks_delivered == len(delivered)
    assert (counters.webhooks_failed, counters.webhooks_dropped) == (0, 0)


async def test_a_4xx_is_not_retried_and_the_next_event_goes_on(
    deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "twilio_dg_proxy.webhooks")
    async with (
        WebhookReceiver(SECRET, [Reply(400)]) as receiver,
        webhook_proxy(deepgram, receiver.url) as proxy,
    ):
        await run_call(proxy)
        await until(lambda: len(receiver.received) >= 2)
        counters = proxy.server.hub.counters
    assert [r.event["type"] for r in receiver.received] == ["call.started", "call.ended"]
    assert receiver.types() == ["call.ended"]
    assert (counters.webhooks_failed, counters.webhooks_retried) == (1, 0)
    assert counters.webhooks_delivered == 1
    (line,) = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert f"endpoint 1 (127.0.0.1:{receiver.port})" in line
    assert "call.started" in line and "HTTP 400, not retried" in line


async def test_a_hanging_and_a_dead_endpoint_hold_up_neither_the_call_nor_a_healthy_one(
    deepgram: FakeDeepgram,
) -> None:
    # The hanging endpoint holds its first request for as long as the proxy lets it (two
    # minutes), the dead one waits a minute between attempts: while they do, the healthy
    # endpoint must get the whole call, and the call's watcher everything.
    slow = Timing(backoff_base_s=60.0, backoff_max_s=60.0, flush_timeout_s=0.1 * S)
    with refusing_url() as dead_url:
        async with (
            WebhookReceiver(SECRET) as healthy,
            WebhookReceiver(SECRET, default=HANG) as hanging,
            webhook_proxy(
                deepgram,
                hanging.url,
                dead_url,
                healthy.url,
                timing=slow,
                WEBHOOK_EVENTS=ALL_EVENTS,
                WEBHOOK_TIMEOUT_S="120",
            ) as proxy,
        ):
            _, messages = await run_call(proxy)
            events = 2 + len(finals(messages))
            counters = proxy.server.hub.counters
            await until(lambda: counters.webhooks_delivered == events)
            # Meanwhile, the others are still on the call's first event.
            assert [r.event["type"] for r in hanging.received] == ["call.started"]
            assert counters.webhooks_retried >= 1  # the dead endpoint's, waiting a minute
            assert proxy.server.webhooks is not None
            states = proxy.server.webhooks.health()
            assert proxy.server.health()["webhooks"] == states  # on /healthz
            hanging_state, dead_state, healthy_state = states
            assert hanging_state == {
                "endpoint": f"endpoint 1 (127.0.0.1:{hanging.port})",
                "queued": events,
                "failing": False,
            }
            assert (dead_state["queued"], dead_state["failing"]) == (events, True)
            assert (healthy_state["queued"], healthy_state["failing"]) == (0, False)
    assert healthy.types() == (
        ["call.started"] + ["transcript.final"] * (events - 2) + ["call.ended"]
    )
    assert all(r.verified for r in healthy.received + hanging.received)
    assert len(finals(messages)) >= 20
    # At shutdown, after a short flush, what the two could not take is counted as dropped.
    assert counters.webhooks_delivered == events
    assert counters.webhooks_dropped == 2 * events


async def test_at_shutdown_what_is_queued_is_delivered_within_the_flush(
    deepgram: FakeDeepgram,
) -> None:
    # The endpoint fails a few times, so the call's events are still queued or retried
    # when the proxy stops: the flush delivers them rather than dropping them.
    failing = [Reply(503)] * 6
    async with WebhookReceiver(SECRET, failing) as receiver:
        async with webhook_proxy(deepgram, receiver.url, WEBHOOK_EVENTS=ALL_EVENTS) as proxy:
            _, messages = await run_call(proxy)
            counters = proxy.server.hub.counters
        assert receiver.types() == (
            ["call.started"] + ["transcript.final"] * len(finals(messages)) + ["call.ended"]
        )
    assert counters.webhooks_delivered == 2 + len(finals(messages))
    assert (counters.webhooks_dropped, counters.webhooks_failed) == (0, 0)
    assert counters.webhooks_retried == len(failing)


async def test_a_full_queue_drops_new_events_and_counts_them(
    deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "twilio_dg_proxy.webhooks")
    async with (
        WebhookReceiver(SECRET, default=HANG) as hanging,
        webhook_proxy(
            deepgram,
            hanging.url,
            timing=Timing(flush_timeout_s=0.1 * S),
            WEBHOOK_EVENTS=ALL_EVENTS,
            WEBHOOK_QUEUE_SIZE="1",
            WEBHOOK_TIMEOUT_S="120",
        ) as proxy,
    ):
        _, messages = await run_call(proxy)
        counters = proxy.server.hub.counters
        await until(lambda: counters.calls == 1 and not proxy.server.hub.active_calls())
        # call.started is in flight (it stays queued until answered): the rest was dropped.
        events = 2 + len(finals(messages))
        assert counters.webhooks_dropped == events - 1
    assert counters.webhooks_dropped == events  # and call.started, at shutdown
    assert [r.event["type"] for r in hanging.received] == ["call.started"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    full = [line for line in warnings if "queue full" in line]
    assert len(full) == 1, "one warning per spell of a full queue"
    assert "dropped transcript.final" in full[0]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert any("call.ended" in line for line in dropped)


async def test_the_secret_and_the_urls_credentials_never_reach_the_logs(
    deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = [Reply(500), Reply(400)]
    with refusing_url() as dead_url:
        async with WebhookReceiver(SECRET, failing) as receiver:
            receiver.path = "/hook/path-in-url?token=token-in-url"
            with_credentials = receiver.url.replace("://", "://user:password-in-url@")
            dead = dead_url.replace("://", "://user:password-in-url@") + "?token=token-in-url"
            async with webhook_proxy(
                deepgram, with_credentials, dead, timing=Timing(0.005, 0.01, 0.01, 0.1 * S)
            ) as proxy:
                await run_call(proxy)
                await until(lambda: len(receiver.received) >= 3)
                await until(lambda: proxy.server.hub.counters.webhooks_failed >= 2)
    assert "not delivered" in caplog.text and "ConnectError" in caplog.text
    for secret in (SECRET, "password-in-url", "token-in-url", "path-in-url"):
        assert secret not in caplog.text
    assert all(r.verified for r in receiver.received)


async def test_without_httpx_webhooks_are_a_configuration_error(
    deepgram: FakeDeepgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ImportError
    monkeypatch.delitem(sys.modules, "twilio_dg_proxy.webhooks", raising=False)
    with pytest.raises(ConfigError, match=r"WEBHOOK_URL: .*twilio-dg-proxy\[webhooks\]"):
        async with webhook_proxy(deepgram, "http://127.0.0.1:9/hook"):
            pass


async def test_a_whsec_secret_that_is_not_base64_is_a_configuration_error(
    deepgram: FakeDeepgram,
) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        async with running_proxy(
            deepgram.url,
            WEBHOOK_URL="http://127.0.0.1:9/hook",
            WEBHOOK_SECRET="whsec_****not-base64****",
        ):
            pass


async def test_without_webhook_url_there_is_no_sender_and_no_webhooks_health(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url) as proxy:
        await run_call(proxy)
        assert proxy.server.webhooks is None
        assert "webhooks" not in proxy.server.health()
