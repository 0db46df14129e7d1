"""The web viewer's static files (package data beside this module) and how they are served.

Pure: `load_assets()` reads the files once into memory; the server answers `GET /` with
`index.html` and `GET /viewer/<name>` with the asset of that exact name, so a path that is
not one of these names (`..`, encoded slashes, subdirectories) is simply not found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

INDEX = "index.html"

CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".svg": "image/svg+xml",
    }
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, its Content-Type and its ETag (a quoted content hash)."""

    name: str
    body: bytes
    content_type: str
    etag: str

    def matches(self, if_none_match: str) -> bool:
        """Whether an `If-None-Match` header names this version (the browser's copy is fresh)."""
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or self.etag in tags


def load_assets() -> dict[str, Asset]:
    """Every servable file of the viewer, by file name."""
    assets = {}
    for entry in resources.files(__name__).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue  # __init__.py, caches
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = Asset(entry.name, body, CONTENT_TYPES[suffix], etag)
    return assets
