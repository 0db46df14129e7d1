"""Authentication (Twilio signature, stream secret, client tokens), TLS and the limits."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.logs import setup_logging
from twilio_dg_proxy.server import warn_if_exposed
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from .helpers import RunningProxy, TwilioPeer, Watcher, results, running_proxy, until

AUTH_TOKEN = "auth-token-0123456789abcdef"
PUBLIC = "https://abcd-1234.ngrok-free.app"
STREAM_SECRET = "stream-secret-0123456789"
CLIENT_TOKEN = "client-token-0123456789abcdef"
API_KEY = "deepgram-key-0123456789abcdef"


def audio(seconds: float) -> dict[str, bytes]:
    n = int(seconds * 8000)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


@pytest.fixture
async def locked(deepgram: FakeDeepgram) -> AsyncIterator[RunningProxy]:
    async with running_proxy(
        deepgram.url,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        PUBLIC_URL=PUBLIC,
        CLIENT_TOKENS=f"other-token-0123456789,{CLIENT_TOKEN}",
        DEEPGRAM_API_KEY=API_KEY,
        LOG_LEVEL="DEBUG",
    ) as running:
        yield running


def signature(url: str = "wss://abcd-1234.ngrok-free.app/twilio") -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {})}


async def refused_status(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, proxy=None, additional_headers=headers):
            pass
    return refused.value.response.status_code


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        signature("wss://evil.example/twilio"),  # signed for another URL
        signature("wss://abcd-1234.ngrok-free.app/twilio/"),  # a trailing slash changes it
    ],
)
async def test_twilio_upgrade_without_a_valid_signature_is_refused_with_403(
    locked: RunningProxy, headers: dict[str, str] | None
) -> None:
    assert await refused_status(locked.twilio_url, headers) == 403
    assert locked.server.hub.counters.refused_unauthorized == 1


async def test_a_signed_stream_and_a_token_holder_get_the_call(
    locked: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # The project's loggers at DEBUG; websockets' own (which print request headers) are
    # held at WARNING by setup_logging, checked below.
    caplog.set_level(logging.DEBUG, logger="twilio_dg_proxy")
    call = SimulatedCall(custom_parameters={"From": "+15550100001"})
    async with connect(locked.twilio_url, proxy=None, additional_headers=signature()) as twilio:
        await twilio.send(call.connected())
        await twilio.send(call.start())
        await until(lambda: call.call_sid in locked.server.hub.active_calls())
        headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        async with connect(locked.client_url, proxy=None, additional_headers=headers) as client:
            assert call.call_sid in await client.recv()
        by_query = f"{locked.client_url}?token={CLIENT_TOKEN}"
        async with connect(by_query, proxy=None) as client:
            await client.send(call.call_sid)
            for _, message in call.frames(audio(0.3)):  # type: ignore[arg-type]
                await twilio.send(message)
            await twilio.send(call.stop())
            received = [m async for m in client]
    assert received[-1] == "close" and len(results(received[1:-1])) >= 4  # type: ignore[arg-type]
    for secret in (AUTH_TOKEN, CLIENT_TOKEN, API_KEY, "other-token-0123456789"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "public_url",
    [
        "https://abcd-1234.ngrok-free.app",
        "https://abcd-1234.ngrok-free.app/",
        "wss://abcd-1234.ngrok-free.app",
        "wss://abcd-1234.ngrok-free.app/",
    ],
)
async def test_every_form_of_public_url_accepts_what_twilio_signs(
    deepgram: FakeDeepgram, public_url: str
) -> None:
    # Twilio signs wss://<host>/twilio whichever way PUBLIC_URL was written.
    async with running_proxy(
        deepgram.url, TWILIO_AUTH_TOKEN=AUTH_TOKEN, PUBLIC_URL=public_url
    ) as proxy:
        call = SimulatedCall()
        async with connect(proxy.twilio_url, proxy=None, additional_headers=signature()) as twilio:
            await twilio.send(call.connected())
            await twilio.send(call.start())
            await until(lambda: call.call_sid in proxy.server.hub.active_calls())
            await twilio.send(call.stop())
        unsigned = signature("wss://abcd-1234.ngrok-free.app//twilio")
        assert await refused_status(proxy.twilio_url, unsigned) == 403


@pytest.mark.parametrize(
    "how", ["none", "wrong bearer", "wrong query", "basic scheme", "token of the wrong length"]
)
async def test_client_without_a_valid_token_is_refused_with_401(
    locked: RunningProxy, how: str
) -> None:
    url, headers = locked.client_url, None
    if how == "wrong bearer":
        headers = {"Authorization": "Bearer client-token-0123456789abcdeX"}
    elif how == "wrong query":
        url += "?token=nope"
    elif how == "basic scheme":
        headers = {"Authorization": f"Basic {CLIENT_TOKEN}"}
    elif how == "token of the wrong length":
        headers = {"Authorization": f"Bearer {CLIENT_TOKEN}x"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, proxy=None, additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"


async def test_stream_secret_is_required_when_configured(
    deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="twilio_dg_proxy")
    async with running_proxy(
        deepgram.url, TWILIO_STREAM_SECRET=STREAM_SECRET, LOG_LEVEL="DEBUG"
    ) as proxy:
        for parameters in ({}, {"secret": "wrong"}):
            call = SimulatedCall(custom_parameters=parameters)
            async with connect(proxy.twilio_url, proxy=None) as ws:
                await ws.send(call.connected())
                await ws.send(call.start())
                await ws.wait_closed()
            assert ws.close_code == 1008 and "secret" in (ws.close_reason or "")
        call = SimulatedCall(custom_parameters={"secret": STREAM_SECRET, "From": "+1555"})
        async with TwilioPeer.started(proxy, call) as twilio:
            watcher = await Watcher.join(proxy, call.call_sid)
            await twilio.send_all(call.frames(audio(0.2)))  # type: ignore[arg-type]
            await twilio.stop()
            assert await watcher.transcript()
    assert STREAM_SECRET not in caplog.text
    assert "'secret': '<hidden>'" in caplog.text  # the DEBUG line shows it was there


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({"HOST": "0.0.0.0"}, True),
        ({"HOST": "0.0.0.0", "CLIENT_TOKENS": CLIENT_TOKEN}, True),  # /twilio still open
        (
            {"HOST": "0.0.0.0", "CLIENT_TOKENS": CLIENT_TOKEN, "TWILIO_STREAM_SECRET": "s"},
            False,
        ),
        ({"HOST": "127.0.0.1"}, False),
        ({"HOST": "localhost"}, False),
    ],
)
def test_open_endpoints_on_a_public_address_are_warned_about(
    env: dict[str, str], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    warn_if_exposed(Settings.from_env(env))
    assert ("open endpoints" in caplog.text) is warned
    assert CLIENT_TOKEN not in caplog.text


async def test_calls_beyond_max_calls_are_refused_with_503(deepgram: FakeDeepgram) -> None:
    async with running_proxy(deepgram.url, MAX_CALLS="1") as proxy:
        async with TwilioPeer.started(proxy, SimulatedCall()):
            assert await refused_status(proxy.twilio_url) == 503
        await until(lambda: not proxy.server.hub.active_calls())
        async with TwilioPeer.started(proxy, SimulatedCall()):  # room again
            pass
        assert proxy.server.hub.counters.refused_over_limit == 1


async def test_clients_beyond_the_limits_are_refused(deepgram: FakeDeepgram) -> None:
    async with running_proxy(
        deepgram.url, MAX_SUBSCRIBERS="2", MAX_SUBSCRIBERS_PER_CALL="1"
    ) as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            first = await Watcher.join(proxy, call.call_sid)
            second = await Watcher.join(proxy, call.call_sid)
            code, reason, _ = await second.closed()
            assert code == 1013 and "subscribers" in reason
            # Two connections open (one still choosing): the next is refused at the upgrade.
            async with connect(proxy.client_url, proxy=None) as choosing:
                await choosing.recv()
                assert await refused_status(proxy.client_url) == 503
            await twilio.stop()
            assert await first.transcript() == deepgram.streams[0].sent


@pytest.mark.parametrize(
    ("path", "limit"),
    [("twilio", "TWILIO_MAX_MESSAGE_BYTES"), ("client", "CLIENT_MAX_MESSAGE_BYTES")],
)
async def test_oversized_messages_close_with_1009(
    deepgram: FakeDeepgram, path: str, limit: str
) -> None:
    async with running_proxy(deepgram.url, **{limit: "2048"}) as proxy:
        async with connect(f"ws://127.0.0.1:{proxy.port}/{path}", proxy=None) as ws:
            await ws.send("x" * 2049)
            await ws.wait_closed()
        assert ws.close_code == 1009


async def test_tls_serves_wss(deepgram: FakeDeepgram, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with running_proxy(deepgram.url, TLS_CERT=str(cert), TLS_KEY=str(key)) as proxy:
        url = f"wss://127.0.0.1:{proxy.port}/client"
        async with connect(url, proxy=None, ssl=client_context) as client:
            assert await client.recv() == "[]"
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate
            async with connect(url, proxy=None, ssl=ssl.create_default_context()):
                pass


def test_debug_logging_keeps_websockets_header_dumps_out() -> None:
    root_level = logging.getLogger().level
    try:
        setup_logging("DEBUG")
        assert logging.getLogger("websockets").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("twilio_dg_proxy").getEffectiveLevel() == logging.DEBUG
    finally:
        logging.getLogger().setLevel(root_level)
        logging.getLogger("websockets").setLevel(logging.NOTSET)
        logging.getLogger("twilio_dg_proxy").setLevel(logging.NOTSET)
