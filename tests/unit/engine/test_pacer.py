"""The interim-results rate limit of one channel."""

from __future__ import annotations

import pytest

from twilio_dg_proxy.engine.pacer import InterimPacer


def test_no_interim_until_the_utterance_has_grown_enough() -> None:
    pacer = InterimPacer(interval_s=1.0, min_growth_s=0.5)
    assert pacer.delay(now=0.0, audio_s=0.4) is None
    assert pacer.delay(now=0.0, audio_s=0.5) == 0.0


def test_an_interim_waits_the_interval_after_the_previous_one_ended() -> None:
    pacer = InterimPacer(interval_s=1.0, min_growth_s=0.5)
    pacer.decoded(now=10.0, audio_s=1.0)
    assert pacer.delay(now=10.2, audio_s=1.2) is None  # not grown enough
    assert pacer.delay(now=10.2, audio_s=1.6) == pytest.approx(0.8)
    assert pacer.delay(now=11.5, audio_s=1.6) == 0.0


def test_a_final_resets_the_growth_but_not_the_interval() -> None:
    pacer = InterimPacer(interval_s=1.0, min_growth_s=0.5)
    pacer.decoded(now=10.0, audio_s=4.0)
    pacer.reset()
    # A new utterance of 0.6 s is enough audio, but the last interim ended 0.3 s ago.
    assert pacer.delay(now=10.3, audio_s=0.6) == pytest.approx(0.7)


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        InterimPacer(interval_s=-1)
