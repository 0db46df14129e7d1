"""Settings for the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Hypothesis fails an example that takes longer than its deadline (200 ms by default): a
# wall-clock bound a busy machine breaks, on tests whose properties say nothing of speed.
# How fast the proxy is, is the benchmark's to say (`python -m twilio_dg_proxy bench`).
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture(autouse=True, scope="session")
def transcripts_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Proxies started as processes (or from the environment) store their transcripts in a
    temporary file, never in `transcripts.sqlite3` in the working directory."""
    path = tmp_path_factory.mktemp("store") / "transcripts.sqlite3"
    saved = os.environ.get("TRANSCRIPTS_FILE")
    os.environ["TRANSCRIPTS_FILE"] = str(path)
    yield
    if saved is None:
        del os.environ["TRANSCRIPTS_FILE"]
    else:
        os.environ["TRANSCRIPTS_FILE"] = saved
