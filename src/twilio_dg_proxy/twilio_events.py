"""Twilio Media Streams messages as typed events: the only module that knows Twilio's JSON.

`parse_event` turns one WebSocket text message into a `TwilioEvent` or raises a
`TwilioProtocolError`; `TwilioStream` adds the order rules of one stream. Each event class
names its wire `event` in a class attribute of that name. Pure: no I/O, no clock.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from . import json_loads
from .exceptions import InvalidText, MalformedMessage, UnexpectedEvent

# Text arrives as the UTF-8 bytes of the frame: orjson reads (and checks) them as they are.
_json_loads = json_loads.loads

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "Start",
    "Stop",
    "Track",
    "TwilioEvent",
    "TwilioStream",
    "UnknownEvent",
    "media_fields",
    "parse_event",
]

Track = Literal["inbound", "outbound"]

#: Largest decoded `media.payload` accepted: 2 s of 8 kHz mu-law (Twilio sends 160 bytes).
MAX_PAYLOAD_BYTES = 16_000
# Base64 length of MAX_PAYLOAD_BYTES: longer strings are rejected before decoding.
_MAX_PAYLOAD_B64 = 4 * -(-MAX_PAYLOAD_BYTES // 3)
# Counters and timestamps: 15 digits is 31,000 years of milliseconds.
_MAX_DIGITS = 15
_MAX_COUNT = 10**_MAX_DIGITS
# Longest excerpt of a bad value quoted in an error (errors become close reasons).
_MAX_SHOWN = 32
# Longest JSON parser message quoted in an error.
_MAX_JSON_ERROR = 60

_MULAW = "audio/x-mulaw"
_SAMPLE_RATE = 8000
_CHANNELS = 1


@dataclass(frozen=True, slots=True)
class Connected:
    """First message of a stream: the protocol Twilio speaks."""

    event: ClassVar[str] = "connected"
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """Audio format of a stream; `parse_event` accepts only mu-law, 8000 Hz, 1 channel."""

    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata, sent once after `connected`.

    `tracks` holds distinct tracks, inbound first. `custom_parameters` is a read-only mapping
    (the `<Parameter>` values of the TwiML); it takes part in equality but not in the hash.
    """

    event: ClassVar[str] = "start"
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[Track, ...]
    custom_parameters: Mapping[str, str] = field(hash=False)
    media_format: MediaFormat
    sequence_number: int


# Not frozen: one is made for each of a call's 100 messages per second, and a frozen
# dataclass's __init__ (object.__setattr__ per field) costs about three times as much.
@dataclass(slots=True)
class Media:
    """One packet of raw mu-law audio; `timestamp_ms` counts from the start of the stream."""

    event: ClassVar[str] = "media"
    track: Track
    chunk: int
    timestamp_ms: int
    payload: bytes
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key pressed on the phone; Twilio names the track "inbound_track"."""

    event: ClassVar[str] = "dtmf"
    track: str
    digit: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio's answer to a mark we sent (bidirectional streams only)."""

    event: ClassVar[str] = "mark"
    name: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Last message of a stream; Twilio closes the connection next."""

    event: ClassVar[str] = "stop"
    account_sid: str
    call_sid: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed message with an `event` this module does not know. Twilio adds events
    over time; a live transcription must not end because of one, so it is passed on to be
    logged and ignored."""

    event: ClassVar[str] = "unknown"
    name: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop | UnknownEvent


def _show(value: object) -> str:
    """Return a short, printable excerpt of a bad value for an error message."""
    if isinstance(value, list | dict) or value is None or isinstance(value, bool):
        # Containers by kind only: their repr could be long, or recurse too deeply.
        return _kind(value)
    if isinstance(value, str):
        # repr escapes control characters and lone surrogates (close reasons are UTF-8).
        shown = repr(value[:_MAX_SHOWN])
    else:
        shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return shown


def _count(obj: dict[str, Any], key: str, where: str) -> int:
    """Return `obj[key]`, a string of digits or a JSON integer, as a non-negative int."""
    value = obj.get(key)
    # Fast path first: Twilio sends digit strings. isascii() rules out "²" and other
    # Unicode digits that int() would reject or read differently.
    if type(value) is str:
        if 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    elif type(value) is int and 0 <= value < _MAX_COUNT:
        return value
    if key not in obj:
        raise MalformedMessage(f"{where}: missing")
    raise MalformedMessage(f"{where}: expected a string of digits, got {_show(value)}")


def _string(obj: dict[str, Any], key: str, where: str, *, empty: bool = True) -> str:
    """Return `obj[key]`, which must be a string (non-empty unless `empty`)."""
    value = obj.get(key)
    if type(value) is str and (empty or value):
        return value
    if key not in obj:
        raise MalformedMessage(f"{where}: missing")
    expected = "a string" if empty else "a non-empty string"
    raise MalformedMessage(f"{where}: expected {expected}, got {_show(value)}")


def _object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """Return `obj[key]`, which must be a JSON object."""
    value = obj.get(key)
    if type(value) is dict:
        return value
    if key not in obj:
        raise MalformedMessage(f"{where}: missing")
    raise MalformedMessage(f"{where}: expected an object, got {_kind(value)}")


def _kind(value: object) -> str:
    """Name the JSON type of `value`, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _parse_media(message: dict[str, Any]) -> Media:
    media = _object(message, "media", "media")
    raw_track = media.get("track")
    track: Track
    if raw_track == "inbound":
        track = "inbound"
    elif raw_track == "outbound":
        track = "outbound"
    elif "track" not in media:
        raise MalformedMessage("media.track: missing")
    else:
        raise MalformedMessage(
            f"media.track: expected 'inbound' or 'outbound', got {_show(raw_track)}"
        )
    return Media(
        track=track,
        chunk=_count(media, "chunk", "media.chunk"),
        timestamp_ms=_count(media, "timestamp", "media.timestamp"),
        payload=_payload(media),
        sequence_number=_count(message, "sequenceNumber", "sequenceNumber"),
    )


def _payload(media: dict[str, Any]) -> bytes:
    """Decode `media.payload`: strict base64 (no whitespace, padding only at the end)."""
    encoded = _string(media, "payload", "media.payload")
    if len(encoded) > _MAX_PAYLOAD_B64:
        raise MalformedMessage(f"media.payload: larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        # strict_mode accepts exactly what base64.b64decode(validate=True) accepts, without
        # its regular expression and its copy of the text as bytes.
        payload = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise MalformedMessage("media.payload: invalid base64") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(f"media.payload: larger than {MAX_PAYLOAD_BYTES} bytes")
    return payload


def _parse_connected(message: dict[str, Any]) -> Connected:
    return Connected(
        protocol=_string(message, "protocol", "connected.protocol"),
        version=_string(message, "version", "connected.version"),
    )


def _parse_tracks(start: dict[str, Any]) -> tuple[Track, ...]:
    raw = start.get("tracks")
    if type(raw) is not list:
        if "tracks" not in start:
            raise MalformedMessage("start.tracks: missing")
        raise MalformedMessage(f"start.tracks: expected an array, got {_kind(raw)}")
    if not raw:
        raise MalformedMessage("start.tracks: empty")
    for item in raw:
        if item != "inbound" and item != "outbound":
            raise MalformedMessage(
                f"start.tracks: expected 'inbound' or 'outbound', got {_show(item)}"
            )
    if len(raw) != len(set(raw)):
        raise MalformedMessage("start.tracks: duplicate track")
    tracks: tuple[Track, ...] = ("inbound", "outbound")
    return tuple(track for track in tracks if track in raw)


def _parse_media_format(start: dict[str, Any]) -> MediaFormat:
    raw = _object(start, "mediaFormat", "start.mediaFormat")
    encoding = _string(raw, "encoding", "start.mediaFormat.encoding")
    sample_rate = raw.get("sampleRate")
    channels = raw.get("channels")
    if encoding != _MULAW or type(sample_rate) is not int or sample_rate != _SAMPLE_RATE:
        raise MalformedMessage(
            f"unsupported media format: {_show(encoding)} at {_show(sample_rate)} Hz"
        )
    if type(channels) is not int or channels != _CHANNELS:
        raise MalformedMessage(f"unsupported media format: {_show(channels)} channels")
    return MediaFormat(encoding=encoding, sample_rate=sample_rate, channels=channels)


def _parse_custom_parameters(start: dict[str, Any]) -> Mapping[str, str]:
    if "customParameters" not in start:
        return MappingProxyType({})
    raw = _object(start, "customParameters", "start.customParameters")
    for key, value in raw.items():
        if type(value) is not str:
            raise MalformedMessage(
                f"start.customParameters.{_show(key)}: expected a string, got {_kind(value)}"
            )
    return MappingProxyType(dict(raw))


def _parse_start(message: dict[str, Any]) -> Start:
    start = _object(message, "start", "start")
    return Start(
        stream_sid=_string(start, "streamSid", "start.streamSid", empty=False),
        account_sid=_string(start, "accountSid", "start.accountSid", empty=False),
        call_sid=_string(start, "callSid", "start.callSid", empty=False),
        tracks=_parse_tracks(start),
        custom_parameters=_parse_custom_parameters(start),
        media_format=_parse_media_format(start),
        sequence_number=_count(message, "sequenceNumber", "sequenceNumber"),
    )


def _parse_dtmf(message: dict[str, Any]) -> Dtmf:
    dtmf = _object(message, "dtmf", "dtmf")
    return Dtmf(
        track=_string(dtmf, "track", "dtmf.track"),
        digit=_string(dtmf, "digit", "dtmf.digit"),
        sequence_number=_count(message, "sequenceNumber", "sequenceNumber"),
    )


def _parse_mark(message: dict[str, Any]) -> Mark:
    mark = _object(message, "mark", "mark")
    return Mark(
        name=_string(mark, "name", "mark.name"),
        sequence_number=_count(message, "sequenceNumber", "sequenceNumber"),
    )


def _parse_stop(message: dict[str, Any]) -> Stop:
    stop = _object(message, "stop", "stop")
    return Stop(
        account_sid=_string(stop, "accountSid", "stop.accountSid", empty=False),
        call_sid=_string(stop, "callSid", "stop.callSid", empty=False),
        sequence_number=_count(message, "sequenceNumber", "sequenceNumber"),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioEvent]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def parse_event(text: str | bytes) -> TwilioEvent:
    """Parse one Media Streams text message (a str, or its UTF-8 bytes) into its event.

    Strings of digits become ints, base64 becomes bytes; unknown fields are ignored.
    Raises `InvalidText` for bytes that are not UTF-8 and `MalformedMessage` (with a short
    reason, fit for a close frame) for anything that is not a valid message; never any other
    error.
    """
    try:
        message = _json_loads(text)
    except json.JSONDecodeError as exc:  # orjson's JSONDecodeError is a subclass
        if isinstance(text, bytes) and not _is_utf8(text):  # orjson: a JSONDecodeError
            raise InvalidText("text message is not valid UTF-8") from None
        reason = exc.msg[:_MAX_JSON_ERROR]
        raise MalformedMessage(f"invalid JSON: {reason} at char {exc.pos}") from None
    except UnicodeDecodeError:  # json
        raise InvalidText("text message is not valid UTF-8") from None
    except ValueError:  # json: an integer with too many digits for int()
        raise MalformedMessage("invalid JSON: number too large") from None
    except RecursionError:  # json: nested deeper than the stack (orjson stops at 1024)
        raise MalformedMessage("invalid JSON: nested too deeply") from None
    if type(message) is not dict:
        raise MalformedMessage(f"expected a JSON object, got {_kind(message)}")
    event = message.get("event")
    # Media is ~100 messages per second per call: test for it before anything else.
    if event == "media":
        return _parse_media(message)
    if type(event) is not str:
        if "event" not in message:
            raise MalformedMessage("event: missing")
        raise MalformedMessage(f"event: expected a string, got {_kind(event)}")
    parser = _PARSERS.get(event)
    if parser is None:
        return UnknownEvent(name=event[:_MAX_SHOWN])
    return parser(message)


def media_fields(text: str | bytes) -> tuple[Track, int, bytes] | None:
    """`(track, timestamp_ms, payload)` of a valid `media` message, or None for anything
    else (another event, counters as JSON integers, any bad value, invalid JSON), which only
    `parse_event` may judge. Where it returns fields, `parse_event` returns a `Media` with
    these values: the same parser reads the same text (duplicate keys, escapes, key order
    and whitespace alike), and the same checks follow, inline and without an event object
    (the checks and `Media`, not the JSON parser, were most of `parse_event`'s cost for
    media). Never raises."""
    try:
        message = _json_loads(text)
    except (ValueError, RecursionError):  # as parse_event; UnicodeDecodeError is a ValueError
        return None
    if type(message) is not dict or message.get("event") != "media":
        return None
    media = message.get("media")
    if type(media) is not dict:
        return None
    track = media.get("track")
    timestamp = media.get("timestamp")
    chunk = media.get("chunk")
    sequence = message.get("sequenceNumber")
    encoded = media.get("payload")
    if (
        (track != "inbound" and track != "outbound")
        or type(timestamp) is not str
        or type(chunk) is not str
        or type(sequence) is not str
        or not 0 < len(timestamp) <= _MAX_DIGITS
        or not 0 < len(chunk) <= _MAX_DIGITS
        or not 0 < len(sequence) <= _MAX_DIGITS
        or type(encoded) is not str
        or len(encoded) > _MAX_PAYLOAD_B64
    ):
        return None
    digits = timestamp + chunk + sequence  # as `_count`: ASCII digits only
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        payload = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        return None
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    return track, int(timestamp), payload


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class TwilioStream:
    """The order rules of one Media Streams connection, on top of `parse_event`.

    `connected` (optional, at most once) comes before `start`; `start` comes once; `media`,
    `dtmf` and `mark` only after it, `media` only on a track announced in `start.tracks`;
    nothing after `stop`. A `stop` before `start` is accepted (the stream ends empty).
    """

    def __init__(self) -> None:
        self.start: Start | None = None
        self.stopped = False
        self._connected = False
        # The tracks media may come on now: start.tracks between start and stop.
        self._media_tracks: tuple[Track, ...] = ()

    def media(self, text: str | bytes) -> tuple[Track, int, bytes] | None:
        """The fast path of Twilio's ~100 media messages per second: `(track, timestamp_ms,
        payload)` of a media message in Twilio's layout (`media_fields`) that may come now;
        None for anything else, for `receive` to take (its result is then the same as if
        this had not been called: this changes no state)."""
        fields = media_fields(text)
        if fields is not None and fields[0] in self._media_tracks:
            return fields
        return None

    def receive(self, text: str | bytes) -> TwilioEvent:
        """Parse `text` and check it may come now; return the event.

        Raises what `parse_event` raises, or `UnexpectedEvent`; the state is then unchanged.
        """
        event = parse_event(text)
        if self.stopped:
            raise UnexpectedEvent(f"{event.event} after stop")
        start = self.start
        if type(event) is Media:
            if start is None:
                raise UnexpectedEvent("media before start")
            if event.track not in start.tracks:
                raise UnexpectedEvent(f"media on track {event.track!r} not in start.tracks")
            return event
        if type(event) is Start:
            if start is not None:
                raise UnexpectedEvent("second start")
            self.start = event
            self._media_tracks = event.tracks
        elif type(event) is Connected:
            if start is not None:
                raise UnexpectedEvent("connected after start")
            if self._connected:
                raise UnexpectedEvent("second connected")
            self._connected = True
        elif type(event) is Stop:
            self.stopped = True
            self._media_tracks = ()
        elif type(event) is UnknownEvent:
            pass  # allowed anywhere before stop: the caller logs it
        elif start is None:
            raise UnexpectedEvent(f"{event.event} before start")
        return event
