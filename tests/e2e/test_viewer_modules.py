"""The viewer's pure JavaScript modules (transcript.js, calls.js, connection.js), run in the
browser against hand-made Deepgram messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from ..integration.helpers import running_proxy
from .conftest import launched

if TYPE_CHECKING:
    from playwright.async_api import Page

pytest.importorskip("playwright.async_api")

# Helpers defined in the page for every case: Deepgram messages as the live API sends them.
MESSAGES = """
const result = (channel, start, duration, transcript, isFinal, speechFinal = false) => ({
  type: "Results", channel_index: [channel, 2], start, duration, is_final: isFinal,
  speech_final: speechFinal, channel: {alternatives: [{transcript, confidence: 0.9, words: []}]},
});
const final = (channel, start, text, speechFinal = false) =>
  result(channel, start, 1, text, true, speechFinal);
const interim = (channel, start, text) => result(channel, start, 0.5, text, false);
const shown = (t) => t.lines().map(({key, channel, text, pending, complete}) =>
  ({key, channel, text, pending, complete}));
"""


# One browser and one page for every case of this module: they only evaluate functions.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def page() -> AsyncIterator[Page]:
    # Only the viewer's files are needed: no call ever reaches this Deepgram URL.
    async with running_proxy("ws://127.0.0.1:9/v1/listen") as proxy:
        async with launched() as browser:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{proxy.port}/")
            yield page


async def run(page: Page, module: str, body: str) -> Any:
    """Evaluate `body` (statements ending in `return`) with the module imported as `m`."""
    return await page.evaluate(
        f"""async () => {{
            const m = await import(new URL("viewer/{module}", location.href));
            {MESSAGES}
            {body}
        }}"""
    )


def line(
    key: str, channel: int, text: str, pending: str = "", complete: bool = False
) -> dict[str, Any]:
    return {"key": key, "channel": channel, "text": text, "pending": pending, "complete": complete}


async def test_an_interim_result_shows_provisionally_and_its_final_replaces_it(page: Page) -> None:
    steps = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        const steps = [];
        t.apply(interim(0, 0, "hello"));
        steps.push(shown(t));
        t.apply(interim(0, 0, "hello there"));
        steps.push(shown(t));
        t.apply(final(0, 0, "Hello there."));
        steps.push(shown(t));
        return steps;
        """,
    )
    assert steps == [
        [line("0@0.000", 0, "", pending="hello")],
        [line("0@0.000", 0, "", pending="hello there")],
        [line("0@0.000", 0, "Hello there.")],
    ]


async def test_finals_make_one_utterance_until_speech_final(page: Page) -> None:
    lines = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        t.applyAll([final(0, 0, "Hi,"), final(0, 1, "it's me."), final(0, 2, "", true),
                    final(0, 3, "Again"), interim(0, 4, "and again")]);
        return shown(t);
        """,
    )
    assert lines == [
        line("0@0.000", 0, "Hi, it's me.", complete=True),
        line("0@3.000", 0, "Again", pending="and again"),
    ]


async def test_an_utterance_end_closes_the_channel_utterance(page: Page) -> None:
    lines = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        t.applyAll([final(1, 0, "One"), {type: "UtteranceEnd", channel: [1, 2], last_word_end: 0.9},
                    final(1, 2, "Two"), final(0, 0.5, "Other side")]);
        return shown(t);
        """,
    )
    assert lines == [
        line("1@0.000", 1, "One", complete=True),
        line("0@0.500", 0, "Other side"),
        line("1@2.000", 1, "Two"),
    ]


async def test_a_replayed_history_adds_nothing_twice(page: Page) -> None:
    result = await run(
        page,
        "transcript.js",
        """
        const history = [final(0, 0, "A"), final(1, 0.5, "B", true), final(0, 1, "C", true)];
        const t = new m.Transcript();
        t.applyAll(history.slice(0, 2));
        t.apply(interim(0, 1, "C?"));
        const before = shown(t);
        // The connection dropped: on reconnect the server replays the whole history.
        t.clearInterims();
        const changed = t.applyAll(history);
        const again = t.applyAll(history);
        return {before, after: shown(t), changed, again};
        """,
    )
    assert result["before"] == [
        line("0@0.000", 0, "A", pending="C?"),
        line("1@0.500", 1, "B", complete=True),
    ]
    assert result["after"] == [
        line("0@0.000", 0, "A C", complete=True),
        line("1@0.500", 1, "B", complete=True),
    ]
    assert (result["changed"], result["again"]) == (True, False)


async def test_stale_and_empty_interims_are_not_shown(page: Page) -> None:
    lines = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        t.apply(final(0, 0, "Done"));
        t.apply(interim(0, 0.2, "late interim for audio already final"));
        t.apply(interim(1, 0, "maybe"));
        t.apply(interim(1, 0, ""));
        t.apply(final(1, 1, ""));
        t.apply({type: "Metadata", duration: 3});
        return shown(t);
        """,
    )
    assert lines == [line("0@0.000", 0, "Done")]


async def test_the_end_of_the_call_completes_every_utterance(page: Page) -> None:
    lines = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        t.applyAll([final(0, 0, "Bye"), interim(1, 0.5, "by")]);
        t.end();
        t.apply(interim(1, 0.5, "bye now"));
        return shown(t);
        """,
    )
    assert lines == [line("0@0.000", 0, "Bye", complete=True)]


async def test_calls_are_titled_and_their_speakers_named_from_custom_parameters(
    page: Page,
) -> None:
    result = await run(
        page,
        "calls.js",
        """
        const call = (customParameters) => ({callSid: "CA1", customParameters});
        return {
          names: [m.speakerNames({}), m.speakerNames({CallerName: "Ann", CalleeName: " "})],
          titles: [call({From: "+1", To: "+2"}), call({From: "+1"}), call({To: "+2"}), call({})]
            .map(m.callTitle),
          others: [m.otherParameters(call({From: "+1", To: "+2", Team: "x"})),
                   m.otherParameters(call({Team: "x"}))],
          durations: [0, 5_400, 65_000, 3_725_000, -10].map(m.formatDuration),
          offset: m.formatOffset(75.4),
          third: m.speakerName(m.speakerNames({}), 2),
        };
        """,
    )
    assert result == {
        "names": [["Caller", "Callee"], ["Ann", "Callee"]],
        "titles": ["+1 → +2", "From +1", "To +2", "CA1"],
        "others": [[["Team", "x"]], [["Team", "x"]]],
        "durations": ["0:00", "0:05", "1:05", "1:02:05", "0:00"],
        "offset": "1:15",
        "third": "Channel 2",
    }


async def test_reconnects_back_off_and_the_socket_url_follows_the_page(page: Page) -> None:
    result = await run(
        page,
        "connection.js",
        """
        return {
          low: [0, 1, 2, 3, 10].map((n) => m.backoffDelay(n, () => 0)),
          high: [0, 1, 2, 3, 10].map((n) => m.backoffDelay(n, () => 1)),
          plain: String(m.viewerSocketUrl("http://example.test:5000/#call/CA1", "")),
          secure: String(m.viewerSocketUrl("https://example.test/proxy/?x=1", "a b&c")),
        };
        """,
    )
    assert result == {
        "low": [250, 500, 1000, 2000, 7500],
        "high": [500, 1000, 2000, 4000, 15000],
        "plain": "ws://example.test:5000/viewer/ws",
        "secure": "wss://example.test/proxy/viewer/ws?token=a+b%26c",
    }


async def test_a_line_is_timed_by_its_first_word_not_by_the_silence_before_it(page: Page) -> None:
    spoken = await run(
        page,
        "transcript.js",
        """
        const t = new m.Transcript();
        const late = final(1, 0, "Sure.", true);
        late.channel.alternatives[0].words = [{word: "sure", start: 3.2, end: 3.5}];
        t.apply(final(0, 0, "Hello.", true));
        t.apply(late);
        return t.lines().map((line) => [line.channel, line.spoken]);
        """,
    )
    assert spoken == [[0, 0], [1, 3.2]]
