"""The demo's wiring over loopback, with the fake Deepgram as its engine: the sample call goes
through a real proxy, a real /client subscriber renders it, and the demo ends by itself."""

from __future__ import annotations

import argparse
import io
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType

import pytest

from twilio_dg_proxy import audio
from twilio_dg_proxy.audio import read_tracks
from twilio_dg_proxy.commands import demo
from twilio_dg_proxy.commands.demo import Engine, run_demo
from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

SAMPLE = Path(audio.__file__).parent / audio.SAMPLE_CALL
LOCAL = Settings.from_env({"HOST": "127.0.0.1", "PORT": "0"})


class Fakes:
    """An engine factory making fake Deepgrams, which it keeps for inspection."""

    def __init__(self) -> None:
        self.made: list[FakeDeepgram] = []

    def __call__(self) -> AbstractAsyncContextManager[Engine]:
        fake = FakeDeepgram(result_ms=250)
        self.made.append(fake)
        return fake


async def demo_output(
    settings: Settings = LOCAL, engine: Fakes | None = None, audio: Path = SAMPLE
) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_demo(
        settings, engine or Fakes(), audio=audio, realtime=False, out=out, tty=False
    )
    return status, out.getvalue()


async def test_the_demo_streams_the_sample_and_prints_labelled_utterances() -> None:
    engine = Fakes()
    status, out = await demo_output(engine=engine)
    assert status == 0, out
    lines = out.splitlines()
    caller = [line for line in lines if line.startswith("Caller: ")]
    callee = [line for line in lines if line.startswith("Callee: ")]
    # The fake transcribes channel c's audio as "ch<c> w<window> <digest>": the labels follow
    # channel_index, and the caller's words never land on the callee's lines.
    assert caller and callee
    assert all(re.fullmatch(r"Caller: (ch0 w\d+ [0-9a-f]{8} ?)+", line) for line in caller)
    assert all(re.fullmatch(r"Callee: (ch1 w\d+ [0-9a-f]{8} ?)+", line) for line in callee)
    # The whole sample reached the engine, left channel as channel 0.
    (stream,) = engine.made[0].streams
    tracks = read_tracks(SAMPLE)
    assert bytes(stream.audio[0::2]).startswith(tracks["inbound"])
    assert bytes(stream.audio[1::2]).startswith(tracks["outbound"])
    # It says where to go next, with the configured port's watch and websocat commands.
    assert "-m twilio_dg_proxy watch --url ws://127.0.0.1:PORT\n" in out
    assert "websocat -E 'ws://127.0.0.1:PORT/client?history=1'" in out
    assert "http://127.0.0.1:PORT/" in out  # the web viewer
    assert "DEEPGRAM_API_KEY=<key>" in out


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_taken_port_falls_back_to_a_free_one(taken_port: int) -> None:
    settings = Settings.from_env({"HOST": "127.0.0.1", "PORT": str(taken_port)})
    status, out = await demo_output(settings)
    assert status == 0, out
    listening = re.search(r"Proxy listening on ws://127\.0\.0\.1:(\d+)", out)
    assert listening and int(listening[1]) not in (taken_port, 0)
    # The next steps name the configured port, the one `serve` will use.
    assert f"-m twilio_dg_proxy --port {taken_port}\n" in out
    assert f"websocat -E 'ws://127.0.0.1:{taken_port}/client?history=1'" in out


class BrokenEngine:
    """An engine that fails to start, as the offline engine does without its weights."""

    url = "ws://127.0.0.1:9/v1/listen"

    async def __aenter__(self) -> BrokenEngine:
        raise RuntimeError("weights missing")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


async def test_an_engine_that_cannot_start_is_one_clear_line() -> None:
    out = io.StringIO()
    status = await run_demo(LOCAL, BrokenEngine, audio=SAMPLE, realtime=False, out=out, tty=False)
    assert status == 1
    assert out.getvalue().splitlines()[-1] == (
        "demo: the speech engine could not start: weights missing"
    )


async def test_a_missing_audio_file_is_one_clear_line(tmp_path: Path) -> None:
    status, out = await demo_output(audio=tmp_path / "none.wav")
    assert status == 1
    assert out == f"demo: {tmp_path / 'none.wav'}: no such file\n"


def test_without_the_offline_engine_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes the import fail as if the package were not there.
    monkeypatch.setitem(sys.modules, "twilio_dg_proxy.engine", None)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    status = demo.run(parser.parse_args(["--port", "0"]))
    assert status == 2
    err = capsys.readouterr().err
    assert "the offline speech engine is not installed" in err
    assert "pip install -e '.[offline]'" in err
