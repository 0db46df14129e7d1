"""The webhook sender's pure parts: how endpoints are named, and their queues."""

from __future__ import annotations

import asyncio

import pytest

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.exceptions import ConfigError
from twilio_dg_proxy.hub import HubCounters
from twilio_dg_proxy.webhook_protocol import Event
from twilio_dg_proxy.webhooks import EndpointQueue, WebhookSender, endpoint_label


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("https://hooks.example.com/in", "endpoint 1 (hooks.example.com)"),
        ("http://user:pw@hooks.example.com:8443/in?token=t", "endpoint 1 (hooks.example.com:8443)"),
        ("http://[::1]:9000/x", "endpoint 1 ([::1]:9000)"),
    ],
)
def test_an_endpoint_is_named_by_its_host_never_its_path_query_or_credentials(
    url: str, label: str
) -> None:
    assert endpoint_label(1, url) == label


def event(n: int) -> Event:
    return Event(f"evt_{n}", "call.started", "CA1", b"{}")


async def test_a_queue_keeps_its_head_until_done_and_refuses_beyond_its_limit() -> None:
    queue = EndpointQueue(1, "http://h/", limit=2)
    assert queue.idle.is_set()
    assert queue.offer(event(1)) and queue.offer(event(2))
    assert not queue.offer(event(3))
    assert not queue.idle.is_set()
    assert await queue.head() == event(1)
    assert await queue.head() == event(1)  # still there: at-least-once
    queue.done()
    assert queue.offer(event(4))
    assert [await queue.head(), *list(queue.events)[1:]] == [event(2), event(4)]
    queue.done()
    queue.done()
    assert queue.idle.is_set()


async def test_head_waits_for_an_event() -> None:
    queue = EndpointQueue(1, "http://h/", limit=2)
    waiting = asyncio.ensure_future(queue.head())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.offer(event(1))
    assert await waiting == event(1)


def test_a_whsec_secret_that_is_not_base64_is_refused_by_name() -> None:
    settings = Settings.from_env(
        {"WEBHOOK_URL": "http://127.0.0.1:9/", "WEBHOOK_SECRET": "whsec_***not-base64***"}
    )
    with pytest.raises(ConfigError, match="^WEBHOOK_SECRET: "):
        WebhookSender(settings, HubCounters())


@pytest.mark.parametrize(
    ("events", "needs"),
    [("call.started,call.ended", True), ("call.started,transcript.final", False)],
)
def test_only_call_ended_makes_the_recorder_keep_whole_transcripts(
    events: str, needs: bool
) -> None:
    settings = Settings.from_env(
        {
            "WEBHOOK_URL": "http://127.0.0.1:9/",
            "WEBHOOK_SECRET": "0123456789abcdef",
            "WEBHOOK_EVENTS": events,
        }
    )
    assert WebhookSender(settings, HubCounters()).needs_finals is needs
