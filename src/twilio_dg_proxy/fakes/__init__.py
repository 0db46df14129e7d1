"""Test doubles: the fake Deepgram (the synthetic engine with fault knobs), used by the tests.

Nothing outside this package and the tests imports it (tests/unit/test_layers.py checks).
"""
