"""The viewer's pure JavaScript modules (transcript.js, calls.js, connection.js, recent.js,
follow.js), run in the browser against hand-made Deepgram messages, /calls answers and
addresses."""

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
    async with running_proxy("ws://127.0.0.1:9/v1/listen", STORE_TRANSCRIPTS="false") as proxy:
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


# A stored call as `GET /calls` lists it.
STORED = """
const stored = (callSid, endedAt, extra = {}) => ({
  callSid, customParameters: {}, tracks: ["inbound", "outbound"], startedAt: endedAt - 42_000,
  endedAt, durationMs: 42_000, endCode: 1000, endReason: "call ended", requestIds: [],
  transcriptTruncated: false, ...extra,
});
const sids = (list) => list.calls.map((call) => call.callSid);
"""


async def test_stored_call_urls_follow_the_page_and_downloads_carry_the_token(page: Page) -> None:
    result = await run(
        page,
        "recent.js",
        """
        const base = "https://example.test/proxy/?x=1#stored/CA1";
        return {
          first: String(m.callsUrl(base)),
          next: String(m.callsUrl(base, {before: "WzE3Ni", from: "+15550100", limit: 5})),
          json: String(m.transcriptUrl(base, "CA 1/2")),
          plain: m.downloadLinks("http://h:5000/", "CA1").map((link) => link.href),
          secret: m.downloadLinks("http://h:5000/", "CA1", "a b&c").map((link) =>
            [link.format, link.label, link.href]),
        };
        """,
    )
    token = "&token=a+b%26c"
    assert result == {
        "first": "https://example.test/proxy/calls?limit=20",
        "next": "https://example.test/proxy/calls?limit=5&before=WzE3Ni&From=%2B15550100",
        "json": "https://example.test/proxy/calls/CA%201%2F2/transcript?format=json",
        "plain": [
            f"http://h:5000/calls/CA1/transcript?format={form}&download=1"
            for form in ("txt", "vtt", "srt", "json")
        ],
        "secret": [
            [form, label, f"http://h:5000/calls/CA1/transcript?format={form}&download=1{token}"]
            for form, label in (
                ("txt", "Text"),
                ("vtt", "WebVTT"),
                ("srt", "SubRip"),
                ("json", "JSON"),
            )
        ],
    }


async def test_a_number_typed_with_separators_filters_as_twilio_writes_it(page: Page) -> None:
    numbers = await run(
        page,
        "recent.js",
        """
        return [" +1 (555) 010-0100 ", "555.0100", "", "client:alice", "sip:a b@x"]
          .map(m.normalizeNumber);
        """,
    )
    assert numbers == ["+15550100100", "5550100", "", "client:alice", "sip:a b@x"]


async def test_the_recent_list_merges_pages_newest_first_each_call_once(page: Page) -> None:
    result = await run(
        page,
        "recent.js",
        STORED
        + """
        const list = new m.RecentList();
        const steps = [];
        list.refreshed({calls: [stored("CA5", 500), stored("CA4", 400)], next: "c4"});
        steps.push([sids(list), list.next]);
        list.appended({calls: [stored("CA3", 300), stored("CAb", 200), stored("CAa", 200)],
                       next: "ca"});
        steps.push([sids(list), list.next]);
        // Two calls ended since: the newest page overlaps what is loaded, which stays.
        list.refreshed({calls: [stored("CA7", 700), stored("CA6", 600), stored("CA5", 500)],
                        next: "c5"});
        steps.push([sids(list), list.next]);
        // More than a page ended since: the page does not reach the list, which starts over.
        list.refreshed({calls: [stored("CA9", 900), stored("CA8", 800)], next: "c8"});
        steps.push([sids(list), list.next]);
        // A page with no next is every stored call.
        list.refreshed({calls: [stored("CA9", 900)], next: null});
        steps.push([sids(list), list.next, list.has("CA9"), list.has("CA8")]);
        return steps;
        """,
    )
    assert result == [
        [["CA5", "CA4"], "c4"],
        [["CA5", "CA4", "CA3", "CAb", "CAa"], "ca"],
        [["CA7", "CA6", "CA5", "CA4", "CA3", "CAb", "CAa"], "ca"],
        [["CA9", "CA8"], "c8"],
        [["CA9"], None, True, False],
    ]


async def test_a_filtered_list_expects_only_the_calls_from_its_number(page: Page) -> None:
    result = await run(
        page,
        "recent.js",
        """
        const from = (From) => ({callSid: "CA1", customParameters: From ? {From} : {}});
        const any = new m.RecentList();
        const one = new m.RecentList("+15550100");
        return [any.expects(from("+1")), any.expects({callSid: "CA2"}),
                one.expects(from("+15550100")), one.expects(from("+15550111")),
                one.expects(from())];
        """,
    )
    assert result == [True, True, True, False, False]


async def test_a_stored_call_is_described_with_its_end_and_how_it_ended_if_not_normally(
    page: Page,
) -> None:
    result = await run(
        page,
        "recent.js",
        STORED
        + """
        const now = new Date(2026, 0, 15, 12, 0).getTime();
        const today = new Date(2026, 0, 15, 9, 30, 5).getTime();
        const earlier = new Date(2026, 0, 3, 9, 30).getTime();
        const failed = stored("CA2", today, {customParameters: {From: "+1", To: "+2"},
          durationMs: 3_725_000, endCode: 1014, endReason: "Deepgram failed"});
        return {
          normal: m.describeStored(stored("CA1", today), now),
          failed: m.describeStored(failed, now),
          expected: [
            new Date(today).toLocaleTimeString(),
            new Date(earlier).toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"}),
          ],
          ended: [m.formatEnded(today, now), m.formatEnded(earlier, now)],
          endings: [m.endingText({endCode: 1001, endReason: ""}), m.endingText({})],
        };
        """,
    )
    assert result["normal"] == {
        "callSid": "CA1",
        "title": "CA1",
        "showSid": False,
        "ended": result["expected"][0],
        "duration": "0:42",
        "ending": None,
    }
    assert result["failed"] | {"ended": None} == {
        "callSid": "CA2",
        "title": "+1 → +2",
        "showSid": True,
        "ended": None,
        "duration": "1:02:05",
        "ending": "Deepgram failed (1014)",
    }
    assert result["ended"] == result["expected"]
    assert result["endings"] == ["code 1001", None]


async def test_a_stored_transcript_shows_one_line_per_segment_and_errors_say_what_to_do(
    page: Page,
) -> None:
    result = await run(
        page,
        "recent.js",
        """
        const transcript = {call: {}, results: [], segments: [
          {start: 0.5, end: 1.2, channel: 0, speaker: "Ann", text: "Hello."},
          {start: 0.5, end: 1.0, channel: 1, speaker: "Callee", text: "Hi."},
          {start: 2, end: 3, channel: 0, speaker: "Ann", text: "Bye."},
        ]};
        return {
          lines: m.storedLines(transcript),
          none: m.storedLines({call: {}, segments: []}),
          errors: [[0, null, "list"], [400, {error: "limit must be…"}, "list"], [401, null, "list"],
                   [404, {error: "no such call"}, "call"], [404, null, "list"], [503, null, "call"],
                   [500, {error: "oops"}, "list"]].map(([status, body, what]) =>
                     m.errorText(status, body, what)),
        };
        """,
    )
    assert result["lines"] == [
        {"key": "0@0.500#0", "channel": 0, "speaker": "Ann", "start": 0.5, "text": "Hello."},
        {"key": "1@0.500#1", "channel": 1, "speaker": "Callee", "start": 0.5, "text": "Hi."},
        {"key": "0@2.000#2", "channel": 0, "speaker": "Ann", "start": 2, "text": "Bye."},
    ]
    assert result["none"] == []
    assert result["errors"] == [
        "The proxy could not be reached.",
        "The proxy refused the request: limit must be….",
        "A viewer token is required: the proxy refused this one, or none was given.",
        "This call is not stored: it never was, or it was purged (RETENTION_DAYS).",
        "Transcripts are not stored on this proxy (STORE_TRANSCRIPTS=false).",
        "The transcript store is unavailable right now. Try again shortly.",
        "The proxy answered 500: oops.",
    ]


async def test_the_followed_number_is_kept_in_the_query_beside_the_hash(page: Page) -> None:
    result = await run(
        page,
        "follow.js",
        """
        const base = "http://h:5000/proxy/?x=a%20b#call/CA1";
        const followed = m.urlFollowing(base, "+15550100");
        return {
          followed,
          read: m.followedInUrl(followed),
          again: m.urlFollowing(followed, "(555) 0100"),
          stopped: m.urlFollowing(followed, ""),
          none: m.urlFollowing("http://h:5000/#stored/CA2", ""),
          typed: ["?follow=+15550100", "?follow=%2B1%20555%200100", "?follow= 5550100 &y",
                  "?y=1", "?follow=%E0%A4%A", ""].map((q) => m.followedInUrl(`http://h/${q}`)),
        };
        """,
    )
    assert result == {
        "followed": "http://h:5000/proxy/?x=a%20b&follow=+15550100#call/CA1",
        "read": "+15550100",
        "again": "http://h:5000/proxy/?x=a%20b&follow=(555)%200100#call/CA1",
        "stopped": "http://h:5000/proxy/?x=a%20b#call/CA1",
        "none": "http://h:5000/#stored/CA2",
        "typed": ["+15550100", "+1 555 0100", "5550100", "", "%E0%A4%A", ""],
    }


async def test_numbers_match_by_the_proxy_rule_however_they_are_typed(page: Page) -> None:
    result = await run(
        page,
        "follow.js",
        """
        const call = (From, To) => ({callSid: "CA1", customParameters: {From, To, Team: "+1"}});
        return {
          parsed: [" +1 (555) 010-0100 ", "555.0100", "12", "1".repeat(21), "CA123",
                   "+", "+1\\t555", "client:alice"].map(m.parseNumber),
          has: [
            m.callHasNumber(call("+15550100", "+15550199"), "+1 555 0100"),
            m.callHasNumber(call("+15550111", "+15550100"), "(555) 0100"),
            m.callHasNumber(call("+15550100"), "+25550100"),
            m.callHasNumber(call("+15550100"), "550100"),
            m.callHasNumber(call("+15550100"), "0015550100"),
            m.callHasNumber(call("client:alice"), "+15550100"),
            m.callHasNumber({callSid: "CA2"}, "+15550100"),
            m.callHasNumber(call("+15550100"), "not a number"),
            m.callHasNumber(call("+19990000", "+19990001"), "+1", ["Team"]),
          ],
          typed: [" +1  555\\t0100 ", "", null].map(m.typedNumber),
        };
        """,
    )
    assert result == {
        "parsed": [
            {"digits": "15550100100", "international": True},
            {"digits": "5550100", "international": False},
            None,
            None,
            None,
            None,
            {"digits": "1555", "international": True},
            None,
        ],
        "has": [True, True, False, False, True, False, False, False, False],
        "typed": ["+1 555 0100", "", ""],
    }


async def test_the_newest_call_of_the_followed_number_takes_the_pane_once(page: Page) -> None:
    result = await run(
        page,
        "follow.js",
        """
        const pane = (startedAt, ended = false, followed = true) => ({startedAt, ended, followed});
        const call = {callSid: "CA2", startedAt: 2000};
        return [
          m.opensFollowed(null, call, false), // nothing shown
          m.opensFollowed(pane(1000), call, false), // a newer call of the number
          m.opensFollowed(pane(3000), call, false), // an older one: stays listed
          m.opensFollowed(pane(3000, true), call, false), // the one shown ended
          m.opensFollowed(pane(3000, false, false), call, false), // another number's call
          m.opensFollowed(null, call, true), // offered again on a reconnect
        ];
        """,
    )
    assert result == [True, True, False, True, True, False]


async def test_the_follow_is_described_as_it_stands(page: Page) -> None:
    result = await run(
        page,
        "follow.js",
        """
        const detail = (connected, confirmed, shown, others) =>
          m.followDetail({connected, confirmed, shown, others});
        return {
          details: [
            detail(false, false, null, 0), detail(true, false, null, 0),
            detail(true, true, null, 0), detail(true, true, null, 2),
            detail(true, true, {ended: false}, 1), detail(true, true, {ended: true}, 0),
          ],
          error: m.followErrorText({type: "error", number: "abc", code: 1008,
            reason: "not a phone number: digits, with an optional leading +"}),
        };
        """,
    )
    assert result == {
        "details": [
            "Resumes once connected.",
            "Asking the proxy…",
            "Waiting for a call with this number.",
            "Waiting for a call with this number. 2 other calls with it are listed.",
            "Its call is open. 1 other call with it is listed.",
            "Its call ended. The next one will open here.",
        ],
        "error": "Cannot follow “abc”: not a phone number: digits, with an optional leading +.",
    }
