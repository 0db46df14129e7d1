"""Fixtures: a fake Deepgram and a proxy wired to it, both on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from .helpers import RunningProxy, running_proxy


@pytest.fixture
async def deepgram() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(result_ms=100, idle_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
async def proxy(deepgram: FakeDeepgram) -> AsyncIterator[RunningProxy]:
    async with running_proxy(deepgram.url) as running:
        yield running
