"""The /client protocol, as in Deepgram's tutorial.

1. The server sends a JSON array of the active callSids.
2. The client sends one callSid as a text line.
3. The server sends every Deepgram message of that call verbatim, then the text `close`
   and a normal close when the call ends.
"""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .exceptions import ClientProtocolError, ProxyError, close_frame_for
from .hub import CLIENT_LEFT, Ending, Hub, Subscription
from .logs import get_logger

logger = get_logger("clients")

# How long an evicted client gets to accept our close frame before its socket is cut.
_EVICTION_GRACE_S = 2.0
# A person typing a callSid into websocat needs time; a socket that never chooses does not
# get to hold a connection forever.
CHOICE_TIMEOUT_S = 300.0


async def handle_client(ws: ServerConnection, hub: Hub) -> None:
    """Serve one /client connection: the call list, its choice, then that call's results."""
    peer = _peer(ws)
    try:
        await ws.send(json.dumps(hub.active_calls()))
        try:
            async with asyncio.timeout(CHOICE_TIMEOUT_S):
                choice = await ws.recv()
        except TimeoutError:
            raise ClientProtocolError(
                f"no callSid chosen within {CHOICE_TIMEOUT_S:.0f} s"
            ) from None
        if not isinstance(choice, str):
            raise ClientProtocolError("expected a callSid as a text message")
        sub = hub.subscribe(choice.strip())
    except ConnectionClosed:
        return
    except ProxyError as exc:
        code, reason = close_frame_for(exc)
        logger.info("client %s refused (%d): %s", peer, code, exc)
        await ws.close(code, reason)
        return
    logger.info("client %s subscribed to %s", peer, sub.call_sid)
    try:
        await _stream(ws, sub)
    finally:
        hub.unsubscribe(sub)
        logger.info("client %s left %s (%s)", peer, sub.call_sid, _close_code(ws))


async def _stream(ws: ServerConnection, sub: Subscription) -> None:
    """Forward the subscription until it ends, the client leaves, or it is evicted."""
    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(_read_until_closed(ws, sub))
        watchdog = tasks.create_task(_close_when_evicted(ws, sub))
        try:
            await _forward(ws, sub)
        finally:
            reader.cancel()
            watchdog.cancel()


async def _forward(ws: ServerConnection, sub: Subscription) -> None:
    try:
        while True:
            item = await sub.get()
            if isinstance(item, Ending):
                await _end(ws, item)
                return
            await ws.send(item)
    except ConnectionClosed:
        pass


async def _end(ws: ServerConnection, ending: Ending) -> None:
    if ending is CLIENT_LEFT:
        return
    if ending.say_close:
        await ws.send("close")
    await ws.close(ending.code, ending.reason)


async def _read_until_closed(ws: ServerConnection, sub: Subscription) -> None:
    """Ignore what the client sends after its choice; end the subscription when it leaves."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    sub.end(CLIENT_LEFT)


async def _close_when_evicted(ws: ServerConnection, sub: Subscription) -> None:
    """Close a client that fell too far behind, even if it has stopped reading."""
    await sub.evicted.wait()
    ending = sub.ending
    assert ending is not None  # eviction always sets one
    logger.warning("client %s of %s disconnected: %s", _peer(ws), sub.call_sid, ending.reason)
    try:
        async with asyncio.timeout(_EVICTION_GRACE_S):
            await ws.close(ending.code, ending.reason)
    except TimeoutError:
        # Its receive window is full, so not even the close frame gets through.
        ws.transport.abort()


def _close_code(ws: ServerConnection) -> int | None:
    """The code that ended the connection: ours if we closed first, else the client's."""
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    first = sent if ws.protocol.close_rcvd_then_sent is not True else received
    return first.code if first is not None else None


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
