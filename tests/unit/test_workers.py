"""The supervisor's pure parts: when a dead worker is restarted, and the hidden option that
tells a worker process which it is."""

from __future__ import annotations

import signal

import pytest

from twilio_dg_proxy.workers import RestartBackoff, WorkerSpec, describe_exit


def test_a_worker_that_keeps_dying_waits_twice_as_long_each_time_up_to_10_s() -> None:
    backoff = RestartBackoff()
    delays = [backoff.delay(ran_for_s=1.0) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_the_backoff_never_gives_up() -> None:
    backoff = RestartBackoff()
    delays = [backoff.delay(ran_for_s=0.0) for _ in range(1000)]
    assert delays[-100:] == [10.0] * 100


def test_a_worker_that_ran_30_s_before_dying_is_restarted_after_the_first_delay() -> None:
    backoff = RestartBackoff()
    for _ in range(5):
        backoff.delay(ran_for_s=1.0)
    assert backoff.delay(ran_for_s=30.0) == 0.5
    assert backoff.delay(ran_for_s=29.9) == 1.0  # and doubles again from there


def test_a_short_run_does_not_reset_the_backoff() -> None:
    backoff = RestartBackoff()
    backoff.delay(ran_for_s=0.0)
    assert backoff.delay(ran_for_s=29.9) == 1.0


def test_the_backoff_takes_its_figures_as_arguments() -> None:
    backoff = RestartBackoff(first_s=0.1, longest_s=0.3, reset_after_s=1.0)
    assert [backoff.delay(0.0) for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    assert backoff.delay(1.0) == 0.1


@pytest.mark.parametrize(
    "spec", [WorkerSpec(1, 5), WorkerSpec(2, 5, 6), WorkerSpec(256, 1023, 1024)]
)
def test_a_worker_spec_survives_its_option(spec: WorkerSpec) -> None:
    assert WorkerSpec.parse(spec.option()) == spec


@pytest.mark.parametrize("raw", ["", "1", "1,2,3,4", "0,5", "1,-5", "a,b", "1,5,", "1;5"])
def test_a_malformed_worker_spec_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="INDEX,LINK_FD"):
        WorkerSpec.parse(raw)


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exited with status 0"),
        (2, "exited with status 2"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
        (-200, "was killed by signal 200"),
    ],
)
def test_an_exit_is_described_with_its_status_or_signal_name(returncode: int, words: str) -> None:
    assert describe_exit(returncode) == words
