"""VDSR (Kim et al. 2016): very deep super-resolution with a global residual."""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive


class VDSR(nn.Module):
    """Very deep residual network. Input and output in [0, 1], NCHW, any H × W.

    Works on an image already upsampled (e.g. bicubic) to the target size and
    returns ``x + body(x)``. The body is ``depth`` 3×3 convolutions with ReLU between
    them and no normalisation, as in the paper.

    Args:
        channels: image channels (1 or 3; the paper used luminance only).
        width: feature channels (paper 64).
        depth: number of convolutional layers (paper 20).
    """

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 20) -> None:
        super().__init__()
        check_channels("vdsr", "channels", channels)
        check_positive("vdsr", "width", width)
        check_positive("vdsr", "depth", depth, minimum=2)
        self.config = {"channels": channels, "width": width, "depth": depth}
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + body(x)``, same shape as ``x``."""
        return x + self.body(x)
