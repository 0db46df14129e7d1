"""The offline engine over real loopback sockets: real speech in, real words out.

The speech is tests/data/engine_sample.wav: a two-speaker call made once with espeak-ng
(make_engine_sample.sh), 8 kHz mu-law stereo, the words in engine_sample.txt. One engine
(two worker processes) serves the whole module, since starting one loads the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from twilio_dg_proxy.engine import model
from twilio_dg_proxy.engine.server import OfflineEngine
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ...timing import S
from ..helpers import ServerProcess, TwilioPeer, Watcher, running_proxy

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATA = Path(__file__).resolve().parents[2] / "data"
STEREO = "?encoding=mulaw&sample_rate=8000&channels=2&multichannel=true"
CHUNK = 1600  # 100 ms of stereo mu-law, the proxy's default CHUNK_MS
# Words each speaker says that tiny.en gets right on this sample, and must not leak into the
# other channel.
KEY_WORDS = {
    0: {"hello", "table", "people", "tonight", "david", "miller"},
    1: {"evening", "harbor", "restaurant", "help", "course", "time", "come"},
}


@dataclass(frozen=True)
class Sample:
    audio: bytes  # interleaved stereo mu-law
    turns: list[tuple[int, str]]  # (channel, words) in call order

    @property
    def seconds(self) -> float:
        return len(self.audio) / 2 / 8000

    def reference(self, channel: int) -> list[str]:
        return normalise(" ".join(text for c, text in self.turns if c == channel))


def read_mulaw_wav(path: Path) -> tuple[int, bytes]:
    """(channels, data) of a WAV file of 8 kHz mu-law (format tag 7)."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE", f"{path} is not a WAV file"
    position, channels, data = 12, 0, b""
    while position + 8 <= len(raw):
        kind = raw[position : position + 4]
        size = int.from_bytes(raw[position + 4 : position + 8], "little")
        body = raw[position + 8 : position + 8 + size]
        if kind == b"fmt ":
            tag = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            assert (tag, rate) == (7, 8000), f"{path}: expected 8 kHz mu-law"
        elif kind == b"data":
            data = body
        position += 8 + size + size % 2
    return channels, data


@pytest.fixture(scope="module")
def sample() -> Sample:
    channels, audio = read_mulaw_wav(DATA / "engine_sample.wav")
    assert channels == 2
    turns = []
    for line in (DATA / "engine_sample.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            channel, _, text = line.split("|")
            turns.append((int(channel), text))
    return Sample(audio, turns)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[OfflineEngine]:
    async with OfflineEngine(workers=2) as started:
        yield started


_NUMBERS = {"4": "four", "9": "nine"}


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation, digits spelled out (Whisper writes "4")."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return [_NUMBERS.get(word, word) for word in words]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between word lists (substitutions, insertions, deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


async def send_audio(ws: ClientConnection, audio: bytes, *, speed: float | None = None) -> None:
    """Send `audio` in 100 ms messages, `speed` times faster than real time (or at once)."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    for n, offset in enumerate(range(0, len(audio), CHUNK)):
        await ws.send(audio[offset : offset + CHUNK])
        if speed is not None:
            await asyncio.sleep(max(0.0, origin + (n + 1) * 0.1 / speed - loop.time()))


async def receive_all(ws: ClientConnection, within: float = 30 * S) -> list[dict[str, Any]]:
    messages = []
    async with asyncio.timeout(within):
        async for message in ws:
            assert isinstance(message, str)
            messages.append(json.loads(message))
    return messages


def finals(messages: list[dict[str, Any]], channel: int) -> list[dict[str, Any]]:
    return [
        m
        for m in messages
        if m["type"] == "Results" and m["is_final"] and m["channel_index"][0] == channel
    ]


def text(results: list[dict[str, Any]]) -> str:
    return " ".join(r["channel"]["alternatives"][0]["transcript"] for r in results).strip()


async def test_finals_carry_each_speakers_words_on_their_channel_then_metadata_and_1000(
    engine: OfflineEngine, sample: Sample
) -> None:
    decoded_before = engine.stats.final_decodes
    async with connect(engine.url + STEREO + "&punctuate=true", proxy=None) as ws:
        await send_audio(ws, sample.audio)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await receive_all(ws)
    assert ws.close_code == 1000
    *results, metadata = messages
    assert metadata["type"] == "Metadata"
    assert metadata["channels"] == 2
    assert metadata["duration"] == pytest.approx(sample.seconds, abs=0.001)
    assert all(r["type"] == "Results" and r["is_final"] for r in results)  # no interims asked

    errors = words = 0
    for channel in (0, 1):
        channel_finals = finals(messages, channel)
        said = set(normalise(text(channel_finals)))
        assert KEY_WORDS[channel] <= said, (channel, text(channel_finals))
        assert not KEY_WORDS[1 - channel] & said, (channel, text(channel_finals))
        # Finals tile the channel's timeline, and each utterance ends with a speech_final.
        assert channel_finals[0]["start"] == 0
        for before, after in zip(channel_finals, channel_finals[1:], strict=False):
            assert after["start"] == pytest.approx(before["start"] + before["duration"], abs=1e-3)
        last = channel_finals[-1]
        assert last["start"] + last["duration"] == pytest.approx(sample.seconds, abs=1e-3)
        assert sum(f["speech_final"] for f in channel_finals) >= 2
        # Word times lie within their message's span.
        for final in channel_finals:
            for word in final["channel"]["alternatives"][0]["words"]:
                assert final["start"] <= word["start"] <= word["end"]
                assert word["end"] <= final["start"] + final["duration"] + 1e-3
        reference = sample.reference(channel)
        errors += word_errors(reference, normalise(text(channel_finals)))
        words += len(reference)
    # Measured 3 errors in 39 words (7.7 %): "book" heard as "work", "nine o'clock" as
    # "either clock". The bound leaves room for other CPUs' arithmetic.
    assert errors / words <= 0.2, f"word error rate {errors}/{words}"
    # Decoding runs in worker processes, never on the loop that serves the stream: the model
    # exists only where init_worker() loaded it: decode() refuses to run in this process, and
    # yet every final with words was decoded.
    with pytest.raises(RuntimeError, match="runs in a worker process"):
        model.decode(np.zeros(800, dtype=np.float32))
    spoken = [r for r in results if r["channel"]["alternatives"][0]["transcript"]]
    assert engine.stats.final_decodes - decoded_before >= len(spoken) > 0


async def test_interim_results_come_before_the_final_of_their_utterance(
    engine: OfflineEngine, sample: Sample
) -> None:
    # The callee's first turn (0.5-4.2 s) in real time, then the end of the stream.
    url = engine.url + STEREO + "&interim_results=true&punctuate=true"
    async with connect(url, proxy=None) as ws:
        await send_audio(ws, sample.audio[: 5 * 16000], speed=1.0)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await receive_all(ws)
    callee = [m for m in messages if m["type"] == "Results" and m["channel_index"][0] == 1]
    first_final = next(i for i, m in enumerate(callee) if m["is_final"])
    interims = [m for m in callee[:first_final] if m["channel"]["alternatives"][0]["transcript"]]
    assert interims, "no interim result before the first final"
    assert all(not m["is_final"] and not m["speech_final"] for m in interims)
    assert all(m["start"] == 0 for m in interims)
    durations = [m["duration"] for m in interims]
    assert durations == sorted(durations)  # each re-decodes the growing utterance
    assert "evening" in normalise(text(callee[first_final : first_final + 1]))


async def test_finalize_flushes_the_utterance_in_progress(
    engine: OfflineEngine, sample: Sample
) -> None:
    async with connect(engine.url + STEREO, proxy=None) as ws:
        await send_audio(ws, sample.audio[: 3 * 16000])  # mid-way through the first turn
        await ws.send(json.dumps({"type": "Finalize"}))
        async with asyncio.timeout(10 * S):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "Results" and message["channel_index"][0] == 1:
                    break
        assert message["is_final"] and message["from_finalize"]
        assert not message["speech_final"]  # the utterance was cut, not ended
        assert (message["start"], message["duration"]) == (0, 3.0)
        assert "evening" in normalise(text([message]))
        await ws.send(json.dumps({"type": "CloseStream"}))
        rest = await receive_all(ws)
    assert rest[-1]["type"] == "Metadata" and ws.close_code == 1000


async def test_keepalive_holds_a_stream_and_silence_closes_it_with_net_0001(
    engine: OfflineEngine,
) -> None:
    # The KeepAlives' interval scales with the idle timeout they must beat, so a busy machine
    # has more room between two of them.
    idle = 0.5 * S
    engine.idle_timeout_s = idle
    try:
        async with connect(engine.url + STEREO, proxy=None) as ws:
            await ws.send(b"\xff" * CHUNK)
            for _ in range(4):  # over twice the idle timeout
                await asyncio.sleep(idle * 0.6)
                await ws.send(json.dumps({"type": "KeepAlive"}))
            assert ws.close_code is None
            async with asyncio.timeout(2 * S):
                await ws.wait_closed()
        assert ws.close_code == 1011
        assert (ws.close_reason or "").startswith("NET-0001")
        # KeepAlive alone does not hold a stream that never received audio.
        async with connect(engine.url + STEREO, proxy=None) as ws:
            await asyncio.sleep(idle * 0.6)
            await ws.send(json.dumps({"type": "KeepAlive"}))  # would hold it, had audio come
            async with asyncio.timeout(2 * S):
                await ws.wait_closed()
        assert ws.close_code == 1011 and (ws.close_reason or "").startswith("NET-0001")
    finally:
        engine.idle_timeout_s = 10.0


@pytest.mark.parametrize(
    ("query", "status", "problem"),
    [
        ("?encoding=linear16&sample_rate=8000&channels=1", 400, "encoding must be mulaw"),
        (STEREO + "&endpointing=soon", 400, "endpointing"),
        (STEREO + "&utterance_end_ms=1000", 400, "requires interim_results=true"),
    ],
)
async def test_a_bad_query_is_refused_like_deepgram(
    engine: OfflineEngine, query: str, status: int, problem: str
) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(engine.url + query, proxy=None):
            pass
    response = caught.value.response
    assert response.status_code == status
    assert problem in response.headers["dg-error"]
    assert response.headers["dg-request-id"]


async def test_a_text_message_that_is_not_a_control_closes_with_1008(
    engine: OfflineEngine,
) -> None:
    async with connect(engine.url + STEREO, proxy=None) as ws:
        await ws.send("hello")
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(2 * S):
                await ws.recv()
    assert ws.close_code == 1008 and (ws.close_reason or "").startswith("DATA-0000")


async def test_a_call_through_the_proxy_reaches_its_watcher_transcribed(
    engine: OfflineEngine, sample: Sample
) -> None:
    left, right = sample.audio[0::2], sample.audio[1::2]
    async with running_proxy(engine.url) as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            watcher = await Watcher.join(proxy, call.call_sid)
            await twilio.send_all(call.frames({"inbound": left, "outbound": right}))
            await twilio.stop()
            messages = [json.loads(m) for m in await watcher.transcript(within=30 * S)]
    for channel in (0, 1):  # the caller (inbound) is channel 0
        said = set(normalise(text(finals(messages, channel))))
        assert KEY_WORDS[channel] <= said, (channel, said)
    assert messages[-1]["type"] == "Metadata"


@asynccontextmanager
async def engine_command() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`python -m twilio_dg_proxy engine` with one worker on a free port, and its listen URL
    once it listens; killed at the end if it still runs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twilio_dg_proxy",
        "engine",
        "--port",
        "0",
        "--workers",
        "1",
        stderr=asyncio.subprocess.PIPE,
        env=os.environ,
    )
    try:
        assert process.stderr is not None
        line = ""
        async with asyncio.timeout(30 * S):
            while "listening on" not in line:
                line = (await process.stderr.readline()).decode()
                assert line, "the engine exited before listening"
        url = line.split("listening on ")[1].split(";")[0]
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1/listen", url)
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_engine_command_serves_until_sigterm() -> None:
    async with engine_command() as (process, url):
        async with connect(url + STEREO, proxy=None) as ws:
            await ws.send(b"\xff" * CHUNK)
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await receive_all(ws, within=10 * S)
        assert messages[-1]["type"] == "Metadata" and ws.close_code == 1000
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10 * S):
            assert await process.wait() == 0


async def test_the_engine_command_stopped_at_once_leaves_no_semaphore_behind() -> None:
    # Each worker's tqdm lock (faster-whisper makes a progress bar) was a named semaphore
    # that the killed worker never released: multiprocessing's resource tracker said so at
    # exit ("leaked semaphore objects"). Its stderr is the engine's, read to the end.
    async with engine_command() as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        async with asyncio.timeout(10 * S):
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0
    assert "shutting down" in rest
    assert "leaked" not in rest, rest


async def test_without_a_key_the_proxy_runs_the_offline_engine(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    async with ServerProcess.started(
        "--port", "0", "--env-file", str(env_file), DEEPGRAM_API_KEY="", DEEPGRAM_URL=""
    ) as server:
        server.process.send_signal(signal.SIGTERM)
        log = server.startup + await server.stderr()
        assert await server.process.wait() == 0
    [line] = [line for line in log.splitlines() if "offline engine" in line]
    assert "INFO" in line and "set DEEPGRAM_API_KEY" in line
    assert "DEEPGRAM_API_KEY is not set, so calls cannot be transcribed" not in log
