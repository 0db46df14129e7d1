"""The websockets internals this project relies on, each checked by name.

`direct_connection` subclasses websockets' asyncio connections and reads frames itself,
`frame_splitter` unmasks with websockets' C helper, and a few I/O modules read or set
attributes of a connection's Sans-I/O protocol. None of that is websockets' documented
API, so a release may change it: each test here names one internal and what we rely on,
and fails saying so. If one fails, adapt the module named in the message, or run with
DIRECT_RECEIVE=false (websockets' own recv()) until it is adapted.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import pytest
import websockets
import websockets.version
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from ..timing import S

VERSION = f"websockets {websockets.version.version}"


def broken(internal: str, reliance: str, found: object = "") -> NoReturn:
    detail = f" (found: {found})" if found != "" else ""
    pytest.fail(
        f"{VERSION} changed {internal}: we rely on {reliance}{detail}. "
        "See tests/unit/test_websockets_contract.py; DIRECT_RECEIVE=false avoids it.",
        pytrace=False,
    )


def require(ok: bool, internal: str, reliance: str, found: object = "") -> None:
    if not ok:
        broken(internal, reliance, found)


# --- names we import -------------------------------------------------------------------

IMPORTS = [
    (
        "websockets.asyncio.messages",
        "MAX_FRAGMENTS",
        "the count of fragments beyond which recv() refuses a message (direct_connection)",
    ),
    ("websockets.speedups", "apply_mask", "its C unmasking function (frame_splitter)"),
    ("websockets.utils", "apply_mask", "its Python unmasking function (frame_splitter)"),
    ("websockets.frames", "DATA_OPCODES", "the data frames' opcodes (direct_connection)"),
    ("websockets.protocol", "Event", "the type of what process_event gets (direct_connection)"),
    ("websockets.protocol", "State", "OPEN, CONNECTING (direct_connection)"),
]


@pytest.mark.parametrize(("module", "name", "reliance"), IMPORTS, ids=[i[1] for i in IMPORTS])
def test_imported_names_exist(module: str, name: str, reliance: str) -> None:
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        broken(f"{module}.{name}", reliance, repr(exc))
    assert value is not None


def test_max_fragments_is_a_count() -> None:
    from websockets.asyncio.messages import MAX_FRAGMENTS

    reliance = "an int, the limit direct_connection applies as recv() does"
    require(isinstance(MAX_FRAGMENTS, int) and MAX_FRAGMENTS > 1, "MAX_FRAGMENTS", reliance)


@pytest.mark.parametrize("module", ["websockets.speedups", "websockets.utils"])
def test_apply_mask_xors_the_payload_with_the_repeated_mask(module: str) -> None:
    apply_mask: Callable[[bytes, bytes], bytes] = importlib.import_module(module).apply_mask
    data, mask = bytes(range(10)), b"\x01\x02\x04\x08"
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    found = apply_mask(data, mask)
    require(found == expected, f"{module}.apply_mask(data, mask)", "XOR with the mask", found)


def test_data_opcodes_are_those_of_messages_and_their_fragments() -> None:
    from websockets.frames import DATA_OPCODES

    found = set(DATA_OPCODES)
    expected = {Opcode.CONT, Opcode.TEXT, Opcode.BINARY}
    require(found == expected, "DATA_OPCODES", "CONT, TEXT and BINARY", found)


# --- methods we override or call -------------------------------------------------------

METHODS: list[tuple[type[Any], str, list[str], str]] = [
    (
        Connection,
        "data_received",
        ["self", "data"],
        "the transport's callback; direct connections split the bytes before passing them on",
    ),
    (
        Connection,
        "process_event",
        ["self", "event"],
        "one call per parsed event, in order; direct connections take data frames there",
    ),
    (
        ServerConnection,
        "process_event",
        ["self", "event"],
        "its first event is the handshake Request (DirectConnection decides `direct` there)",
    ),
    (
        ClientConnection,
        "process_event",
        ["self", "event"],
        "its first event is the handshake Response (DirectClientConnection likewise)",
    ),
    (
        ServerConnection,
        "handshake",
        ["self", "process_request", "process_response", "server_header"],
        "returns once the response is sent: GuardedConnection then parses the frames "
        "held since the request",
    ),
    (Connection, "connection_lost", ["self", "exc"], "the end of the connection (sink.closed)"),
    (
        Connection,
        "send_data",
        ["self"],
        "every write of what the protocol has to send (after fail(), pongs...); "
        "GuardedConnection writes it itself to bound its write buffer",
    ),
    (Protocol, "fail", ["self", "code", "reason"], "failing the connection with a close frame"),
    (
        Connection,
        "start_keepalive",
        ["self"],
        "called by the server once the handshake is done, to start keepalive; "
        "GuardedConnection calls it one ping_interval later, from a timer",
    ),
]


@pytest.mark.parametrize(
    ("owner", "name", "parameters", "reliance"),
    METHODS,
    ids=[f"{m[0].__name__}.{m[1]}" for m in METHODS],
)
def test_methods_keep_their_signatures(
    owner: type[Any], name: str, parameters: list[str], reliance: str
) -> None:
    internal = f"{owner.__name__}.{name}({', '.join(parameters)})"
    method = getattr(owner, name, None)
    if not callable(method):
        broken(internal, reliance, "no such method")
    found = list(inspect.signature(method).parameters)
    require(found == parameters, internal, reliance, found)


# --- the Sans-I/O protocol: parsing the handshake and failing ----------------------------

REQUEST = (
    b"GET /twilio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked_text(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


def test_frames_in_the_handshakes_read_are_parsed_with_it() -> None:
    """direct_connection finds the end of the HTTP head itself and leaves the frames after
    it in the same read to websockets: they must come out of that same read, as frames,
    while the protocol is still CONNECTING (before the 101 response)."""
    protocol = ServerProtocol()
    protocol.receive_data(REQUEST + masked_text("hello"))
    events = protocol.events_received()
    kinds = [type(e).__name__ for e in events]
    internal = "ServerProtocol.receive_data(request + frame)"
    require(kinds == ["Request", "Frame"], internal, "[Request, Frame] from one read", kinds)
    frame = events[1]
    assert isinstance(frame, Frame)
    require(frame.data == b"hello" and frame.fin, internal, "the frame, unmasked, with fin")
    require(protocol.state is State.CONNECTING, "State", "CONNECTING until the response")


def test_a_refused_handshake_sets_handshake_exc() -> None:
    protocol = ServerProtocol()
    protocol.receive_data(b"NOT HTTP\r\n\r\n" + masked_text("hello"))
    events = protocol.events_received()
    reliance = "set when the request cannot be parsed, with no frames parsed after it"
    require(protocol.handshake_exc is not None, "Protocol.handshake_exc", reliance)
    require(events == [], "Protocol.handshake_exc", reliance, events)


def open_protocol(max_size: int | None = 1 << 20) -> ServerProtocol:
    protocol = ServerProtocol(max_size=max_size)
    protocol.receive_data(REQUEST)
    [request] = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    return protocol


def test_max_message_size_set_after_the_handshake_applies() -> None:
    """server.py sets each path's limit on `protocol.max_message_size` at the upgrade."""
    protocol = open_protocol()
    internal = "Protocol.max_message_size"
    require(protocol.max_message_size == 1 << 20, internal, "the max_size given", "")
    protocol.max_message_size = 4
    protocol.receive_data(masked_text("12345"))
    protocol.events_received()
    close = protocol.close_sent
    found = close.code if close else None
    require(found == CloseCode.MESSAGE_TOO_BIG, internal, "a settable limit (1009 past it)", found)


def test_fail_sends_a_close_frame_and_starts_closing() -> None:
    protocol = open_protocol()
    protocol.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
    internal = "Protocol.fail(code, reason)"
    require(protocol.state is State.CLOSING, internal, "state CLOSING", protocol.state)
    sent = protocol.data_to_send()
    frame = Close.parse(sent[0][2:]) if sent else None
    expected = Close(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
    require(frame == expected, internal, "a close frame with that code and reason", sent)


def test_close_attributes_after_a_closing_handshake() -> None:
    """clients.py reads who closed first; call.py reads close_exc."""
    protocol = open_protocol()
    protocol.send_close(CloseCode.NORMAL_CLOSURE)
    protocol.receive_data(Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=True))
    protocol.receive_eof()
    for name in ("close_sent", "close_rcvd"):
        require(isinstance(getattr(protocol, name), Close), f"Protocol.{name}", "a Close")
    require(
        protocol.close_rcvd_then_sent is False,
        "Protocol.close_rcvd_then_sent",
        "False when we closed first",
        protocol.close_rcvd_then_sent,
    )
    require(
        isinstance(protocol.close_exc, ConnectionClosed),
        "Protocol.close_exc",
        "the ConnectionClosed that says how it ended",
    )


# --- the asyncio connections, over a real loopback socket --------------------------------

C = TypeVar("C", ServerConnection, ClientConnection)
Seen = list[tuple[str, str, bool, bool]]  # (side, event type, handshake unset, in data_received)


def recording(base: type[C], side: str, seen: Seen) -> type[C]:
    """A subclass of `base` that notes each event `process_event` gets, whether the
    handshake attribute was still unset, and whether it came inside `data_received`."""
    handshake = "request" if side == "server" else "response"

    class Recording(base):  # type: ignore[valid-type,misc]  # a class made at run time
        receiving: bool = False

        def data_received(self, data: bytes) -> None:
            self.receiving = True
            try:
                super().data_received(data)
            finally:
                self.receiving = False

        def process_event(self, event: Any) -> None:
            unset = getattr(self, handshake) is None
            seen.append((side, type(event).__name__, unset, self.receiving))
            super().process_event(event)

    return Recording


async def test_connections_process_each_event_in_data_received_handshake_first() -> None:
    seen: Seen = []
    server_side: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        server_side.append(ws)
        await ws.recv()
        await ws.send("reply")
        await done.wait()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=recording(ServerConnection, "server", seen),
        max_queue=7,
        close_timeout=3,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}/",
            proxy=None,
            create_connection=recording(ClientConnection, "client", seen),
        ) as client:
            await client.send("hello")
            assert await client.recv() == "reply"
            check_live_connection(server_side[0], server)
            done.set()
    first = {side: next(s for s in seen if s[0] == side) for side in ("server", "client")}
    expect = {"server": ("Request", "request"), "client": ("Response", "response")}
    for side, (kind, attribute) in expect.items():
        internal = f"{side.capitalize()}Connection.process_event"
        reliance = f"the {kind} first, while `{attribute}` is None"
        require(first[side][1:3] == (kind, True), internal, reliance, first[side])
    frames = [s for s in seen if s[1] == "Frame"]
    require(
        bool(frames) and all(not s[2] for s in frames),
        "Connection.process_event",
        "frames after the handshake event",
        seen,
    )
    require(
        all(s[3] for s in seen),
        "Connection.data_received",
        "every event processed inside the data_received call that parsed it",
        seen,
    )


def check_live_connection(ws: ServerConnection, server: Server) -> None:
    """The attributes of an open connection that direct_connection and server.py use."""
    require(ws.max_queue_high == 7, "Connection.max_queue_high", "max_queue's high mark")
    require(ws.close_timeout == 3, "Connection.close_timeout", "the close_timeout given")
    require(ws.loop is asyncio.get_running_loop(), "Connection.loop", "the loop running it")
    transport = ws.transport
    for method in ("pause_reading", "resume_reading", "abort"):
        require(
            callable(getattr(transport, method, None)),
            f"Connection.transport.{method}",
            "the asyncio transport (flow control, abort)",
        )
    require(ws.protocol.state is State.OPEN, "Connection.protocol.state", "State.OPEN")
    require(ws.protocol.handshake_exc is None, "Protocol.handshake_exc", "None once open")


async def test_recv_refuses_a_message_of_more_than_max_fragments() -> None:
    """direct_connection refuses such a message as recv() does: same limit, code, reason."""
    from websockets.asyncio.messages import MAX_FRAGMENTS

    async def handler(ws: ServerConnection) -> None:
        await ws.send(await ws.recv())
        await ws.recv()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as client:
            # send() ends a fragmented message with an empty frame: n pieces, n + 1 frames.
            await client.send("x" for _ in range(MAX_FRAGMENTS - 1))  # MAX_FRAGMENTS frames
            assert await client.recv() == "x" * (MAX_FRAGMENTS - 1)
            try:
                await client.send("x" for _ in range(MAX_FRAGMENTS))  # one frame too many
            except ConnectionClosed:
                pass
            await client.wait_closed()
    found = (client.close_code, client.close_reason)
    reliance = "recv() refusing more fragments with 1009 'too many fragments'"
    require(found == (1009, "too many fragments"), "MAX_FRAGMENTS", reliance, found)


def test_response_and_request_fields() -> None:
    """Read at the handshake: the request's path (which paths are direct), the response's
    status (a client connection is direct after a 101)."""
    request = Request("/twilio?x=1", websockets.Headers())
    response = Response(101, "Switching Protocols", websockets.Headers())
    require(request.path == "/twilio?x=1", "Request.path", "the request target")
    require(response.status_code == 101, "Response.status_code", "the status code")


def test_pings_are_events_and_answered_in_data_to_send() -> None:
    """websockets answers each ping of a read as it parses it (which is why GuardedConnection
    counts control frames before passing a read on), and GuardedConnection writes
    data_to_send() itself: one pong per ping, b"" for the end of the stream."""
    protocol = open_protocol()
    ping = Frame(Opcode.PING, b"x").serialize(mask=True, extensions=[])
    protocol.receive_data(ping * 3)
    kinds = [e.opcode for e in protocol.events_received() if isinstance(e, Frame)]
    require(kinds == [Opcode.PING] * 3, "Protocol.events_received", "every ping an event", kinds)
    pong = Frame(Opcode.PONG, b"x").serialize(mask=False, extensions=[])
    sent = protocol.data_to_send()
    require(sent == [pong] * 3, "Protocol.data_to_send", "one pong frame per ping", sent)
    protocol.fail(CloseCode.POLICY_VIOLATION, "too many control frames")
    sent = protocol.data_to_send()
    require(sent[-1:] == [b""], "Protocol.data_to_send", 'b"" last: a server ends its side', sent)


def test_eof_sent_says_whether_websockets_still_parses() -> None:
    """GuardedConnection fails a flooder unless websockets has ended our side already
    (`Protocol.eof_sent`): until then a server answers pings, in CLOSING too; fail() then
    ends our side, and nothing more is answered."""
    ping = Frame(Opcode.PING, b"x").serialize(mask=True, extensions=[])
    internal = "Protocol.eof_sent"
    protocol = open_protocol()
    require(protocol.eof_sent is False, internal, "False while open")
    protocol.send_close(CloseCode.NORMAL_CLOSURE)  # CLOSING: our close sent, the peer's awaited
    protocol.data_to_send()
    protocol.receive_data(ping)
    protocol.events_received()
    require(protocol.eof_sent is False, internal, "False while CLOSING (a close sent)")
    require(len(protocol.data_to_send()) == 1, "Protocol", "a ping answered in CLOSING")
    protocol.fail(CloseCode.POLICY_VIOLATION, "too many control frames")
    require(protocol.data_to_send() == [b""], "Protocol.fail", 'b"" only, in CLOSING')
    require(protocol.eof_sent is True, internal, "True once fail() ended our side")
    protocol.receive_data(ping)
    protocol.events_received()
    require(protocol.data_to_send() == [], "Protocol.fail", "nothing answered after it")


async def test_a_write_without_send_is_what_send_writes_and_paused_says_when_to_stop() -> None:
    """clients.py and deepgram.py write a message at once, without `send()`, while the
    connection is open, not `paused` and no fragmented send is under way: the frame
    `protocol.send_text` makes and `send_data` writes is the message the peer receives, and
    `paused` follows asyncio's flow-control callbacks (`pause_writing` when the transport's
    buffer is over its high-water mark; then they queue, and `send()` waits in `drain()`)."""
    opened: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        opened.set_result(ws)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as client:
            ws = await opened
            try:
                require(ws.send_in_progress is None, "Connection.send_in_progress", "None")
                require(ws.paused is False, "Connection.paused", "False while writes flow")
                ws.protocol.send_text(b"at once")
                ws.send_data()
                found = await client.recv()
                reliance = "the message send() would send"
                require(found == "at once", "Protocol.send_text + send_data", reliance, found)
                ws.pause_writing()
                require(ws.paused is True, "Connection.paused", "True after pause_writing")
                ws.resume_writing()
                require(ws.paused is False, "Connection.paused", "False after resume_writing")
            finally:
                done.set()


# --- what a connection holds (issue 11: a pending /twilio stream costs a few KB) ---------

CONNECTION_MODULES = ("websockets.asyncio.connection", "websockets.asyncio.server")


def calls_on(attribute: str) -> set[str]:
    """The methods websockets' asyncio connections call on `self.<attribute>`."""
    found: set[str] = set()
    for module in (*CONNECTION_MODULES, "websockets.asyncio.client"):
        source = inspect.getsource(importlib.import_module(module))
        found.update(re.findall(rf"self\.{attribute}\.(\w+)", source))
    return found


def test_drain_waiters_are_only_appended_removed_and_iterated() -> None:
    """direct_connection gives each connection a list there, not a deque (0.7 KB less)."""
    found = calls_on("drain_waiters")
    reliance = "append(), remove() and iteration only, which a list has too"
    require(found <= {"append", "remove"}, "Connection.drain_waiters", reliance, found)


def test_recv_messages_is_only_read_fed_and_closed() -> None:
    """A direct connection replaces its `Assembler` (1 KB) with `_ToSink`, once its head is
    read: websockets makes it at connection_made, and then only gets, puts and closes."""
    found = calls_on("recv_messages")
    reliance = "get(), get_iter(), put() and close() only (direct_connection._ToSink)"
    require(found <= {"get", "get_iter", "put", "close"}, "Connection.recv_messages", reliance)
    made = "self.recv_messages = Assembler(" in inspect.getsource(Connection.connection_made)
    require(made, "Connection.connection_made", "making recv_messages, before any event")


def functions_reading(attribute: str, module: str) -> set[str]:
    """The names of the top-level functions and methods of `module` that read `.attribute`."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    found: set[str] = set()

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = owner
            if owner is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if isinstance(child, ast.Attribute) and child.attr == attribute and name:
                found.add(name)
            visit(child, name)

    for top in tree.body:
        visit(top if isinstance(top, ast.ClassDef) else ast.Module([top], []), None)
    return found


def test_handshake_headers_are_read_only_during_the_handshake() -> None:
    """server.py drops a /twilio connection's handshake headers once its handler runs
    (`forget_handshake_headers`: 3 KB); websockets must not read them after."""
    found = set().union(*(functions_reading("headers", m) for m in CONNECTION_MODULES))
    reliance = "headers read in handshake() (and basic_auth's process_request) only"
    require(found <= {"handshake", "basic_auth"}, "ServerConnection", reliance, found)


def test_headers_mutators_are_those_that_forgotten_headers_refuse() -> None:
    """`direct_connection._NoHeaders`, one empty object for every forgotten handshake,
    refuses the mutators of `Headers` (MutableMapping's others go through them)."""
    own = {name for name, value in vars(websockets.Headers).items() if callable(value)}
    known = {
        "__contains__", "__delitem__", "__eq__", "__getitem__", "__init__", "__iter__",
        "__len__", "__repr__", "__setitem__", "__str__", "clear", "copy", "get_all",
        "raw_items", "serialize", "set_insecure", "update",
    }  # fmt: skip
    require(own <= known, "Headers", "no method but these (check any new one mutates)", own)


def test_keepalive_task_is_none_until_keepalive_starts() -> None:
    """GuardedConnection starts keepalive once, from a timer, unless `keepalive_task` is
    already set."""
    source = inspect.getsource(Connection.start_keepalive)
    reliance = "start_keepalive() setting keepalive_task"
    require("self.keepalive_task = " in source, "Connection.keepalive_task", reliance)


async def test_a_handler_may_be_a_function_returning_its_coroutine() -> None:
    """server.py's `route` returns the coroutine that serves a connection rather than
    awaiting it (a coroutine frame less per connection): websockets awaits what it returns."""
    served = asyncio.Event()

    async def serve_it(ws: ServerConnection) -> None:
        await ws.send(await ws.recv())
        served.set()

    def route(ws: ServerConnection) -> Awaitable[None]:
        return serve_it(ws)

    async with serve(route, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as client:
            await client.send("echo")
            reply = await client.recv()
            await asyncio.wait_for(served.wait(), 5 * S)
    require(reply == "echo", "serve(handler)", "awaiting what the handler returns")
