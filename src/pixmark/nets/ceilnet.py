"""CEILNet-style encoder / dilated residual blocks / decoder (Fan et al. 2017).

This is the layout of the watermark extractor R in Zhang et al.'s public code, which
pixmark also uses as the "CNet" surrogate: two 3×3 convolutions, a stride-2 3×3
convolution, residual blocks with dilations 2,2,2,2,4,4,4,4,1 and instance
normalisation, a 4×4 stride-2 transposed convolution, then a 3×3 and a 1×1 convolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive, crop, pad_to_multiple


def block_dilations(n_blocks: int) -> list[int]:
    """Dilation of each residual block: first half 2, second half 4, the last one 1.

    For 9 blocks this is the authors' 2,2,2,2,4,4,4,4,1.
    """
    rest = n_blocks - 1
    return [2 if i < rest // 2 else 4 for i in range(rest)] + [1]


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.ReLU(inplace=True),
    )


class DilatedResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))) with dilated 3×3 convolutions (size preserved)."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation),
            nn.InstanceNorm2d(width, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CEILNet(nn.Module):
    """Extractor / "CNet" surrogate. Input in [0, 1], NCHW; linear output, same H × W.

    Any H × W works: the input is padded to an even size (at least 4 px, so instance
    normalisation at half resolution sees more than one pixel) and the output cropped.

    Args:
        channels: image channels (1 or 3); default for ``in_channels``/``out_channels``.
        width: feature channels everywhere (authors' code 128; default 64 for CPU).
        n_blocks: dilated residual blocks (authors 9).
        in_channels: input channels if different from ``channels``.
        out_channels: output channels if different from ``channels`` (e.g. a 1-channel
            logo extracted from colour images).
    """

    def __init__(
        self,
        channels: int = 3,
        width: int = 64,
        n_blocks: int = 9,
        in_channels: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_channels("ceilnet", "channels", channels)
        check_positive("ceilnet", "width", width)
        check_positive("ceilnet", "n_blocks", n_blocks)
        if in_channels is not None:
            check_positive("ceilnet", "in_channels", in_channels)
        if out_channels is not None:
            check_positive("ceilnet", "out_channels", out_channels)
        self.config = {
            "channels": channels,
            "width": width,
            "n_blocks": n_blocks,
            "in_channels": in_channels,
            "out_channels": out_channels,
        }
        c_in = channels if in_channels is None else in_channels
        c_out = channels if out_channels is None else out_channels
        self.encoder = nn.Sequential(
            _conv(c_in, width), _conv(width, width), _conv(width, width, stride=2)
        )
        self.blocks = nn.Sequential(
            *[DilatedResidualBlock(width, d) for d in block_dilations(n_blocks)]
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
            _conv(width, width),
            nn.Conv2d(width, c_out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map [N, in_channels, H, W] to [N, out_channels, H, W] (no output activation)."""
        h, w = x.shape[-2], x.shape[-1]
        y = pad_to_multiple(x, 2, min_size=4)
        return crop(self.decoder(self.blocks(self.encoder(y))), h, w)
