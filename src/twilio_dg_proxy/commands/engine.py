"""The `engine` command: serve the offline engine on its own, until SIGINT or SIGTERM.

One engine can serve several proxies (each with ``DEEPGRAM_URL=ws://HOST:PORT/v1/listen``)
and tests; ``python -m twilio_dg_proxy`` without a Deepgram key runs one in-process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from ..engine import DEFAULT_MAX_STREAMS, INSTALL_HINT, missing_requirements
from ..logs import get_logger, setup_logging
from . import hints
from .arguments import count, level_name, port

DESCRIPTION = (
    "Serve the offline transcription engine (Whisper tiny.en, no account, nothing downloaded) "
    "on Deepgram's live protocol at ws://HOST:PORT/v1/listen. Point a proxy at it with "
    "DEEPGRAM_URL=ws://HOST:PORT/v1/listen. Needs the offline extra: " + INSTALL_HINT
)
DEFAULT_PORT = 5001
EXIT_FAILED = 1

logger = get_logger("engine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --workers, --max-streams and --log-level."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=port,
        default=DEFAULT_PORT,
        help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--workers",
        type=count(),
        default=None,
        help="recogniser processes, each decoding one utterance at a time "
        "(default: 2, or 1 on a single core)",
    )
    parser.add_argument(
        "--max-streams",
        type=count(1000),
        default=DEFAULT_MAX_STREAMS,
        help="streams served at once; more are refused with HTTP 429, as Deepgram does at its "
        f"concurrency limit (default: {DEFAULT_MAX_STREAMS})",
    )
    parser.add_argument(
        "--log-level",
        type=level_name,
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 then, 1 when the engine cannot start (says why)."""
    setup_logging(args.log_level)
    missing = missing_requirements()
    if missing:
        logger.error(
            "the offline engine needs %s, which is not installed: %s",
            ", ".join(missing),
            hints.pip(INSTALL_HINT),
        )
        return EXIT_FAILED
    from ..engine.model import WeightsError
    from ..engine.server import EngineError

    try:
        asyncio.run(_serve(args))
    except (WeightsError, EngineError) as exc:
        logger.error("the offline engine cannot start: %s", exc)
        return EXIT_FAILED
    except OSError as exc:  # the address is taken or not ours to bind
        logger.error("%s", hints.cannot_listen(args.host, args.port, exc))
        return EXIT_FAILED
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from ..engine.server import OfflineEngine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with OfflineEngine(
        host=args.host, port=args.port, workers=args.workers, max_streams=args.max_streams
    ) as engine:
        logger.info(
            "offline engine (Whisper tiny.en, %d worker processes, at most %d streams) "
            "listening on %s; point a proxy at it with DEEPGRAM_URL=%s",
            engine.workers,
            engine.max_streams,
            engine.url,
            engine.url,
        )
        await stop.wait()
        logger.info("shutting down")
