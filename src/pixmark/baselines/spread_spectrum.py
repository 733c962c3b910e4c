"""Additive spatial spread spectrum (Zhang et al. 2020, Eq. 3): ``I' = I + α·C_w``.

Each of the 64 bits has its own keyed carrier: an image-sized pseudo-random ±1 pattern
``C_i`` (the same on every colour channel). The mark is the sum of the carriers with
the bits' signs, ``W = Σ_i (2 w_i - 1)·C_i``, scaled to unit RMS, so that
``I' = I + strength·W`` changes every image by RMS ``strength`` (PSNR ≈ -20·log10(strength)
dB before clipping to [0, 1]). Antipodal carriers are Eq. 3's ``C_0 = -C_1``.

The mark does not depend on the image: the same W (for a given size) is added to every
output. That is exactly the "unified δ" of the paper's pre-analysis (Eq. 2), which a
surrogate can only reproduce if it can place a fixed pattern at fixed pixel positions.

Blind detection: high-pass the luminance (``y - 3×3 box mean``: removes most of the
image, keeps the white carrier) and correlate with each carrier.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from pixmark.baselines._common import N_BITS, antipodal, size_generator


@lru_cache(maxsize=8)
def carriers(seed: int, h: int, w: int) -> np.ndarray:
    """The 64 keyed ±1 carriers for ``h`` × ``w`` images: int8 [64, h, w]."""
    g = size_generator(seed, h, w, "ss-carriers")
    c = torch.randint(0, 2, (N_BITS, h, w), generator=g, dtype=torch.int8) * 2 - 1
    c = c.numpy()
    c.flags.writeable = False
    return c


def pattern(seed: int, message: np.ndarray, h: int, w: int) -> np.ndarray:
    """The mark W = Σ_i (2 w_i - 1)·C_i, scaled to unit RMS: float64 [h, w]."""
    c = carriers(seed, h, w)
    p = np.tensordot(antipodal(message), c.astype(np.float64), axes=1)
    return p / np.sqrt(np.mean(p * p))


def embed_luma(y: np.ndarray, seed: int, message: np.ndarray, strength: float) -> np.ndarray:
    """Luminance ``y`` [N, H, W] plus ``strength`` × the unit-RMS mark."""
    return y + strength * pattern(seed, message, *y.shape[-2:])[None]


def bit_scores(y: np.ndarray, seed: int) -> np.ndarray:
    """Per-image, per-bit normalised correlation z [N, 64] of the high-passed luminance
    with each carrier (about N(0, 1) on unmarked images)."""
    from scipy.ndimage import uniform_filter

    r = y - uniform_filter(y, size=(1, 3, 3), mode="reflect")
    c = carriers(seed, *y.shape[-2:]).astype(np.float64)
    num = np.einsum("nhw,khw->nk", r, c)
    den = np.sqrt(np.sum(r * r, axis=(1, 2)))[:, None]
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
