"""Settings.from_env, the Deepgram URL and the close-code table."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.frames import CloseCode

from twilio_dg_proxy.config import Settings, retired_settings
from twilio_dg_proxy.deepgram_protocol import auth_headers, listen_url
from twilio_dg_proxy.exceptions import (
    ConfigError,
    DeepgramClosed,
    MalformedMessage,
    UnknownCall,
    UnsupportedFrame,
    close_frame_for,
)


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.chunk_ms) == ("127.0.0.1", 5000, 100)
    assert settings.deepgram_url == "wss://api.deepgram.com/v1/listen"
    assert settings.needs_api_key


def test_values_are_parsed_from_text() -> None:
    settings = Settings.from_env(
        {"PORT": "8080", "CHUNK_MS": "40", "KEEPALIVE_INTERVAL": "3.5", "LOG_LEVEL": "debug"}
    )
    assert (settings.port, settings.chunk_ms, settings.keepalive_s) == (8080, 40, 3.5)
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("public_url", "stream_url"),
    [
        ("https://abcd.ngrok-free.app", "wss://abcd.ngrok-free.app/twilio"),
        ("https://abcd.ngrok-free.app/", "wss://abcd.ngrok-free.app/twilio"),
        ("wss://abcd.ngrok-free.app", "wss://abcd.ngrok-free.app/twilio"),
        ("wss://abcd.ngrok-free.app/", "wss://abcd.ngrok-free.app/twilio"),
        ("https://example.com:8443/proxy/", "wss://example.com:8443/proxy/twilio"),
        ("wss://example.com/proxy", "wss://example.com/proxy/twilio"),
    ],
)
def test_every_form_of_public_url_gives_the_url_twilio_signs(
    public_url: str, stream_url: str
) -> None:
    assert Settings.from_env({"PUBLIC_URL": public_url}).twilio_stream_url == stream_url


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PORT", "http", "expected an integer"),
        ("PORT", "70000", "between 0 and 65535"),
        ("CHUNK_MS", "5", "between 20 and 1000"),
        ("KEEPALIVE_INTERVAL", "12", "between"),
        ("KEEPALIVE_INTERVAL", "soon", "expected a number"),
        ("DEEPGRAM_URL", "https://api.deepgram.com/v1/listen", "ws:// or wss://"),
        ("DEEPGRAM_URL", "wss://api.deepgram.com/v1/listen?model=x", "DEEPGRAM_PARAMS"),
        ("DEEPGRAM_PARAMS", "model", "key=value"),
        ("DEEPGRAM_PARAMS", "channels=1", "set by the proxy"),
        ("LOG_LEVEL", "LOUD", "expected DEBUG"),
        ("CLIENT_QUEUE_SIZE", "0", "between 1"),
        ("DIRECT_RECEIVE", "maybe", "expected true, false"),
        ("DIRECT_RECEIVE", "on", "expected true, false"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True)]
    + [("false", False), ("False", False), ("0", False), ("no", False)],
)
def test_direct_receive_is_a_strict_boolean(value: str, expected: bool) -> None:
    assert Settings.from_env({"DIRECT_RECEIVE": value}).direct_receive is expected


def test_direct_receive_is_on_by_default() -> None:
    assert Settings.from_env({}).direct_receive is True


def test_the_api_key_never_appears_in_repr() -> None:
    settings = Settings.from_env({"DEEPGRAM_API_KEY": "sekrit-key"})
    assert "sekrit" not in repr(settings)


def test_stereo_url_has_the_tutorial_query_and_user_options_merged_over_defaults() -> None:
    settings = Settings.from_env(
        {
            "DEEPGRAM_URL": "ws://127.0.0.1:9/v1/listen",
            "DEEPGRAM_PARAMS": "model=nova-2-phonecall&diarize=true",
        }
    )
    url = urlsplit(listen_url(settings, 2))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.netloc == "127.0.0.1:9" and url.path == "/v1/listen"
    assert query["encoding"] == "mulaw" and query["sample_rate"] == "8000"
    assert query["channels"] == "2" and query["multichannel"] == "true"
    assert query["model"] == "nova-2-phonecall" and query["diarize"] == "true"
    assert query["interim_results"] == "true" and query["punctuate"] == "true"


def test_mono_url_has_one_channel_and_no_multichannel() -> None:
    query = parse_qs(urlsplit(listen_url(Settings.from_env({}), 1)).query)
    assert query["channels"] == ["1"]
    assert "multichannel" not in query


def test_auth_header_only_with_a_key() -> None:
    assert auth_headers(Settings.from_env({})) == {}
    assert auth_headers(Settings.from_env({"DEEPGRAM_API_KEY": "k"})) == {
        "Authorization": "Token k"
    }


def test_a_self_hosted_deepgram_needs_no_key() -> None:
    assert not Settings.from_env({"DEEPGRAM_URL": "ws://127.0.0.1:8080/v1/listen"}).needs_api_key


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnsupportedFrame("binary"), CloseCode.UNSUPPORTED_DATA),
        (MalformedMessage("bad"), CloseCode.POLICY_VIOLATION),
        (UnknownCall("CA1"), CloseCode.POLICY_VIOLATION),
        (DeepgramClosed(1011, "NET-0001"), CloseCode.BAD_GATEWAY),
        (RuntimeError("bug"), CloseCode.INTERNAL_ERROR),
    ],
)
def test_each_error_maps_to_one_close_code(exc: Exception, code: CloseCode) -> None:
    assert close_frame_for(exc)[0] == code


def test_close_reasons_fit_in_a_close_frame() -> None:
    _, reason = close_frame_for(MalformedMessage("é" * 200))
    assert len(reason.encode()) <= 123


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("REDIS_URL", "redis://:s3cretPW@localhost:63x79/0", "s3cretPW"),
        ("REDIS_URL", "http://user:s3cretPW@localhost/0", "s3cretPW"),
        ("WEBHOOK_URL", "https://ok.example/h,htps://user:tok3nSECRET@x/h", "tok3nSECRET"),
        ("DATABASE_URL", "mysql://bob:s3cretPW@db/x", "s3cretPW"),
    ],
)
def test_a_bad_url_setting_is_refused_without_echoing_its_credentials(
    variable: str, value: str, secret: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value, "WEBHOOK_SECRET": "x" * 16})
    assert variable in str(caught.value)
    assert secret not in str(caught.value)


def test_a_retired_setting_still_set_is_named_with_what_replaces_it() -> None:
    assert retired_settings({"STORE_QUEUE_CALLS": "100"}) == [
        "STORE_QUEUE_CALLS is no longer read: the store's queue is bounded in bytes now: set "
        "STORE_QUEUE_BYTES"
    ]
    assert retired_settings({"STORE_QUEUE_CALLS": " ", "PORT": "1"}) == []
