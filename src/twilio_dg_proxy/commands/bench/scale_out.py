"""`bench --remote-watchers`: the same calls and watchers measured on one proxy, then with
the calls on instance A and their watchers on instance B, both proxies sharing a
redis-server the benchmark starts (issue 12's scale-out path).

Placement: the load generator and the fake Deepgram keep the load's CPUs in both runs; the
single proxy, and in the second run A, B and redis-server together, get the proxy's CPU.
On a 2-CPU machine A, B and Redis therefore share one core, as three services would not
in production: the remote path's latencies are, if anything, pessimistic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .load import BenchOptions, run_bench
from .processes import BenchError, Placement, ProxyProcess, Serving
from .redis_server import RedisProcess, RedisSample
from .scale_out_report import INSTANCE_B, REDIS, ScaleOutReport, redis_figures

__all__ = ["RemoteWatchers", "run_remote_watchers"]


@dataclass(slots=True)
class RemoteWatchers:
    """The remote path's server side (a `processes.Serve`): redis-server, instance A for
    the calls and instance B for their watchers; it keeps Redis's samples of the window."""

    samples: list[RedisSample] = field(default_factory=list)

    @asynccontextmanager
    async def serve(self, env: Mapping[str, str], placement: Placement) -> AsyncIterator[Serving]:
        """Start Redis, then A and B with REDIS_URL pointing at it, all on the proxy's CPUs;
        stop them in reverse order."""
        async with RedisProcess.started(placement.proxy) as redis:
            shared = {**env, "REDIS_URL": redis.url}
            async with (
                ProxyProcess.started(shared, placement.proxy) as a,
                ProxyProcess.started(shared, placement.proxy) as b,
            ):
                yield Serving(
                    a,
                    b,
                    beside={INSTANCE_B: b.pid, REDIS: redis.pid},
                    on_sample=lambda: self.samples.append(redis.sample()),
                    placement=_describe(placement),
                )


def _describe(placement: Placement) -> str:
    if placement.proxy is None or placement.load is None:
        return "not pinned (one CPU available): A, B, redis-server and the load share it"
    proxy = ",".join(map(str, sorted(placement.proxy)))
    load = ",".join(map(str, sorted(placement.load)))
    return (
        f"instance A, instance B and redis-server share CPU {proxy}; "
        f"load generator + fake Deepgram on CPU {load}"
    )


async def run_remote_watchers(options: BenchOptions) -> ScaleOutReport:
    """Measure the single-process path, then the remote path, with the same options."""
    single = await run_bench(options)
    remote_watchers = RemoteWatchers()
    remote = await run_bench(options, remote_watchers.serve)
    samples = remote_watchers.samples
    if len(samples) < 2:
        raise BenchError("redis-server was not sampled at both ends of the window")
    first, last = samples[0], samples[-1]
    return ScaleOutReport(
        single=single,
        remote=remote,
        redis=redis_figures(
            (first.at, first.commands, first.by_command),
            (last.at, last.commands, last.by_command),
            options.calls,
        ),
    )
