"""The `serve` command: settings from `.env`, the environment and options; then the proxy."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import sys
from pathlib import Path

from dotenv import dotenv_values

from ..config import Settings, retired_settings, settings_table
from ..event_loop import event_loop_factory
from ..exceptions import BrokerUnavailable, ConfigError, StoreError
from ..logs import get_logger, setup_logging
from ..workers import (
    Supervisor,
    WorkerLink,
    WorkerSpec,
    WorkerStartError,
    hold_port,
    reuse_port_balances,
)
from . import hints

EXIT_CONFIG = 2
EXIT_LISTEN = 1
EXIT_INTERRUPTED = 130
EXIT_ENGINE = 1
EXIT_REDIS = 1
EXIT_STORE = 1

DESCRIPTION = (
    "Stream Twilio calls to Deepgram live transcription and fan the transcripts out to every "
    "client watching on /client."
)
logger = get_logger("main")

# The cyclic garbage collector's young-generation threshold while serving (CPython's default
# is 700). Each call keeps hundreds of objects alive across awaits (frames, futures, messages
# in queues); at 700 the collector ran about 30 times a second at 300 calls, traversing them
# every time: some 6% of the proxy's CPU. Cyclic garbage is rare here, so waiting for 10,000
# new objects costs at most a few megabytes.
GC_YOUNG_THRESHOLD = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that override the environment and `.env`; the epilog lists every setting."""
    from ..__main__ import command_list

    add_settings_arguments(parser)
    parser.add_argument(
        "--workers",
        help="processes serving the port, supervised (overrides WORKERS; more than 1 needs "
        "REDIS_URL)",
    )
    # Internal: how the supervisor tells a worker process which it is (`workers.WorkerSpec`).
    parser.add_argument("--worker", type=worker_spec, help=argparse.SUPPRESS)
    settings_help = "\n".join(
        f"  {name:<26} {doc} (default: {default or 'unset'})"
        for name, default, doc in settings_table()
    )
    parser.epilog = (
        f"Settings (environment variables or .env):\n{settings_help}\n\n"
        f"Commands (twilio-dg-proxy COMMAND --help):\n{command_list()}"
    )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --env-file, for every command that runs a proxy."""
    parser.add_argument("--host", help="address to listen on (overrides HOST)")
    parser.add_argument("--port", help="TCP port to listen on (overrides PORT)")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        help="file of settings to read if it exists (default: .env); the environment wins",
    )


def load_settings(args: argparse.Namespace, *, workers: str | None = None) -> Settings:
    """Settings from `.env`, then the environment, then the command line (last wins):
    `add_settings_arguments`' options, and `serve`'s `workers` (other commands' --workers
    mean something else)."""
    return Settings.from_env(settings_env(args, workers=workers))


def settings_env(args: argparse.Namespace, *, workers: str | None = None) -> dict[str, str]:
    """The variables `load_settings` reads, in that order of precedence."""
    env: dict[str, str] = {}
    if args.env_file.is_file():
        env.update({k: v for k, v in dotenv_values(args.env_file).items() if v is not None})
    elif args.env_file != Path(".env"):
        raise ConfigError("--env-file", f"no such file: {args.env_file}")
    env.update(os.environ)
    if args.host is not None:
        env["HOST"] = args.host
    if args.port is not None:
        env["PORT"] = args.port
    if workers is not None:
        env["WORKERS"] = workers
    return env


def settings_or_exit(args: argparse.Namespace) -> Settings | int:
    """The settings, with logging set up; or EXIT_CONFIG after saying what is wrong."""
    try:
        env = settings_env(args, workers=args.workers)
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"twilio-dg-proxy: bad setting {exc}", file=sys.stderr)
        return EXIT_CONFIG
    worker: WorkerSpec | None = args.worker
    setup_logging(
        settings.log_level, worker=worker.index if worker else None, log_format=settings.log_format
    )
    for warning in retired_settings(env):
        logger.warning("%s", warning)
    return settings


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; the exit status says how it ended."""
    settings = settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    if settings.workers > 1:
        return supervise(settings, args.env_file)
    offline = False
    if settings.needs_api_key and not settings.deepgram_api_key:
        from ..engine import INSTALL_HINT, missing_requirements

        offline = not missing_requirements()
        if not offline:
            logger.warning(
                "DEEPGRAM_API_KEY is not set, so calls cannot be transcribed. Create a key at "
                "https://console.deepgram.com and put DEEPGRAM_API_KEY=<key> in .env "
                "(see .env.example), point DEEPGRAM_URL at a Deepgram-compatible server, "
                "or install the offline engine (%s) to transcribe without an account.",
                hints.pip(INSTALL_HINT),
            )
    engine_errors: tuple[type[Exception], ...] = ()
    if offline:
        from ..engine.model import WeightsError
        from ..engine.server import EngineError

        engine_errors = (WeightsError, EngineError)
    loop_factory, loop_name = event_loop_factory()
    logger.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings, offline=offline, worker=args.worker))
    except OSError as exc:  # the address is taken or not ours to bind
        logger.error("%s", hints.cannot_listen(settings.host, settings.port, exc, setting="PORT"))
        return EXIT_LISTEN
    except asyncio.CancelledError:  # a second signal cut the drain short
        return EXIT_INTERRUPTED
    except ConfigError as exc:  # a setting the server could not use (e.g. no twilio package)
        print(f"twilio-dg-proxy: bad setting {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokerUnavailable as exc:  # REDIS_URL is set but Redis cannot be reached
        logger.error("%s: check REDIS_URL, or unset it to run on its own", exc)
        return EXIT_REDIS
    except StoreError as exc:  # the transcript store cannot be opened (or a newer one's)
        logger.error(
            "the transcript store cannot be opened: %s: check DATABASE_URL or TRANSCRIPTS_FILE,"
            " or set STORE_TRANSCRIPTS=false",
            exc,
        )
        return EXIT_STORE
    except engine_errors as exc:  # the offline engine could not start (it says why)
        logger.error("the offline engine cannot start: %s", exc)
        return EXIT_ENGINE
    return 0


async def serve(settings: Settings, *, offline: bool, worker: WorkerSpec | None = None) -> None:
    """Serve until SIGTERM/SIGINT (`serve_until_signalled`); with `offline`, first start the
    offline engine in this process and event loop, and send every call to it. A `worker`
    serves as its supervisor said (`serve_as_worker`)."""
    if not offline:
        tune_gc()
        await serve_as_worker(settings, worker)
        return
    from ..engine.server import OfflineEngine

    # On loopback with a free port: only this proxy talks to it.
    async with OfflineEngine(
        host="127.0.0.1", port=0, max_streams=settings.offline_max_streams
    ) as engine:
        logger.info(
            "DEEPGRAM_API_KEY is not set: transcribing with the offline engine (Whisper "
            "tiny.en, %d worker processes, at %s). For Deepgram, set DEEPGRAM_API_KEY "
            "(see .env.example).",
            engine.workers,
            engine.url,
        )
        tune_gc()
        await serve_as_worker(dataclasses.replace(settings, deepgram_url=engine.url), worker)


async def serve_as_worker(settings: Settings, worker: WorkerSpec | None) -> None:
    """`serve_until_signalled`; for a `worker`, on the socket it inherited or its own with
    SO_REUSEPORT, telling its supervisor once it listens, and draining if the supervisor
    dies."""
    from ..server import serve_until_signalled

    if worker is None:
        await serve_until_signalled(settings)
        return
    link = WorkerLink(worker)
    link.stop_when_orphaned()
    await serve_until_signalled(
        settings,
        sock=link.listening_socket,
        reuse_port=link.listening_socket is None,
        on_listening=link.ready,
    )


def supervise(settings: Settings, env_file: Path) -> int:
    """Run WORKERS copies of `serve` on one port (`workers.Supervisor`) until SIGTERM/SIGINT;
    the exit status says how it ended, as `run`'s does."""
    from ..metrics import forget_worker, multiprocess_directory
    from ..server import log_listening, warn_if_exposed

    reuse_port = reuse_port_balances()
    try:
        held = hold_port(settings.host, settings.port, listen=not reuse_port)
    except OSError as exc:
        logger.error("%s", hints.cannot_listen(settings.host, settings.port, exc, setting="PORT"))
        return EXIT_LISTEN
    with held:
        port = int(held.getsockname()[1])

        def command(spec: WorkerSpec) -> list[str]:
            # The worker reads the same environment and .env; the port is the one held.
            return [
                *(sys.executable, "-m", "twilio_dg_proxy", "serve"),
                *("--env-file", str(env_file), "--host", settings.host, "--port", str(port)),
                *("--workers", "1", "--worker", spec.option()),
            ]

        def serving() -> None:
            log_listening(settings, port)
            warn_if_exposed(settings)

        logger.info(
            "starting %d workers on port %d (%s)",
            settings.workers,
            port,
            "SO_REUSEPORT" if reuse_port else "one shared socket",
        )
        # One scrape of any worker sees them all: prometheus_client's multiprocess mode, in a
        # directory the workers inherit (docs/observability.md).
        with multiprocess_directory():
            supervisor = Supervisor(
                settings.workers,
                command,
                shared=None if reuse_port else held,
                exited=forget_worker,
            )
            try:
                outcome = asyncio.run(supervisor.run_until_signalled(serving))
            except WorkerStartError as exc:
                return exc.status
    return EXIT_INTERRUPTED if outcome == "interrupted" else 0


def worker_spec(raw: str) -> WorkerSpec:
    """`--worker`'s type (argparse reports its ValueError)."""
    return WorkerSpec.parse(raw)


def tune_gc() -> None:
    """Set the garbage collector up for serving, once start-up is done: what start-up made
    (modules, classes, the offline engine) lives as long as the process, so it is frozen out
    of every later collection; and young objects are collected less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    logger.debug(
        "garbage collector: %d start-up objects frozen, thresholds %s",
        gc.get_freeze_count(),
        gc.get_threshold(),
    )
