"""DFT mark: multiplicative spread spectrum on the magnitudes of a mid-frequency ring.

The 2-D DFT of the luminance (:func:`numpy.fft.fft2`) is taken; the coefficients whose
frequency ``ρ = sqrt(fx² + fy²)`` (cycles per pixel) lies in ``RING`` form the carrier.
Each coefficient of one half-plane gets a keyed bit index and ±1 sign, and its
magnitude, together with its conjugate mirror's (so that the image stays real), is
scaled by ``1 + β · s_k · (2 w_b - 1)``; phases are kept (as in Ruanaidh et al. and the
magnitude-domain schemes the paper cites). By Parseval, β is set per image for an RMS
luminance change of ``strength``, capped at ``BETA_MAX``.

Blind detection: each ring magnitude divided by the mean of its 8 frequency neighbours
(the spectrum's smooth 1/f envelope), minus 1, correlated with the signs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pixmark.baselines._common import (
    antipodal,
    assign_bits,
    group_z,
    neighbour_ratio,
    size_generator,
)

#: Mid-frequency ring, in cycles per pixel (0.5 is the Nyquist frequency).
RING = (0.1, 0.3)
#: Largest relative change of a magnitude.
BETA_MAX = 0.5


@lru_cache(maxsize=8)
def layout(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(index, mirror index, bit, sign)`` of the marked coefficients (flat indices into
    the [h, w] spectrum; ``index`` in one half-plane, ``mirror`` its conjugate)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    rho = np.sqrt(fy * fy + fx * fx)
    half = (fy > 0) | ((fy == 0) & (fx > 0))
    sel = half & (rho >= RING[0]) & (rho <= RING[1])
    rows, cols = np.nonzero(sel)
    index = rows * w + cols
    mirror = ((-rows) % h) * w + ((-cols) % w)
    bit, sign = assign_bits(len(index), size_generator(seed, h, w, "dft-layout"))
    return index, mirror, bit, sign


def embed_luma(y: np.ndarray, seed: int, message: np.ndarray, strength: float) -> np.ndarray:
    """Mark luminance ``y`` [N, H, W]; RMS change ``strength`` (less where β is capped)."""
    n, h, w = y.shape
    index, mirror, bit, sign = layout(seed, h, w)
    spec = np.fft.fft2(y).reshape(n, h * w)
    ring = spec[:, index]
    energy = 2.0 * np.sum(np.abs(ring) ** 2, axis=1)  # the half-plane and its mirror
    beta = np.minimum(strength * h * w / np.sqrt(np.maximum(energy, 1e-20)), BETA_MAX)
    gain = 1.0 + beta[:, None] * (sign * antipodal(message)[bit])[None]
    spec[:, index] *= gain
    spec[:, mirror] *= gain
    return np.fft.ifft2(spec.reshape(n, h, w)).real


def bit_scores(y: np.ndarray, seed: int) -> np.ndarray:
    """Per-image, per-bit normalised correlation z [N, 64] (about N(0, 1) when unmarked)."""
    n, h, w = y.shape
    index, _, bit, sign = layout(seed, h, w)
    mag = np.abs(np.fft.fft2(y))
    r = neighbour_ratio(mag, axes=(1, 2), mode="wrap").reshape(n, h * w)[:, index]
    return group_z(r, bit, sign)
