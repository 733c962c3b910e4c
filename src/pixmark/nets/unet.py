"""U-Net (Ronneberger et al. 2015) for image-to-image tasks.

Used as a host model, as a surrogate, and as the embedding network H of the
``output`` scheme (Zhang et al. 2020), which feeds it the cover image and the logo
stacked channel-wise (``in_channels=6, channels=3``) and ends in a Sigmoid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.nets.common import check_channels, check_positive, crop, pad_to_multiple

OUTPUTS = ("residual", "linear", "sigmoid")


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections. Input and output in [0, 1], NCHW.

    Each of ``depth`` levels halves the resolution (max-pool) and doubles the width,
    capped at 8 × ``width``; the decoder upsamples with 2×2 transposed convolutions and
    concatenates the encoder features of the same level. Any H × W works: the input is
    padded to a multiple of 2**depth and the output cropped back.

    Args:
        channels: output channels (1 or 3); also the input channels unless
            ``in_channels`` is given.
        width: channels of the first level (paper 64; default 32 for CPU).
        depth: number of 2× downsamplings (paper 4).
        in_channels: input channels when they differ from ``channels``, e.g. 6 for a
            cover ⊕ logo input. With ``out="residual"`` the first ``channels`` input
            channels are added to the network's output.
        out: "residual" (x[:, :channels] + body(x)), "linear" (body(x)) or "sigmoid"
            (sigmoid(body(x)), as in Zhang's embedder H).
    """

    def __init__(
        self,
        channels: int = 3,
        width: int = 32,
        depth: int = 4,
        in_channels: int | None = None,
        out: str = "residual",
    ) -> None:
        super().__init__()
        check_channels("unet", "channels", channels)
        check_positive("unet", "width", width)
        check_positive("unet", "depth", depth)
        if in_channels is not None:
            check_positive("unet", "in_channels", in_channels)
        if out not in OUTPUTS:
            raise PixmarkError(f"unet: unknown out={out!r}; choose from {', '.join(OUTPUTS)}")
        c_in = channels if in_channels is None else in_channels
        if out == "residual" and c_in < channels:
            raise PixmarkError(
                f"unet: out='residual' needs in_channels >= channels ({channels}), "
                f"got {c_in}; use out='linear' or more input channels"
            )
        self.config = {
            "channels": channels,
            "width": width,
            "depth": depth,
            "in_channels": in_channels,
            "out": out,
        }
        self.channels = channels
        self.depth = depth
        self.out = out

        widths = [width * min(2**i, 8) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        prev = c_in
        for w in widths[:-1]:
            self.down.append(_double_conv(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(widths[-2], widths[-1])
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upsample.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.up.append(_double_conv(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Map [N, in_channels, H, W] in [0, 1] to [N, channels, H, W]."""
        h, w = x.shape[-2], x.shape[-1]
        y = pad_to_multiple(x, 2**self.depth)
        skips = []
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = self.pool(y)
        y = self.bottom(y)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips), strict=True):
            y = block(torch.cat([upsample(y), skip], dim=1))
        y = crop(self.head(y), h, w)
        if self.out == "residual":
            return x[:, : self.channels] + y
        if self.out == "sigmoid":
            return torch.sigmoid(y)
        return y
