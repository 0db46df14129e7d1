"""The /calls API over HTTP: checks the token, asks the store, answers (`calls_protocol`
says what each request means and what each answer holds).

Statuses: 200; 400 a bad limit, cursor, filter or format; 401 no valid token (with
CLIENT_TOKENS, the same rules as /client); 404 no such call, or no store
(STORE_TRANSCRIPTS=false); 405 a method other than GET; 503 the store cannot answer.
Every answer is `Cache-Control: no-store`: transcripts are personal data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from . import calls_protocol
from .auth import token_allowed, token_of
from .calls_protocol import GetCall, GetTranscript, ListCalls
from .exceptions import BadCallsRequest, StoreError
from .http_responses import respond, respond_json
from .hub import HubCounters
from .logs import get_logger
from .store.base import TranscriptStore

logger = get_logger("calls")


async def answer(
    ws: ServerConnection,
    request: Request,
    store: TranscriptStore | None,
    tokens: Sequence[str],
    counters: HubCounters,
) -> Response:
    """The answer to one request for a /calls path."""
    method = getattr(request, "method", "GET")  # older websockets passed GET only
    if method != "GET":
        response = _error(ws, HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed")
        response.headers["Allow"] = "GET"
        return response
    if tokens and not token_allowed(token_of(request.path, request.headers), tokens):
        counters.refused_unauthorized += 1
        logger.warning("refused a /calls request: bad or missing token")
        response = _error(ws, HTTPStatus.UNAUTHORIZED, "a client token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if store is None:
        return _error(ws, HTTPStatus.NOT_FOUND, "transcripts are not stored here")
    try:
        wanted = calls_protocol.parse_request(request.path)
        if wanted is None:
            return _error(ws, HTTPStatus.NOT_FOUND, "no such resource")
        return await _fetch(ws, store, wanted)
    except BadCallsRequest as exc:
        return _error(ws, HTTPStatus.BAD_REQUEST, str(exc))
    except StoreError as exc:
        counters.store_errors += 1
        logger.warning("the %s store could not answer a /calls request: %s", store.kind, exc)
        return _error(ws, HTTPStatus.SERVICE_UNAVAILABLE, "the transcript store is unavailable")


async def _fetch(
    ws: ServerConnection, store: TranscriptStore, wanted: calls_protocol.CallsRequest
) -> Response:
    match wanted:
        case ListCalls(query):
            page = await store.list_calls(query)
            return _json(ws, calls_protocol.page_body(page))
        case GetCall(call_sid):
            call = await store.get_call(call_sid, finals=False)
            if call is None:
                return _error(ws, HTTPStatus.NOT_FOUND, "no such call")
            return _json(ws, call.summary())
        case GetTranscript(call_sid, form, download):
            call = await store.get_call(call_sid)
            if call is None:
                return _error(ws, HTTPStatus.NOT_FOUND, "no such call")
            # Off the event loop: the longest transcripts take a few hundred milliseconds.
            text = await asyncio.to_thread(form.render, call)
            response = _private(respond(ws, HTTPStatus.OK, text, form.content_type))
            if download:
                disposition = calls_protocol.attachment(call_sid, form.extension)
                response.headers["Content-Disposition"] = disposition
            return response


def _json(ws: ServerConnection, body: object, status: HTTPStatus = HTTPStatus.OK) -> Response:
    return _private(respond_json(ws, body, status))


def _error(ws: ServerConnection, status: HTTPStatus, message: str) -> Response:
    return _json(ws, {"error": message}, status)


def _private(response: Response) -> Response:
    """Never cached (transcripts are personal data), never read as another type."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
