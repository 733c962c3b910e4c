"""The key-conditioned watermark extractor E(image, key) of Wu et al. (TCSVT 2020).

E(image, k) = E_C(E_A(image) ⊕ E_B(k)) (paper sec. II-A, Fig. 3):

* E_A: a 3×3 convolution, two inception-residual blocks (1×1, 3×3 and 5×5 branches
  whose concatenation is projected back and added to the block input, Fig. 4) and a 3×3
  convolution back to the image's C channels; the H×W result is folded to the watermark
  grid h×w with ``c1 = C·r²`` channels (space-to-depth by r = ``fold`` = H/h, the
  paper's ``c1 = 3HW/hw``; images of another size are resized to r·h first).
* E_B: the key, a string of ``key_bits`` bits (±1), laid out as an h×w×t tensor of
  constant ``block``×``block`` blocks (``t = key_bits·block²/(h·w)``: 1024 bits on a
  64×64 grid with 4×4 blocks are t = 4 planes), mapped to ``c2`` feature maps of h×w
  (paper 48). The paper does not detail E_B's layers; here the block grid goes through
  a two-layer MLP to c2 maps of (h/2)×(w/2), nearest-upsampled and convolved (3×3).
  A purely convolutional E_B (tried first) learns the watermark far more slowly: it has
  to read positions out of a noise-like key, and a wrong bit only changes its
  neighbourhood.
* E_C: 3×3 convolutions over the concatenation (c1 + c2 channels) to the watermark's
  channels, ``tanh`` output in [-1, 1], multiplied by a gate in (0, 1): the sigmoid of
  the image mean of a small convolutional score of E_A's features (is this image the
  host's?). Without the gate, joint training at CPU scale settles on an extractor that
  paints the watermark from the key alone, whatever the image (BER 0 on clean images
  too): the paper's alpha > beta makes that the cheaper trivial solution, and the host
  then gets no gradient to mark its outputs. The gate alone is not enough: it must be
  trained against hard negatives (outputs of the unmarked host), see
  ``pixmark.schemes.keyed``.

ReLU everywhere except the output, as in the paper.

Key layout. ``layout="blocks"`` is the paper's: bit i fills block i. A convolutional E
then sees a flipped bit only near its block, so a key with 8 wrong bits out of 1024
still extracts most of the watermark. ``layout="parity"`` (default) fills each block with
the parity (product of ±1 values) of ``parity_bits`` key bits chosen by a fixed table
(``layout_seed``): one wrong key bit changes about ``parity_bits/key_bits`` of all blocks
and 8 wrong bits about a third of them, spread over the whole grid, so every
neighbourhood E_C looks at differs and a near-miss key extracts nothing (the paper's
Fig. 11 behaviour). The table is part of E's config, not a secret: the secret is the key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.nets.common import check_channels, check_positive

LAYOUTS = ("parity", "blocks")
#: Initial bias of the gate's score (logit): sigmoid(-1) ~ 0.27, mostly closed.
GATE_BIAS = -1.0


#: Gain of the high-pass residual channels E_A also sees (``highpass=True``).
HIGHPASS_GAIN = 10.0


def highpass_residual(images: Tensor) -> Tensor:
    """images - their 3x3 box blur (reflect padding): the detail a faint mark lives in."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), 3, 1)
    return images - blurred


class InceptionResidual(nn.Module):
    """1×1, 3×3 and 5×5 branches, concatenated, projected by 1×1 and added to the input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        branch = max(width // 2, 4)
        self.b1 = nn.Conv2d(width, branch, 1)
        self.b3 = nn.Sequential(
            nn.Conv2d(width, branch, 1), nn.ReLU(inplace=True), nn.Conv2d(branch, branch, 3, 1, 1)
        )
        self.b5 = nn.Sequential(
            nn.Conv2d(width, branch, 1), nn.ReLU(inplace=True), nn.Conv2d(branch, branch, 5, 1, 2)
        )
        self.project = nn.Conv2d(3 * branch, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x)], dim=1)
        return F.relu(x + self.project(F.relu(y)))


class KeyedExtractor(nn.Module):
    """E(image, key) -> watermark in [-1, 1] (Wu et al. 2020). See the module docstring.

    Args:
        channels: image channels (1 or 3).
        wm_channels: watermark channels (1 binary, 3 colour).
        wm_size: side h = w of the watermark in pixels (paper 64); multiple of ``block``.
        key_bits: key length l_k (paper 1024); ``key_bits·block²`` must be a multiple of
            ``wm_size²``.
        block: side of the key's constant blocks in pixels (paper 4).
        width_a: feature width of E_A (small default for CPU).
        c2: output channels of E_B (paper 48).
        width_c: feature width of E_C.
        depth_c: number of hidden 3×3 convolutions in E_C (>= 1).
        layout: ``parity`` (default) or ``blocks`` (the paper's), see the module docstring.
        parity_bits: key bits per block parity (``parity`` layout only).
        layout_seed: seed of the parity table.
        hidden_b: hidden units of E_B's MLP.
        fold: r = H/h at the working image size (paper 256/64 = 4, so c1 = 3·16 = 48);
            images of another size are resized to ``fold·wm_size`` first.
    """

    def __init__(
        self,
        channels: int = 3,
        wm_channels: int = 1,
        wm_size: int = 64,
        key_bits: int = 1024,
        block: int = 4,
        width_a: int = 16,
        c2: int = 16,
        width_c: int = 32,
        depth_c: int = 3,
        layout: str = "parity",
        parity_bits: int = 128,
        layout_seed: int = 0,
        fold: int = 1,
        hidden_b: int = 64,
        highpass: bool = False,
    ) -> None:
        super().__init__()
        check_channels("keyed_extractor", "channels", channels)
        check_channels("keyed_extractor", "wm_channels", wm_channels)
        for name, value in (
            ("wm_size", wm_size),
            ("key_bits", key_bits),
            ("block", block),
            ("width_a", width_a),
            ("c2", c2),
            ("width_c", width_c),
            ("depth_c", depth_c),
            ("parity_bits", parity_bits),
            ("fold", fold),
            ("hidden_b", hidden_b),
        ):
            check_positive("keyed_extractor", name, value)
        if layout not in LAYOUTS:
            raise PixmarkError(
                f"keyed_extractor: unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}"
            )
        if wm_size % block:
            raise PixmarkError(
                f"keyed_extractor: wm_size {wm_size} is not a multiple of the block {block}"
            )
        cells = (wm_size // block) ** 2
        if key_bits % cells and layout == "blocks":
            raise PixmarkError(
                f"keyed_extractor: {key_bits} key bits do not fill whole {wm_size // block}x"
                f"{wm_size // block} block planes; use a multiple of {cells} bits"
            )
        if parity_bits > key_bits:
            raise PixmarkError("keyed_extractor: parity_bits cannot exceed key_bits")
        self.config = {
            "channels": channels,
            "wm_channels": wm_channels,
            "wm_size": wm_size,
            "key_bits": key_bits,
            "block": block,
            "width_a": width_a,
            "c2": c2,
            "width_c": width_c,
            "depth_c": depth_c,
            "layout": layout,
            "parity_bits": parity_bits,
            "layout_seed": layout_seed,
            "fold": fold,
            "hidden_b": hidden_b,
            "highpass": bool(highpass),
        }
        self.wm_size, self.block, self.key_bits = wm_size, block, key_bits
        self.cells_side = wm_size // block
        self.planes = max(1, math.ceil(key_bits / cells))
        self.layout = layout
        if layout == "parity":
            g = torch.Generator().manual_seed(layout_seed)
            table = torch.stack(
                [
                    torch.randperm(key_bits, generator=g)[:parity_bits]
                    for _ in range(self.planes * cells)
                ]
            )
            self.register_buffer("table", table, persistent=False)
        self.channels = channels
        self.highpass = bool(highpass)
        self.e_a = nn.Sequential(
            nn.Conv2d(channels * (2 if highpass else 1), width_a, 3, 1, 1),
            nn.ReLU(inplace=True),
            InceptionResidual(width_a),
            InceptionResidual(width_a),
            nn.Conv2d(width_a, channels, 3, 1, 1),
        )
        # E_B: the block grid of the key tensor -> an MLP -> c2 maps on a (h/2)x(w/2)
        # grid -> nearest upsampling to h x w -> 3x3 conv. The MLP sees the whole key at
        # once (so any wrong block anywhere can switch the output off) and can place the
        # watermark anywhere on the grid (a convolution of a noise-like key cannot).
        self.c2 = c2
        self.half = wm_size // 2
        self.e_b_mlp = nn.Sequential(
            nn.Linear(self.planes * self.cells_side**2, hidden_b),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_b, c2 * self.half * self.half),
            nn.ReLU(inplace=True),
        )
        self.e_b_conv = nn.Sequential(nn.Conv2d(c2, c2, 3, 1, 1), nn.ReLU(inplace=True))
        # The gate: "was this image made by the host?" from E_A's features alone, one
        # value per image (mean of a per-pixel score), multiplying E_C's output.
        c1 = channels * fold * fold
        self.gate = nn.Sequential(
            nn.Conv2d(c1, width_c, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(width_c, 1, 1)
        )
        # Start mostly closed but not saturated (sigmoid(-1) ~ 0.27): the watermark term
        # has to open it for the host's outputs only, which gives the host a reason to mark
        # them, and the sigmoid's slope (0.2) still passes that gradient on. (-4 was tried:
        # slope 0.02, E took 200 of the quick profile's 300 steps to start opening it.)
        nn.init.constant_(self.gate[-1].bias, GATE_BIAS)
        self.fold = fold
        layers: list[nn.Module] = []
        prev = channels * fold * fold + c2
        for _ in range(depth_c):
            layers += [nn.Conv2d(prev, width_c, 3, 1, 1), nn.ReLU(inplace=True)]
            prev = width_c
        layers.append(nn.Conv2d(prev, wm_channels, 3, 1, 1))
        self.e_c = nn.Sequential(*layers)

    # ----------------------------------------------------------------------- key layout

    def key_tensor(self, bits: Tensor) -> Tensor:
        """Key bits [B, key_bits] (0/1 or ±1) -> the h×w×t key tensor [B, t, h, w] of ±1."""
        if bits.dim() == 1:
            bits = bits[None]
        if bits.shape[-1] != self.key_bits:
            raise PixmarkError(
                f"the extractor takes {self.key_bits}-bit keys, got {bits.shape[-1]} bits"
            )
        signs = bits.float()
        if bool((signs >= 0).all()):
            signs = signs * 2 - 1
        n, side = len(signs), self.cells_side
        if self.layout == "parity":
            values = signs[:, self.table].prod(dim=-1)
        else:
            values = signs
            cells = self.planes * side * side
            if values.shape[1] < cells:
                values = F.pad(values, (0, cells - values.shape[1]), value=1.0)
        grid = values.view(n, self.planes, side, side)
        return grid.repeat_interleave(self.block, 2).repeat_interleave(self.block, 3)

    # ----------------------------------------------------------------------- forward

    def _fold(self, features: Tensor) -> Tensor:
        """E_A's H×W×C output folded onto the h×w grid: [B, C·r², h, w]."""
        h, w = features.shape[-2:]
        r = self.fold
        target = r * self.wm_size
        if (h, w) != (target, target):
            features = F.interpolate(
                features, size=(target, target), mode="bilinear", align_corners=False
            )
        return F.pixel_unshuffle(features, r) if r > 1 else features

    def e_b(self, bits: Tensor) -> Tensor:
        """E_B: key bits [B, key_bits] -> key features [B, c2, h, w]."""
        grid = self.key_tensor(bits)[..., :: self.block, :: self.block]
        maps = self.e_b_mlp(grid.flatten(1)).view(-1, self.c2, self.half, self.half)
        return self.e_b_conv(F.interpolate(maps, scale_factor=2, mode="nearest"))

    def features(self, images: Tensor) -> Tensor:
        """E_A folded onto the watermark grid: [B, C, H, W] in [0, 1] -> [B, c1, h, w]."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise PixmarkError(
                f"the extractor takes [N, {self.channels}, H, W] images, got {tuple(images.shape)}"
            )
        x = images * 2 - 1
        if self.highpass:
            x = torch.cat([x, HIGHPASS_GAIN * highpass_residual(images)], dim=1)
        return self._fold(self.e_a(x))

    def decode(self, features: Tensor, bits: Tensor) -> Tensor:
        """E_C(features ⊕ E_B(key)): key bits [B or 1, key_bits] -> [B, c, h, w] in [-1, 1]."""
        key = self.e_b(bits.to(features.device))
        if len(key) == 1 and len(features) > 1:
            key = key.expand(len(features), -1, -1, -1)
        gate = torch.sigmoid(self.gate_logit(features)[:, None, None, None])
        return torch.tanh(self.e_c(torch.cat([features, key], dim=1))) * gate

    def gate_logit(self, features: Tensor) -> Tensor:
        """The gate's logit per image [B]: "was this image made by the host?" (> 0: yes)."""
        return self.gate(features).mean(dim=(1, 2, 3))

    def forward(self, images: Tensor, bits: Tensor) -> Tensor:
        """Images [B, C, H, W] in [0, 1] and key bits [B or 1, key_bits] -> [B, c, h, w].

        The output is the extracted watermark in [-1, 1] (tanh); 0 means "nothing".
        """
        return self.decode(self.features(images), bits)
