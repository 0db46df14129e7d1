"""The web viewer in a real browser (headless Chromium): the proxy, the fake Deepgram and
simulated Twilio calls on 127.0.0.1; the page as a user sees it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ..integration.helpers import RunningProxy, TwilioPeer, running_proxy, until
from ..timing import S
from .conftest import RESULT_MS
from .conversation import Conversation

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

async_api = pytest.importorskip("playwright.async_api")
expect = async_api.expect

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CLIENT_TOKEN = "viewer-token-0123456789abcdef"
PHONE = {"width": 390, "height": 720}
DESKTOP = {"width": 1100, "height": 720}

# Caller and callee take turns; see Conversation for the fake's utterance rule.
TURNS = "CCEECC-E"


@asynccontextmanager
async def opened(
    browser: Browser, url: str, viewport: dict[str, int] = DESKTOP, *, expected_errors: str = ""
) -> AsyncIterator[Page]:
    """A fresh page (its own context: no shared storage) at `url`; fails the test if the
    page throws or logs an error (other than those containing `expected_errors`)."""
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and not (expected_errors and expected_errors in message.text)
            else None
        ),
    )
    try:
        await page.goto(url)
        yield page
    finally:
        await context.close()
    assert not problems, problems


async def shown_lines(page: Page) -> list[dict[str, Any]]:
    """The conversation as displayed: speaker, final text, provisional text, per line."""
    lines: list[dict[str, Any]] = await page.eval_on_selector_all(
        "#lines > li",
        """items => items.map(item => ({
            channel: Number(item.dataset.channel),
            speaker: item.querySelector('.speaker').textContent,
            time: item.querySelector('time').textContent,
            text: item.querySelector('.final').textContent,
            interim: item.querySelector('.interim').textContent,
            pending: item.classList.contains('pending'),
        }))""",
    )
    return lines


async def final_lines(page: Page) -> list[tuple[int, str]]:
    return [(line["channel"], line["text"]) for line in await shown_lines(page) if line["text"]]


async def until_lines(page: Page, expected: list[tuple[int, str]], within: float = 10 * S) -> None:
    """Wait until the page shows exactly `expected` (channel, final text) lines."""
    try:
        async with asyncio.timeout(within):
            while await final_lines(page) != expected:  # noqa: ASYNC110 (the page offers no event)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"shown {await final_lines(page)}, expected {expected}") from None


async def until_true(page: Page, function: str, within: float = 5 * S) -> None:
    """Wait until the JavaScript `function` returns true in the page. (Playwright's
    wait_for_function evaluates strings, which the page's Content-Security-Policy forbids.)"""
    async with asyncio.timeout(within):
        while not await page.evaluate(function):  # noqa: ASYNC110 (the page offers no event)
            await asyncio.sleep(0.02)


def call_link(page: Page, call_sid: str) -> Any:
    return page.locator(f'#calls li[data-call-sid="{call_sid}"] a')


def viewer_sockets(proxy: RunningProxy) -> list[Any]:
    return [
        ws
        for ws in proxy.server._clients
        if ws.request is not None and ws.request.path.startswith("/viewer/ws")
    ]


def page_url(proxy: RunningProxy) -> str:
    return f"http://127.0.0.1:{proxy.port}/"


async def test_the_page_lists_calls_and_shows_interim_then_final_lines_under_each_speaker(
    proxy: RunningProxy, browser: Browser
) -> None:
    first = Conversation(
        TURNS,
        SimulatedCall(custom_parameters={"From": "+15550100", "To": "+15550199", "Team": "sales"}),
    )
    second = SimulatedCall(custom_parameters={"From": "+15550111", "CallerName": "Dana"})
    async with TwilioPeer.started(proxy, first.call) as twilio:
        async with opened(browser, page_url(proxy)) as page:
            await expect(page.locator("#status")).to_have_attribute("data-state", "open")
            link = call_link(page, first.call.call_sid)
            await expect(link).to_contain_text("+15550100 → +15550199")
            await expect(link).to_contain_text("Team: sales")
            await expect(link).to_contain_text(first.call.call_sid)
            await link.click()
            await expect(page.locator("#call-title")).to_have_text("+15550100 → +15550199")
            await expect(page.locator("#call-state")).to_have_text("Live")

            # Half a window: the caller's words appear, provisional.
            await first.send_until(twilio, 0.3)
            await expect(page.locator("#lines > li.pending")).to_have_count(1)
            shown = await shown_lines(page)
            assert [(s["channel"], s["speaker"], s["text"], s["pending"]) for s in shown] == [
                (0, "Caller", "", True)
            ]
            assert shown[0]["interim"].startswith("ch0 w0 ")

            # The rest of the window: the final replaces it, in place.
            await first.send_windows(twilio, 1)
            await until_lines(page, [(0, first.window_text(0, 0))])
            shown = await shown_lines(page)
            assert [(s["speaker"], s["pending"], s["interim"]) for s in shown] == [
                ("Caller", False, "")
            ]

            await first.send_windows(twilio, 4)
            await until_lines(page, first.lines(4))
            assert [line["speaker"] for line in await shown_lines(page)] == ["Caller", "Callee"]

            # A second call appears in the list while the first runs, without a reload.
            async with TwilioPeer.started(proxy, second):
                await expect(call_link(page, second.call_sid)).to_contain_text("From +15550111")
                await expect(page.locator("#calls > li")).to_have_count(2)
                await first.send_until(twilio, (4 * RESULT_MS + RESULT_MS * 0.6) / 1000)
                await expect(page.locator("#lines > li .interim")).not_to_have_text(["", ""])
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=ARTIFACTS / "viewer.png")
            await expect(page.locator("#calls > li")).to_have_count(1)

            await first.send_rest(twilio)
            await twilio.stop()
            await expect(page.locator("#call-ended")).to_contain_text("Call ended at")
            await expect(page.locator("#call-state")).to_have_text("Ended")
            await until_lines(page, first.lines())
            await expect(page.locator("#calls > li")).to_have_count(0)
            await expect(page.locator("#no-calls")).to_be_visible()
            await page.emulate_media(color_scheme="dark")
            await page.screenshot(path=ARTIFACTS / "viewer-ended-dark.png")


async def test_a_viewer_opened_mid_call_shows_the_earlier_finals_once(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation(TURNS)
    url = f"{page_url(proxy)}#call/{talk.call.call_sid}"
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        async with opened(browser, url) as early:
            await expect(early.locator("#call-state")).to_have_text("Live")
            await talk.send_windows(twilio, 5)
            await until_lines(early, talk.lines(5))
            # Opened by link mid-call: the history, then live results, nothing twice.
            async with opened(browser, url, PHONE) as late:
                await until_lines(late, talk.lines(5))
                await talk.send_rest(twilio)
                await twilio.stop()
                for page in (early, late):
                    await expect(page.locator("#call-ended")).to_be_visible()
                    await until_lines(page, talk.lines())
                    texts = [text for _, text in await final_lines(page)]
                    assert len(texts) == len(set(texts))
                await late.screenshot(path=ARTIFACTS / "viewer-phone.png")


async def test_a_dropped_connection_reconnects_by_itself_without_duplicate_lines(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation(TURNS + TURNS)
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        async with opened(browser, page_url(proxy)) as page:
            await call_link(page, talk.call.call_sid).click()
            await talk.send_windows(twilio, 3)
            await until_lines(page, talk.lines(3))

            # Cut it server-side, as a network failure would.
            status = page.locator("#status")
            for ws in viewer_sockets(proxy):
                ws.transport.abort()
            await expect(status).to_have_attribute("data-state", "waiting")
            await expect(status).to_contain_text("Reconnecting")
            await talk.send_windows(twilio, 9)  # said while the page was away
            await expect(status).to_have_attribute("data-state", "open")
            await until_lines(page, talk.lines(9))

            # Closed again mid-utterance, an interim on screen: it is not kept twice.
            await talk.send_until(twilio, (9 * RESULT_MS + RESULT_MS * 0.6) / 1000)
            await expect(page.locator("#lines > li .interim").last).not_to_have_text("")
            await until(lambda: len(viewer_sockets(proxy)) == 1)
            for ws in viewer_sockets(proxy):
                await ws.close(1012, "service restart")
            await expect(status).to_have_attribute("data-state", "waiting")
            await expect(status).to_have_attribute("data-state", "open")
            await talk.send_rest(twilio)
            await twilio.stop()
            await expect(page.locator("#call-ended")).to_be_visible()
            await until_lines(page, talk.lines())


async def test_a_call_that_ends_while_the_page_is_away_is_shown_as_ended(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation("CC")
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        async with opened(browser, page_url(proxy)) as page:
            await call_link(page, talk.call.call_sid).click()
            await talk.send_windows(twilio, 2)
            await until_lines(page, talk.lines(2))
            await page.route("**/viewer/auth", lambda route: route.abort())
            for ws in viewer_sockets(proxy):
                ws.transport.abort()
            await expect(page.locator("#status")).to_have_attribute("data-state", "waiting")
            await twilio.stop()
            await until(lambda: not proxy.server.hub.active_calls())
            await page.unroute("**/viewer/auth")
            await page.locator("#retry").click()
            await expect(page.locator("#call-ended")).to_have_text(
                "Call ended while this page was disconnected."
            )
            await until_lines(page, talk.lines(2))


async def test_the_call_list_and_the_transcript_work_from_the_keyboard(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation("CE")
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        async with opened(browser, page_url(proxy), PHONE) as page:
            link = call_link(page, talk.call.call_sid)
            await expect(link).to_be_visible()
            for _ in range(6):
                await page.keyboard.press("Tab")
                if await link.evaluate("node => node === document.activeElement"):
                    break
            else:
                raise AssertionError("Tab never reached the call")
            outline = await link.evaluate("node => getComputedStyle(node).outlineStyle")
            assert outline == "solid"  # a visible focus ring
            await page.keyboard.press("Enter")
            title = page.locator("#call-title")
            await expect(title).to_be_focused()
            # On a phone the list gives way to the call; "← Calls" goes back.
            await expect(page.locator("#calls")).to_be_hidden()
            await talk.send_rest(twilio)
            await until_lines(page, talk.lines(2))
            await page.keyboard.press("Shift+Tab")
            await expect(page.locator("#call .back")).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(link).to_be_visible()
            await expect(link).not_to_have_attribute("aria-current", "true")


async def test_auto_scroll_stops_when_the_user_scrolls_up_until_back_to_live(
    proxy: RunningProxy, browser: Browser
) -> None:
    talk = Conversation("CE" * 20)  # a new line every window
    async with TwilioPeer.started(proxy, talk.call) as twilio:
        async with opened(browser, page_url(proxy), PHONE) as page:
            await call_link(page, talk.call.call_sid).click()
            scroller = page.locator("#scroller")
            live = page.locator("#back-to-live")
            await talk.send_windows(twilio, 16)
            await until_lines(page, talk.lines(16))
            at_bottom = "s => s.scrollHeight - s.scrollTop - s.clientHeight < 2"
            assert await scroller.evaluate("s => s.scrollHeight > 2 * s.clientHeight")
            await until_true(page, f"() => ({at_bottom})(document.getElementById('scroller'))")
            await expect(live).to_be_hidden()

            await scroller.hover()
            await page.mouse.wheel(0, -5000)
            await until_true(page, "() => document.getElementById('scroller').scrollTop === 0")
            await talk.send_windows(twilio, 24)
            await until_lines(page, talk.lines(24))
            assert await scroller.evaluate("s => s.scrollTop") == 0  # left where the user is
            await expect(live).to_be_visible()
            await live.click()
            assert await scroller.evaluate(at_bottom)
            await expect(live).to_be_hidden()
            await talk.send_rest(twilio)
            await until_lines(page, talk.lines())
            assert await scroller.evaluate(at_bottom)  # following again


async def test_with_client_tokens_the_page_asks_for_one_and_keeps_it_for_the_tab(
    deepgram: FakeDeepgram, browser: Browser
) -> None:
    async with running_proxy(deepgram.url, CLIENT_TOKENS=CLIENT_TOKEN) as proxy:
        call = SimulatedCall(custom_parameters={"From": "+15550100"})
        async with TwilioPeer.started(proxy, call):
            # Chromium logs the 401 of each refused /viewer/auth check.
            async with opened(browser, page_url(proxy), expected_errors="401") as page:
                dialog = page.locator("#token-dialog")
                await expect(dialog).to_be_visible()
                await expect(page.locator("#status-text")).to_have_text("Token required")
                await page.locator("#token-input").fill("wrong-token-0123456789abcdef")
                await page.keyboard.press("Enter")
                await expect(page.locator("#token-error")).to_be_visible()
                await page.locator("#token-input").fill(CLIENT_TOKEN)
                await page.keyboard.press("Enter")
                await expect(dialog).to_be_hidden()
                await expect(call_link(page, call.call_sid)).to_be_visible()
                assert (
                    await page.evaluate("() => sessionStorage.getItem('twilio-dg-proxy.token')")
                    == CLIENT_TOKEN
                )
                await page.reload()
                await expect(call_link(page, call.call_sid)).to_be_visible()
                await expect(dialog).to_be_hidden()
        # Only the wrong token was refused: the page itself needs none, and its socket was
        # opened only once /viewer/auth had accepted the token.
        assert proxy.server.hub.counters.refused_unauthorized == 1
