"""The `simulate` command: stream an audio file through a proxy exactly as Twilio would.

The pure half plans a call: `loss_plan` picks the frames a lossy network drops, `plan_call`
turns per-track mu-law audio (`audio.read_tracks`) into the call's messages with
`twilio_simulator.SimulatedCall`. The I/O half sends plans with `twilio_simulator.play`:
`stream_call` for one call, `simulate` for N concurrent calls with a progress line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close, CloseCode

from ..audio import SAMPLE_RATE, AudioFileError, read_tracks, sample_call
from ..config import number_in, ws_url
from ..twilio_events import Track
from ..twilio_simulator import FRAME_BYTES, FRAME_MS, SimulatedCall, play
from .arguments import argument, count, parse_name_value, seconds

__all__ = [
    "DEFAULT_URL",
    "CallPlan",
    "Progress",
    "SimulateOptions",
    "SimulationResult",
    "loss_plan",
    "plan_call",
    "simulate",
    "stream_call",
]

DESCRIPTION = """\
Stream an audio file through a proxy exactly as Twilio Media Streams would: `connected`,
`start` with a new callSid, a `media` message every 20 ms per track in real time, `stop`.

A stereo file is two tracks (left: inbound, the caller; right: outbound, the callee); a mono
file is the inbound track only. WAV files need nothing else; other formats (mp3, ogg, ...)
need ffmpeg. The audio is resampled to 8 kHz and encoded as mu-law.

Without AUDIO_FILE it plays the bundled two-person sample call. Each call's callSid is
printed on stdout as the call starts (watch it with the `watch` command); progress and
errors go to stderr. Exit status: 0
when every call ended normally, 1 when the proxy could not be reached, refused a stream or
closed one abnormally, 2 for a bad option or audio file."""
DEFAULT_URL: Final = "ws://127.0.0.1:5000/twilio"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the proxy could not be reached, refused a stream or closed it abnormally
EXIT_USAGE: Final = 2  # a bad option or audio file

# Twilio: each <Parameter> name plus value must be under 500 characters.
_MAX_PARAMETER_CHARS: Final = 500
# How often the progress line is rewritten on a terminal, and written elsewhere (a log).
_TTY_REFRESH_S: Final = 0.1
_LOG_REFRESH_S: Final = 5.0
_MAX_CALLS: Final = 1000


# --- Pure: planning a call -----------------------------------------------------------------


def loss_plan(frames: int, probability: float, rng: random.Random) -> frozenset[int]:
    """Return the indices, among `frames` frames, of those lost on the way to the proxy.

    Each frame is lost independently with `probability` (0 <= probability < 1), drawn from
    `rng` in frame order, so a seeded `rng` always gives the same plan.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"probability must be in [0, 1), got {probability}")
    if probability == 0.0:
        return frozenset()
    return frozenset(i for i in range(frames) if rng.random() < probability)


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Everything one simulated call will send.

    `messages` are `(send_time_s, json_text)` pairs for `play`. `lost[track]` holds the
    timeline indices of the frames dropped on that track: frame `i` covers milliseconds
    `20 * i` to `20 * i + 20` of the file (and of the stream's timestamps). `duration_s` is the
    length of the audio, including the outbound delay.
    """

    call: SimulatedCall
    messages: list[tuple[float, str]]
    lost: dict[Track, frozenset[int]]
    duration_s: float

    @property
    def call_sid(self) -> str:
        """The callSid announced in `start`."""
        return self.call.call_sid


def _frames(data: bytes) -> int:
    return -(-len(data) // FRAME_BYTES)


def plan_call(
    tracks: Mapping[Track, bytes],
    *,
    call: SimulatedCall | None = None,
    drop: float = 0.0,
    rng: random.Random | None = None,
    outbound_delay_ms: int = 0,
    parameters: Mapping[str, str] | None = None,
) -> CallPlan:
    """Plan one Media Stream carrying `tracks` (8 kHz mu-law bytes per track).

    The stream announces exactly the tracks given. Each track is cut into 20 ms frames (the
    last padded with mu-law silence); each frame is lost with probability `drop` (drawn from
    `rng`, inbound first). With `outbound_delay_ms` (rounded down to 20 ms), the outbound
    track starts streaming that late, as when the callee answers late: its first message has
    chunk 1 and that timestamp, and the audio before it is not sent (the file's timeline is
    the call's, so the conversation stays aligned). `call` defaults to a new `SimulatedCall`
    with fresh sids, the tracks given and `parameters` as its `customParameters`.
    """
    if not tracks:
        raise ValueError("no tracks")
    if outbound_delay_ms < 0:
        raise ValueError(f"outbound_delay_ms must not be negative, got {outbound_delay_ms}")
    ordered: tuple[Track, ...] = tuple(t for t in ("inbound", "outbound") if t in tracks)
    if call is None:
        call = SimulatedCall(tracks=ordered, custom_parameters=dict(parameters or {}))
    rng = rng or random.Random()
    skip = {track: 0 for track in ordered}
    if "outbound" in skip:
        skip["outbound"] = outbound_delay_ms // FRAME_MS
    audio = {track: tracks[track][skip[track] * FRAME_BYTES :] for track in ordered}
    relative = {track: loss_plan(_frames(audio[track]), drop, rng) for track in ordered}
    messages = call.script(
        audio,
        drop=relative,
        start_ms={track: skip[track] * FRAME_MS for track in ordered},
    )
    lost = {track: frozenset(i + skip[track] for i in relative[track]) for track in ordered}
    longest = max(
        skip[track] * FRAME_BYTES + _frames(audio[track]) * FRAME_BYTES for track in ordered
    )
    return CallPlan(call, messages, lost, longest / SAMPLE_RATE)


# --- Pure: the progress line ----------------------------------------------------------------


class Progress:
    """What N concurrent calls have sent so far, said in one line.

    Feed it with `sent(call_index, send_time_s)` for each message sent and `ended(call_index)`;
    `line()` is the text to show.
    """

    def __init__(self, plans: Sequence[CallPlan]) -> None:
        self._total_s = max((plan.duration_s for plan in plans), default=0.0)
        self._position = [0.0] * len(plans)
        self._ended = [False] * len(plans)
        self.messages = 0

    def sent(self, call_index: int, send_time_s: float) -> None:
        """Note that call `call_index` sent a message scheduled at `send_time_s`."""
        self.messages += 1
        self._position[call_index] = max(self._position[call_index], send_time_s)

    def ended(self, call_index: int) -> None:
        """Note that call `call_index` is over (normally or not)."""
        self._ended[call_index] = True

    def line(self) -> str:
        """Return e.g. ``2 calls: 4.3 / 19.6 s of audio, 430 messages sent, 0 of 2 ended``."""
        calls = len(self._position)
        position = min(self._position, default=0.0)
        return (
            f"{calls} call{'s' if calls != 1 else ''}: "
            f"{min(position, self._total_s):.1f} / {self._total_s:.1f} s of audio, "
            f"{self.messages} messages sent, {sum(self._ended)} of {calls} ended"
        )


# --- I/O: streaming -------------------------------------------------------------------------


def _close_text(close: Close | None) -> str:
    if close is None:
        return "the connection dropped without a close frame"
    try:
        name = f" {CloseCode(close.code).name}"
    except ValueError:
        name = ""
    return f"code {close.code}{name}: {close.reason or 'no reason given'}"


def _first_line(body: bytes | bytearray | None) -> str:
    lines = (body or b"").decode(errors="replace").strip().splitlines()
    return f": {lines[0][:200]}" if lines else ""


async def stream_call(
    url: str,
    plan: CallPlan,
    *,
    realtime: bool = True,
    on_sent: Callable[[int], Awaitable[None]] | None = None,
) -> str | None:
    """Send `plan` to `url` as Twilio would (`play`); return None on a normal end, else why not.

    A normal end is every message sent and the proxy's close frame saying 1000. Otherwise the
    returned line says what happened: the proxy could not be reached, refused the upgrade
    (with the HTTP status and the first line of its body) or closed the stream (with the close
    code and reason). `on_sent` is passed to `play`.
    """
    try:
        close = await play(url, plan.messages, realtime=realtime, on_sent=on_sent)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"cannot connect to {url}: {reason} (is the proxy running?)"
    except InvalidStatus as exc:
        response = exc.response
        return (
            f"the proxy refused the stream: HTTP {response.status_code} "
            f"{response.reason_phrase}{_first_line(response.body)}"
        )
    except ConnectionClosed as exc:
        return f"the proxy closed the stream before the call ended: {_close_text(exc.rcvd)}"
    except (InvalidHandshake, InvalidURI, TimeoutError) as exc:
        return f"no WebSocket handshake with {url}: {exc or type(exc).__name__}"
    if close is None or close.code != CloseCode.NORMAL_CLOSURE:
        return f"the proxy closed the stream abnormally: {_close_text(close)}"
    return None


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """How to stream: see `simulate`. `seed` None draws one (and reports it when it matters)."""

    calls: int = 1
    drop: float = 0.0
    seed: int | None = None
    outbound_delay_s: float = 0.0
    realtime: bool = True
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """The calls planned (in order) and, per call, None or why it did not end normally."""

    plans: list[CallPlan]
    errors: list[str | None]
    seed: int

    @property
    def exit_status(self) -> int:
        """EXIT_OK when every call ended normally, else EXIT_FAILED."""
        return EXIT_OK if not any(self.errors) else EXIT_FAILED


async def simulate(
    url: str,
    tracks: Mapping[Track, bytes],
    options: SimulateOptions = SimulateOptions(),  # noqa: B008 (frozen: safe to share)
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    tty: bool | None = None,
) -> SimulationResult:
    """Stream `options.calls` concurrent copies of `tracks` to `url`, each its own call.

    Call `k` drops frames with a generator seeded from `options.seed` and `k`, so a run is
    reproducible. Each callSid is written to `stdout` as its call starts; a progress line
    goes to `stderr` (rewritten in place when `tty`, default: whether `stderr` is a
    terminal; else a line every few seconds), then one line per call that failed.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    in_place = err.isatty() if tty is None else tty
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    delay_ms = round(options.outbound_delay_s * 1000)
    plans = [
        plan_call(
            tracks,
            drop=options.drop,
            rng=random.Random(f"{seed}:{k}"),
            outbound_delay_ms=delay_ms,
            parameters=options.parameters,
        )
        for k in range(options.calls)
    ]
    progress = Progress(plans)

    async def one(k: int, plan: CallPlan) -> str | None:
        async def sent(index: int) -> None:
            if index == 1:  # `start` went out: the call exists on the proxy's side
                print(plan.call_sid, file=out, flush=True)
            progress.sent(k, plan.messages[index][0])

        try:
            return await stream_call(url, plan, realtime=options.realtime, on_sent=sent)
        finally:
            progress.ended(k)

    async with asyncio.TaskGroup() as group:
        reporter = group.create_task(_report(progress, err, in_place))
        calls = [group.create_task(one(k, plan)) for k, plan in enumerate(plans)]
        await asyncio.wait(calls)
        reporter.cancel()
    errors = [task.result() for task in calls]
    if progress.messages:
        _write_line(err, progress.line() + _losses(plans, seed), in_place, final=True)
    failed = [(plan, error) for plan, error in zip(plans, errors, strict=True) if error]
    for plan, error in failed:
        prefix = f"call {plan.call_sid}: " if len(plans) > 1 else ""
        print(f"simulate: {prefix}{error}", file=err, flush=True)
    return SimulationResult(plans, errors, seed)


def _losses(plans: Sequence[CallPlan], seed: int) -> str:
    lost = sum(len(frames) for plan in plans for frames in plan.lost.values())
    return f", {lost} frames dropped (seed {seed})" if lost else ""


def _write_line(stream: TextIO, line: str, in_place: bool, *, final: bool = False) -> None:
    if in_place:
        # Carriage return, the line, then erase whatever a longer previous line left.
        stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
    else:
        stream.write(line + "\n")
    stream.flush()


async def _report(progress: Progress, stream: TextIO, in_place: bool) -> None:
    """Rewrite the progress line until cancelled (`simulate` writes the last one)."""
    interval = _TTY_REFRESH_S if in_place else _LOG_REFRESH_S
    while True:
        await asyncio.sleep(interval)
        if progress.messages:  # nothing to say while connecting
            _write_line(stream, progress.line(), in_place)


# --- Command line ---------------------------------------------------------------------------


def _parameter(raw: str) -> tuple[str, str]:
    name, value = parse_name_value(raw)
    if len(name) + len(value) >= _MAX_PARAMETER_CHARS:
        raise ValueError(
            f"{name}: Twilio requires name plus value under {_MAX_PARAMETER_CHARS} characters"
        )
    return name, value


def _probability(raw: str) -> float:
    value = _ratio(raw)
    if value == 1.0:
        raise ValueError("must be below 1 (1 would lose every packet)")
    return value


def _stream_url(raw: str) -> str:
    if urlsplit(raw).query:
        # Twilio never adds one: values travel as <Parameter>s, here --param.
        raise ValueError("Twilio streams to URLs without a query: use --param")
    return ws_url(raw)


_ratio = number_in(float, 0.0, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The file, the proxy's URL and what real calls do (loss, a late callee, many calls)."""
    parser.add_argument(
        "audio_file",
        metavar="AUDIO_FILE",
        type=Path,
        nargs="?",
        help="mono (caller only) or stereo (caller left, callee right); WAV, or any format "
        "ffmpeg reads if ffmpeg is installed (default: the bundled two-person sample call)",
    )
    parser.add_argument(
        "--url",
        type=argument(_stream_url, "URL"),
        default=DEFAULT_URL,
        help=f"the proxy's Twilio endpoint, as in <Stream url> (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--param",
        dest="params",
        metavar="NAME=VALUE",
        type=argument(_parameter, "NAME=VALUE"),
        action="append",
        default=[],
        help="a custom parameter in `start`, as a TwiML <Parameter> (repeatable), "
        "e.g. --param From=+15550100",
    )
    parser.add_argument(
        "--drop",
        metavar="P",
        type=argument(_probability, "probability"),
        default=0.0,
        help="lose each 20 ms packet with probability P, per track (default: 0)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the packet losses, to repeat a run (default: random)"
    )
    parser.add_argument(
        "--outbound-delay",
        metavar="SECONDS",
        type=seconds(),
        default=0.0,
        help="the callee answers late: the outbound track starts streaming this far into the "
        "call (rounded down to 20 ms); its audio before then is not sent (stereo files only)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="send as fast as possible instead of in real time (for tests; a proxy in front "
        "of Deepgram's cloud may refuse audio sent much faster than real time)",
    )
    parser.add_argument(
        "--calls",
        metavar="N",
        type=count(_MAX_CALLS),
        default=1,
        help="stream N concurrent copies, each its own call and callSid (default: 1)",
    )


def run(args: argparse.Namespace) -> int:
    """Read the file, stream it; the exit status says how the calls ended (0: all normally)."""
    if args.audio_file is None:
        with sample_call() as path:
            return _run(args, path)
    return _run(args, args.audio_file)


def _run(args: argparse.Namespace, audio_file: Path) -> int:
    try:
        tracks = read_tracks(audio_file)
    except AudioFileError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.outbound_delay and "outbound" not in tracks:
        print(
            f"simulate: --outbound-delay needs a stereo file; {audio_file} is mono",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = SimulateOptions(
        calls=args.calls,
        drop=args.drop,
        seed=args.seed,
        outbound_delay_s=args.outbound_delay,
        realtime=not args.fast,
        parameters=dict(args.params),
    )
    seconds = max(len(data) for data in tracks.values()) / SAMPLE_RATE
    print(
        f"simulate: streaming {audio_file.name} ({seconds:.1f} s, {'+'.join(tracks)}) "
        f"to {args.url}",
        file=sys.stderr,
        flush=True,
    )
    try:
        result = asyncio.run(simulate(args.url, tracks, options))
    except KeyboardInterrupt:
        print("\nsimulate: interrupted", file=sys.stderr)
        return 130
    return result.exit_status
