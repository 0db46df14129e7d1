"""FrameSplitter against websockets' own parser: for any stream of frames cut anywhere, the
messages it takes plus the frames websockets parses from what it passes on are the stream's
frames, in order; it takes exactly the simple ones."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from twilio_dg_proxy.budget import TokenBucket
from twilio_dg_proxy.frame_splitter import ControlGate, FrameSplitter, Message, Passed

DATA = (Opcode.TEXT, Opcode.BINARY)


def wire(frame: Frame, masked: bool = True) -> bytes:
    """As a client sends it (masked), or a server (not)."""
    return frame.serialize(mask=masked, extensions=[])


@dataclass(frozen=True)
class Seen:
    """A frame as either side saw it."""

    opcode: Opcode
    fin: bool
    data: bytes


class WebsocketsParser:
    """websockets' frame parser over the bytes passed on, fed as they come."""

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.reader = StreamReader()
        self.parsing: Generator[None, None, Frame] | None = None
        self.frames: list[Seen] = []

    def feed(self, data: bytes) -> None:
        self.reader.feed_data(data)
        while self.reader.buffer or self.parsing is not None:
            if self.parsing is None:
                self.parsing = Frame.parse(self.reader.read_exact, mask=self.masked)
            try:
                next(self.parsing)
                return  # waits for more bytes
            except StopIteration as done:
                frame = done.value
                self.frames.append(Seen(frame.opcode, frame.fin, bytes(frame.data)))
                self.parsing = None

    @property
    def at_boundary(self) -> bool:
        return self.parsing is None and not self.reader.buffer


def split_and_merge(
    stream: bytes, cuts: list[int], max_size: int, masked: bool = True
) -> tuple[list[Seen], list[int]]:
    """Feed `stream` cut at `cuts`; return every frame in order (taken or parsed) and the
    indexes of the taken ones."""
    splitter = FrameSplitter(max_size, masked=masked)
    parser = WebsocketsParser(masked)
    merged: list[Seen] = []
    taken: list[int] = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        for piece in splitter.feed(stream[a:b]):
            if isinstance(piece, Passed):
                assert piece.data  # never an empty piece
                parser.feed(piece.data)
                merged += parser.frames
                parser.frames.clear()
            else:
                assert isinstance(piece, Message)
                assert parser.at_boundary  # taken between whole passed frames
                taken.append(len(merged))
                opcode = Opcode.TEXT if piece.text else Opcode.BINARY
                merged.append(Seen(opcode, True, piece.data))
    assert parser.at_boundary
    return merged, taken


payloads = st.binary(max_size=300) | st.sampled_from([b"x" * n for n in (125, 126, 127, 65535)])
simple_frames = st.builds(Frame, st.sampled_from(DATA), payloads)
control_frames = st.builds(
    Frame, st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125)
)


@st.composite
def fragmented(draw: st.DrawFn) -> list[Frame]:
    """A message in 2-4 fragments, maybe with control frames between them."""
    n = draw(st.integers(2, 4))
    frames = []
    for i in range(n):
        opcode = draw(st.sampled_from(DATA)) if i == 0 else Opcode.CONT
        frames.append(Frame(opcode, draw(st.binary(max_size=60)), fin=i == n - 1))
        if i < n - 1 and draw(st.booleans()):
            frames.append(draw(control_frames))
    return frames


streams = st.lists(
    simple_frames.map(lambda f: [f]) | control_frames.map(lambda f: [f]) | fragmented(),
    max_size=12,
).map(lambda groups: [frame for group in groups for frame in group])


def expected(frames: list[Frame], max_size: int) -> tuple[list[Seen], list[int]]:
    seen = [Seen(f.opcode, f.fin, bytes(f.data)) for f in frames]
    simple = []
    inside = False  # a fragmented message
    for i, f in enumerate(frames):
        if f.opcode in DATA and f.fin and not inside and len(f.data) <= max_size:
            simple.append(i)
        if f.opcode in DATA:
            inside = not f.fin
        elif f.opcode is Opcode.CONT and f.fin:
            inside = False
    return seen, simple


@settings(max_examples=500)
@given(
    streams,
    st.lists(st.integers(0, 100_000), max_size=20),
    st.sampled_from([1 << 62, 200, 126]),
    st.booleans(),
)
def test_any_stream_cut_anywhere_gives_the_same_frames(
    frames: list[Frame], cuts: list[int], max_size: int, masked: bool
) -> None:
    """On either side: a server reads masked frames, a client unmasked ones."""
    stream = b"".join(wire(frame, masked) for frame in frames)
    cuts = [c % (len(stream) + 1) for c in cuts]
    got = split_and_merge(stream, cuts, max_size, masked)
    assert got == expected(frames, max_size)


def test_byte_by_byte_too() -> None:
    frames = [
        Frame(Opcode.TEXT, b"hello"),
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.TEXT, b"frag", fin=False),
        Frame(Opcode.PONG, b""),
        Frame(Opcode.CONT, b"ment"),
        Frame(Opcode.BINARY, b"x" * 70_000),
        Frame(Opcode.TEXT, b""),
    ]
    stream = b"".join(map(wire, frames))
    cuts = list(range(len(stream)))
    assert split_and_merge(stream, cuts, 1 << 62) == expected(frames, 1 << 62)


def test_a_media_read_is_taken_without_passing_anything() -> None:
    stream = wire(Frame(Opcode.TEXT, b'{"event": "media"}')) * 2
    pieces = FrameSplitter(65536).feed(stream)
    assert pieces == [Message(b'{"event": "media"}', True)] * 2


def headers_of_invalid_frames() -> Iterator[tuple[str, bytes]]:
    masked = wire(Frame(Opcode.TEXT, b"abc"))
    yield "unmasked", Frame(Opcode.TEXT, b"abc").serialize(mask=False, extensions=[])
    yield "reserved bit", bytes([masked[0] | 0x40]) + masked[1:]
    yield "reserved opcode", bytes([0x83]) + masked[1:]
    yield "close", wire(Frame(Opcode.CLOSE, b"\x03\xe8"))


def test_a_client_passes_masked_frames_on_for_websockets_to_refuse() -> None:
    masked, unmasked = wire(Frame(Opcode.TEXT, b"m")), wire(Frame(Opcode.TEXT, b"u"), False)
    pieces = FrameSplitter(65536, masked=False).feed(unmasked + masked + unmasked)
    assert pieces == [Message(b"u", True), Passed(masked), Message(b"u", True)]


@pytest.mark.parametrize(("name", "frame"), list(headers_of_invalid_frames()))
def test_frames_it_does_not_know_go_to_websockets_whole(name: str, frame: bytes) -> None:
    simple = wire(Frame(Opcode.TEXT, b"ok"))
    pieces = FrameSplitter(65536).feed(simple + frame + simple)
    assert pieces == [Message(b"ok", True), Passed(frame), Message(b"ok", True)]


def test_an_oversized_frame_is_passed_on_as_it_comes_not_held() -> None:
    big = wire(Frame(Opcode.TEXT, b"x" * 1000))
    splitter = FrameSplitter(max_size=100)
    assert splitter.feed(big[:50]) == [Passed(big[:50])]  # websockets refuses it at once
    assert splitter.feed(big[50:]) == [Passed(big[50:])]


def test_a_simple_frame_is_held_until_complete() -> None:
    frame = wire(Frame(Opcode.TEXT, b"y" * 300))
    splitter = FrameSplitter(max_size=65536)
    for i in range(len(frame) - 1):
        assert splitter.feed(frame[i : i + 1]) == []
    assert splitter.feed(frame[-1:]) == [Message(b"y" * 300, True)]


def test_a_whole_frame_inside_a_fragmented_message_goes_to_websockets() -> None:
    """That is a protocol error websockets must see (it closes with 1002), not a message."""
    first = wire(Frame(Opcode.TEXT, b"frag", fin=False))
    ping = wire(Frame(Opcode.PING, b""))
    inside = wire(Frame(Opcode.TEXT, b"whole"))
    pieces = FrameSplitter(65536).feed(first + ping + inside)
    assert pieces == [Passed(first + ping + inside)]


# --- ControlGate: the control budget, before anything is parsed --------------------------

CONTROL = (Opcode.PING, Opcode.PONG)


def through_gate(stream: bytes, cuts: list[int], burst: int) -> tuple[bytes, bool]:
    """Feed `stream` cut at `cuts` to a gate with `burst` tokens that never come back; the
    bytes it lets through (until it refuses), and whether it refused."""
    gate, budget = ControlGate(), TokenBucket(rate=0.0, burst=burst)
    through = bytearray()
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        read = stream[a:b]
        allowed = gate.passable(read, budget, 0.0)
        through += read[:allowed]
        if allowed < len(read):
            return bytes(through), True
    return bytes(through), False


@settings(max_examples=500)
@given(
    streams,
    st.lists(st.integers(0, 100_000), max_size=20),
    st.integers(0, 6),
    st.booleans(),
)
def test_the_gate_lets_through_exactly_the_frames_before_the_first_over_budget(
    frames: list[Frame], cuts: list[int], burst: int, masked: bool
) -> None:
    """Whatever the reads, the bytes let through are the stream's frames up to (not
    including) the first ping or pong beyond the burst, and websockets parses them as
    those frames."""
    stream = b"".join(wire(frame, masked) for frame in frames)
    cuts = [c % (len(stream) + 1) for c in cuts]
    controls = [i for i, frame in enumerate(frames) if frame.opcode in CONTROL]
    over = controls[burst] if len(controls) > burst else len(frames)
    through, refused = through_gate(stream, cuts, burst)
    assert refused == (len(controls) > burst)
    assert through == stream[: len(b"".join(wire(f, masked) for f in frames[:over]))]
    parser = WebsocketsParser(masked)
    parser.feed(through)
    assert parser.frames == [Seen(f.opcode, f.fin, bytes(f.data)) for f in frames[:over]]
    assert parser.at_boundary


def test_the_gate_judges_a_frame_by_its_first_byte() -> None:
    """A ping whose header is cut after its first byte is refused in that read: what the
    budget refuses is never already handed on."""
    ping = wire(Frame(Opcode.PING, b"x" * 125))
    gate, budget = ControlGate(), TokenBucket(rate=0.0, burst=1)
    assert gate.passable(ping + ping[:1], budget, 0.0) == len(ping)


def test_a_read_of_thousands_of_pings_is_cut_after_the_burst() -> None:
    ping = wire(Frame(Opcode.PING, b""))
    gate, budget = ControlGate(), TokenBucket(rate=10.0, burst=50)
    assert gate.passable(ping * 20_000, budget, 0.0) == 50 * len(ping)


def test_frames_of_any_length_are_followed_across_reads() -> None:
    """Long payloads (16- and 64-bit lengths) and headers cut anywhere keep the gate in
    step: the pong after them is still counted."""
    frames = [Frame(Opcode.BINARY, b"x" * n) for n in (0, 125, 126, 65535, 65536, 70_000)]
    stream = b"".join(map(wire, frames)) + wire(Frame(Opcode.PONG, b""))
    for step in (1, 3, 13, 4096):
        cuts = list(range(0, len(stream), step))
        assert through_gate(stream, cuts, 0) == (
            stream[: -len(wire(Frame(Opcode.PONG, b"")))],
            True,
        )
