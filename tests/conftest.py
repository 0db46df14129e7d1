"""Settings for the whole suite."""

from __future__ import annotations

from hypothesis import settings

# Hypothesis fails an example that takes longer than its deadline (200 ms by default): a
# wall-clock bound a busy machine breaks, on tests whose properties say nothing of speed.
# How fast the proxy is, is the benchmark's to say (`python -m twilio_dg_proxy bench`).
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
