"""DWT mark: additive spread spectrum in the level-2 detail subbands (PyWavelets).

The luminance is decomposed with a 2-level ``db2`` wavelet transform (orthogonal,
``periodization`` mode); the level-2 detail subbands (horizontal, vertical, diagonal:
mid frequencies, between the fragile level-1 details and the visible approximation)
carry the message, each coefficient with a keyed bit index and ±1 sign, added as
``c' = c + β · s_k · (2 w_b - 1)`` in the manner of Kang et al.'s DWT spread spectrum.
The change is the same for every image (for a given size): a fixed band-pass pattern,
scaled to RMS ``strength``.

Blind detection: correlate the suspect's level-2 detail coefficients (already zero-mean
band-pass values, so no local mean is subtracted) with the signs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pixmark.baselines._common import antipodal, assign_bits, group_z, size_generator

WAVELET = "db2"
LEVEL = 2
MODE = "periodization"


def _details(y: np.ndarray) -> tuple[list, np.ndarray]:
    """The full decomposition and the level-2 details flattened: [N, n]."""
    import pywt

    coeffs = pywt.wavedec2(y, WAVELET, mode=MODE, level=LEVEL, axes=(-2, -1))
    flat = np.concatenate([c.reshape(len(y), -1) for c in coeffs[1]], axis=1)
    return coeffs, flat


@lru_cache(maxsize=8)
def layout(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Keyed (bit index, sign) of every level-2 detail coefficient."""
    n = _details(np.zeros((1, h, w)))[1].shape[1]
    return assign_bits(n, size_generator(seed, h, w, "dwt-layout"))


@lru_cache(maxsize=8)
def _pattern(seed: int, message: tuple[int, ...], h: int, w: int) -> np.ndarray:
    import pywt

    bit, sign = layout(seed, h, w)
    coeffs, flat = _details(np.zeros((1, h, w)))
    values = (sign * antipodal(np.array(message))[bit])[None]
    shapes = [c.shape for c in coeffs[1]]
    parts, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape[1:]))
        parts.append(values[:, start : start + size].reshape(shape))
        start += size
    coeffs = (
        [np.zeros_like(c) for c in coeffs[:1]]
        + [tuple(parts)]
        + [tuple(np.zeros_like(c) for c in level) for level in coeffs[2:]]
    )
    p = pywt.waverec2(coeffs, WAVELET, mode=MODE, axes=(-2, -1))[0, :h, :w]
    p = p / np.sqrt(np.mean(p * p))
    p.flags.writeable = False
    return p


def pattern(seed: int, message: np.ndarray, h: int, w: int) -> np.ndarray:
    """The unit-RMS spatial pattern of the mark for ``h`` × ``w`` images: float64 [h, w]."""
    return _pattern(seed, tuple(int(b) for b in message), h, w)


def embed_luma(y: np.ndarray, seed: int, message: np.ndarray, strength: float) -> np.ndarray:
    """Luminance ``y`` [N, H, W] plus ``strength`` × the unit-RMS mark."""
    return y + strength * pattern(seed, message, *y.shape[-2:])[None]


def bit_scores(y: np.ndarray, seed: int) -> np.ndarray:
    """Per-image, per-bit normalised correlation z [N, 64] (about N(0, 1) when unmarked)."""
    bit, sign = layout(seed, *y.shape[-2:])
    return group_z(_details(y)[1], bit, sign)
