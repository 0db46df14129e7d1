"""Audio conversions for the engine: G.711 mu-law bytes to float samples, 8 kHz to 16 kHz.

Pure functions on numpy arrays. The stdlib's `audioop` would do the decoding but is
deprecated (and gone in Python 3.13); a 256-entry lookup table is exact and as fast.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "MULAW_TO_FLOAT",
    "MULAW_TO_INT16",
    "Samples",
    "mulaw_to_float",
    "split_channels",
    "upsample_2x",
]

Samples: TypeAlias = npt.NDArray[np.float32]
"""Mono audio as float32 samples in [-1, 1)."""


def _mulaw_table() -> npt.NDArray[np.int16]:
    """The G.711 mu-law expansion of every byte value, as 16-bit linear samples.

    Bytes are stored inverted; the magnitude is ((mantissa << 3) + 0x84) << exponent, less
    the bias 0x84. This gives exactly what `audioop.ulaw2lin` gives (0xFF and 0x7F are 0,
    0x00 is -32124, 0x80 is 32124).
    """
    u = np.arange(256, dtype=np.int32) ^ 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


MULAW_TO_INT16: Final = _mulaw_table()
"""`MULAW_TO_INT16[b]` is the 16-bit linear sample of mu-law byte `b`."""
MULAW_TO_FLOAT: Final = (MULAW_TO_INT16 / 32768.0).astype(np.float32)
"""`MULAW_TO_FLOAT[b]` is the sample of mu-law byte `b` scaled to [-1, 1)."""


def mulaw_to_float(data: bytes) -> Samples:
    """Return the float32 samples of mu-law `data`, one per byte (interleaved if it is)."""
    return MULAW_TO_FLOAT[np.frombuffer(data, dtype=np.uint8)]


def split_channels(samples: Samples, channels: int) -> list[Samples]:
    """Split interleaved `samples` (L, R, L, R, ...) into one contiguous array per channel.

    `len(samples)` must be a multiple of `channels` (raises ValueError otherwise).
    """
    if channels < 1 or len(samples) % channels:
        raise ValueError(f"{len(samples)} samples do not split into {channels} channel(s)")
    return [np.ascontiguousarray(samples[c::channels]) for c in range(channels)]


def upsample_2x(samples: Samples) -> Samples:
    """Return `samples` at twice the rate (8 kHz in, 16 kHz out), by linear interpolation.

    Whisper wants 16 kHz. Telephone audio has nothing above 4 kHz to restore, and on our
    sample linear interpolation transcribed as well as a windowed-sinc filter, at less cost.
    """
    n = len(samples)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    positions = np.arange(2 * n, dtype=np.float64) / 2
    return np.interp(positions, np.arange(n), samples).astype(np.float32)
