"""Helpers shared by the classical baselines: keyed layouts and per-bit correlation scores.

All arrays here are numpy float64 luminance planes ``y`` [N, H, W] in [0, 1] (the mean
of an image's channels); the 64-bit message is a {0, 1} integer array of length 64.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

#: Bits every baseline hides (the paper's "T-*" rows hide 64 bits).
N_BITS = 64

#: Smallest image side the baselines accept: below it some domains have fewer
#: coefficients than bits.
MIN_SIDE = 32


def size_generator(seed: int, h: int, w: int, purpose: str) -> torch.Generator:
    """A torch generator for one image size, from a key-derived ``seed``.

    The seed comes from :meth:`pixmark.keys.Key.seed` (HMAC of the owner's secret); the
    size and ``purpose`` are hashed in so that every size gets its own pattern.
    """
    digest = hashlib.sha256(f"{seed}|{h}x{w}|{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def antipodal(message: np.ndarray) -> np.ndarray:
    """{0, 1} bits -> {-1, +1} floats (bit 1 -> +1)."""
    return 2.0 * np.asarray(message, dtype=np.float64) - 1.0


def assign_bits(n: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spread 64 bits over ``n`` coefficients: a keyed bit index and a keyed ±1 sign each.

    Every bit gets ``n // 64`` or ``n // 64 + 1`` coefficients at keyed random positions.
    Returns ``(bit [n] int64 in [0, 64), sign [n] float64 in {-1, +1})``.
    """
    if n < N_BITS:
        raise ValueError(f"{n} coefficients cannot carry {N_BITS} bits")
    bit = torch.randperm(n, generator=g).numpy() % N_BITS
    sign = torch.randint(0, 2, (n,), generator=g).numpy().astype(np.float64) * 2.0 - 1.0
    return bit.astype(np.int64), sign


def group_z(r: np.ndarray, bit: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Per-bit normalised correlation of residuals ``r`` [N, n] with the keyed signs.

    ``z[i, b] = Σ_{k: bit k = b} r[i, k]·sign[k] / sqrt(Σ_{k: bit k = b} r[i, k]²)``.
    With signs independent of ``r`` (an unmarked image) each z is about N(0, 1); a
    mark adds ``+`` for bit 1 and ``-`` for bit 0. Returns [N, 64] float64 (0 where the
    residual is exactly 0).
    """
    onehot = np.zeros((len(bit), N_BITS))
    onehot[np.arange(len(bit)), bit] = 1.0
    num = r @ (onehot * sign[:, None])
    den = np.sqrt((r * r) @ onehot)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def neighbour_ratio(mag: np.ndarray, axes: tuple[int, int], mode: str) -> np.ndarray:
    """``mag / mean(8 neighbours) - 1`` over two ``axes`` (for multiplicative marks).

    The mean of the 8 neighbours (3 × 3 window without the centre, border ``mode`` of
    :func:`scipy.ndimage.uniform_filter`) is the local mean that a blind detector
    subtracts: it follows the image's own magnitude envelope, so what is left is the
    keyed ±β modulation plus noise. Magnitudes ``mag`` >= 0.
    """
    from scipy.ndimage import uniform_filter

    size = [1] * mag.ndim
    for a in axes:
        size[a] = 3
    box = uniform_filter(mag, size=size, mode=mode)
    neighbours = (9.0 * box - mag) / 8.0
    return mag / (neighbours + 1e-12) - 1.0
