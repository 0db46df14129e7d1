"""`bench --arrival`: the ticker's schedule (pure), what each simulated call writes when, with
no socket, and the report naming the arrival."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.commands.bench.arrival import ARRIVALS, TIMINGS, Arrival
from twilio_dg_proxy.commands.bench.load import CallDriver, _Ticker
from twilio_dg_proxy.commands.bench.report import format_report, format_sweep, report_json
from twilio_dg_proxy.commands.bench.wire import WireClient
from twilio_dg_proxy.twilio_simulator import FRAME_MS, SimulatedCall

from .test_bench_baseline import bench_report
from .test_bench_load import _row

# --- the schedule -----------------------------------------------------------------------------


def test_apart_spreads_the_calls_over_four_phases_and_the_outbound_half_a_tick_later() -> None:
    apart, together = TIMINGS["apart"], TIMINGS["together"]
    assert (apart.slots, apart.split) == (4, True) and apart.slot_s == pytest.approx(0.005)
    assert apart.outbound_lag * apart.slot_s == pytest.approx(FRAME_MS / 1000 / 2)
    assert (together.slots, together.slot_s, together.split) == (1, FRAME_MS / 1000, False)
    assert together.outbound_lag == 0


@given(arrival=st.sampled_from(ARRIVALS), ticks=st.integers(0, 60))
def test_every_phase_writes_each_tick_once_and_its_outbound_lag_slots_later(
    arrival: Arrival, ticks: int
) -> None:
    timing = TIMINGS[arrival]
    frames: dict[int, list[int]] = {p: [] for p in range(timing.slots)}
    outbound: dict[int, list[int]] = {p: [] for p in range(timing.slots)}
    for slot in range(timing.total_slots(ticks)):
        writes, held = timing.writes(slot, ticks)
        if writes is not None:
            frames[writes].append(slot)
        if held is not None:
            outbound[held].append(slot)
    for phase in range(timing.slots):
        assert frames[phase] == [tick * timing.slots + phase for tick in range(ticks)]
        if timing.split:
            assert outbound[phase] == [slot + timing.outbound_lag for slot in frames[phase]]
        else:
            assert outbound[phase] == []
    # Past the slots run, nothing is left to write.
    assert timing.writes(timing.total_slots(ticks), ticks) == (None, None)


# --- what each call writes, and when ------------------------------------------------------------


class _Socket:
    """A call's Twilio socket that records each write and the ticker's slot it came in."""

    def __init__(self) -> None:
        self.slot = 0
        self.writes: list[tuple[int, bytes]] = []
        self.texts: list[bytes] = []
        self.is_open = True

    def send_frames(self, frames: bytes) -> None:
        self.writes.append((self.slot, frames))

    def send_texts(self, *texts: bytes) -> None:
        self.texts += texts

    def close(self) -> None:
        self.is_open = False


def _drivers(n: int) -> tuple[list[CallDriver], list[_Socket]]:
    sockets = [_Socket() for _ in range(n)]
    drivers = [
        CallDriver(SimulatedCall(), cast(WireClient, socket), f"r{i}", i)
        for i, socket in enumerate(sockets)
    ]
    return drivers, sockets


@pytest.mark.parametrize("arrival", ARRIVALS)
async def test_each_call_writes_its_frames_in_order_in_its_phase(arrival: Arrival) -> None:
    timing, ticks = TIMINGS[arrival], 30
    drivers, sockets = _drivers(9)
    ticker = _Ticker(timing, drivers, ticks, origin=0.0)
    for slot in range(timing.total_slots(ticks)):
        for socket in sockets:
            socket.slot = slot
        await ticker.write(slot)
    for index, (driver, socket) in enumerate(zip(drivers, sockets, strict=True)):
        sent = ticks - driver.start_tick
        assert driver.frames == len(driver.sent_at) == sent and driver.outbound is None
        first = driver.start_tick * timing.slots + index % timing.slots
        inbound = [first + i * timing.slots for i in range(sent)]
        if not timing.split:
            assert socket.writes == [(s, driver.media.tick(i)) for i, s in enumerate(inbound)]
            continue
        expected = []
        for i, slot in enumerate(inbound):
            frame = driver.media.tracks(i)
            expected += [(slot, frame[0]), (slot + timing.outbound_lag, frame[1])]
        assert socket.writes == expected


def test_a_call_stopped_with_its_outbound_held_writes_it_before_stop() -> None:
    (driver,), (socket,) = _drivers(1)
    driver.send_inbound()
    driver.send_outbound()
    driver.send_inbound()  # frame 1's outbound is held
    driver.stop()
    assert [data for _, data in socket.writes] == [*driver.media.tracks(0), *driver.media.tracks(1)]
    (stop,) = socket.texts
    assert json.loads(stop)["sequenceNumber"] == "6"  # after 2 + 2 * 2 media messages
    assert not socket.is_open and driver.frames == 2


# --- the report -------------------------------------------------------------------------------


def test_the_report_names_the_arrival_in_text_and_json() -> None:
    apart = replace(bench_report(), arrival="apart")
    text = format_report(apart)
    assert _row(text, "arrival") == f"apart: {TIMINGS['apart'].words}"
    assert "ms, slot work p99 4.0 ms (4 slots a tick)\n" in text
    assert json.loads(json.dumps(report_json(apart)))["arrival"] == "apart"
    together = format_report(bench_report())
    assert _row(together, "arrival").startswith("together: both tracks in one write")
    assert "ms, tick work p99 4.0 ms\n" in together
    assert "arrival: apart: each track in its own write" in format_sweep([apart])
