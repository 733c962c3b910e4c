"""RED-Net (Mao et al. 2016): residual encoder-decoder with symmetric skip connections.

``depth`` unpadded 3×3 convolutions shrink the image by 2 px each; ``depth`` 3×3
transposed convolutions (stride 1) grow it back. Every second convolution's output is
added to the output of its mirror transposed convolution before the ReLU, and the
input image is added to the last one, so the whole network is residual.
RED20 is ``depth=10``, RED30 ``depth=15``.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixmark.nets.common import check_channels, check_positive, crop, pad_to_multiple


class RED(nn.Module):
    """Residual encoder-decoder. Input and output in [0, 1], NCHW, same shape.

    Images smaller than ``2 * depth + 1`` px on a side are padded (replicate) and the
    output cropped back; larger images need no padding at all.

    Args:
        channels: image channels (1 or 3).
        width: feature channels (paper 64).
        depth: convolutions in the encoder, equal to transposed convolutions in the
            decoder (paper 10 or 15: RED20 / RED30).
    """

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 10) -> None:
        super().__init__()
        check_channels("red", "channels", channels)
        check_positive("red", "width", width)
        check_positive("red", "depth", depth)
        self.config = {"channels": channels, "width": width, "depth": depth}
        self.depth = depth
        self.convs = nn.ModuleList(
            nn.Conv2d(channels if i == 0 else width, width, 3) for i in range(depth)
        )
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(width, channels if i == depth - 1 else width, 3)
            for i in range(depth)
        )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + decoder(encoder(x))`` with symmetric skips, same shape as ``x``."""
        h, w = x.shape[-2], x.shape[-1]
        y = pad_to_multiple(x, 1, min_size=2 * self.depth + 1)
        features = [y]  # features[i] is the output of convolution i (0: the input)
        for conv in self.convs:
            features.append(self.relu(conv(features[-1])))
        z = features[-1]
        for j, deconv in enumerate(self.deconvs, start=1):
            z = deconv(z)
            mirror = self.depth - j  # index of the encoder feature with this size
            if mirror == 0:
                z = z + features[0]
            elif mirror % 2 == 0:
                z = self.relu(z + features[mirror])
            else:
                z = self.relu(z)
        return crop(z, h, w)
