"""`bench --arrival`: when the load's Twilio side writes each call's media within the 20 ms
tick. Pure.

- ``together`` (the default, the load every earlier figure was measured with): both tracks
  of a call's frame in one write, every call on the same tick. A server that reads once
  per message is flattered: one wake-up serves every call, one read both tracks.
- ``apart``: as Twilio times it ("the two tracks share one clock but arrive
  independently", and calls are not phase-locked to each other): each track's message in a
  write of its own, the outbound half a tick (10 ms) after the inbound of the same
  timestamp, and the calls spread over the tick in 4 phases 5 ms apart (call i in phase
  i % 4). Twice the writes and four times the ticker's wake-ups of ``together``.

Either way a frame's send time is its first write's (the inbound's): with ``apart`` the
added latency includes the half tick its outbound comes later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ...twilio_simulator import FRAME_MS

__all__ = ["ARRIVALS", "TIMINGS", "Arrival", "Timing"]

#: How the Twilio side times its messages (`bench --arrival`).
Arrival = Literal["together", "apart"]
ARRIVALS: Final[tuple[Arrival, ...]] = ("together", "apart")


@dataclass(frozen=True, slots=True)
class Timing:
    """The ticker wakes `slots` times per 20 ms tick, and call i writes its frames in slot
    (phase) i % `slots`; `split`: each track in a write of its own, the outbound
    `outbound_lag` slots (half a tick) after the inbound. `words` says it in the report."""

    slots: int
    split: bool
    words: str

    @property
    def slot_s(self) -> float:
        """Seconds between two wake-ups of the ticker."""
        return FRAME_MS / 1000 / self.slots

    @property
    def outbound_lag(self) -> int:
        """Slots from a frame's inbound write to its outbound's (0: the same write)."""
        return self.slots // 2 if self.split else 0

    def total_slots(self, ticks: int) -> int:
        """Slots the ticker runs for `ticks` ticks of frames: the last outbound included."""
        return ticks * self.slots + self.outbound_lag

    def writes(self, slot: int, ticks: int) -> tuple[int | None, int | None]:
        """At `slot`, in a run of `ticks` ticks: the phase whose calls write their next frame
        (its inbound alone when split; None once every tick is sent), and the phase whose
        calls write the outbound they hold (None when not split, or none is due)."""
        tick, phase = divmod(slot, self.slots)
        frames = phase if tick < ticks else None
        held = slot - self.outbound_lag
        due = self.split and 0 <= held < ticks * self.slots
        return frames, held % self.slots if due else None


TIMINGS: Final[Mapping[Arrival, Timing]] = {
    "together": Timing(1, False, "both tracks in one write, every call on the same 20 ms tick"),
    "apart": Timing(
        4,
        True,
        "each track in its own write, the outbound 10 ms after the inbound; "
        "calls in 4 phases 5 ms apart",
    ),
}
