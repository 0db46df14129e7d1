"""The engine's audio conversions: mu-law decoding, channel splitting, upsampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from twilio_dg_proxy.engine.audio import (
    MULAW_TO_FLOAT,
    MULAW_TO_INT16,
    mulaw_to_float,
    split_channels,
    upsample_2x,
)


def test_the_table_is_g711_mu_law() -> None:
    # The stdlib's decoder as the reference (audioop-lts on 3.13+, deprecated before).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    reference = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert MULAW_TO_INT16.tolist() == reference.tolist()


@pytest.mark.parametrize(
    ("byte", "sample"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xF0, 120)]
)
def test_known_values(byte: int, sample: int) -> None:
    assert MULAW_TO_INT16[byte] == sample
    assert MULAW_TO_FLOAT[byte] == pytest.approx(sample / 32768)


def test_the_table_is_symmetric_and_monotonic_within_each_half() -> None:
    # Bytes 0x00-0x7F are negative from loudest to quietest, 0x80-0xFF positive likewise.
    assert (MULAW_TO_INT16[:128] == -MULAW_TO_INT16[128:]).all()
    assert (np.diff(MULAW_TO_INT16[128:].astype(np.int32)) < 0).all()


def test_mulaw_to_float_decodes_each_byte() -> None:
    samples = mulaw_to_float(b"\xff\x00\x80")
    assert samples.dtype == np.float32
    assert samples.tolist() == pytest.approx([0.0, -32124 / 32768, 32124 / 32768])


def test_split_channels_undoes_interleaving() -> None:
    left, right = split_channels(np.arange(6, dtype=np.float32), 2)
    assert left.tolist() == [0, 2, 4] and right.tolist() == [1, 3, 5]
    assert left.flags.c_contiguous


def test_split_channels_refuses_a_partial_frame() -> None:
    with pytest.raises(ValueError, match="do not split"):
        split_channels(np.zeros(3, dtype=np.float32), 2)


def test_upsample_2x_keeps_the_samples_and_interpolates_between() -> None:
    out = upsample_2x(np.array([0.0, 1.0, -1.0], dtype=np.float32))
    assert out.dtype == np.float32
    assert out.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0, -1.0, -1.0])
    assert len(upsample_2x(np.zeros(0, dtype=np.float32))) == 0


def test_upsample_2x_preserves_a_telephone_band_tone() -> None:
    rate = 8000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = upsample_2x(tone)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(2 * rate) / (2 * rate))
    # Linear interpolation of a 1 kHz tone sampled at 8 kHz is off by at most
    # 0.5 * (1 - cos(pi / 8)) = 0.038 between samples. The last output sample repeats the last
    # input (there is nothing after it to interpolate towards).
    assert np.max(np.abs(out - expected)[:-1]) < 0.04
