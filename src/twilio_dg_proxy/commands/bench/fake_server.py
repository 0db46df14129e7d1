"""The fake Deepgram in a process of its own, so its CPU is not the load generator's.

The child, ``python -m twilio_dg_proxy.commands.bench.fake_server --result-ms N``, serves a
`LeanDeepgram`, prints one JSON line ``{"url": ...}``, then answers one JSON line per command
read from stdin: ``{"op": "next"}`` gives the next stream's ``{"request_id": ...}`` (streams
are handed out in the order the proxy opened them); ``{"op": "report", "wait_s": S}`` waits
up to S seconds for every stream to close, then gives ``{"streams": [StreamRecord as a dict,
...]}``. It exits when stdin closes. `FakeProcess` is the parent's side.

`LeanDeepgram` answers as `engine.synthetic.SyntheticEngine` does (the same
`SyntheticSession` decides what each message gets: the same results, stamps, checks and
closes; the same upgrade checks), on websockets' Sans-I/O protocol driven straight from an
`asyncio.Protocol`, as `wire.WireClient` is: each chunk of audio is read, answered and its
results written (in one write) in the socket callback that read it. Through websockets'
asyncio connection, a task per stream, a queue hop per chunk and a lock per result cost
more than everything else the fake does. Its results are serialised by orjson when
installed. It keeps no idle deadline (NET-0001): the benchmark is not about idle streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any, Final, cast
from urllib.parse import urlsplit

from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ... import event_loop
from ...deepgram_server_protocol import (
    AUTH_TOKEN_PATH,
    LISTEN_PATH,
    REQUEST_ID_HEADER,
    JSONDict,
    check_upgrade,
    refusal_body,
    refusal_headers,
    token_details_body,
)
from ...engine.synthetic import SyntheticSession, SyntheticStream
from ...http_responses import set_header
from .wire import flush

__all__ = ["FakeProcess", "LeanDeepgram", "StreamRecord", "main"]

_JSON: Final = {"Content-Type": "application/json"}
# After our close frame, how long the proxy gets to finish the closing handshake.
_CLOSE_TIMEOUT_S: Final = 10.0
# Reports hold every stream's audio log: several megabytes for a thousand calls.
_LINE_LIMIT: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """What one Deepgram stream received and sent, as the benchmark needs it."""

    request_id: str
    audio_bytes: int
    audio_log: list[tuple[float, int]]  # (time.monotonic() at receipt, cumulative bytes)
    sent_count: int  # Results and Metadata messages sent
    closed: bool

    @classmethod
    def of(cls, stream: SyntheticStream) -> StreamRecord:
        """The record of a live stream."""
        return cls(
            request_id=stream.request_id,
            audio_bytes=stream.audio_bytes,
            audio_log=stream.audio_log,
            sent_count=stream.sent_count,
            closed=stream.closed.is_set(),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamRecord:
        """The record from its JSON form (`asdict`)."""
        return cls(
            request_id=data["request_id"],
            audio_bytes=data["audio_bytes"],
            audio_log=[(t, n) for t, n in data["audio_log"]],
            sent_count=data["sent_count"],
            closed=data["closed"],
        )


try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - orjson installs wherever CPython does
    _serialise: Callable[[JSONDict], str] = json.dumps
else:

    def _serialise(message: JSONDict) -> str:
        """`message` as JSON text, by orjson (several times json.dumps's speed)."""
        return _orjson_dumps(message).decode()


class _Stream(asyncio.Protocol):
    """One connection from the proxy: the handshake, then each message answered from the
    callback that read it."""

    def __init__(self, fake: LeanDeepgram) -> None:
        self.fake = fake
        self.protocol = ServerProtocol(max_size=None)
        self.session: SyntheticSession | None = None
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._text = False  # the message being received is text
        self._close_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._events()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.session is not None:
            stream = self.session.stream
            if stream.close_code is None:  # the peer's, as the engine records it
                stream.close_code = self.protocol.close_code
                stream.close_reason = self.protocol.close_reason or ""
            stream.closed.set()

    def _events(self) -> None:
        """Handle what websockets parsed, then write every answer in one write."""
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._upgrade(event)
        flush(self.protocol, self._transport)
        if self.protocol.close_expected() and self._close_timer is None:
            assert self._transport is not None
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(_CLOSE_TIMEOUT_S, self._transport.abort)

    def _upgrade(self, request: Request) -> None:
        """Accept the upgrade, or refuse it as Deepgram would (`check_upgrade`); answer the
        proxy's start-up check of its key (`AUTH_TOKEN_PATH`) as `listening.Listening` does."""
        request_id = str(uuid.uuid4())
        if urlsplit(request.path).path == AUTH_TOKEN_PATH:
            body = token_details_body(request_id=request_id)
            self._respond(self.protocol.reject(HTTPStatus.OK, body), _JSON, request_id)
            return
        refusal = check_upgrade(request.path, request.headers, api_key=None)
        if refusal is not None:
            body = refusal_body(refusal, request_id=request_id)
            headers = refusal_headers(refusal, request_id=request_id)
            self._respond(self.protocol.reject(refusal.status, body), headers, request_id)
            return
        response = self.protocol.accept(request)
        self._respond(response, {}, request_id)
        if response.status_code == 101:
            self.session = SyntheticSession.opened(
                request, request_id, result_ms=self.fake.result_ms, record=False, dumps=_serialise
            )
            self.fake.opened(self.session.stream)

    def _respond(self, response: Response, headers: Mapping[str, str], request_id: str) -> None:
        """Send `response` with `headers` (replacing websockets' own) and the request id."""
        for name, value in {**headers, REQUEST_ID_HEADER: request_id}.items():
            set_header(response, name, value)
        self.protocol.send_response(response)

    def _frame(self, frame: Frame) -> None:
        """Take a data frame: a whole message, or a fragment of one (websockets has checked
        their order)."""
        session = self.session
        if session is None or frame.opcode not in DATA_OPCODES:
            return  # control frames are websockets' to answer
        data = bytes(frame.data)  # the parser gives bytes already: no copy
        if frame.opcode is not Opcode.CONT:
            self._text = frame.opcode is Opcode.TEXT
        if not frame.fin:
            self._fragments.append(data)
            return
        if self._fragments:
            data = b"".join([*self._fragments, data])
            self._fragments.clear()
        if self.protocol.state is not State.OPEN:
            return  # closing: what follows our close frame is not answered
        try:
            decoded: bytes | str = data.decode() if self._text else data
        except UnicodeDecodeError:
            self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        replies, close = session.receive(decoded)
        if replies:
            for reply in replies:
                self.protocol.send_text(session.render(reply).encode())
            # Written now, right after their stamps, not after the rest of the read.
            flush(self.protocol, self._transport)
        if close is not None:
            session.stream.close_code, session.stream.close_reason = close
            self.protocol.send_close(*close)


class LeanDeepgram:
    """The benchmark's fake Deepgram on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, result_ms: int) -> None:
        self.result_ms = result_ms
        self.streams: list[SyntheticStream] = []
        self._accepted: asyncio.Queue[SyntheticStream] = asyncio.Queue()
        self._server: asyncio.Server | None = None

    @classmethod
    @asynccontextmanager
    async def serving(cls, result_ms: int) -> AsyncIterator[LeanDeepgram]:
        """Listen on an ephemeral port until the block ends."""
        fake = cls(result_ms)
        loop = asyncio.get_running_loop()
        fake._server = await loop.create_server(lambda: _Stream(fake), "127.0.0.1", 0)
        async with fake._server:
            yield fake

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/listen``: what to set DEEPGRAM_URL to."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{LISTEN_PATH}"

    def opened(self, stream: SyntheticStream) -> None:
        """A stream was accepted."""
        self.streams.append(stream)
        self._accepted.put_nowait(stream)

    async def next_stream(self, timeout: float) -> SyntheticStream:  # noqa: ASYNC109
        """The next stream accepted and not yet returned; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            return await self._accepted.get()


async def _serve(result_ms: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with LeanDeepgram.serving(result_ms) as fake:
        _reply({"url": fake.url})
        while line := await reader.readline():
            command = json.loads(line)
            if command["op"] == "next":
                try:
                    stream = await fake.next_stream(timeout=command.get("timeout", 20.0))
                except TimeoutError:
                    _reply({"error": "no new stream"})
                    continue
                _reply({"request_id": stream.request_id})
            elif command["op"] == "report":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(command.get("wait_s", 0.0)):
                        for stream in fake.streams:
                            await stream.closed.wait()
                _reply({"streams": [asdict(StreamRecord.of(s)) for s in fake.streams]})


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--result-ms", type=int, default=250)
    args = parser.parse_args()
    event_loop.run(_serve(args.result_ms))


class FakeProcess:
    """The parent's handle on the fake Deepgram child process."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        self._lock = asyncio.Lock()  # one command at a time on the pipe

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    @asynccontextmanager
    async def started(cls, result_ms: int) -> AsyncIterator[FakeProcess]:
        """Start the child (it inherits this process's CPU affinity); end it on exit."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "twilio_dg_proxy.commands.bench.fake_server",
            "--result-ms",
            str(result_ms),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(20):
                hello = json.loads(await process.stdout.readline())
            yield cls(process, hello["url"])
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        if not line:
            raise ConnectionError("the fake Deepgram process exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def next_stream(self, timeout: float) -> str:  # noqa: ASYNC109 (the child applies it)
        """The request id of the next stream the proxy opened; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout + 5):
            answer = await self._ask({"op": "next", "timeout": timeout})
        if "request_id" not in answer:
            raise TimeoutError("no new Deepgram stream")
        return str(answer["request_id"])

    async def streams(self, wait_s: float) -> dict[str, StreamRecord]:
        """Every stream by request id, once all have closed or `wait_s` has passed."""
        answer = await self._ask({"op": "report", "wait_s": wait_s})
        records = (StreamRecord.from_json(s) for s in answer["streams"])
        return {record.request_id: record for record in records}


if __name__ == "__main__":
    main()
