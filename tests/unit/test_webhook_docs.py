"""docs/webhooks.md says what the code does: its example events are what the proxy sends for
the same call, its example headers sign that body, and its receiver's example (standard
library only) accepts a signed request and refuses tampered or replayed ones."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from twilio_dg_proxy.transcripts import FinishedCall
from twilio_dg_proxy.viewer_protocol import CallInfo
from twilio_dg_proxy.webhook_protocol import (
    call_ended,
    call_started,
    signed_headers,
    signing_key,
    transcript_final,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
DOC_SECRET = "my-webhook-secret-0123"

Verify = Callable[[str, dict[str, str], bytes], bool]


def section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def examples() -> dict[str, dict[str, Any]]:
    """The example events, by type."""
    found = [json.loads(block) for block in blocks(section("The events"), "json")]
    return {event["type"]: event for event in found}


def info_of(data: dict[str, Any]) -> CallInfo:
    return CallInfo(
        data["callSid"], data["customParameters"], tuple(data["tracks"]), data["startedAt"]
    )


def test_the_example_events_are_what_the_proxy_sends() -> None:
    docs = examples()
    assert sorted(docs) == ["call.ended", "call.started", "transcript.final"]
    started = docs["call.started"]
    info = info_of(started["data"])
    made = call_started(info, event_id=started["id"], now_ms=started["createdAt"])
    assert json.loads(made.body) == started

    final = docs["transcript.final"]
    text = json.dumps(final["data"]["result"])
    made = transcript_final(info, text, event_id=final["id"], now_ms=final["createdAt"])
    assert json.loads(made.body) == final

    ended = docs["call.ended"]
    summary = ended["data"]["call"]
    call = FinishedCall(
        info_of(summary),
        summary["endedAt"],
        summary["endCode"],
        summary["endReason"],
        tuple(summary["requestIds"]),
        tuple(json.dumps(result) for result in ended["data"]["results"]),
        summary["transcriptTruncated"],
    )
    made = call_ended(call, event_id=ended["id"], now_ms=ended["createdAt"])
    assert json.loads(made.body) == ended


def test_the_example_headers_sign_the_example_call_started() -> None:
    started = examples()["call.started"]
    body = call_started(
        info_of(started["data"]), event_id=started["id"], now_ms=started["createdAt"]
    ).body
    (block,) = blocks(section("The headers and the signature"), "")
    shown = dict(line.split(": ", 1) for line in block.strip().splitlines())
    timestamp = started["data"]["startedAt"] // 1000
    assert shown == signed_headers(signing_key(DOC_SECRET), started["id"], timestamp, body)


@pytest.fixture(scope="module")
def documented_verify() -> Verify:
    """The receiver's example, run as a reader would paste it."""
    (code,) = blocks(section("Verifying a request"), "python")
    assert len(code.strip().splitlines()) <= 12, "the example should stay about ten lines"
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    return cast(Verify, namespace["verify"])


def request(secret: str, body: bytes, at: float | None = None) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    return signed_headers(signing_key(secret), "evt_0123abcd", stamp, body)


SECRETS = [DOC_SECRET, "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()]


@pytest.mark.parametrize("secret", SECRETS)
def test_the_documented_receiver_accepts_a_signed_request(
    documented_verify: Verify, secret: str
) -> None:
    body = '{"id":"evt_0123abcd","data":{"text":"héllo"}}'.encode()
    assert documented_verify(secret, request(secret, body), body)


@pytest.mark.parametrize("secret", SECRETS)
def test_the_documented_receiver_refuses_tampering_other_keys_and_replays(
    documented_verify: Verify, secret: str
) -> None:
    body = b'{"id":"evt_0123abcd","data":{"amount":1}}'
    headers = request(secret, body)
    assert not documented_verify(secret, headers, body.replace(b"1", b"9"))
    assert not documented_verify(secret, headers | {"webhook-id": "evt_other"}, body)
    assert not documented_verify("another-secret-entirely", headers, body)
    assert not documented_verify(secret, request(secret, body, time.time() - 600), body)
    assert not documented_verify(secret, request(secret, body, time.time() + 600), body)


def test_the_documented_receiver_takes_any_of_several_signatures(
    documented_verify: Verify,
) -> None:
    body = b"{}"
    headers = request(DOC_SECRET, body)
    old = request("our-previous-secret-1", body)["webhook-signature"]
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"
    assert documented_verify(DOC_SECRET, headers, body)
