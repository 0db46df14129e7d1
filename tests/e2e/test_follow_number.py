"""Following a phone number in the viewer, in a real browser (headless Chromium): simulated
calls with `From` and `To` parameters through the proxy and the fake Deepgram; the page
opens each call with the number as it starts, across calls and reloads, until told to stop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ..integration.helpers import RunningProxy, TwilioPeer
from .conversation import Conversation
from .test_viewer import (
    ARTIFACTS,
    PHONE,
    call_link,
    opened,
    page_url,
    until_lines,
    viewer_sockets,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

async_api = pytest.importorskip("playwright.async_api")
expect = async_api.expect

NUMBER = "+15550100"


def call_with(**parameters: str) -> SimulatedCall:
    return SimulatedCall(custom_parameters=parameters)


async def follow(page: Page, typed: str) -> None:
    """Type `typed` into the follow box and press Enter, from the keyboard."""
    await page.locator("#follow-input").fill(typed)
    await page.locator("#follow-input").press("Enter")


async def query(page: Page) -> str:
    search: str = await page.evaluate("() => location.search")
    return search


async def shown_call(page: Page) -> str:
    """The callSid of the call in the main pane."""
    await expect(page.locator("#call")).to_be_visible()
    return await page.locator("#call-sid").inner_text()


def followed_chip(page: Page, call_sid: str) -> object:
    return call_link(page, call_sid).locator(".followed-chip")


async def test_a_followed_number_opens_each_of_its_calls_as_it_starts_until_unfollowed(
    proxy: RunningProxy, browser: Browser
) -> None:
    first = Conversation("CCEE-C", call_with(From=NUMBER, To="+15550199"))
    other = call_with(From="+15550111", To="+15550199")
    second = Conversation("CE-EC", call_with(From="+15550122", To=NUMBER))  # `To` counts too
    third = Conversation("EC", call_with(From=NUMBER))
    after = call_with(From=NUMBER)
    async with opened(browser, page_url(proxy)) as page:
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        # Typed as people type it; shown and kept in the address as the proxy writes it.
        await follow(page, " +1 555-0100 ")
        await expect(page.locator("#follow-number")).to_have_text(NUMBER)
        await expect(page.locator("#follow-detail")).to_have_text(
            "Waiting for a call with this number."
        )
        await expect(page.locator("#unfollow")).to_be_focused()
        assert await query(page) == f"?follow={NUMBER}"
        await expect(page.locator("#pick-a-call")).to_be_visible()

        # Call 1 starts: it opens by itself and shows its lines as they are said.
        async with TwilioPeer.started(proxy, first.call) as twilio:
            await expect(page.locator("#call-sid")).to_have_text(first.call.call_sid)
            await expect(page.locator("#call-state")).to_have_text("Live")
            assert await page.evaluate("() => location.hash") == f"#call/{first.call.call_sid}"
            await first.send_windows(twilio, 4)
            await until_lines(page, first.lines(4))
            await expect(followed_chip(page, first.call.call_sid)).to_be_visible()

            # A call with another number is listed, not opened, not marked.
            async with TwilioPeer.started(proxy, other):
                await expect(call_link(page, other.call_sid)).to_be_visible()
                await expect(followed_chip(page, other.call_sid)).to_be_hidden()
                # Said after it started: had the page been joined to it, it would show by now.
                await first.send_rest(twilio)
                await until_lines(page, first.lines())
                assert await shown_call(page) == first.call.call_sid
                await expect(page.locator("#follow-detail")).to_have_text("Its call is open.")
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=ARTIFACTS / "viewer-follow.png")
                await twilio.stop()
                await expect(page.locator("#call-ended")).to_contain_text("Call ended at")
                await expect(page.locator("#follow-detail")).to_have_text(
                    "Its call ended. The next one will open here."
                )

        # Call 2 with the number starts: the page switches to it.
        async with TwilioPeer.started(proxy, second.call) as twilio:
            await expect(page.locator("#call-sid")).to_have_text(second.call.call_sid)
            await expect(page.locator("#call-state")).to_have_text("Live")
            await second.send_windows(twilio, 2)
            await until_lines(page, second.lines(2))

            # A reload follows it again: the address kept the number (and the open call).
            await page.reload()
            await expect(page.locator("#follow-number")).to_have_text(NUMBER)
            await expect(page.locator("#follow-detail")).to_have_text("Its call is open.")
            assert await query(page) == f"?follow={NUMBER}"
            await expect(page.locator("#call-sid")).to_have_text(second.call.call_sid)
            await second.send_rest(twilio)
            await until_lines(page, second.lines())
            await twilio.stop()
            await expect(page.locator("#call-ended")).to_be_visible()

        # The connection drops: once back, the page follows the number again.
        for ws in viewer_sockets(proxy):
            ws.transport.abort()
        await expect(page.locator("#status")).to_have_attribute("data-state", "waiting")
        await expect(page.locator("#status")).to_have_attribute("data-state", "open")
        await expect(page.locator("#follow-detail")).to_have_text(
            "Its call ended. The next one will open here."
        )

        # The reloaded, reconnected page goes on following: call 3 opens by itself.
        async with TwilioPeer.started(proxy, third.call) as twilio:
            await expect(page.locator("#call-sid")).to_have_text(third.call.call_sid)
            await third.send_rest(twilio)
            await until_lines(page, third.lines())

            # Stop: the box comes back, the address forgets the number, the call goes on.
            await page.locator("#unfollow").click()
            await expect(page.locator("#follow-input")).to_be_focused()
            await expect(page.locator("#following")).to_be_hidden()
            assert await query(page) == ""
            await expect(page.locator("#call-state")).to_have_text("Live")
            # Not a number: the proxy's reason, said plainly. (Answered after the unfollow,
            # which the proxy applies first: it reads one command after the other.)
            await follow(page, "alice")
            await expect(page.locator("#follow-error")).to_have_text(
                "Cannot follow “alice”: not a phone number: digits, with an optional leading +."
            )
            await expect(page.locator("#follow-input")).to_have_attribute("aria-invalid", "true")
            await expect(page.locator("#follow-input")).to_have_value("alice")
            await page.screenshot(path=ARTIFACTS / "viewer-follow-refused.png")
            assert await query(page) == ""

            # No longer followed: the number's next call is listed, not opened.
            async with TwilioPeer.started(proxy, after):
                await expect(call_link(page, after.call_sid)).to_be_visible()
                await expect(followed_chip(page, after.call_sid)).to_be_hidden()
                await twilio.stop()
                await expect(page.locator("#call-ended")).to_be_visible()
                assert await shown_call(page) == third.call.call_sid


async def test_of_several_live_calls_with_the_number_the_newest_opens(
    proxy: RunningProxy, browser: Browser
) -> None:
    older = call_with(From=NUMBER, To="+15550199")
    newer = Conversation("CE", call_with(From="+15550122", To=NUMBER))
    async with TwilioPeer.started(proxy, older), TwilioPeer.started(proxy, newer.call) as twilio:
        # Followed from a link, the number written as a national number.
        async with opened(browser, page_url(proxy) + "?follow=(555)%200100", PHONE) as page:
            await expect(page.locator("#follow-number")).to_have_text("5550100")
            assert await query(page) == "?follow=5550100"
            await expect(page.locator("#call-sid")).to_have_text(newer.call.call_sid)
            await expect(page.locator("#follow-detail")).to_have_text(
                "Its call is open. 1 other call with it is listed."
            )
            await newer.send_rest(twilio)
            await until_lines(page, newer.lines())
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "viewer-follow-phone.png")
            # The older one stays listed and marked; it opens when chosen.
            await page.locator("#call .back").click()
            await expect(followed_chip(page, older.call_sid)).to_be_visible()
            await call_link(page, older.call_sid).click()
            await expect(page.locator("#call-sid")).to_have_text(older.call_sid)
            await expect(page.locator("#call-state")).to_have_text("Live")
