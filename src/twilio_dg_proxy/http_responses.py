"""Plain HTTP answers on a websockets `ServerConnection` (whose `respond` says text/plain),
and what routing and the logs read of a request: its path, the peer."""

from __future__ import annotations

import json
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response


def respond(
    ws: ServerConnection, status: HTTPStatus, body: str | bytes, content_type: str
) -> Response:
    """`body` as `content_type` (bytes are sent as they are)."""
    response = ws.respond(status, body if isinstance(body, str) else "")
    set_header(response, "Content-Type", content_type)
    if isinstance(body, bytes):
        response.body = body
        set_header(response, "Content-Length", str(len(body)))
    return response


def respond_json(
    ws: ServerConnection, body: object, status: HTTPStatus = HTTPStatus.OK
) -> Response:
    """`body` as JSON, on one line."""
    return respond(ws, status, json.dumps(body) + "\n", "application/json")


def set_header(response: Response, name: str, value: str) -> None:
    """Replace a header websockets set (Content-Type, Content-Length) rather than add one."""
    if name in response.headers:
        del response.headers[name]
    response.headers[name] = value


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return urlsplit(target).path


def peer_address(ws: ServerConnection) -> str:
    """The client's address as host:port, for logs ("?" when unknown)."""
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
