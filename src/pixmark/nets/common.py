"""Small helpers shared by the networks: argument checks and pad-to-multiple.

Networks that downsample need an input whose height and width are multiples of the
total stride (and sometimes a minimum size so that normalisation layers see more than
one pixel). ``pad_to_multiple`` pads the bottom and right edges by replicating the
border, the network runs on the padded image, and ``crop`` cuts the result back.
Replicate padding works for any size, even 1×1, where reflect padding would fail.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pixmark.errors import PixmarkError


def check_channels(arch: str, name: str, value: object, allowed: tuple[int, ...] = (1, 3)) -> None:
    """Raise PixmarkError unless ``value`` is one of ``allowed`` channel counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise PixmarkError(f"{arch}: {name}={value!r} is not supported; use one of {choices}")


def check_positive(arch: str, name: str, value: object, minimum: int = 1) -> None:
    """Raise PixmarkError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PixmarkError(f"{arch}: {name} must be an integer >= {minimum}, got {value!r}")


def pad_to_multiple(x: Tensor, multiple: int, min_size: int = 1) -> Tensor:
    """Pad the bottom/right of an NCHW tensor so H and W are multiples of ``multiple``.

    Both sides are also raised to at least ``min_size`` (rounded up to the multiple).
    Padding replicates the border pixels. Returns ``x`` itself when nothing is needed.
    """
    h, w = x.shape[-2], x.shape[-1]
    target_h = max(h, min_size)
    target_w = max(w, min_size)
    target_h = -(-target_h // multiple) * multiple
    target_w = -(-target_w // multiple) * multiple
    if target_h == h and target_w == w:
        return x
    return F.pad(x, (0, target_w - w, 0, target_h - h), mode="replicate")


def crop(x: Tensor, h: int, w: int) -> Tensor:
    """Cut an NCHW tensor back to its top-left ``h`` × ``w`` pixels."""
    return x[..., :h, :w]
