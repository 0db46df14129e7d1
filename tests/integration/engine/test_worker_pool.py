"""`WorkerPool` on its own with the real model: a worker that hangs is given up on after the
decode timeout, killed and replaced, and the next decode is answered."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from twilio_dg_proxy.engine.model import weights_dir
from twilio_dg_proxy.engine.workers import WorkerLost, WorkerPool

from ...timing import S
from ..helpers import until

SILENCE = np.zeros(8000, dtype=np.float32)


async def test_a_hung_worker_is_given_up_on_killed_and_replaced() -> None:
    # Long enough for a decode on a busy machine, short for a test that waits for it once.
    async with WorkerPool(1, str(weights_dir()), 1, decode_timeout_s=5 * S) as pool:
        assert await pool.decode(SILENCE, 1) == []
        [hung] = pool.pids
        os.kill(hung, signal.SIGSTOP)  # alive, but never answers
        try:
            with pytest.raises(WorkerLost, match="no words within"):
                await pool.decode(SILENCE, 1)
        finally:
            try:
                os.kill(hung, signal.SIGCONT)
            except ProcessLookupError:  # already killed by the pool, as it should be
                pass
        await until(lambda: pool.restarts == 1, 10 * S)
        await until(lambda: len(pool.pids) == 1 and hung not in pool.pids, 60 * S)
        assert await pool.decode(SILENCE, 1) == []
        assert pool.in_flight == 0
