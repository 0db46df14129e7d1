"""CPU time and resident memory of a process, from Linux's /proc (no psutil needed for two
numbers). The parsers are pure; `sample` reads the files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcSample",
    "busy_seconds",
    "cpu_busy",
    "cpu_seconds",
    "rss_bytes",
    "sample",
    "wait_until_quiet",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Fields of /proc/<pid>/stat after the command name: state is field 3, utime 14, stime 15.
_UTIME = 14 - 3
_STIME = 15 - 3


@dataclass(frozen=True, slots=True)
class ProcSample:
    """A process's CPU seconds used so far and its resident memory, at monotonic `at`."""

    at: float
    cpu_s: float
    rss: int


def cpu_seconds(stat: str, ticks_per_second: int = _CLOCK_TICKS) -> float:
    """User plus system CPU seconds from the text of /proc/<pid>/stat."""
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[_UTIME]) + int(fields[_STIME])) / ticks_per_second


def rss_bytes(status: str) -> int:
    """Resident memory in bytes from the text of /proc/<pid>/status (its VmRSS line)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line (a kernel thread, or a process that has exited)")


def sample(pid: int) -> ProcSample:
    """Read process `pid`'s CPU time and resident memory now."""
    proc = Path("/proc") / str(pid)
    at = time.monotonic()
    return ProcSample(
        at=at,
        cpu_s=cpu_seconds((proc / "stat").read_text()),
        rss=rss_bytes((proc / "status").read_text()),
    )


def busy_seconds(stat: str, ticks_per_second: int = _CLOCK_TICKS) -> dict[int, float]:
    """Seconds each CPU spent busy since boot, from the text of /proc/stat: everything but
    idle and iowait (user, nice, system, irq, softirq, and steal, time a hypervisor gave to
    someone else)."""
    busy: dict[int, float] = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, rest.split()[:8])
            busy[int(name[3:])] = (user + nice + system + irq + softirq + steal) / ticks_per_second
    return busy


def cpu_busy() -> dict[int, float]:
    """Busy seconds per CPU since boot, now (see `busy_seconds`)."""
    return busy_seconds(Path("/proc/stat").read_text())


def wait_until_quiet(max_wait_s: float, *, busy_below: float = 0.10, probe_s: float = 2.0) -> float:
    """Wait (blocking) until the machine's CPUs were less than `busy_below` busy on average
    over `probe_s`, or `max_wait_s` has passed; return the last share measured.

    On a shared machine a measurement taken while others compile or test says little.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_busy()
        time.sleep(probe_s)
        after = cpu_busy()
        share = sum(after[c] - before[c] for c in after if c in before) / (probe_s * len(after))
        if share < busy_below or time.monotonic() >= deadline:
            return share
