"""What instances say to each other through Redis (docs/scaling-out.md): key names, the
entries of a call's stream and of the call feed, the registry's records, and the
policies the broker applies (which messages wait while Redis is away, and which writes are
made again after it restarted; the heartbeat's rhythm, and when an instance is gone). No
sockets and no clock: the broker (`redis_broker` and the modules it is made of) does the I/O.

Keys (every one starts with REDIS_KEY_PREFIX, `tdp` by default):
- `tdp:call:{s<k>}:CA…` a Redis Stream per call: `open`, then each Deepgram message, then
  `end`; k is the call's shard (`shard_of`).
  Entry ids are `0-<n>`, n counting the call's entries from 1, so a retried write is
  refused as a duplicate instead of repeated, and a reader can tell a gap from an end.
- `tdp:{registry}:calls` hash callSid → the call's info and owning instance.
- `tdp:{registry}:feed` stream of `started` / `ended`, what the viewers' call list follows.
- `tdp:{registry}:instance:<id>` one expiring key per instance: its heartbeat.
- `tdp:{registry}:epoch` a random value, new whenever Redis has lost its keys.
Hash tags: on a Redis Cluster, one XREAD may only read streams in one hash slot, so calls
are spread over SHARDS tags (`{s0}` … `{s15}`) and an instance reads each shard's followed
calls with one XREAD (on one Redis, one XREAD reads them all). The registry's keys share one
tag, so the multi-key commands on them stay in one slot.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from websockets.frames import CloseCode

from .hub import Ending
from .viewer_protocol import CallInfo

# Entries of a call's stream (field `k`).
OPEN, MESSAGE, END = "o", "m", "e"
# Entries of the call feed.
STARTED, ENDED = "started", "ended"

# Hash tags calls are spread over: enough to spread a Cluster's load over its nodes, few
# enough that an instance needs few blocking reads (one per shard) to follow its calls.
SHARDS = 16

# What watchers elsewhere get when the instance streaming their call vanishes.
INSTANCE_LOST = Ending(CloseCode.INTERNAL_ERROR, "the instance streaming this call stopped")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def call(self, call_sid: str) -> str:
        """The call's stream: its messages, in order."""
        return f"{self.prefix}:call:{{s{shard_of(call_sid)}}}:{call_sid}"

    @property
    def calls(self) -> str:
        """The registry: callSid → `CallRecord` as JSON."""
        return f"{self.prefix}:{{registry}}:calls"

    @property
    def feed(self) -> str:
        """Calls starting and ending, for every instance's viewers."""
        return f"{self.prefix}:{{registry}}:feed"

    @property
    def epoch(self) -> str:
        """A random value set once: when it changes, Redis has lost its keys (a restart)."""
        return f"{self.prefix}:{{registry}}:epoch"

    def instance(self, instance_id: str) -> str:
        """An instance's heartbeat (an expiring key)."""
        return f"{self.prefix}:{{registry}}:instance:{instance_id}"


def shard_of(call_sid: str) -> int:
    """The shard of a call: the same on every instance (CRC-32, not Python's salted hash)."""
    return zlib.crc32(call_sid.encode()) % SHARDS


def entry_id(n: int) -> str:
    """The id of a call stream's n-th entry (n ≥ 1)."""
    return f"0-{n}"


def entry_number(entry_id: str) -> int:
    """n of an id made by `entry_id` (0 for anything else)."""
    ms, _, seq = entry_id.partition("-")
    return int(seq) if ms == "0" and seq.isdigit() else 0


def id_order(entry_id: str) -> tuple[int, int]:
    """Any stream entry id (`<ms>-<seq>`) as numbers, to compare."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Call stream entries.


def open_entry() -> dict[str, str]:
    return {"k": OPEN}


def message_entry(text: str) -> dict[str, str]:
    return {"k": MESSAGE, "d": text}


def end_entry(ending: Ending) -> dict[str, str]:
    return {"k": END} | _ending_fields(ending)


def _ending_fields(ending: Ending) -> dict[str, str]:
    return {"c": str(int(ending.code)), "r": ending.reason, "s": "1" if ending.say_close else ""}


def _parse_ending(fields: Mapping[str, str]) -> Ending:
    try:
        code = CloseCode(int(fields.get("c", "")))
    except ValueError:
        code = CloseCode.INTERNAL_ERROR
    return Ending(code, fields.get("r", ""), say_close=bool(fields.get("s")))


@dataclass(frozen=True, slots=True)
class Message:
    """A Deepgram message of the call, verbatim."""

    text: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The call's first entry: a stream that starts elsewhere has lost its oldest entries."""


CallEntry = Opened | Message | Ending


def parse_call_entry(fields: Mapping[str, str]) -> CallEntry | None:
    """The entry, or None for one this version does not know (skipped, not fatal)."""
    kind = fields.get("k")
    if kind == MESSAGE and "d" in fields:
        return Message(fields["d"])
    if kind == OPEN:
        return Opened()
    if kind == END:
        return _parse_ending(fields)
    return None


@dataclass(frozen=True, slots=True)
class Replay:
    """A call's stream read from its start: the Deepgram messages in it, whether older ones
    were trimmed (or lost), and how it ended if it has."""

    messages: tuple[str, ...]
    truncated: bool
    ending: Ending | None
    last_id: str


def replay(entries: Iterable[tuple[str, Mapping[str, str]]]) -> Replay:
    """Read (id, fields) entries of a call's stream, oldest first."""
    messages: list[str] = []
    truncated: bool | None = None
    ending: Ending | None = None
    last_id = "0-0"
    for entry_id_, fields in entries:
        last_id = entry_id_
        entry = parse_call_entry(fields)
        if truncated is None:
            truncated = not isinstance(entry, Opened)
        if isinstance(entry, Message):
            messages.append(entry.text)
        elif isinstance(entry, Ending):
            ending = entry
    return Replay(tuple(messages), bool(truncated), ending, last_id)


# The registry and the call feed.


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A registry entry: the call's info and the instance that streams it."""

    info: CallInfo
    instance: str

    def dumps(self) -> str:
        return json.dumps({"call": self.info.to_json(), "instance": self.instance})


def load_record(raw: str) -> CallRecord | None:
    """The record, or None if it is not one (written by a newer or broken writer)."""
    try:
        value = json.loads(raw)
        call, instance = value["call"], value["instance"]
        info = CallInfo(
            str(call["callSid"]),
            {str(k): str(v) for k, v in dict(call.get("customParameters", {})).items()},
            tuple(str(track) for track in call.get("tracks", ())),
            int(call.get("startedAt", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return CallRecord(info, str(instance))


def started_entry(record: CallRecord) -> dict[str, str]:
    return {"k": STARTED, "record": record.dumps()}


def ended_entry(call_sid: str, ending: Ending) -> dict[str, str]:
    return {"k": ENDED, "sid": call_sid} | _ending_fields(ending)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A call feed entry: `record` for `started`, `ending` for `ended`."""

    kind: Literal["started", "ended"]
    call_sid: str
    record: CallRecord | None = None
    ending: Ending | None = None


def parse_feed_entry(fields: Mapping[str, str]) -> FeedEvent | None:
    """The event, or None for an entry this version does not know."""
    kind = fields.get("k")
    if kind == STARTED:
        record = load_record(fields.get("record", ""))
        return FeedEvent("started", record.info.call_sid, record) if record else None
    if kind == ENDED and fields.get("sid"):
        return FeedEvent("ended", fields["sid"], ending=_parse_ending(fields))
    return None


# What waits for Redis.


@dataclass(frozen=True, slots=True)
class Publish:
    """One write for Redis: a call `opened` (record), a `message`, or its `end`."""

    kind: Literal["opened", "message", "end"]
    call_sid: str
    number: int  # the entry's number in the call's stream (`entry_id`)
    text: str = ""
    record: CallRecord | None = None
    ending: Ending | None = None


class PublishQueue:
    """Writes waiting for Redis, in order. Messages beyond `limit` are dropped and counted
    (never unbounded memory while Redis is away); a call's `opened` and `end` always wait,
    since they are one per call and watchers elsewhere hang without the end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._items: deque[Publish] = deque()
        self._taken = 0  # writes taken and not yet made: they count towards the limit
        self._numbers: dict[str, int] = {}  # callSid → entries numbered so far

    def __len__(self) -> int:
        """Writes waiting, including those taken and not yet `done`."""
        return len(self._items) + self._taken

    def opened(self, record: CallRecord) -> None:
        sid = record.info.call_sid
        self._numbers[sid] = 1
        self._items.append(Publish("opened", sid, 1, record=record))

    def message(self, call_sid: str, text: str) -> bool:
        """Queue a message; False if it was dropped (the queue is full)."""
        if call_sid not in self._numbers:
            return True  # not a call of ours (its `opened` came before this queue existed)
        if len(self) >= self.limit:
            self.dropped += 1
            return False
        number = self._numbers[call_sid] + 1
        self._numbers[call_sid] = number
        self._items.append(Publish("message", call_sid, number, text=text))
        return True

    def end(self, call_sid: str, ending: Ending) -> None:
        number = self._numbers.pop(call_sid, None)
        if number is not None:
            self._items.append(Publish("end", call_sid, number + 1, ending=ending))

    def take(self, most: int) -> list[Publish]:
        """Up to `most` writes, oldest first: then say they are `done`, or give them
        `back` if they could not be made."""
        writes = [self._items.popleft() for _ in range(min(most, len(self._items)))]
        self._taken += len(writes)
        return writes

    def done(self, writes: list[Publish]) -> None:
        """The writes taken were made."""
        self._taken -= len(writes)

    def back(self, writes: list[Publish]) -> None:
        """Put writes taken back in front, in their order: they could not be made."""
        self._taken -= len(writes)
        self._items.extendleft(reversed(writes))

    def again(self, writes: list[Publish]) -> None:
        """Put writes already made in front, to be made again (a restarted Redis lost them)."""
        self._items.extendleft(reversed(writes))


def again_after_restart(recent: Iterable[Publish]) -> list[Publish]:
    """Which of the writes made lately to make again, in order, when Redis has restarted
    empty: all but the `opened` of the calls whose `end` is among them."""
    writes = list(recent)
    ended = {w.call_sid for w in writes if w.kind == "end"}
    return [w for w in writes if w.kind != "opened" or w.call_sid not in ended]


# When an instance is gone.


@dataclass(frozen=True, slots=True)
class Heartbeats:
    """The heartbeat's rhythm for REDIS_HEARTBEAT_TIMEOUT_S = T: a beat every T/5, each
    valid for 2T/5; an instance whose key is found missing, and still missing more than
    T/5 later, is gone (`Liveness`). Killed just after a beat: its key lapses at 0.4 T, is
    found missing by 0.6 T and judged by T. Alive, it must be late by about 0.4 T to be."""

    every_s: float
    ttl_ms: int
    grace_s: float

    @classmethod
    def within(cls, timeout_s: float) -> Heartbeats:
        return cls(every_s=timeout_s / 5, ttl_ms=int(timeout_s * 400), grace_s=timeout_s / 5)


class Liveness:
    """Which instances are gone, from checks of their heartbeat keys: one is gone once its
    key has been missing for longer than `grace_s` on this instance's clock. Time when this
    instance could not check, or Redis had just lost every key (a restart), does not count
    (`forgive`), so an outage of Redis itself ends no call."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._missing_since: dict[str, float] = {}

    def check(self, instance: str, now: float, alive: bool) -> None:
        """Record one check of `instance`'s key at `now`."""
        if alive:
            self._missing_since.pop(instance, None)
        else:
            self._missing_since.setdefault(instance, now)

    def gone(self, instance: str, now: float) -> bool:
        since = self._missing_since.get(instance)
        return since is not None and now - since > self.grace_s

    def forgive(self) -> None:
        """Start every count again (this instance was cut off, or Redis restarted)."""
        self._missing_since.clear()

    def forget(self, instance: str) -> None:
        self._missing_since.pop(instance, None)
