"""Watermark-removal attacks on a black box's outputs: post-process every answer.

The attacker serves a stolen model (or resells its outputs) but passes every answer
through a cleaning step first. Both attacks only query the suspect (a
:data:`~pixmark.schemes.base.Query`) on the attacker's own images; neither sees a key.
Each returns a :class:`PostProcessed`, itself a ``Query``, so
``pixmark.verify(attacked, key)`` checks the attacked service directly; its ``stage``
(an ``nn.Module``) appended to a local model gives a model to save
(``pixmark.checkpoint.Chain(model, attacked.stage)``, what ``pixmark attack`` writes).

=========================  ==========  =============================================
function                   strength    range
=========================  ==========  =============================================
``estimate_and_subtract``  scale       [0, 2]: multiple of the estimated pattern
                                       subtracted (1 = the estimate itself, 0 = none)
``removal_network``        sigma       (0, 0.2]: noise level (intensity units of the
                                       [0, 1] range) the purifier learns to remove
=========================  ==========  =============================================

    from pixmark.attacks.removal import estimate_and_subtract
    cleaned = estimate_and_subtract(as_query(stolen), my_images, strength=1.0)
    pixmark.verify(cleaned, key)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.attacks.image import _blur, _check_images
from pixmark.errors import PixmarkError
from pixmark.schemes.base import Query, as_query, model_device
from pixmark.train import Device, fit

SMOOTHERS = ("blur", "median")
"""How ``estimate_and_subtract`` separates an output's fine residual from its content."""


# --------------------------------------------------------------------------- shared


class PostProcessed:
    """A suspect whose every answer goes through ``stage``: a :data:`Query` itself.

    ``query`` is the suspect (images [N, C, H, W] in [0, 1] -> outputs of the same shape);
    ``stage`` an ``nn.Module`` mapping those outputs to cleaned outputs in [0, 1]. Calling
    the object returns ``stage(query(images))`` clamped to [0, 1].
    """

    def __init__(self, query: Query, stage: nn.Module, name: str) -> None:
        self.query = query
        self.stage = stage.eval()
        self.name = name
        self.channels = getattr(query, "channels", None)
        self._stage = as_query(self.stage, name=name)

    def __call__(self, images: Tensor) -> Tensor:
        return self._stage(self.query(images).float().clamp(0, 1))

    def behind(self, victim: nn.Module) -> nn.Module:
        """``victim`` followed by this stage, as one model (what ``pixmark attack`` saves);
        the stage, trained on the CPU, is moved to where the victim runs."""
        from pixmark.checkpoint import Chain

        return Chain(victim, self.stage.to(model_device(victim))).eval()

    def __repr__(self) -> str:
        return f"PostProcessed({self.name})"


def _check_query(fn: str, query: object) -> Query:
    if isinstance(query, nn.Module):
        return as_query(query, name="suspect")
    if not callable(query):
        raise PixmarkError(
            f"{fn}: query must be a model or a function images -> outputs (a pixmark Query), "
            f"got a {type(query).__name__}."
        )
    return query


def _answers(fn: str, query: Query, images: Tensor, batch_size: int) -> Tensor:
    outs = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        y = query(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise PixmarkError(
                f"{fn}: the suspect returned {shape} for {tuple(x.shape)} images; this attack "
                "needs outputs of the input's shape."
            )
        outs.append(y.detach().float().cpu().clamp(0, 1))
    return torch.cat(outs)


# --------------------------------------------------------------------------- estimation


def median3(images: Tensor) -> Tensor:
    """3 x 3 median filter of [N, C, H, W] images, edges reflected (replicated if < 2 px)."""
    mode = "reflect" if min(images.shape[-2:]) > 1 else "replicate"
    padded = F.pad(images, (1, 1, 1, 1), mode=mode)
    n, c, h, w = images.shape
    patches = F.unfold(padded.reshape(n * c, 1, h + 2, w + 2), kernel_size=3)
    return patches.median(dim=1).values.reshape(n, c, h, w)


def estimate_pattern(
    query: Query | nn.Module,
    images: Tensor,
    *,
    smoother: str = "blur",
    sigma: float = 2.0,
    batch_size: int = 16,
) -> Tensor:
    """The pattern common to the suspect's answers: mean over images of (answer - smooth).

    ``images`` [N, C, H, W] in [0, 1] are sent to the suspect; each answer's fine residual
    (answer minus its ``smoother``: ``"blur"``, a Gaussian of ``sigma`` px, or
    ``"median"``, a 3 x 3 median) is averaged over the N answers. Image content differs
    from answer to answer and averages out (as 1 / sqrt(N)); a fixed additive watermark
    does not. A wider blur keeps more of the pattern's coarse part in the estimate but
    lets more image content through (on 64 px crops of natural images sigma 2-3 px and
    64-256 images remove ~85-95 % of a ±0.02 pixel-wise pattern's energy).
    Returns [1, C, H, W] (float32, CPU), in intensity units, roughly zero-mean.
    """
    fn = "estimate_pattern"
    query = _check_query(fn, query)
    images = _check_images(fn, images)
    if smoother not in SMOOTHERS:
        raise PixmarkError(
            f"{fn}: smoother must be one of {', '.join(SMOOTHERS)}, got {smoother!r}."
        )
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 < sigma < 100:
        raise PixmarkError(
            f"{fn}: sigma must be a blur width in pixels in (0, 100), got {sigma!r}."
        )
    answers = _answers(fn, query, images.float(), batch_size)
    smooth = median3(answers) if smoother == "median" else _blur(answers, float(sigma))
    return (answers - smooth).mean(dim=0, keepdim=True)


class SubtractPattern(nn.Module):
    """``x - pattern`` clamped to [0, 1]; the pattern is resized (bilinear) to other sizes.

    ``pattern`` is [1, C, H, W] in intensity units, already scaled by the attack's
    strength. Built from ``config`` (``shape``, ``channels``) by the checkpoint loader;
    the pattern itself is a buffer, saved with the weights.
    """

    def __init__(self, shape: list[int] | tuple[int, ...], channels: int | None = None) -> None:
        super().__init__()
        shape = [int(s) for s in shape]
        if len(shape) != 4 or shape[0] != 1:
            raise PixmarkError(f"a subtracted pattern must be [1, C, H, W], got {shape}")
        self.config = {"shape": shape, "channels": int(channels or shape[1])}
        self.register_buffer("pattern", torch.zeros(shape))

    def forward(self, x: Tensor) -> Tensor:
        pattern = self.pattern
        if pattern.shape[-2:] != x.shape[-2:]:
            pattern = F.interpolate(
                pattern, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return (x - pattern.to(x)).clamp(0.0, 1.0)


def estimate_and_subtract(
    query: Query | nn.Module,
    images: Tensor,
    *,
    strength: float = 1.0,
    smoother: str = "blur",
    sigma: float = 2.0,
    batch_size: int = 16,
) -> PostProcessed:
    """Averaging attack: estimate a fixed additive residual and subtract it from every answer.

    Models an attacker who suspects the outputs carry the same faint pattern (an additive
    watermark residual): they query the suspect on their own ``images`` ([N, C, H, W] in
    [0, 1]; more images give a cleaner estimate), estimate the pattern with
    :func:`estimate_pattern` (``smoother``, ``sigma``), and serve
    ``clamp(answer - strength * pattern, 0, 1)``.

    strength: in [0, 2]; the multiple of the estimate subtracted. 1 removes the estimate,
    values above 1 over-subtract (useful when the smoother keeps part of the pattern), 0
    leaves every answer unchanged. Answers of another size than ``images`` get the pattern
    resized bilinearly (as an embedder that resizes its logo would).

    Returns a :class:`PostProcessed` query whose ``stage`` is a :class:`SubtractPattern`.
    """
    fn = "estimate_and_subtract"
    if (
        isinstance(strength, bool)
        or not isinstance(strength, numbers.Real)
        or not 0 <= strength <= 2
    ):
        raise PixmarkError(
            f"{fn}: strength must be a multiple of the estimated pattern in [0, 2], "
            f"got {strength!r}."
        )
    query = _check_query(fn, query)
    pattern = estimate_pattern(query, images, smoother=smoother, sigma=sigma, batch_size=batch_size)
    stage = SubtractPattern(pattern.shape, channels=pattern.shape[1])
    with torch.no_grad():
        stage.pattern.copy_(float(strength) * pattern)
    return PostProcessed(query, stage, f"{fn}(strength={float(strength):g})")


# --------------------------------------------------------------------------- purifier


class PurifierPairs:
    """Training pairs for the purifier: (clean crop + N(0, sigma²), clean crop).

    A fraction ``fidelity`` of every batch are instead (M(x), M(x)) pairs: the suspect's
    answers on crops ``x`` of ``inputs`` (default ``images``), to be kept as they are.
    Crops of ``size`` px, turned by a random multiple of 90°; ``batch``, ``state_dict``
    and ``load_state_dict`` as ``pixmark.train.fit`` needs, so training resumes like
    every other.
    """

    def __init__(
        self,
        images: Tensor,
        sigma: float,
        *,
        size: int = 64,
        query: Query | None = None,
        inputs: Tensor | None = None,
        fidelity: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.images = images.float()
        self.inputs = self.images if inputs is None else inputs.float()
        self.sigma = float(sigma)
        self.size = min(size, *images.shape[-2:], *self.inputs.shape[-2:])
        self.query = query
        self.fidelity = float(fidelity)
        self.generator = torch.Generator().manual_seed(seed)

    def _crops(self, images: Tensor, n: int) -> Tensor:
        g, s = self.generator, self.size
        h, w = images.shape[-2:]
        crops = []
        for i in torch.randint(len(images), (n,), generator=g).tolist():
            top = int(torch.randint(h - s + 1, (1,), generator=g))
            left = int(torch.randint(w - s + 1, (1,), generator=g))
            crop = images[i, :, top : top + s, left : left + s]
            turns = int(torch.randint(4, (1,), generator=g))
            crops.append(torch.rot90(crop, turns, dims=(1, 2)))
        return torch.stack(crops)

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        kept = round(self.fidelity * n) if self.query is not None else 0
        clean = self._crops(self.images, n - kept)
        noise = torch.randn(clean.shape, generator=self.generator)
        x, y = (clean + self.sigma * noise).clamp(0, 1), clean
        if kept:
            with torch.no_grad():
                stolen = self.query(self._crops(self.inputs, kept)).float().cpu().clamp(0, 1)
            x, y = torch.cat([x, stolen]), torch.cat([y, stolen])
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def removal_network(
    query: Query | nn.Module,
    images: Tensor,
    *,
    strength: float = 0.03,
    steps: int = 200,
    inputs: Tensor | None = None,
    arch: str = "unet",
    width: int = 16,
    fidelity: float = 0.0,
    size: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    device: str | Device = "cpu",
    seed: int = 0,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> PostProcessed:
    """A learned purifier g trained to remove faint noise; serve g(answer) for every answer.

    Models an attacker who never saw the watermark: they train a small denoiser
    (``arch``: a surrogate architecture of :mod:`pixmark.attacks.surrogate`, ``width``)
    on random ``size`` px crops of their own clean ``images`` ([N, C, H, W] in [0, 1],
    at least ``size`` px, or smaller crops are used) with white Gaussian noise of standard
    deviation ``strength`` added, hoping the mark goes with the noise. With ``fidelity``
    in [0, 1) that fraction of each batch instead teaches g to keep the suspect's answers
    unchanged (g(M(x)) ~ M(x)) on crops x of ``inputs`` (the attacker's inputs of the
    suspect's task, [N, C, H, W] in [0, 1]; default ``images``). Training is
    ``pixmark.train.fit`` (Adam ``lr``, cosine schedule, L2) for ``steps`` batches of
    ``batch_size``.

    strength: sigma in (0, 0.2], intensity units of the [0, 1] range; higher removes more
    (and blurs more).

    Returns a :class:`PostProcessed` query whose ``stage`` is g (CPU, eval mode).
    """
    from pixmark.attacks.surrogate import ARCHS, create_surrogate

    fn = "removal_network"
    if (
        isinstance(strength, bool)
        or not isinstance(strength, numbers.Real)
        or not 0 < strength <= 0.2
    ):
        raise PixmarkError(
            f"{fn}: strength must be a noise sigma in (0, 0.2] (intensity units), got {strength!r}."
        )
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise PixmarkError(f"{fn}: steps must be an integer >= 1, got {steps!r}.")
    if (
        isinstance(fidelity, bool)
        or not isinstance(fidelity, numbers.Real)
        or not 0 <= fidelity < 1
    ):
        raise PixmarkError(f"{fn}: fidelity must be a batch fraction in [0, 1), got {fidelity!r}.")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise PixmarkError(f"{fn}: lr must be a finite learning rate > 0, got {lr!r}.")
    if arch not in ARCHS:
        raise PixmarkError(f"{fn}: arch must be one of {', '.join(ARCHS)}, got {arch!r}.")
    query = _check_query(fn, query)
    images = _check_images(fn, images)
    if min(images.shape[-2:]) < 8:
        raise PixmarkError(f"{fn}: images must be at least 8 px, got {tuple(images.shape)}.")
    if inputs is not None:
        inputs = _check_images(fn, inputs).detach().cpu()
    source = PurifierPairs(
        images.detach().cpu(),
        float(strength),
        size=size,
        query=query,
        inputs=inputs,
        fidelity=fidelity,
        seed=seed,
    )
    torch.manual_seed(seed)
    purifier = create_surrogate(arch, int(images.shape[1]), width)
    fit(
        purifier,
        source,
        steps=int(steps),
        batch_size=batch_size,
        lr=float(lr),
        loss="l2",
        device=device if isinstance(device, Device) else Device(device),
        seed=seed,
        description=f"purifier (sigma {float(strength):g})",
        progress=progress,
        on_step=on_step,
    )
    return PostProcessed(query, purifier.cpu().eval(), f"{fn}(strength={float(strength):g})")


# --------------------------------------------------------------------------- registry

REMOVAL_ATTACKS: dict[str, Callable[..., PostProcessed]] = {
    "estimate_and_subtract": estimate_and_subtract,
    "removal_network": removal_network,
}
"""Name -> attack; every function is ``f(query, images, *, strength=..., **options)``."""


__all__ = [
    "REMOVAL_ATTACKS",
    "SMOOTHERS",
    "PostProcessed",
    "PurifierPairs",
    "SubtractPattern",
    "estimate_and_subtract",
    "estimate_pattern",
    "median3",
    "removal_network",
]
