"""Readiness: whether this process should be sent new calls (`GET /readyz`).

Not ready while draining (after SIGTERM), while Deepgram or the offline engine cannot be
reached or refuses the key (the start-up check, `deepgram_check`, and the calls' own
failures), and, with REDIS_URL, while Redis is unreachable. A load balancer that probes
`/readyz` then stops sending calls here; `/healthz` stays a liveness check.

While Deepgram is judged unreachable, `watch_deepgram` checks it again every few seconds:
no call would come to prove it back (the load balancer sends none), so the check must.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .config import Settings
from .deepgram_check import CheckResult, check_deepgram
from .exceptions import ConfigError
from .logs import get_logger
from .observations import UNREACHABLE_FAILURES, DeepgramFailure, Observer

logger = get_logger("readiness")

# How often Deepgram is checked again while it is judged unreachable.
RECHECK_S = 5.0


class Readiness(Observer):
    """What makes this process not ready, as it changes; an `Observer` of the calls'
    Deepgram streams (a stream that opens proves Deepgram reachable; one that cannot reach
    it, or is refused the key or by a 5xx, proves it not)."""

    def __init__(
        self, *, redis_reachable: Callable[[], bool] = lambda: True, deepgram: bool = True
    ) -> None:
        """`redis_reachable()` says whether Redis answers (always true without REDIS_URL);
        with `deepgram` False (DEEPGRAM_START_CHECK=off) Deepgram never makes it unready."""
        self.track_deepgram = deepgram
        self.draining = False
        self.deepgram_problem: str | None = None  # why Deepgram is judged unreachable
        self.redis_reachable = redis_reachable
        self.recheck = asyncio.Event()  # set when a call found Deepgram unreachable

    def problems(self) -> list[str]:
        """Why this process is not ready: empty when it is."""
        problems = []
        if self.draining:
            problems.append("draining")
        if self.deepgram_problem is not None:
            problems.append(self.deepgram_problem)
        if not self.redis_reachable():
            problems.append("Redis is unreachable")
        return problems

    def deepgram_opened(self, open_s: float) -> None:
        self.deepgram_problem = None

    def deepgram_failed(self, failure: DeepgramFailure) -> None:
        if self.track_deepgram and failure in UNREACHABLE_FAILURES:
            self.deepgram_problem = f"Deepgram: a call's stream failed ({failure})"
            self.recheck.set()

    def checked(self, result: CheckResult) -> None:
        """Take the outcome of a check of Deepgram (`deepgram_check`)."""
        self.deepgram_problem = None if result.usable else f"Deepgram: {result.detail}"


async def check_at_start(settings: Settings, readiness: Readiness) -> None:
    """Check Deepgram once, as DEEPGRAM_START_CHECK says; log the outcome plainly and record
    it in `readiness`. Raises ConfigError when the key is refused and the setting is
    `required`."""
    if settings.deepgram_start_check == "off":
        return
    result = await check_deepgram(settings)
    readiness.checked(result)
    if result.outcome == "refused":
        if settings.deepgram_start_check == "required":
            raise ConfigError(
                "DEEPGRAM_API_KEY",
                f"{result.detail}; fix the key, or set DEEPGRAM_START_CHECK=warn to start "
                "anyway (not ready until it is accepted)",
            )
        logger.error("%s: starting anyway (DEEPGRAM_START_CHECK=warn), not ready", result.detail)
    elif result.outcome == "unreachable":
        logger.warning("%s: not ready until it can be reached", result.detail)
    else:
        logger.info("%s", result.detail)


async def watch_deepgram(
    settings: Settings, readiness: Readiness, *, recheck_s: float = RECHECK_S
) -> None:
    """Forever: while Deepgram is judged unreachable, check it again every `recheck_s`;
    otherwise wait for a call to find it unreachable."""
    if settings.deepgram_start_check == "off":
        return
    while True:
        if readiness.deepgram_problem is None:
            readiness.recheck.clear()
            await readiness.recheck.wait()
            continue
        await asyncio.sleep(recheck_s)
        result = await check_deepgram(settings)
        was = readiness.deepgram_problem
        readiness.checked(result)
        if readiness.deepgram_problem is None and was is not None:
            logger.info("Deepgram can be reached again: ready")
