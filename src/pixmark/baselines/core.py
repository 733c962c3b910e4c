"""The common interface of the classical baselines: embed, detect, BaselineMarked.

Every method hides the same keyed 64-bit message in the luminance (the mean of the
colour channels; the same change is added to every channel) and detects it blind, from
the suspect's images alone: per image and bit a normalised correlation ``z`` (about
N(0, 1) on unmarked images), pooled over the N images as ``Z_b = Σ_i z_ib / sqrt(N)``,
one bit per sign, a BER against the message and an exact binomial p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pixmark.baselines import dct, dft, dwt, spread_spectrum
from pixmark.baselines._common import MIN_SIDE, N_BITS
from pixmark.errors import PixmarkError
from pixmark.keys import Key, new_key
from pixmark.stats import Verdict, ber_p_value, decide

#: Method name -> module with ``embed_luma(y, seed, message, strength)`` and
#: ``bit_scores(y, seed)`` (numpy luminance [N, H, W]).
METHODS: dict[str, ModuleType] = {
    "ss": spread_spectrum,
    "dct": dct,
    "dft": dft,
    "dwt": dwt,
}

#: RMS luminance change in [0, 1] units: 0.01 is PSNR ≈ 40 dB, the learned scheme's
#: fidelity in the paper (39.98 dB on deraining).
DEFAULT_STRENGTH = 0.01
#: Strongest allowed mark (PSNR ≈ 20 dB: plainly visible).
MAX_STRENGTH = 0.1
#: Significance level of ``detect``: match iff p <= ALPHA.
ALPHA = 1e-3
#: Per-image success, as in the paper: NC of the ±1 bits > 0.95, i.e. BER < 0.025
#: (at most 1 wrong bit of 64).
SUCCESS_NC = 0.95


@dataclass(frozen=True)
class Mark:
    """What a method needs to embed or detect: a key-derived seed and the 64-bit message.

    ``seed`` is ``key.seed("baseline/<method>")`` (HMAC of the owner's secret), so a
    model that carries a Mark does not reveal the secret itself.
    """

    method: str
    seed: int
    message: tuple[int, ...]

    @property
    def bits(self) -> np.ndarray:
        return np.array(self.message, dtype=np.int64)


def keygen(owner: str, *, secret: str | None = None) -> Key:
    """A key for the baselines (scheme ``"baseline"``); any pixmark Key also works."""
    return new_key("baseline", owner, params={"bits": N_BITS, "methods": list(METHODS)},
                   secret=secret)  # fmt: skip


def message_bits(key: Key) -> Tensor:
    """The key's 64-bit message (int64 {0, 1}), the same for every method."""
    _check_key(key)
    return torch.randint(0, 2, (N_BITS,), generator=key.generator("baseline/message"))


def mark_of(key: Key, method: str) -> Mark:
    """The :class:`Mark` of ``key`` for ``method``."""
    _check_key(key)
    _check_method(method)
    message = tuple(int(b) for b in message_bits(key))
    return Mark(method, key.seed(f"baseline/{method}"), message)


# --------------------------------------------------------------------------- checks


def _check_key(key: Any) -> None:
    if not isinstance(key, Key):
        raise PixmarkError(
            f"key must be a pixmark Key (from pixmark.baselines.keygen), got {type(key).__name__}"
        )


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise PixmarkError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")
    return method


def _check_strength(strength: Any) -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise PixmarkError(f"strength must be a number, got {strength!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_STRENGTH):
        raise PixmarkError(
            f"strength must be in (0, {MAX_STRENGTH}] (RMS change in [0, 1] units; "
            f"{DEFAULT_STRENGTH} ≈ 40 dB), got {strength!r}"
        )
    return value


def _check_images(fn: str, images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise PixmarkError(
            f"{fn}: images must be a torch tensor [N, C, H, W] in [0, 1], got "
            f"{type(images).__name__}"
        )
    if images.dim() != 4:
        raise PixmarkError(
            f"{fn}: images must be [N, C, H, W] (4 dimensions), got shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if n == 0:
        raise PixmarkError(f"{fn}: images is an empty batch; pass at least one image")
    if c not in (1, 3):
        raise PixmarkError(f"{fn}: images must have 1 or 3 channels, got {c} (shape "
                           f"{tuple(images.shape)})")  # fmt: skip
    if min(h, w) < MIN_SIDE:
        raise PixmarkError(
            f"{fn}: images must be at least {MIN_SIDE} × {MIN_SIDE} px to carry {N_BITS} bits, "
            f"got {h} × {w}"
        )
    if not images.is_floating_point():
        raise PixmarkError(f"{fn}: images must be floating point in [0, 1], got {images.dtype}")
    images_ = images.detach()
    if not bool(torch.isfinite(images_).all()):
        raise PixmarkError(f"{fn}: images contain NaN or infinite values")
    lo, hi = float(images_.min()), float(images_.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise PixmarkError(
            f"{fn}: images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; rescale "
            "or clamp them first"
        )
    return images


# --------------------------------------------------------------------------- embed / detect


def _luma(images: Tensor) -> np.ndarray:
    return images.detach().to("cpu", torch.float64).mean(dim=1).numpy()


def embed_mark(images: Tensor, mark: Mark, strength: float) -> Tensor:
    """Embed ``mark`` (no input checks; see :func:`embed`)."""
    y = _luma(images)
    y2 = METHODS[mark.method].embed_luma(y, mark.seed, mark.bits, strength)
    delta = torch.from_numpy(y2 - y).to(images.device, images.dtype)
    return (images + delta[:, None]).clamp(0.0, 1.0)


def embed(
    images: Tensor, key: Key, method: str = "ss", strength: float = DEFAULT_STRENGTH
) -> Tensor:
    """Hide the key's 64-bit message in ``images`` with a classical ``method``.

    Args:
        images: [N, C, H, W] floats in [0, 1], C = 1 or 3, H and W >= 32.
        key: any pixmark Key (its secret seeds the carriers and the message).
        method: ``"ss"`` (spatial spread spectrum, Eq. 3), ``"dct"``, ``"dft"`` or ``"dwt"``.
        strength: RMS luminance change, in (0, 0.1]; 0.01 gives PSNR ≈ 40 dB (the
            multiplicative ``dct`` and ``dft`` marks may stay below it on flat images).

    Returns:
        The marked images, same shape, dtype and device, clipped to [0, 1].
    """
    images = _check_images("embed", images)
    return embed_mark(images, mark_of(key, _check_method(method)), _check_strength(strength))


def bit_scores(images: Tensor, key: Key, method: str = "ss") -> Tensor:
    """Per-image, per-bit normalised correlations z [N, 64] (float64; about N(0, 1) on
    unmarked images, ``+`` for a hidden 1 and ``-`` for a hidden 0 on marked ones)."""
    images = _check_images("bit_scores", images)
    mark = mark_of(key, _check_method(method))
    return torch.from_numpy(METHODS[method].bit_scores(_luma(images), mark.seed))


def ber_threshold(alpha: float = ALPHA, n_bits: int = N_BITS) -> tuple[int, float]:
    """Most bit errors with p <= ``alpha`` and the BER threshold between pass and fail:
    ``(e_max, (e_max + 0.5) / n_bits)``. For 64 bits and alpha = 1e-3, e_max = 19 (p = 7.8e-4)."""
    e_max = max((e for e in range(n_bits + 1) if ber_p_value(e, n_bits) <= alpha), default=-1)
    return e_max, (e_max + 0.5) / n_bits


def detect(images: Tensor, key: Key, method: str = "ss", alpha: float = ALPHA) -> Verdict:
    """Do ``images`` (e.g. a suspect's outputs) carry the key's mark of ``method``?

    Blind: only the images and the key are used. Per image and bit a normalised
    correlation z; pooled over the N images, ``Z_b = Σ_i z_ib / sqrt(N)``; bit b = [Z_b > 0];
    BER against the key's message. Under the null (images independent of the key) the
    64 message bits are fair coins independent of what is extracted, so the p-value
    ``P[Binomial(64, 1/2) >= 64 - errors]`` (:func:`pixmark.stats.ber_p_value`) is exact.
    Match iff p <= ``alpha``.

    ``details`` also holds per-image BERs and the paper's per-image success rate (NC of
    the ±1 bits > 0.95) and ``mark_z``, the pooled correlation with the message
    (``Σ_b Z_b (2 w_b - 1) / 8``, about N(0, 1) when unmarked if residuals were
    independent; shown for strength, not used for the decision).
    """
    scores = bit_scores(images, key, method).numpy()
    message = mark_of(key, method).bits
    n = len(scores)
    pooled = scores.sum(axis=0) / math.sqrt(n)
    errors = int(np.sum((pooled > 0).astype(np.int64) != message))
    p_value = ber_p_value(errors, N_BITS)
    per_image = np.mean((scores > 0).astype(np.int64) != message[None], axis=1)
    success = (1.0 - 2.0 * per_image) > SUCCESS_NC
    e_max, threshold = ber_threshold(alpha)
    signs = 2.0 * message - 1.0
    details = {
        "statistic_name": "BER of the 64 pooled bits",
        "method": method,
        "alpha": alpha,
        "n_bits": N_BITS,
        "errors": errors,
        "max_errors_for_match": e_max,
        "per_image_ber": [round(float(b), 4) for b in per_image],
        "mean_per_image_ber": round(float(per_image.mean()), 4),
        "success_rate": round(float(success.mean()), 4),
        "success_rule": "per image: NC of the ±1 bits > 0.95 (at most 1 wrong bit)",
        "mark_z": round(float(np.sum(pooled * signs) / math.sqrt(N_BITS)), 3),
    }
    return Verdict(
        scheme=f"baseline-{method}",
        statistic=errors / N_BITS,
        threshold=threshold,
        p_value=p_value,
        decision=decide(p_value, alpha),
        n_queries=n,
        details=details,
    )


# --------------------------------------------------------------------------- deployable model


class BaselineMarked(nn.Module):
    """The deployed model of a baseline: M followed by the fixed embedding of a mark.

    ``forward(x) = embed(M(x).clamp(0, 1))``: deterministic per image (the additive
    ``ss`` and ``dwt`` marks add the same pattern to every output of a given size; the
    multiplicative ``dct`` and ``dft`` marks scale the output's own coefficients). Input
    and output [N, C, H, W] in [0, 1], H and W >= 32. The embedding runs in numpy /
    scipy / PyWavelets on the CPU, so this module has no gradient through the mark and
    is **not** TorchScript- or ONNX-exportable (serve it as a Python module).

    The mark's seed and message are buffers (``mark_seed``, ``message``), saved with
    the model by :func:`pixmark.checkpoint.save_model`; the owner's secret is not.
    """

    def __init__(
        self,
        model: nn.Module,
        key: Key | Mark,
        method: str = "ss",
        strength: float = DEFAULT_STRENGTH,
    ) -> None:
        super().__init__()
        mark = key if isinstance(key, Mark) else mark_of(key, _check_method(method))
        _check_method(mark.method)
        self.model = model
        self.method = mark.method
        self.strength = _check_strength(strength)
        self.register_buffer("mark_seed", torch.tensor([mark.seed], dtype=torch.int64))
        self.register_buffer("message", torch.tensor(mark.message, dtype=torch.int64))

    @property
    def mark(self) -> Mark:
        return Mark(self.method, int(self.mark_seed[0]), tuple(int(b) for b in self.message))

    def embed(self, b: Tensor) -> Tensor:
        """Mark images ``b`` [N, C, H, W] in [0, 1] (the embedding alone, no M)."""
        return embed_mark(_check_images("BaselineMarked", b.clamp(0.0, 1.0)), self.mark,
                          self.strength)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.model(x))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, strength={self.strength}"
