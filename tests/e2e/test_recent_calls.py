"""The viewer's recent-calls list in a real browser (headless Chromium): real calls through
the proxy (simulated Twilio, the fake Deepgram), stored in a SQLite file, listed by the page
from the /calls API, opened, and downloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ..integration.helpers import RunningProxy, TwilioPeer, running_proxy, until
from .conversation import Conversation
from .test_viewer import ARTIFACTS, CLIENT_TOKEN, PHONE, opened, page_url

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

async_api = pytest.importorskip("playwright.async_api")
expect = async_api.expect

FORMATS = ("txt", "vtt", "srt", "json")


async def talk_and_hang_up(proxy: RunningProxy, talk: Conversation) -> None:
    """Play the whole conversation, end the call, and wait until the store has it."""
    counters = proxy.server.hub.counters
    stored = counters.transcripts_stored
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        await talk.send_rest(twilio)
        await twilio.stop()
    await until(lambda: counters.transcripts_stored > stored)


async def api(page: Page, path: str, token: str = "") -> Any:
    """What the /calls API answers `path` (its JSON, or its text), fetched outside the page
    (with the browser's request context) from the page's origin."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    origin = await page.evaluate("() => location.origin")
    response = await page.request.get(origin + path, headers=headers)
    assert response.ok, (response.status, await response.text())
    if response.headers["content-type"] == "application/json":
        return await response.json()
    return await response.text()


async def listed(page: Page) -> list[str]:
    """The callSids of the recent-calls list, in the order shown."""
    sids: list[str] = await page.eval_on_selector_all(
        "#recent-calls > li", "items => items.map(item => item.dataset.callSid)"
    )
    return sids


async def stored_lines(page: Page) -> list[dict[str, Any]]:
    """The stored transcript as displayed: speaker, text and channel of each line."""
    lines: list[dict[str, Any]] = await page.eval_on_selector_all(
        "#stored-lines > li",
        """items => items.map(item => ({
            speaker: item.querySelector('.speaker').textContent,
            text: item.querySelector('.final').textContent,
            channel: Number(item.dataset.channel),
        }))""",
    )
    return lines


def recent_link(page: Page, call_sid: str) -> Any:
    return page.locator(f'#recent-calls li[data-call-sid="{call_sid}"] a')


async def check_downloads(page: Page, proxy: RunningProxy, call_sid: str, token: str) -> None:
    """The four download links point at the API (with the token when there is one), and
    the text one saves the call's txt transcript under the call's name."""
    hrefs = await page.eval_on_selector_all(
        "#stored-download-links a", "links => links.map(link => link.href)"
    )
    suffix = f"&token={quote(token, safe='')}" if token else ""
    base = f"http://127.0.0.1:{proxy.port}/calls/{quote(call_sid)}/transcript"
    assert hrefs == [f"{base}?format={form}&download=1{suffix}" for form in FORMATS]
    async with page.expect_download() as downloading:
        await page.locator('#stored-download-links a[data-format="txt"]').click()
    download = await downloading.value
    assert download.suggested_filename == f"{call_sid}.txt"
    saved = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
    assert saved == await api(page, f"/calls/{call_sid}/transcript?format=txt", token)


async def test_ended_calls_are_listed_newest_first_and_open_as_stored_transcripts(
    proxy: RunningProxy, browser: Browser
) -> None:
    first = Conversation(
        "CCEE-CE",
        SimulatedCall(custom_parameters={"From": "+15550100", "To": "+15550199"}),
    )
    second = Conversation(
        "C-EEC",
        SimulatedCall(custom_parameters={"From": "+15550111", "CallerName": "Dana"}),
    )
    async with opened(browser, page_url(proxy)) as page:
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        await expect(page.locator("#no-recent")).to_have_text(
            "No stored calls yet. A call appears here when it ends."
        )
        # Each call joins the list when it ends, on top, without a reload.
        await talk_and_hang_up(proxy, first)
        await expect(recent_link(page, first.call.call_sid)).to_contain_text(
            "+15550100 → +15550199"
        )
        await talk_and_hang_up(proxy, second)
        await expect(page.locator("#recent-calls > li")).to_have_count(2)
        assert await listed(page) == [second.call.call_sid, first.call.call_sid]
        link = recent_link(page, second.call.call_sid)
        await expect(link).to_contain_text("From +15550111")
        await expect(link.locator(".call-when")).to_contain_text("ended ")
        await expect(page.locator("#no-recent")).to_be_hidden()

        # Opened: the stored transcript, line for line the API's segments.
        await recent_link(page, first.call.call_sid).click()
        await expect(page.locator("#stored")).to_be_visible()
        await expect(page.locator("#stored-title")).to_be_focused()
        await expect(page.locator("#stored-title")).to_have_text("+15550100 → +15550199")
        await expect(page.locator("#stored .call-state")).to_have_text("Stored · read-only")
        await expect(page.locator("#pick-a-call")).to_be_hidden()
        await expect(page.locator("#call")).to_be_hidden()
        stored = await api(page, f"/calls/{first.call.call_sid}/transcript?format=json")
        assert stored["segments"], "the call said something"
        await expect(page.locator("#stored-lines > li")).to_have_count(len(stored["segments"]))
        assert await stored_lines(page) == [
            {"speaker": s["speaker"], "text": s["text"], "channel": s["channel"]}
            for s in stored["segments"]
        ]
        assert {line["speaker"] for line in await stored_lines(page)} == {"Caller", "Callee"}
        await expect(page.locator("#stored-ended")).to_contain_text("Call ended at")
        assert await recent_link(page, first.call.call_sid).get_attribute("aria-current") == "true"
        await check_downloads(page, proxy, first.call.call_sid, "")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "viewer-recent.png")

        # The other one, named as its parameters say; then a reload keeps it open.
        await recent_link(page, second.call.call_sid).click()
        await expect(page.locator("#stored-title")).to_have_text("From +15550111")
        await expect(page.locator("#stored-lines .speaker").first).to_have_text("Dana")
        await page.reload()
        await expect(page.locator("#stored-title")).to_have_text("From +15550111")
        await expect(page.locator("#recent-calls > li")).to_have_count(2)

        # The filter: one number, typed with spaces; cleared, every call again.
        await page.locator("#recent-from").fill(" +1 555 0100 ")
        await page.locator("#recent-from").press("Enter")
        await expect(page.locator("#recent-calls > li")).to_have_count(1)
        assert await listed(page) == [first.call.call_sid]
        await expect(page.locator("#recent-from")).to_have_value("+15550100")
        await page.locator("#recent-from").fill("+19990000")
        await page.locator("#recent-from").press("Enter")
        await expect(page.locator("#no-recent")).to_have_text("No stored calls from +19990000.")
        await page.locator("#recent-from").fill("")
        await page.locator("#recent-from").press("Enter")
        await expect(page.locator("#recent-calls > li")).to_have_count(2)
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=ARTIFACTS / "viewer-recent-dark.png")


async def test_more_follows_the_pages_and_a_new_call_joins_the_top(
    proxy: RunningProxy, browser: Browser
) -> None:
    for n in range(23):
        talk = Conversation("", SimulatedCall(custom_parameters={"From": f"+1555010{n:02d}"}))
        await talk_and_hang_up(proxy, talk)
    async with opened(browser, page_url(proxy), PHONE) as page:
        everything = await api(page, "/calls?limit=500")
        newest_first = [call["callSid"] for call in everything["calls"]]
        assert len(newest_first) == 23
        await expect(page.locator("#recent-calls > li")).to_have_count(20)
        assert await listed(page) == newest_first[:20]
        more = page.locator("#recent-more")
        await more.click()
        await expect(page.locator("#recent-calls > li")).to_have_count(23)
        assert await listed(page) == newest_first
        await expect(more).to_be_hidden()
        latest = Conversation("C", SimulatedCall(custom_parameters={"From": "+15550999"}))
        await talk_and_hang_up(proxy, latest)
        await expect(page.locator("#recent-calls > li")).to_have_count(24)
        assert await listed(page) == [latest.call.call_sid, *newest_first]
        # On a phone the list gives way to the transcript; "← Calls" goes back.
        await recent_link(page, latest.call.call_sid).click()
        await expect(page.locator("#stored-lines > li")).to_have_count(1)
        await expect(page.locator("#recent-calls")).to_be_hidden()
        await page.screenshot(path=ARTIFACTS / "viewer-recent-phone.png")
        await page.locator("#stored .back").click()
        await expect(page.locator("#recent-calls")).to_be_visible()
        await expect(page.locator("#stored")).to_be_hidden()


async def test_with_client_tokens_the_list_loads_with_the_token_and_downloads_carry_it(
    deepgram: FakeDeepgram, browser: Browser
) -> None:
    async with running_proxy(deepgram.url, CLIENT_TOKENS=CLIENT_TOKEN) as proxy:
        talk = Conversation("CE-C", SimulatedCall(custom_parameters={"From": "+15550100"}))
        await talk_and_hang_up(proxy, talk)
        # Chromium logs the 401 of /viewer/auth asked without a token.
        async with opened(browser, page_url(proxy), expected_errors="401") as page:
            await expect(page.locator("#token-dialog")).to_be_visible()
            await expect(page.locator("#recent-error")).to_have_text(
                "A viewer token is required: the proxy refused this one, or none was given."
            )
            await page.locator("#token-input").fill(CLIENT_TOKEN)
            await page.keyboard.press("Enter")
            await expect(recent_link(page, talk.call.call_sid)).to_contain_text("From +15550100")
            await expect(page.locator("#recent-error")).to_be_hidden()
            await recent_link(page, talk.call.call_sid).click()
            stored = await api(
                page, f"/calls/{talk.call.call_sid}/transcript?format=json", CLIENT_TOKEN
            )
            await expect(page.locator("#stored-lines > li")).to_have_count(len(stored["segments"]))
            await check_downloads(page, proxy, talk.call.call_sid, CLIENT_TOKEN)
        # The page asked /calls nothing before it had the token.
        assert proxy.server.hub.counters.refused_unauthorized == 0


async def test_errors_are_said_plainly_and_trying_again_recovers(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation("CE")
    await talk_and_hang_up(proxy, talk)
    # Chromium logs each answer with an error status.
    async with opened(browser, page_url(proxy), expected_errors="status of") as page:
        await expect(page.locator("#recent-calls > li")).to_have_count(1)
        # The store down: the proxy answers 503 (played here by the browser's router, since
        # a SQLite store in WAL mode still answers reads while another process writes).
        await page.route(
            "**/calls?*",
            lambda route: route.fulfill(
                status=503,
                content_type="application/json",
                body='{"error": "the transcript store is unavailable"}',
            ),
        )
        await page.locator("#recent-from").fill("+15550100")
        await page.locator("#recent-from").press("Enter")
        error = page.locator("#recent-error")
        await expect(error).to_have_text(
            "The transcript store is unavailable right now. Try again shortly."
        )
        await expect(page.locator("#no-recent")).to_be_hidden()
        await page.unroute("**/calls?*")
        await page.locator("#recent-retry").click()
        await expect(error).to_be_hidden()
        await expect(page.locator("#no-recent")).to_have_text("No stored calls from +15550100.")
        # A call that is not stored, opened by its link.
        await page.goto(f"{page_url(proxy)}#stored/CAnot-stored")
        await expect(page.locator("#stored-note")).to_have_text(
            "This call is not stored: it never was, or it was purged (RETENTION_DAYS)."
        )
        await expect(page.locator("#stored-downloads")).to_be_hidden()


async def test_without_a_store_the_list_says_so(deepgram: FakeDeepgram, browser: Browser) -> None:
    async with running_proxy(deepgram.url, STORE_TRANSCRIPTS="false") as proxy:
        async with opened(browser, page_url(proxy), expected_errors="status of 404") as page:
            await expect(page.locator("#recent-error")).to_have_text(
                "Transcripts are not stored on this proxy (STORE_TRANSCRIPTS=false)."
            )
