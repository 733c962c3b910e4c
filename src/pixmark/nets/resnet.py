"""ResNet generator (Johnson et al. 2016; pix2pix / CycleGAN; DeblurGAN, Kupyn et al. 2018).

The "Res9" and "Res16" surrogates of Zhang et al. 2020: a 7×7 convolution, two stride-2
convolutions, ``n_blocks`` residual blocks at 1/4 resolution, two stride-2 transposed
convolutions and a 7×7 convolution, with instance normalisation and a residual output
(``x + body(x)``) as in DeblurGAN.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive, crop, pad_to_multiple


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))) with reflection-padded 3×3 convolutions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """Residual image-to-image generator. Input and output in [0, 1], NCHW, same shape.

    Any H × W works: the input is padded to a multiple of 4 (at least 8 px, so the
    reflection pads and instance norms at 1/4 resolution are valid) and cropped back.
    DeblurGAN's final Tanh and clamp are left out: the output is ``x + body(x)``,
    unclamped, like every other pixmark network.

    Args:
        channels: image channels (1 or 3).
        width: channels of the first layer; 2× and 4× after the downsamplings
            (paper 64; default 32 for CPU).
        n_blocks: residual blocks (9 for Res9, 16 for Res16).
    """

    def __init__(self, channels: int = 3, width: int = 32, n_blocks: int = 9) -> None:
        super().__init__()
        check_channels("resnet", "channels", channels)
        check_positive("resnet", "width", width)
        check_positive("resnet", "n_blocks", n_blocks, minimum=0)
        self.config = {"channels": channels, "width": width, "n_blocks": n_blocks}
        w = width
        self.body = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, w, 7),
            nn.InstanceNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.InstanceNorm2d(4 * w),
            nn.ReLU(inplace=True),
            *[ResidualBlock(4 * w) for _ in range(n_blocks)],
            nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(w),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(w, channels, 7),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map [N, channels, H, W] in [0, 1] to the same shape (residual, unclamped)."""
        h, w = x.shape[-2], x.shape[-1]
        y = self.body(pad_to_multiple(x, 4, min_size=8))
        return x + crop(y, h, w)


class ResNet9(ResNetGenerator):
    """ResNet generator with 9 residual blocks ("Res9" in Zhang et al. 2020)."""

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__(channels=channels, width=width, n_blocks=9)
        self.config = {"channels": channels, "width": width}


class ResNet16(ResNetGenerator):
    """ResNet generator with 16 residual blocks ("Res16" in Zhang et al. 2020)."""

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__(channels=channels, width=width, n_blocks=16)
        self.config = {"channels": channels, "width": width}
