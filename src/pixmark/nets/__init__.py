"""The model zoo: every network pixmark trains, protects, attacks or verifies.

One plain table maps an architecture name to its class. Every class takes explicit
keyword arguments and records them in ``model.config``, so a checkpoint can store
``{"arch": name, "kwargs": model.config}`` and rebuild the model with
``create(name, **kwargs)``.

Image-to-image networks map [N, C, H, W] in [0, 1] to the same shape for any H × W;
``patchgan`` is a discriminator and returns a logit map instead.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from pixmark.errors import PixmarkError
from pixmark.nets.ceilnet import CEILNet
from pixmark.nets.dncnn import DnCNN
from pixmark.nets.ffdnet import FFDNet, pretrained_ffdnet
from pixmark.nets.patchgan import PatchGAN
from pixmark.nets.red import RED
from pixmark.nets.resnet import ResNet9, ResNet16, ResNetGenerator
from pixmark.nets.unet import UNet
from pixmark.nets.vdsr import VDSR

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "ceilnet": CEILNet,
    "resnet9": ResNet9,
    "resnet16": ResNet16,
    "dncnn": DnCNN,
    "red": RED,
    "vdsr": VDSR,
    "ffdnet": FFDNet,
    "patchgan": PatchGAN,
}

IMAGE_TO_IMAGE: frozenset[str] = frozenset(ARCHITECTURES) - {"patchgan"}


def names() -> list[str]:
    """Architecture names accepted by ``create``, in table order."""
    return list(ARCHITECTURES)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with constructor keyword arguments ``kwargs``.

    Raises PixmarkError for an unknown name, an argument the architecture does not
    take, or a bad value (e.g. ``channels`` other than 1 or 3).
    """
    if name not in ARCHITECTURES:
        raise PixmarkError(f"unknown architecture {name!r}; choose from {', '.join(names())}")
    cls = ARCHITECTURES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in accepted:
            raise PixmarkError(
                f"architecture {name!r} has no argument {key!r}; "
                f"valid arguments: {', '.join(accepted)}"
            )
    if "channels" in kwargs and kwargs["channels"] not in (1, 3):
        raise PixmarkError(
            f"architecture {name!r}: channels={kwargs['channels']!r} is not supported; use 1 or 3"
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. width="64" reaching a torch layer
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise PixmarkError(
            f"architecture {name!r} rejected its arguments ({shown}): {exc}; "
            f"valid arguments: {', '.join(accepted)}"
        ) from exc


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements in ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHITECTURES",
    "IMAGE_TO_IMAGE",
    "CEILNet",
    "DnCNN",
    "FFDNet",
    "PatchGAN",
    "RED",
    "ResNet9",
    "ResNet16",
    "ResNetGenerator",
    "UNet",
    "VDSR",
    "count_parameters",
    "create",
    "names",
    "pretrained_ffdnet",
]
