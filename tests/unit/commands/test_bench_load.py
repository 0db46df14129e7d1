"""The benchmark's load side: its pre-built Twilio frames, the fake's stamps, and the verdict
on whether the load was saturated (per run, and what limited a sweep)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from twilio_dg_proxy.commands.bench.baseline_report import (
    BaselineSweep,
    baseline_sweep_json,
    format_baseline_sweep,
)
from twilio_dg_proxy.commands.bench.measure import (
    LOAD_SATURATED,
    PATTERN_PERIOD,
    fake_stamp,
    load_verdict,
)
from twilio_dg_proxy.commands.bench.media_frames import MediaFrames
from twilio_dg_proxy.commands.bench.report import (
    BenchReport,
    format_report,
    format_sweep,
    report_json,
    sweep_json,
    sweep_limit,
)
from twilio_dg_proxy.twilio_simulator import FRAME_BYTES, FRAME_MS, SimulatedCall, pattern

from .test_bench_baseline import bench_report

# --- pre-built frames -------------------------------------------------------------------------


def _websockets_frames(monkeypatch: pytest.MonkeyPatch, *texts: str) -> bytes:
    """What websockets' own client sends for `texts`, with its masking key drawn as zeros."""
    monkeypatch.setattr("websockets.frames.secrets.token_bytes", lambda n: bytes(n))
    client = ClientProtocol(parse_uri("ws://127.0.0.1/twilio"), state=State.OPEN)
    for text in texts:
        client.send_text(text.encode())
    return b"".join(client.data_to_send())


def _expected_texts(call: SimulatedCall, offset: int, i: int) -> tuple[str, str]:
    """Frame `i`'s two media messages, as `SimulatedCall.media` writes them after `start`."""
    reference = SimulatedCall(call.call_sid, call.stream_sid, call.account_sid)
    reference._sequence = 1 + 2 * i  # `start` was 1; each earlier frame took two
    texts = []
    for track in ("inbound", "outbound"):
        reference._chunks[track] = i
        audio = pattern(track, FRAME_BYTES, offset=offset + FRAME_BYTES * i)
        texts.append(reference.media(track, FRAME_MS * i, audio))
    return texts[0], texts[1]


@given(
    offset=st.integers(0, PATTERN_PERIOD - 1),
    i=st.one_of(st.integers(0, 200), st.integers(0, 10**7)),
)
def test_prebuilt_frames_are_byte_identical_to_what_websockets_sends(offset: int, i: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        call = SimulatedCall()
        inbound, outbound = _expected_texts(call, offset, i)
        frames = MediaFrames(call, offset)
        assert frames.tick(i) == _websockets_frames(monkeypatch, inbound, outbound)
        # Apart, each track's message is the frame websockets sends for it alone.
        assert frames.tracks(i) == (
            _websockets_frames(monkeypatch, inbound),
            _websockets_frames(monkeypatch, outbound),
        )


def _messages(data: bytes) -> list[dict[str, Any]]:
    """Every frame of `data` (client frames, nothing left over), parsed by websockets; each
    a whole text message, read as JSON."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsed = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        with pytest.raises(StopIteration) as stopped:
            next(parser)
        parsed.append(stopped.value.value)
    assert all(f.opcode is Opcode.TEXT and f.fin for f in parsed)
    return [json.loads(f.data) for f in parsed]


def test_a_prebuilt_tick_parses_back_as_two_text_messages() -> None:
    call = SimulatedCall()
    frames = MediaFrames(call, 5)
    messages = _messages(frames.tick(0) + frames.tick(1))
    assert len(messages) == 4
    assert [m["sequenceNumber"] for m in messages] == ["2", "3", "4", "5"]
    assert [m["media"]["track"] for m in messages] == ["inbound", "outbound"] * 2
    assert [m["media"]["chunk"] for m in messages] == ["1", "1", "2", "2"]
    assert [m["media"]["timestamp"] for m in messages] == ["0", "0", "20", "20"]
    assert {m["streamSid"] for m in messages} == {call.stream_sid}


@given(offset=st.integers(0, PATTERN_PERIOD - 1), i=st.integers(0, 10**6))
def test_a_tick_is_its_two_tracks_joined_each_one_whole_message(offset: int, i: int) -> None:
    frames = MediaFrames(SimulatedCall(), offset)
    inbound, outbound = frames.tracks(i)
    assert frames.tick(i) == inbound + outbound
    for data, track, sequence in (
        (inbound, "inbound", 2 + 2 * i),
        (outbound, "outbound", 3 + 2 * i),
    ):
        (message,) = _messages(data)
        assert message["sequenceNumber"] == str(sequence)
        assert message["media"]["track"] == track
        assert message["media"]["chunk"] == str(i + 1)
        assert message["media"]["timestamp"] == str(FRAME_MS * i)


# --- the fake's stamp -------------------------------------------------------------------------


@pytest.mark.parametrize("dumps", [lambda m: json.dumps(m).encode(), orjson.dumps])
def test_the_stamp_is_read_whichever_json_writer_wrote_it(dumps: object) -> None:
    message = {"type": "Results", "metadata": {"model_info": {"name": "fake"}}}
    message["fake"] = {"sent_at": 12345.678901, "seq": 42}
    assert fake_stamp(dumps(message)) == (12345.678901, 42)  # type: ignore[operator]


# --- is the load saturated? -------------------------------------------------------------------


shares = st.floats(0.0, 1.5, allow_nan=False)


@given(generator=shares, fake=shares, cpus=st.integers(1, 8))
def test_the_load_is_saturated_when_a_process_or_both_together_pass_the_threshold(
    generator: float, fake: float, cpus: int
) -> None:
    verdict = load_verdict(generator=generator, fake=fake, load_cpus=cpus)
    expected = max(generator, fake) > LOAD_SATURATED or (generator + fake) / cpus > LOAD_SATURATED
    assert verdict.saturated is expected
    assert f"{LOAD_SATURATED:.0%}" in verdict.reason


@pytest.mark.parametrize(
    ("generator", "fake", "cpus", "saturated", "reason"),
    [
        (0.31, 0.22, 1, False, "together 53% of the load's CPU, each at most 80% of a core"),
        (0.85, 0.05, 3, True, "the generator used 85% of a core (over 80%)"),
        (0.30, 0.81, 1, True, "the fake Deepgram used 81% of a core (over 80%)"),
        (0.45, 0.40, 1, True, "together they used 85% of the load's CPU (over 80%)"),
        (0.44, 0.40, 2, False, "together 42% of the load's 2 CPUs, each at most 80% of a core"),
        (0.80, 0.00, 1, False, "together 80% of the load's CPU, each at most 80% of a core"),
    ],
)
def test_the_verdict_says_why(
    generator: float, fake: float, cpus: int, saturated: bool, reason: str
) -> None:
    verdict = load_verdict(generator=generator, fake=fake, load_cpus=cpus)
    assert (verdict.saturated, verdict.reason) == (saturated, reason)


def _run(calls: int, *, held: bool = True, generator: float = 0.2) -> BenchReport:
    return replace(bench_report(calls=calls), held=held, generator_cpu_share=generator)


def _row(text: str, name: str) -> str:
    """The value of the table's row `name`."""
    (value,) = [line[len(name) :].strip() for line in text.splitlines() if line.startswith(name)]
    return value


def test_every_report_states_the_load_verdict_in_text_and_json() -> None:
    calm, busy = _run(100), _run(600, generator=0.9)
    assert _row(format_report(calm), "load saturated") == (
        "no: together 30% of the load's CPU, each at most 80% of a core"
    )
    text = format_report(busy)
    assert _row(text, "load saturated") == (
        "YES: the generator used 90% of a core (over 80%): the figures are lower bounds"
    )
    assert "WARNING: the load side is saturated" in text
    data = json.loads(json.dumps(report_json(busy)))
    assert data["load_saturated"] is True
    assert data["load_verdict"] == "the generator used 90% of a core (over 80%)"
    assert json.loads(json.dumps(report_json(calm)))["load_saturated"] is False


def test_a_sweep_limited_by_the_proxy_says_so() -> None:
    runs = [_run(400), _run(800, held=False), _run(600, held=False), _run(500)]
    assert sweep_limit(runs)[0] == "proxy"
    assert "at 600 calls the run failed with the load side not saturated" in sweep_limit(runs)[1]
    assert "limited by the proxy: at 600 calls" in format_sweep(runs)
    assert json.loads(sweep_json(runs))["limited_by"] == "proxy"


def test_a_sweep_limited_by_the_load_says_its_largest_n_is_a_lower_bound() -> None:
    runs = [_run(400), _run(800, held=False, generator=0.95), _run(600, held=False, generator=0.9)]
    # A retry of 600 that was not saturated does not clear the saturated one.
    runs.append(_run(600, held=False))
    limited_by, why = sweep_limit(runs)
    assert limited_by == "load"
    assert why.startswith("at 600 calls the run failed with the load side saturated")
    assert why.endswith("the largest N held is a lower bound")
    text = format_sweep(runs)
    assert "LIMITED BY THE LOAD: at 600 calls" in text
    rows = [line.split() for line in text.splitlines()[1:5]]
    assert [(row[0], row[-3:]) for row in rows if row[0] == "600"] == [
        ("600", ["failed", "(load", "saturated)"]),
        ("600", ["30%", "2%", "failed"]),
    ]


def test_a_sweep_that_never_failed_above_its_largest_n_was_limited_by_its_bounds() -> None:
    assert sweep_limit([_run(50), _run(100)])[0] == "sweep"
    # A size that held once is not a ceiling, even if it failed on another try.
    assert sweep_limit([_run(100), _run(200, held=False), _run(200)])[0] == "sweep"
    assert sweep_limit([])[0] == "sweep"


def test_both_sided_sweeps_say_what_limited_each() -> None:
    proxy = (_run(400), _run(500, held=False, generator=0.9))
    baseline = (_run(200), _run(250, held=False))
    sweeps = BaselineSweep(proxy, baseline)
    assert format_baseline_sweep(sweeps).endswith(
        "the proxy's limited by THE LOAD (a lower bound), the baseline's by itself"
    )
    data = json.loads(json.dumps(baseline_sweep_json(sweeps)))
    assert (data["proxy"]["limited_by"], data["baseline"]["limited_by"]) == ("load", "proxy")
