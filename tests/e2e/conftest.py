"""Fixtures for the browser tests: the proxy with a fake Deepgram, and Debian's Chromium
driven by Playwright. The tests skip when /usr/bin/chromium (or playwright) is absent; they
never download a browser (never run `playwright install`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from ..integration.helpers import PROXY_ENV, RunningProxy, running_proxy

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# One final (and, halfway, one interim) result per channel per this many ms of audio.
RESULT_MS = 400


@pytest.fixture(autouse=True)
def transcripts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where every proxy the test starts stores its transcripts: a file of its own (never
    `transcripts.sqlite3` in the working directory)."""
    path = tmp_path / "transcripts.sqlite3"
    monkeypatch.setitem(PROXY_ENV, "TRANSCRIPTS_FILE", str(path))
    return path


@pytest.fixture
async def deepgram() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(result_ms=RESULT_MS, idle_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
async def proxy(deepgram: FakeDeepgram) -> AsyncIterator[RunningProxy]:
    async with running_proxy(deepgram.url) as running:
        yield running


@asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """Headless Chromium from the system; skips the test when it (or playwright) is absent."""
    if not HAVE_CHROMIUM:
        pytest.skip(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    async_api = pytest.importorskip(
        "playwright.async_api", reason="the browser tests need playwright: pip install -e '.[test]'"
    )
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launched() as browser:
        yield browser
