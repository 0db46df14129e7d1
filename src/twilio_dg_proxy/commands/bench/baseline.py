"""`bench --baseline`: the tutorial's design (`tutorial_baseline`, a process of its own) run
by the same benchmark as the proxy: same calls, watchers, fake Deepgram, placement and window.

The baseline takes the proxy's place on the proxy's CPU; its runs get ``CHUNK_MS`` = its own
400 ms buffer in their options, so that their report and real-time criterion state its own
chunking wait (the process itself ignores ``CHUNK_MS``), and no ``--proxy-env`` or
``--profile``, which are the proxy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Final, Literal

from .load import BenchOptions, run_bench
from .processes import Placement, ProxyProcess, Serving, one_proxy
from .report import BenchReport
from .tutorial_baseline import BUFFER_MS

__all__ = ["BASELINE_MODULE", "Side", "baseline_options", "run_side", "tutorial_baseline"]

BASELINE_MODULE: Final = "twilio_dg_proxy.commands.bench.tutorial_baseline"
#: Which server a run measures.
Side = Literal["proxy", "baseline"]


@asynccontextmanager
async def tutorial_baseline(env: Mapping[str, str], placement: Placement) -> AsyncIterator[Serving]:
    """The baseline's process in the proxy's place (a `processes.Serve`)."""
    async with ProxyProcess.started(env, placement.proxy, BASELINE_MODULE) as baseline:
        where = placement.describe().replace("proxy", "tutorial baseline", 1)
        yield Serving(baseline, baseline, placement=where)


def baseline_options(options: BenchOptions) -> BenchOptions:
    """The options of the baseline's run, from the proxy's."""
    return replace(options, chunk_ms=BUFFER_MS, proxy_env={}, profile=None)


async def run_side(options: BenchOptions, side: Side) -> BenchReport:
    """One run of the proxy, or of the baseline, with `options`."""
    if side == "baseline":
        return await run_bench(baseline_options(options), tutorial_baseline)
    return await run_bench(options, one_proxy)
