"""Hostile clients (issue 11): each costs only its own connection, within limits that
apply from its first byte.

Raw peers (`raw_peer.RawPeer`) send what no well-behaved client does; every loop here is
bounded in count and time, and every target is 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.server import ProxyServer, bound_port
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ..timing import S
from .helpers import PROXY_ENV, RunningProxy, both_receive_modes, running_proxy, until
from .raw_peer import TEXT, RawPeer, frame, frame_header, upgrade_request

pytestmark = both_receive_modes

TWILIO_LIMIT = 64 << 10
CLIENT_LIMIT = 4096


@pytest.fixture
async def proxy() -> AsyncIterator[RunningProxy]:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(
            deepgram.url,
            TWILIO_MAX_MESSAGE_BYTES=str(TWILIO_LIMIT),
            CLIENT_MAX_MESSAGE_BYTES=str(CLIENT_LIMIT),
        ) as running:
            yield running


# --- 1. Limits apply from the first byte ------------------------------------------------

OVERSIZED = [
    ("/twilio", TWILIO_LIMIT + 1),
    ("/twilio", 8_000_000),
    ("/client", CLIENT_LIMIT + 1),
    ("/viewer/ws", CLIENT_LIMIT + 1),
]
# When the oversized message goes: in the same write as the upgrade request (so in its
# read), in a write of its own before the 101 is read, or after the 101 (the reference).
WHEN = ("with the request", "before the 101", "after the 101")


async def refusal(port: int, path: str, size: int, when: str) -> tuple[int, int, str]:
    """(status, close code, reason) for a text message of `size` bytes on `path`, of which
    only the header and 1 KB are sent: the limit must be applied from the header alone,
    without waiting for (or holding) the rest."""
    message = frame_header(TEXT, size) + b"x" * 1024
    async with RawPeer.connected(port) as peer:
        if when == "with the request":
            peer.send(upgrade_request(path) + message)
        else:
            peer.send(upgrade_request(path))
            await peer.writer.drain()
            if when == "before the 101":
                peer.send(message)
        status = await peer.status()
        if when == "after the 101":
            peer.send(message)
        code, reason = await peer.close_frame()
    return status, code, reason


@pytest.mark.parametrize(("path", "size"), OVERSIZED, ids=[f"{p} {s}" for p, s in OVERSIZED])
async def test_an_oversized_first_message_gets_1009_however_early_it_comes(
    proxy: RunningProxy, path: str, size: int
) -> None:
    answers = {when: await refusal(proxy.port, path, size, when) for when in WHEN}
    reference = answers["after the 101"]
    assert reference[:2] == (101, 1009), reference
    assert answers == dict.fromkeys(WHEN, reference)


# --- 2. A connection that fails is failed -----------------------------------------------

# How long the proxy would wait for a peer's close: long, so that a TCP close that waits
# for it cannot pass for a prompt one.
CLOSE_TIMEOUT = 60 * S
PROMPT = 5 * S  # far below CLOSE_TIMEOUT


@asynccontextmanager
async def proxy_closing_slowly(deepgram_url: str, **env: str) -> AsyncIterator[RunningProxy]:
    """A proxy whose connections wait CLOSE_TIMEOUT for a peer's close."""
    settings = Settings.from_env(
        {"DEEPGRAM_URL": deepgram_url, "HOST": "127.0.0.1", "PORT": "0"} | PROXY_ENV | env
    )
    server = ProxyServer(settings, close_timeout_s=CLOSE_TIMEOUT)
    async with server.running() as listening:
        yield RunningProxy(server, bound_port(listening))


@pytest.mark.parametrize("started", [False, True], ids=["before start", "after start"])
async def test_invalid_utf8_fails_the_connection_without_waiting_for_the_peer(
    started: bool,
) -> None:
    """RFC 6455 8.1: invalid UTF-8 fails the connection. The peer here never answers the
    close frame: the proxy's end of TCP must come anyway, long before CLOSE_TIMEOUT."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(deepgram.url) as proxy:
            counters = proxy.server.hub.counters
            call = SimulatedCall(tracks=("inbound",))
            async with RawPeer.connected(proxy.port) as peer:
                peer.send(upgrade_request("/twilio"))
                assert await peer.status() == 101
                peer.send(frame(TEXT, call.connected().encode()))
                if started:
                    peer.send(frame(TEXT, call.start().encode()))
                    await until(lambda: counters.calls == 1)
                peer.send(frame(TEXT, b'{"event": "media\xff"}'))
                code, _ = await peer.close_frame()
                assert code == 1007
                assert await peer.end_of_stream(within=PROMPT) == b""
