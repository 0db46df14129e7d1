"""The web viewer's server side over real sockets: its static files (GET /, /viewer/...) and
its protocol on /viewer/ws, beside /client's tutorial protocol."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import is_history
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern
from twilio_dg_proxy.viewer import load_assets

from ..timing import S
from .helpers import (
    RunningProxy,
    TwilioPeer,
    Watcher,
    drained,
    pausing_client,
    running_proxy,
    send_text,
    stuck_client,
    until,
)

CLIENT_TOKEN = "client-token-0123456789abcdef"
SECRET = "stream-secret-0123456789"


def audio(seconds: float) -> dict[Track, bytes]:
    n = int(seconds * 8000)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


def get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> http.client.HTTPResponse:
    """A plain HTTP request (the body is read and kept as `.data`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5 * S)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    response.data = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


class Viewer:
    """A client of the viewer protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, proxy: RunningProxy, query: str = "") -> Viewer:
        ws = await connect(f"ws://127.0.0.1:{proxy.port}/viewer/ws{query}", proxy=None)
        return cls(ws)

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            message = await self.ws.recv()
        assert isinstance(message, str)
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    async def until_type(self, kind: str, within: float = 10.0) -> list[dict[str, Any]]:
        """Messages up to and including the next one of type `kind`."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            while not seen or seen[-1]["type"] != kind:
                seen.append(await self.next(within))
        return seen

    async def send(self, **command: str) -> None:
        await self.ws.send(json.dumps(command))


# --- Static files ----------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_types_and_cache_validators(
    proxy: RunningProxy,
) -> None:
    assets = load_assets()
    assert {"index.html", "viewer.css", "viewer.js", "transcript.js"} <= set(assets)
    for path, name, content_type in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/viewer/viewer.css", "viewer.css", "text/css; charset=utf-8"),
        ("/viewer/viewer.js", "viewer.js", "text/javascript; charset=utf-8"),
        ("/viewer/transcript.js", "transcript.js", "text/javascript; charset=utf-8"),
    ]:
        response = await asyncio.to_thread(get, proxy.port, path)
        assert response.status == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.data == assets[name].body  # type: ignore[attr-defined]
        etag = response.headers["ETag"]
        assert etag == assets[name].etag and etag.startswith('"')
        again = await asyncio.to_thread(get, proxy.port, path, {"If-None-Match": etag})
        assert again.status == 304 and again.data == b""  # type: ignore[attr-defined]
        assert again.headers["ETag"] == etag
        stale = await asyncio.to_thread(get, proxy.port, path, {"If-None-Match": '"old"'})
        assert stale.status == 200
    page = await asyncio.to_thread(get, proxy.port, "/")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize(
    "path",
    [
        "/viewer/missing.js",
        "/viewer/",
        "/viewer",
        "/index.html",
        "/viewer/__init__.py",
        "/viewer/../config.py",
        "/viewer/..%2f__init__.py",
        "/viewer/%2e%2e/server.py",
        "/viewer//etc/passwd",
        "/viewer/viewer.js/",
        "/viewer/VIEWER.JS",
        "/..%2f..%2fpyproject.toml",
        "/viewer/viewer.js%00.html",
    ],
)
async def test_anything_but_the_viewer_files_is_not_found(proxy: RunningProxy, path: str) -> None:
    response = await asyncio.to_thread(get, proxy.port, path)
    assert response.status == 404
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_head_gets_the_headers_alone_and_other_methods_are_not_allowed(
    proxy: RunningProxy,
) -> None:
    head = await asyncio.to_thread(get, proxy.port, "/viewer/viewer.js", None, "HEAD")
    assert head.status == 200 and head.data == b""  # type: ignore[attr-defined]
    assert head.headers["Content-Length"] == str(len(load_assets()["viewer.js"].body))
    post = await asyncio.to_thread(get, proxy.port, "/viewer/viewer.js", None, "POST")
    assert post.status == 405 and post.headers["Allow"] == "GET, HEAD"


async def test_a_query_string_does_not_change_what_is_served(proxy: RunningProxy) -> None:
    response = await asyncio.to_thread(get, proxy.port, "/viewer/viewer.css?v=2")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/css")


async def test_the_page_is_open_even_when_client_tokens_lock_the_sockets(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url, CLIENT_TOKENS=CLIENT_TOKEN) as proxy:
        page = await asyncio.to_thread(get, proxy.port, "/")
        assert page.status == 200
        bearer = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        checks = [
            ("/viewer/auth", {}, 401, {"authorized": False, "tokenRequired": True}),
            ("/viewer/auth", {"Authorization": "Bearer nope"}, 401, None),
            ("/viewer/auth", bearer, 200, {"authorized": True, "tokenRequired": True}),
            (f"/viewer/auth?token={CLIENT_TOKEN}", {}, 200, None),
        ]
        for path, headers, status, body in checks:
            response = await asyncio.to_thread(get, proxy.port, path, headers)
            assert response.status == status, (path, headers)
            assert response.headers["Cache-Control"] == "no-store"
            if body is not None:
                assert json.loads(response.data) == body  # type: ignore[attr-defined]
        # Only the wrong token counts as a refusal: the page asking is not an attack.
        assert proxy.server.hub.counters.refused_unauthorized == 1
        with pytest.raises(InvalidStatus) as refused:
            await Viewer.connect(proxy)
        assert refused.value.response.status_code == 401
        viewer = await Viewer.connect(proxy, f"?token={CLIENT_TOKEN}")
        assert (await viewer.next())["type"] == "calls"
        await viewer.ws.close()


async def test_viewer_auth_says_no_token_is_needed_without_client_tokens(
    proxy: RunningProxy,
) -> None:
    response = await asyncio.to_thread(get, proxy.port, "/viewer/auth")
    assert response.status == 200
    body = json.loads(response.data)  # type: ignore[attr-defined]
    assert body == {"authorized": True, "tokenRequired": False}


# --- The viewer protocol ---------------------------------------------------------------


async def test_a_viewer_sees_calls_come_and_go_with_their_parameters_but_no_secret(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url, TWILIO_STREAM_SECRET=SECRET) as proxy:
        viewer = await Viewer.connect(proxy)
        hello = await viewer.next()
        assert hello["type"] == "calls" and hello["calls"] == []
        assert isinstance(hello["now"], int)  # the server clock, Unix ms
        parameters = {"From": "+15550100", "To": "+15550199", "secret": SECRET}
        call = SimulatedCall(custom_parameters=parameters)
        async with TwilioPeer.started(proxy, call) as twilio:
            started = await viewer.next()
            assert started["type"] == "call_started"
            info = started["call"]
            assert info["callSid"] == call.call_sid
            assert info["customParameters"] == {"From": "+15550100", "To": "+15550199"}
            assert info["tracks"] == ["inbound", "outbound"]
            assert abs(info["startedAt"] - hello["now"]) < 10_000
            late = await Viewer.connect(proxy)
            assert (await late.next())["calls"] == [info]
            await twilio.stop()
        assert await viewer.next() == {
            "type": "call_ended",
            "callSid": call.call_sid,
            "code": 1000,
            "reason": "call ended",
        }
        await viewer.ws.close()
        await late.ws.close()
        await until(lambda: proxy.server.hub.viewer_count() == 0)


async def test_subscribing_mid_call_gives_every_final_exactly_once_then_live_messages(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    frames = call.frames(audio(2.0))
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)  # the tutorial's client, alongside
        await twilio.send_all(frames[: len(frames) // 2])
        await until(lambda: proxy.server.hub.counters.published >= 10)
        viewer = await Viewer.connect(proxy)
        await viewer.next()
        await viewer.send(type="subscribe", callSid=call.call_sid)
        subscribed = await viewer.next()
        await twilio.send_all(frames[len(frames) // 2 :])
        await twilio.stop()
        rest = await viewer.until_type("call_ended")
        tutorial = await watcher.transcript()
    sent = deepgram.streams[0].sent
    assert subscribed["type"] == "subscribed" and subscribed["callSid"] == call.call_sid
    assert subscribed["call"]["callSid"] == call.call_sid
    live = [m["message"] for m in rest[:-1]]
    assert all(m["type"] == "deepgram" and m["callSid"] == call.call_sid for m in rest[:-1])
    # The history is the finals of what came before the subscription; the rest came live.
    joined_at = len(sent) - len(live)
    assert 0 < joined_at < len(sent)
    assert live == [json.loads(text) for text in sent[joined_at:]]
    assert subscribed["history"] == [json.loads(t) for t in sent[:joined_at] if is_history(t)]
    assert subscribed["history"] and not subscribed["historyTruncated"]
    assert tutorial == sent  # /client saw Deepgram's messages only, verbatim
    await viewer.ws.close()


@pytest.mark.parametrize("limit", [{"HISTORY_MESSAGES": "3"}, {"HISTORY_BYTES": "3000"}])
async def test_history_is_bounded(deepgram: FakeDeepgram, limit: dict[str, str]) -> None:
    async with running_proxy(deepgram.url, **limit) as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            await twilio.send_all(call.frames(audio(1.0)))
            await until(lambda: proxy.server.hub.counters.published >= 20)
            viewer = await Viewer.connect(proxy)
            await viewer.next()
            await viewer.send(type="subscribe", callSid=call.call_sid)
            subscribed = await viewer.next()
            await twilio.stop()
        finals = [t for t in deepgram.streams[0].sent if is_history(t)]
        history = subscribed["history"]
        n = len(history)
        parsed = [json.loads(t) for t in finals]
        # The latest finals when the viewer subscribed: a run of consecutive ones, not the first.
        [first] = [i for i in range(1, len(parsed) - n + 1) if parsed[i : i + n] == history]
        assert subscribed["historyTruncated"] is True
        if "HISTORY_MESSAGES" in limit:
            assert n == 3
        else:  # as many as fit in 3,000 bytes: one more would not
            assert sum(map(len, finals[first : first + n])) <= 3000
            assert sum(map(len, finals[first - 1 : first + n])) > 3000
        await viewer.ws.close()


async def test_an_unknown_call_is_an_error_message_and_unsubscribe_is_acknowledged(
    proxy: RunningProxy,
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        viewer = await Viewer.connect(proxy)
        await viewer.next()
        await viewer.send(type="subscribe", callSid="CAnope")
        error = await viewer.next()
        assert error["type"] == "error" and error["callSid"] == "CAnope"
        assert error["code"] == 1008 and "unknown callSid" in error["reason"]
        await viewer.send(type="subscribe", callSid=f"  {call.call_sid}\n")
        assert (await viewer.next())["type"] == "subscribed"
        await viewer.send(type="unsubscribe", callSid=call.call_sid)
        assert (await viewer.until_type("unsubscribed"))[-1]["callSid"] == call.call_sid
        await until(lambda: proxy.server.hub.subscriber_count() == 0)
        await twilio.send_all(call.frames(audio(0.5)))
        await twilio.stop()
        # Nothing of the call after the acknowledgement, only its end in the list.
        assert (await viewer.next())["type"] == "call_ended"
        await viewer.ws.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("CA1234", "expected a JSON command"),
        (b"\x00", "text message"),
        ('["subscribe"]', "JSON object"),
        ('{"type": "watch", "callSid": "CA1"}', "unknown command type 'watch'"),
        ('{"type": "subscribe"}', "callSid"),
        ('{"type": "subscribe", "callSid": 5}', "callSid"),
        ("[" * 4000, "expected a JSON command"),  # deeper than json's parser goes
    ],
)
async def test_a_malformed_command_closes_only_that_viewer_with_1008(
    proxy: RunningProxy, message: str | bytes, reason: str
) -> None:
    steady = await Viewer.connect(proxy)
    viewer = await Viewer.connect(proxy)
    await viewer.next()
    await viewer.ws.send(message)
    await viewer.ws.wait_closed()
    assert viewer.ws.close_code == 1008
    assert reason in (viewer.ws.close_reason or "")
    assert (await steady.next())["type"] == "calls"
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        assert (await steady.next())["type"] == "call_started"
        await twilio.stop()
    await steady.ws.close()


async def test_viewers_count_towards_the_client_limits(deepgram: FakeDeepgram) -> None:
    async with running_proxy(
        deepgram.url, MAX_SUBSCRIBERS="2", MAX_SUBSCRIBERS_PER_CALL="1"
    ) as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            watcher = await Watcher.join(proxy, call.call_sid)
            viewer = await Viewer.connect(proxy)
            await viewer.next()
            await viewer.send(type="subscribe", callSid=call.call_sid)
            error = await viewer.next()
            assert error["type"] == "error" and error["code"] == 1013
            with pytest.raises(InvalidStatus) as refused:
                await Viewer.connect(proxy)
            assert refused.value.response.status_code == 503
            await twilio.stop()
            assert await watcher.transcript() == deepgram.streams[0].sent
        health = proxy.server.health()
        assert (health["viewers"], health["subscribers"]) == (1, 0)
        await viewer.ws.close()


async def test_a_viewer_that_never_reads_is_cut_off_with_1013() -> None:
    async with FakeDeepgram(result_ms=20) as deepgram:
        async with running_proxy(deepgram.url, CLIENT_QUEUE_SIZE="200") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                steady = await Watcher.join(proxy, call.call_sid)
                stuck = stuck_client(proxy.port, "/viewer/ws")
                await until(lambda: proxy.server.hub.viewer_count() == 1)
                command = json.dumps({"type": "subscribe", "callSid": call.call_sid}).encode()
                send_text(stuck, command)
                await until(lambda: proxy.server.hub.subscriber_count() == 2)
                steady_reads = asyncio.create_task(steady.transcript(within=30 * S))
                await twilio.send_all(call.frames(audio(60)), speed=20)
                await until(lambda: proxy.server.hub.counters.evicted == 1, within=20 * S)
                await until(lambda: proxy.server.hub.viewer_count() == 0)
                await twilio.stop()
                transcript = await steady_reads
                stuck.close()
            assert transcript == deepgram.streams[0].sent


async def test_a_viewer_that_stops_reading_receives_1013_when_it_reads_again() -> None:
    async with FakeDeepgram(result_ms=20) as deepgram:
        async with running_proxy(deepgram.url, CLIENT_QUEUE_SIZE="200") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                slow = await pausing_client(proxy.port, "/viewer/ws")
                assert json.loads(await slow.recv())["type"] == "calls"
                await slow.send(json.dumps({"type": "subscribe", "callSid": call.call_sid}))
                await until(lambda: proxy.server.hub.subscriber_count() == 1)
                # It reads nothing more while a minute of audio goes by at 20x real time.
                sending = asyncio.create_task(twilio.send_all(call.frames(audio(60)), speed=20))
                await until(lambda: proxy.server.hub.counters.evicted == 1, within=20 * S)
                # Now it reads: what was on its way, then the close frame the proxy sent.
                received = [json.loads(m) for m in await drained(slow)]
                await sending
                await twilio.stop()
            assert slow.close_code == 1013, (slow.close_code, slow.close_reason)
            assert "too slow" in (slow.close_reason or "")
            assert received[0]["type"] == "subscribed"
            assert {m["type"] for m in received[1:]} <= {"deepgram"}
            forwarded = [m["message"] for m in received[1:]]
            sent = [json.loads(text) for text in deepgram.streams[0].sent]
            assert forwarded == sent[: len(forwarded)]
