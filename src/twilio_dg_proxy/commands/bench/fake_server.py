"""The synthetic Deepgram in a process of its own, so its CPU is not the load generator's.

The child, ``python -m twilio_dg_proxy.commands.bench.fake_server --result-ms N``, serves a
`SyntheticEngine` (``record=False``), prints one JSON line ``{"url": ...}``, then answers one
JSON line per command read from stdin: ``{"op": "next"}`` gives the next stream's
``{"request_id": ...}`` (streams are handed out in the order the proxy opened them);
``{"op": "report", "wait_s": S}`` waits up to S seconds for every stream to close, then gives
``{"streams": [StreamRecord as a dict, ...]}``. It exits when stdin closes.
`FakeProcess` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final

from ... import event_loop
from ...engine.synthetic import SyntheticEngine, SyntheticStream

__all__ = ["FakeProcess", "StreamRecord", "main"]

# The fake's NET-0001 rule would close streams opened early in a long set-up before their
# audio starts; the benchmark is not about idle streams.
_IDLE_TIMEOUT_S: Final = 3600.0
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


async def _serve(result_ms: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with SyntheticEngine(
        result_ms=result_ms, idle_timeout_s=_IDLE_TIMEOUT_S, record=False
    ) as fake:
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
