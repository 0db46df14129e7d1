"""The names metrics give to what happened: Deepgram's failures, bad input; and the URL of
the start-up check."""

from __future__ import annotations

import pytest

from twilio_dg_proxy.deepgram_protocol import token_url
from twilio_dg_proxy.exceptions import (
    ClientProtocolError,
    DeepgramClosed,
    DeepgramRefused,
    DeepgramUnavailable,
    InvalidText,
    TooManySubscribers,
    TwilioProtocolError,
    Unauthorized,
    UnknownCall,
)
from twilio_dg_proxy.observations import deepgram_failure, is_bad_input


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (DeepgramClosed(1011, "NET-0000"), "closed"),
        (DeepgramClosed(None, ""), "closed"),
        (DeepgramUnavailable("timeout"), "unreachable"),
        (DeepgramRefused(401, "Invalid credentials.", "r"), "refused_auth"),
        (DeepgramRefused(402, "", "r"), "refused_auth"),
        (DeepgramRefused(429, "", "r"), "refused_limit"),
        (DeepgramRefused(503, "", "r"), "refused_server"),
        (DeepgramRefused(400, "bad query", "r"), "refused_other"),
    ],
)
def test_deepgram_failures_are_named(exc: Exception, name: str) -> None:
    assert deepgram_failure(exc) == name  # type: ignore[arg-type]


def test_bad_input_is_what_a_peer_sent_not_auth_or_limits() -> None:
    assert is_bad_input(TwilioProtocolError("x")) and is_bad_input(InvalidText("x"))
    assert is_bad_input(ClientProtocolError("x")) and is_bad_input(UnknownCall("x"))
    assert not is_bad_input(Unauthorized("x")) and not is_bad_input(TooManySubscribers("x"))


@pytest.mark.parametrize(
    ("listen", "token"),
    [
        ("wss://api.deepgram.com/v1/listen", "https://api.deepgram.com/v1/auth/token"),
        ("wss://api.eu.deepgram.com/v1/listen/", "https://api.eu.deepgram.com/v1/auth/token"),
        ("ws://127.0.0.1:5001/v1/listen", "http://127.0.0.1:5001/v1/auth/token"),
        ("wss://dg.example.com/stt/v1/listen", "https://dg.example.com/stt/v1/auth/token"),
        ("ws://10.0.0.2:8080/custom", "http://10.0.0.2:8080/v1/auth/token"),
    ],
)
def test_the_check_asks_beside_the_listen_endpoint(listen: str, token: str) -> None:
    assert token_url(listen) == token
