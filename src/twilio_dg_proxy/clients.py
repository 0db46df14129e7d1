"""The client connections: /client, as in Deepgram's tutorial, and /viewer/ws, its JSON
extension for the web viewer (and any program that wants the same). The I/O only: the texts
are written and read by `client_protocol` and `viewer_protocol`.

/client:
1. The server sends a JSON array of the active callSids.
2. The client sends one callSid as a text line.
3. The server sends every Deepgram message of that call verbatim, then the text `close`
   and a normal close when the call ends.

/client additions, beside the tutorial's protocol and never in its place:
- `/client?history=1` (opt-in): after its choice the client first gets the call's final
  results so far (the history a viewer gets, each message as Deepgram sent it, oldest
  first), then the live messages, each final exactly once. Without it nothing is replayed.
  Other query parameters are ignored (`token` belongs to authentication; a client that passes
  any other gets the tutorial's protocol, as it always did). A `history` value other than
  1/0 (true/false, yes/no, on/off) is refused at once, as below, instead of the call list.
- A refused client (a callSid that is not an active call, a binary choice, no choice in
  time, a call with too many watchers) gets one text, `error: <why>` (for an unknown callSid
  followed by `; active calls: [...]`), before the close (1008, or 1013 when full) whose
  reason says the same: websocat shows texts, not close reasons. A client that chooses an
  active call sees no difference.

/viewer/ws (JSON both ways; README, "The viewer protocol"):
1. The server sends `calls` (the active calls with their metadata), then `call_started` and
   `call_ended` as calls come and go.
2. The client sends `subscribe` or `unsubscribe` commands naming a callSid, at any time.
3. For each subscription the server sends `subscribed` (with the call's final results so
   far), then every Deepgram message of the call wrapped in `deepgram`, until `call_ended`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import client_protocol, viewer_protocol
from .exceptions import (
    BrokerUnavailable,
    ClientProtocolError,
    ProxyError,
    TooManySubscribers,
    UnknownCall,
    close_frame_for,
)
from .hub import CLIENT_LEFT, Ending, Hub, Outbox, Subscription, ViewerFeed
from .logs import get_logger
from .observations import is_bad_input

logger = get_logger("clients")

# How long an evicted client gets to accept our close frame before its socket is cut.
_EVICTION_GRACE_S = 2.0
# A person typing a callSid into websocat needs time; a socket that never chooses does not
# get to hold a connection forever.
CHOICE_TIMEOUT_S = 300.0

# Called with a callSid before a client joins it (`RedisBroker.prepare`: load a call streamed
# by another instance); may raise ProxyError.
Prepare = Callable[[str], Awaitable[None]]


async def _nothing_to_prepare(call_sid: str) -> None:
    return None


async def handle_client(
    ws: ServerConnection,
    hub: Hub,
    *,
    choice_timeout_s: float = CHOICE_TIMEOUT_S,
    prepare: Prepare = _nothing_to_prepare,
) -> None:
    """Serve one /client connection: the call list, its choice (within `choice_timeout_s`),
    then that call's results (after its history if it asked for it)."""
    peer = _peer(ws)
    try:
        options = client_protocol.parse_options(ws.request.path if ws.request else "")
        await ws.send(client_protocol.call_list(hub.active_calls()))
        try:
            async with asyncio.timeout(choice_timeout_s):
                choice = await ws.recv()
        except TimeoutError:
            raise ClientProtocolError(
                f"no callSid chosen within {choice_timeout_s:.0f} s"
            ) from None
        call_sid = client_protocol.parse_choice(choice)
        await prepare(call_sid)
        sub = hub.subscribe(call_sid, history=options.history)
    except ConnectionClosed:
        return
    except ProxyError as exc:
        await _refuse(ws, hub, exc)
        return
    logger.info("client %s subscribed to %s", peer, sub.call_sid)
    try:
        await _stream(ws, sub, hub)
    finally:
        hub.unsubscribe(sub)
        logger.info("client %s left %s (%s)", peer, sub.call_sid, _close_code(ws))


async def _refuse(ws: ServerConnection, hub: Hub, exc: ProxyError) -> None:
    """Say why in a text (`client_protocol.refusal`), then close with the code and reason
    of `exc`."""
    code, reason = close_frame_for(exc)
    logger.info("client %s refused (%d): %s", _peer(ws), code, exc)
    if is_bad_input(exc):
        hub.observer.refused_bad_input()
    active = hub.active_calls() if isinstance(exc, UnknownCall) else None
    try:
        await ws.send(client_protocol.refusal(str(exc), active))
    except ConnectionClosed:
        return
    await ws.close(code, reason)


async def _stream(ws: ServerConnection, sub: Subscription, hub: Hub) -> None:
    """Forward the subscription until it ends, the client leaves, or it is evicted."""
    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(_read_until_closed(ws, sub))
        watchdog = tasks.create_task(_close_when_evicted(ws, sub, sub.call_sid))
        try:
            await _forward(ws, sub, hub)
        finally:
            reader.cancel()
            watchdog.cancel()


async def _forward(ws: ServerConnection, outbox: Outbox, hub: Hub) -> None:
    """Send what `outbox` gives until its ending; tell the hub's observer when each Deepgram
    message is written (the fan-out latency: from its arrival in the hub)."""
    observer, clock = hub.observer, hub.clock
    try:
        while True:
            item = await outbox.get()
            if isinstance(item, Ending):
                await _end(ws, item)
                return
            await ws.send(item)
            if outbox.arrived:  # 0.0: a replay or a viewer event, not a live message
                observer.result_delivered(clock() - outbox.arrived)
    except ConnectionClosed:
        pass


async def _end(ws: ServerConnection, ending: Ending) -> None:
    if ending is CLIENT_LEFT:
        return
    if ending.say_close:
        await ws.send(client_protocol.CLOSE)
    await ws.close(ending.code, ending.reason)


async def _read_until_closed(ws: ServerConnection, sub: Subscription) -> None:
    """Ignore what the client sends after its choice; end the subscription when it leaves."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    sub.end(CLIENT_LEFT)


async def _close_when_evicted(ws: ServerConnection, outbox: Outbox, watching: str) -> None:
    """Close a client that fell too far behind, even if it has stopped reading."""
    await outbox.evicted.wait()
    ending = outbox.ending
    assert ending is not None  # eviction always sets one
    logger.warning("client %s of %s disconnected: %s", _peer(ws), watching, ending.reason)
    try:
        async with asyncio.timeout(_EVICTION_GRACE_S):
            await ws.close(ending.code, ending.reason)
    except TimeoutError:
        # Its receive window is full, so not even the close frame gets through.
        ws.transport.abort()


async def handle_viewer(
    ws: ServerConnection, hub: Hub, *, prepare: Prepare = _nothing_to_prepare
) -> None:
    """Serve one /viewer/ws connection: the call list, then the calls it subscribes to."""
    peer = _peer(ws)
    viewer = hub.add_viewer(now_ms=int(time.time() * 1000))
    logger.info("viewer %s connected", peer)
    try:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(_read_commands(ws, hub, viewer, prepare))
            watchdog = tasks.create_task(_close_when_evicted(ws, viewer, "the call list"))
            try:
                await _forward(ws, viewer, hub)
            finally:
                reader.cancel()
                watchdog.cancel()
    finally:
        hub.remove_viewer(viewer)
        logger.info("viewer %s left (%s)", peer, _close_code(ws))


async def _read_commands(
    ws: ServerConnection, hub: Hub, viewer: ViewerFeed, prepare: Prepare
) -> None:
    """Apply the viewer's commands until it leaves; a malformed one closes it (1008)."""
    peer = _peer(ws)
    try:
        async for message in ws:
            command = viewer_protocol.parse_command(message)
            if command.action == "unsubscribe":
                hub.unfollow(viewer, command.call_sid)
                continue
            try:
                await prepare(command.call_sid)
                hub.follow(viewer, command.call_sid)
            except (UnknownCall, TooManySubscribers, BrokerUnavailable) as exc:
                code, reason = close_frame_for(exc)
                hub.tell(viewer, viewer_protocol.error(command.call_sid, code, reason))
            else:
                logger.info("viewer %s subscribed to %s", peer, command.call_sid)
    except ConnectionClosed:
        pass
    except ClientProtocolError as exc:
        code, reason = close_frame_for(exc)
        logger.info("viewer %s refused (%d): %s", peer, code, exc)
        hub.observer.refused_bad_input()
        viewer.end(Ending(code, reason))
        return
    viewer.end(CLIENT_LEFT)


def _close_code(ws: ServerConnection) -> int | None:
    """The code that ended the connection: ours if we closed first, else the client's."""
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    first = sent if ws.protocol.close_rcvd_then_sent is not True else received
    return first.code if first is not None else None


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
