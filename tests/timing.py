"""One timing factor for the whole suite, as websockets' tests have (`MS`).

Every fixed sleep and every timeout a test sets that only bounds how long it waits for
something (never a figure the test asserts) is written in units of `S`: one second times
TEST_TIMING_FACTOR (default 1). On a slow or busy machine, `TEST_TIMING_FACTOR=3 python -m
pytest` gives every such wait three times the room. Tests never assert elapsed time: what a
test checks is an order, a count or a content; how fast it happens is the benchmark's job.
"""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("TEST_TIMING_FACTOR", "1"))
#: One second, scaled by the factor.
S = 1.0 * FACTOR
#: One millisecond, scaled by the factor.
MS = 0.001 * FACTOR
