"""Hostile clients (issue 11): each costs only its own connection, within limits that
apply from its first byte.

Raw peers (`raw_peer.RawPeer`) send what no well-behaved client does; every loop here is
bounded in count and time, and every target is 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from .helpers import RunningProxy, both_receive_modes, running_proxy
from .raw_peer import TEXT, RawPeer, frame_header, upgrade_request

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
