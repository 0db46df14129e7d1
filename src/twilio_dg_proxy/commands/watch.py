"""The `watch` command: a live call's transcript in the terminal, as the demo prints it.

It is a /client subscriber (the tutorial's protocol) that asks for the call's history first
(`?history=1`), so a call already under way is shown from its start. It watches the named
callSid, or else the newest active call (waiting for one when none is active), prints
Caller/Callee lines with `TranscriptRenderer`, and exits when the call ends. Given a phone
number instead (`watch +15550100`), it follows that number: the proxy picks the call (the
newest active one with it, or the next to start), and after each call's `close` it asks
again, call after call, until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
from dataclasses import dataclass
from typing import Final, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .. import phone_numbers
from .arguments import seconds, ws_url
from .terminal_transcript import TranscriptRenderer

DESCRIPTION = """\
Print a live call's transcript as it happens: the caller's and the callee's words on
labelled lines, the utterance in progress updated in place on a terminal. Watches CALLSID,
or else the newest active call, waiting for a call to start when none is active. Exits
when the call ends. Given a phone number instead (+15550100; spaces, dashes, dots and
parentheses allowed), follows it: each call from or to it, one after another, until
interrupted.

Exit status: 0 when the call ended normally, 1 when the proxy could not be reached,
refused the subscription or ended it abnormally, 130 when interrupted."""

DEFAULT_URL: Final = "ws://127.0.0.1:5000"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130

_POLL_S: Final = 1.0  # how often to look again for a call when none is active


class WatchError(Exception):
    """Watching cannot go on; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """What to watch, and where."""

    url: str = DEFAULT_URL  # the proxy's base URL; /client is added
    call_sid: str | None = None  # None: the newest active call
    token: str = ""  # for a proxy with CLIENT_TOKENS
    wait_s: float | None = None  # how long to wait for a call; None: until interrupted
    number: str | None = None  # follow this phone number instead, call after call


async def watch(options: WatchOptions, out: TextIO, renderer: TranscriptRenderer) -> str:
    """Watch one call to its end, writing its transcript to `out`; return its callSid.

    Raises `WatchError` when the proxy cannot be reached, refuses, has no such call, no call
    started within `options.wait_s`, or the call's stream ended abnormally.
    """
    async with asyncio.timeout(options.wait_s):
        for attempt in itertools.count():
            async with _connect(options) as ws:
                call_sid = _choose(json.loads(await ws.recv()), options.call_sid)
                if call_sid is not None:
                    await ws.send(call_sid)
                    _note(f"watching {call_sid} (Ctrl-C to stop)")
                    await _print_call(ws, out, renderer)
                    return call_sid
            if attempt == 0:
                _note("no active call yet: waiting for one to start")
            await asyncio.sleep(_POLL_S)
    raise AssertionError("unreachable")  # pragma: no cover - the loop only returns


async def follow(
    options: WatchOptions, out: TextIO, renderer: TranscriptRenderer, *, calls: int | None = None
) -> int:
    """Watch each call with `options.number`, one after another, writing their transcripts
    to `out`, until cancelled (or `calls` calls were watched); return how many were.

    Each call is one /client subscription by number: the proxy chooses the call (the newest
    active one with the number, or the next to start) and ends it with `close`; then this
    subscribes again. When the proxy's own wait (NUMBER_WAIT_S) runs out it just asks again.
    Raises `WatchError` as `watch` does, and TimeoutError when no call started within
    `options.wait_s` of the last one's end."""
    assert options.number is not None
    watched = 0
    while calls is None or watched < calls:
        async with _connect(options) as ws:
            await ws.recv()  # the call list: the proxy matches the number itself
            await ws.send(options.number)
            if watched == 0:
                _note(f"following {options.number}: waiting for a call (Ctrl-C to stop)")
            first = await _first_message(ws, options.wait_s)
            if first is None:
                continue  # the proxy stopped waiting (NUMBER_WAIT_S): ask again
            watched += 1
            _note(f"call {watched} with {options.number} (Ctrl-C to stop)")
            await _print_call(ws, out, renderer, first)
        _note(f"call {watched} ended; waiting for the next call with {options.number}")
    return watched


async def _first_message(ws: ClientConnection, wait_s: float | None) -> str | bytes | None:
    """The first message of the call the proxy chose, within `wait_s`; None when the proxy
    ended its wait normally (an `error:` line, then 1000). Raises WatchError if it refused."""
    try:
        async with asyncio.timeout(wait_s):
            first = await ws.recv()
    except ConnectionClosed:
        raise WatchError(
            f"the proxy ended the stream with {ws.close_code}: {ws.close_reason or 'no reason'}"
        ) from None
    if isinstance(first, str) and first.startswith("error: "):
        await ws.wait_closed()
        if ws.close_code == 1000:
            return None
        raise WatchError(f"the proxy refused: {first.removeprefix('error: ')}")
    return first


def _choose(listed: object, wanted: str | None) -> str | None:
    """The callSid to watch from the proxy's list (oldest first); None to look again."""
    if not isinstance(listed, list):
        raise WatchError("the proxy's call list is not a JSON array: is this a /client URL?")
    if wanted is None:
        return str(listed[-1]) if listed else None
    if wanted in listed:
        return wanted
    active = ", ".join(map(str, listed)) or "none"
    raise WatchError(f"{wanted} is not an active call (active: {active})")


def _connect(options: WatchOptions) -> connect:
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
    url = f"{options.url.rstrip('/')}/client?history=1"
    return connect(url, additional_headers=headers, proxy=None)


async def _print_call(
    ws: ClientConnection,
    out: TextIO,
    renderer: TranscriptRenderer,
    first: str | bytes | None = None,
) -> None:
    """Render the call's messages (`first`, if already read, then the rest) until its
    `close`; raise WatchError if it ends otherwise."""
    ended = first == "close"  # the tutorial's end-of-call signal
    if isinstance(first, str) and not ended:
        out.write(renderer.feed(first))
        out.flush()
    if not ended:
        ended = await _print_until_close(ws, out, renderer)
    out.write(renderer.finish())
    out.flush()
    await ws.wait_closed()
    if not ended or ws.close_code != 1000:
        raise WatchError(
            f"the proxy ended the stream with {ws.close_code}: {ws.close_reason or 'no reason'}"
        )


async def _print_until_close(
    ws: ClientConnection, out: TextIO, renderer: TranscriptRenderer
) -> bool:
    """Render messages until `close` (True) or the connection's end (False)."""
    try:
        async for message in ws:
            if message == "close":
                return True
            if isinstance(message, str):
                out.write(renderer.feed(message))
                out.flush()
    except ConnectionClosed:
        pass
    return False


def _note(text: str) -> None:
    print(f"watch: {text}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CALLSID (or a number), the proxy's URL, its token and how long to wait for a call."""
    parser.add_argument(
        "call_sid",
        metavar="CALLSID|NUMBER",
        nargs="?",
        help="the call to watch (default: the newest), or a phone number to follow",
    )
    parser.add_argument(
        "--url",
        type=ws_url,
        default=DEFAULT_URL,
        help=f"the proxy's address (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default="", help="a client token, for a proxy with CLIENT_TOKENS set"
    )
    parser.add_argument(
        "--wait",
        type=seconds(0.0, 86_400.0),
        metavar="SECONDS",
        help="give up when no call has started within SECONDS (default: wait until Ctrl-C)",
    )


def run(args: argparse.Namespace) -> int:
    """Watch one call, or follow a number; the exit status says how it went."""
    number = phone_numbers.parse(args.call_sid or "")
    if number is not None:
        options = WatchOptions(args.url, None, args.token, args.wait, number=str(number))
    else:
        options = WatchOptions(args.url, args.call_sid, args.token, args.wait)
    renderer = TranscriptRenderer(tty=sys.stdout.isatty(), width=shutil.get_terminal_size().columns)
    try:
        if options.number is not None:
            asyncio.run(follow(options, sys.stdout, renderer))
        else:
            asyncio.run(watch(options, sys.stdout, renderer))
    except KeyboardInterrupt:
        print(renderer.finish(), end="", flush=True)
        _note("interrupted")
        return EXIT_INTERRUPTED
    except TimeoutError:
        _note(f"no call started within {args.wait:g} s")
        return EXIT_FAILED
    except InvalidStatus as exc:
        _note(f"the proxy refused: HTTP {exc.response.status_code} (a token? see --token)")
        return EXIT_FAILED
    except (OSError, InvalidHandshake, WatchError) as exc:
        _note(f"{exc} ({args.url})" if isinstance(exc, OSError) else str(exc))
        return EXIT_FAILED
    return EXIT_OK
