"""DnCNN (Zhang et al. 2017): a plain convolutional stack that predicts the noise."""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive


class DnCNN(nn.Module):
    """Residual denoiser. Input and output in [0, 1], NCHW, any H × W.

    ``forward(x) = x - body(x)``: the body estimates the noise (residual learning).
    Layout as in the paper and KAIR: conv + ReLU, ``depth - 2`` × (conv + BN + ReLU),
    conv; all 3×3, zero padding, so the size is preserved without extra padding.

    Args:
        channels: image channels (1 or 3).
        width: feature channels (paper 64).
        depth: number of convolutional layers (paper 17 for known-σ denoising).
        bn: batch normalisation in the middle layers (paper: yes).
    """

    def __init__(
        self, channels: int = 3, width: int = 64, depth: int = 17, bn: bool = True
    ) -> None:
        super().__init__()
        check_channels("dncnn", "channels", channels)
        check_positive("dncnn", "width", width)
        check_positive("dncnn", "depth", depth, minimum=2)
        self.config = {"channels": channels, "width": width, "depth": depth, "bn": bool(bn)}
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return the denoised image ``x - body(x)``, same shape as ``x``."""
        return x - self.body(x)
