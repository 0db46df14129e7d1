"""Command line: `python -m twilio_dg_proxy [COMMAND]`; without a command it serves.

This module is the table of commands. Each lives in its own module of `commands/`, imported
only when used (some pull in heavy optional dependencies), with one entry shape:
`DESCRIPTION`, `add_arguments(parser)` and `run(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name → (module, one-line help). `serve` comes first and is the default.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("twilio_dg_proxy.commands.serve", "run the proxy (the default command)"),
    "demo": (
        "twilio_dg_proxy.commands.demo",
        "see it work: offline engine, proxy and a sample call in one command",
    ),
    "watch": (
        "twilio_dg_proxy.commands.watch",
        "print a live call's transcript in the terminal (the newest call by default)",
    ),
    "simulate": (
        "twilio_dg_proxy.commands.simulate",
        "stream an audio file (the bundled sample by default) through a proxy as Twilio would",
    ),
    "engine": (
        "twilio_dg_proxy.commands.engine",
        "run the offline transcription engine (Deepgram's protocol)",
    ),
    "bench": (
        "twilio_dg_proxy.commands.bench",
        "measure calls held, added latency and fan-out latency",
    ),
}
DEFAULT_COMMAND = "serve"


class CommandModule(Protocol):
    """What a command's module provides."""

    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def command_list() -> str:
    """The commands, one per line, for help texts."""
    return "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items())


def build_parser(name: str) -> tuple[argparse.ArgumentParser, CommandModule]:
    """The parser of command `name` and its module."""
    module = cast(CommandModule, importlib.import_module(COMMANDS[name][0]))
    parser = argparse.ArgumentParser(
        prog=f"twilio-dg-proxy {name}" if name != DEFAULT_COMMAND else "twilio-dg-proxy",
        description=module.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m twilio_dg_proxy` and the `twilio-dg-proxy` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = args.pop(0) if args and args[0] in COMMANDS else DEFAULT_COMMAND
    parser, module = build_parser(name)
    return module.run(parser.parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
