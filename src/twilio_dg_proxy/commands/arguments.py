"""Argument types shared by the commands, built once on the settings' own parsers.

Each is an argparse `type`: text in, a value out, or `argparse.ArgumentTypeError` with the
parser's message (argparse shows it after the option's name).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from .. import config

T = TypeVar("T")


def argument(parse: config.Parser[T], name: str) -> Callable[[str], T]:
    """`parse` as an argparse type; `name` is what argparse calls the value in messages."""

    def convert(raw: str) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def count(high: int = 1_000_000) -> Callable[[str], int]:
    """A whole number from 1 to `high`."""
    return argument(config.number_in(int, 1, high), "count")


def seconds(low: float = 0.0, high: float = 3600.0) -> Callable[[str], float]:
    """A number of seconds from `low` to `high`."""
    return argument(config.number_in(float, low, high), "seconds")


def parse_name_value(raw: str) -> tuple[str, str]:
    """NAME=VALUE as (NAME, VALUE); the value may be empty or hold "="."""
    name, equals, value = raw.partition("=")
    if not equals or not name:
        raise ValueError(f"expected NAME=VALUE, got {raw!r}")
    return name, value


#: A TCP port; 0 picks a free one.
port = argument(config.number_in(int, 0, 65535), "port")
#: A ws:// or wss:// URL without a query.
ws_url = argument(config.ws_url, "URL")
#: NAME=VALUE (the value may be empty or hold "=").
name_value = argument(parse_name_value, "NAME=VALUE")
#: A logging level name.
level_name = argument(config.level_name, "level")
