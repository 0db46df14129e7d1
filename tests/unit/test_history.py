"""History: the latest finals within both limits, replayed exactly as they came, whether
kept verbatim or sealed into compressed blocks."""

from __future__ import annotations

import json
import sys

from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.deepgram_server_protocol import results_message
from twilio_dg_proxy.history import SEAL_CHARS, History

# Any text, lone surrogates and non-ASCII included: a message is kept as the str it was.
texts = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)


@given(
    st.lists(texts, max_size=60),
    st.integers(0, 30),
    st.integers(0, 600),
    st.integers(1, 200),
)
def test_history_holds_the_longest_suffix_within_both_limits_however_it_is_sealed(
    kept_texts: list[str], max_messages: int, max_bytes: int, seal_chars: int
) -> None:
    history = History(max_messages, max_bytes, seal_chars=seal_chars)
    for text in kept_texts:
        history.add(text)
    kept = history.messages
    assert kept == kept_texts[len(kept_texts) - len(kept) :]  # the latest ones, in order
    assert len(kept) <= max_messages and sum(map(len, kept)) <= max_bytes
    assert history.size == sum(map(len, kept))
    assert history.truncated == (len(kept) < len(kept_texts))
    if len(kept) < len(kept_texts):  # one more would break a limit
        longer = kept_texts[len(kept_texts) - len(kept) - 1 :]
        assert len(longer) > max_messages or sum(map(len, longer)) > max_bytes
    assert history.messages == kept  # reading it changes nothing


def final(index: int) -> str:
    message = results_message(
        transcript=f"hello number {index} how are you",
        channel=index % 2,
        channels=2,
        start=index * 0.25,
        duration=0.25,
        is_final=True,
        speech_final=False,
        from_finalize=False,
        request_id="8b3c1e6a-3f1e-4c55-9d0f-2a7d8e3c9b11",
    )
    return json.dumps(message)


def test_a_full_history_of_finals_holds_a_fraction_of_their_text() -> None:
    history = History(1000, 32 << 10)
    finals = [final(i) for i in range(200)]
    for text in finals:
        history.add(text)
    kept = history.messages
    assert kept == finals[-len(kept) :] and history.size > (32 << 10) - len(finals[0])
    held = sum(sys.getsizeof(text) for text in history._tail) + sum(
        sys.getsizeof(block.data) + sys.getsizeof(block.lengths) for block in history._blocks
    )
    # Verbatim, the messages are 32 KiB; all but the newest (< SEAL_CHARS) compressed.
    assert held < SEAL_CHARS + (32 << 10) // 4
