"""PatchGAN discriminator (Isola et al. 2017, pix2pix).

Each output logit judges one overlapping patch of the input as real or fake. Zhang
et al. 2020 train it LSGAN-style (MSE towards 1 for real, 0 for fake).
"""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive, pad_to_multiple


class PatchGAN(nn.Module):
    """Discriminator returning a logit map [N, 1, h, w], not an image.

    Layout as in pix2pix: ``n_layers`` 4×4 stride-2 convolutions (the first without
    normalisation) with LeakyReLU(0.2), one 4×4 stride-1 convolution, and a 4×4
    stride-1 convolution to one channel; widths double per layer, capped at 8 ×
    ``width``; BatchNorm as in pix2pix. With ``n_layers=3`` each logit sees a
    70 × 70 px patch and h, w ≈ H/8 − 2.

    Inputs smaller than ``4 * 2**n_layers`` px on a side (32 px for ``n_layers=3``)
    are padded (replicate, bottom/right) to that size, so any image of at least 1 px
    is accepted; the logit map is not cropped.

    Args:
        channels: input image channels (1 or 3).
        width: channels of the first layer (paper 64).
        n_layers: stride-2 blocks (paper 3).
    """

    def __init__(self, channels: int = 3, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        check_channels("patchgan", "channels", channels)
        check_positive("patchgan", "width", width)
        check_positive("patchgan", "n_layers", n_layers)
        self.config = {"channels": channels, "width": width, "n_layers": n_layers}
        self.min_size = 4 * 2**n_layers
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        prev = width
        for i in range(1, n_layers + 1):
            cur = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(prev, cur, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cur),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            prev = cur
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map images [N, channels, H, W] in [0, 1] to real/fake logits [N, 1, h, w]."""
        return self.body(pad_to_multiple(x, 1, min_size=self.min_size))
