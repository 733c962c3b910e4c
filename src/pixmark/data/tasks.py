"""The image-to-image tasks pixmark trains host models for, as one plain table.

A task says how to make a network input from a clean image (``degrade``) and what the
network should output (``target``). For every task except ``xray`` the target is the
clean image itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pixmark.data.degrade import (
    add_rain,
    bicubic_down_up,
    clahe,
    gaussian_noise,
    low_dose_xray,
    random_blur,
    random_jpeg,
)
from pixmark.errors import PixmarkError


@dataclass(frozen=True)
class TaskSpec:
    """One image-to-image task.

    ``degrade(clean [N, C, H, W], generator) -> input [N, C, H, W]`` and
    ``target(clean [N, C, H, W]) -> [N, C, H, W]``, all in [0, 1]. ``degrade`` draws its
    randomness only from ``generator``. ``target`` is applied to whole images before
    cropping (``PairSampler`` does this), because CLAHE needs the image's context.
    ``source`` is the default image source for ``pixmark.data.images``.
    """

    name: str
    description: str
    default_channels: int
    source: str
    degrade: Callable[[Tensor, torch.Generator], Tensor]
    target: Callable[[Tensor], Tensor]


def identity(clean: Tensor) -> Tensor:
    """The target of restoration tasks: the clean image itself."""
    return clean


def _sr2(clean: Tensor, generator: torch.Generator) -> Tensor:
    return bicubic_down_up(clean, 2)


def _sr4(clean: Tensor, generator: torch.Generator) -> Tensor:
    return bicubic_down_up(clean, 4)


TASKS: dict[str, TaskSpec] = {
    "denoise": TaskSpec(
        name="denoise",
        description=(
            "Gaussian denoising: input = clean + white Gaussian noise (sigma 25/255), clipped."
        ),
        default_channels=1,
        source="builtin",
        degrade=gaussian_noise,
        target=identity,
    ),
    "derain": TaskSpec(
        name="derain",
        description=(
            "Deraining: input = clean with two layers of synthetic rain streaks (random "
            "direction, density, length, thickness, brightness; motion-blurred seeds) "
            "screen-blended on top."
        ),
        default_channels=3,
        source="builtin",
        degrade=add_rain,
        target=identity,
    ),
    "sr2": TaskSpec(
        name="sr2",
        description=(
            "Super-resolution x2, VDSR convention: input = bicubic down x2, then "
            "bicubic up to the same size."
        ),
        default_channels=1,
        source="builtin",
        degrade=_sr2,
        target=identity,
    ),
    "sr4": TaskSpec(
        name="sr4",
        description=(
            "Super-resolution x4, VDSR convention: input = bicubic down x4, then "
            "bicubic up to the same size."
        ),
        default_channels=1,
        source="builtin",
        degrade=_sr4,
        target=identity,
    ),
    "deblur": TaskSpec(
        name="deblur",
        description=(
            "Deblurring: input = clean blurred by a random Gaussian (sigma 0.8-3 px) or "
            "linear motion kernel (5-17 px), plus noise of sigma 0.5-2/255."
        ),
        default_channels=3,
        source="builtin",
        degrade=random_blur,
        target=identity,
    ),
    "jpeg": TaskSpec(
        name="jpeg",
        description=(
            "JPEG artifact removal: input = clean re-encoded as JPEG at quality 10-30 (Pillow)."
        ),
        default_channels=1,
        source="builtin",
        degrade=random_jpeg,
        target=identity,
    ),
    "xray": TaskSpec(
        name="xray",
        description=(
            "Chest X-ray enhancement, standing in for the paper's bone suppression (no "
            "bone-suppressed targets exist offline): input = real radiograph with simulated "
            "low-dose quantum (Poisson) noise and reduced contrast; target = the clean "
            "radiograph with CLAHE contrast enhancement."
        ),
        default_channels=1,
        source="builtin:xray",
        degrade=low_dose_xray,
        target=clahe,
    ),
}


def task(name: str) -> TaskSpec:
    """The task called ``name`` (see ``TASKS``)."""
    if name not in TASKS:
        raise PixmarkError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
