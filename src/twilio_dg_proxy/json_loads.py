"""The one JSON parser of the hot paths (Twilio's messages, Deepgram's results): orjson,
about four times faster than the standard library, where it has wheels; the standard
library otherwise.

The two agree on all valid JSON except integers beyond 64 bits (orjson reads them as
floats); they differ on text that is not valid JSON to begin with (NaN, lone surrogates)
and in their error messages. Both raise `json.JSONDecodeError` (orjson's is a subclass).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["loads", "object_or_none", "std_loads"]


def std_loads(text: str | bytes) -> Any:
    """The standard library's parser, taking bytes as UTF-8 only (`json.loads` would also
    take UTF-16 and UTF-32 bytes): raises UnicodeDecodeError for anything else."""
    return json.loads(text.decode() if isinstance(text, bytes) else text)


loads: Callable[[str | bytes], Any]
try:
    from orjson import loads
except ImportError:  # pragma: no cover - orjson installs wherever CPython does
    loads = std_loads


def object_or_none(text: str) -> dict[str, Any] | None:
    """`text` parsed, if it is a JSON object; None for anything else or invalid JSON
    (RecursionError: the standard library's parser on deeply nested input)."""
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
