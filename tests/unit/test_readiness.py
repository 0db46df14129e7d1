"""Readiness: what makes a process not ready, and the calls' Deepgram outcomes."""

from __future__ import annotations

from twilio_dg_proxy.deepgram_check import CheckResult
from twilio_dg_proxy.readiness import Readiness


def test_ready_until_draining_and_says_why() -> None:
    readiness = Readiness()
    assert readiness.problems() == []
    readiness.draining = True
    assert readiness.problems() == ["draining"]


def test_redis_unreachable_makes_it_not_ready() -> None:
    reachable = [True]
    readiness = Readiness(redis_reachable=lambda: reachable[0])
    assert readiness.problems() == []
    reachable[0] = False
    assert readiness.problems() == ["Redis is unreachable"]


def test_a_calls_unreachable_deepgram_makes_it_not_ready_until_a_stream_opens() -> None:
    readiness = Readiness()
    readiness.deepgram_failed("closed")  # one link dropped: Deepgram is still there
    readiness.deepgram_failed("refused_limit")  # the account's concurrency: not the process
    assert readiness.problems() == [] and not readiness.recheck.is_set()
    readiness.deepgram_failed("unreachable")
    assert readiness.problems() == ["Deepgram: a call's stream failed (unreachable)"]
    assert readiness.recheck.is_set()  # the watch checks again
    readiness.deepgram_opened(0.1)
    assert readiness.problems() == []


def test_a_check_decides_until_the_next_one() -> None:
    readiness = Readiness()
    readiness.checked(CheckResult("refused", "Deepgram at x refused the key"))
    assert readiness.problems() == ["Deepgram: Deepgram at x refused the key"]
    readiness.checked(CheckResult("unverified", "x answered 404"))
    assert readiness.problems() == []


def test_with_the_check_off_deepgram_never_makes_it_unready() -> None:
    readiness = Readiness(deepgram=False)
    readiness.deepgram_failed("unreachable")
    assert readiness.problems() == []
