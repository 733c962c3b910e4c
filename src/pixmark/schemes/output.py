"""The ``output`` scheme (Zhang et al., AAAI 2020): hide a logo in every output.

The protected model M is left untouched. An embedding network H (a UNet fed the output
B = M(A) stacked channel-wise with the logo δ) turns every output into B' = H(B ⊕ δ),
visually equal to B. An extractor R recovers δ from B' and returns a blank δ0 for clean
images (inputs A, unprotected outputs B). A PatchGAN D keeps B' looking like B. Stage 2
trains surrogate models on (A, B') — what a thief would do — and fine-tunes R on their
outputs, with a surrogate of the *unprotected* model as negatives, so that R finds the
logo in a stolen model's outputs and not in an independent one's.

What pixmark does beyond the paper (each for a measured reason, see docs/schemes/output.md):

* R sees its input *circularly shifted by a random offset* and has two coordinate
  channels. A logo painted at fixed pixel positions cannot be learnt by a
  translation-equivariant surrogate; with shifted inputs H must hide a *stationary*
  signature (the same everywhere), and R paints the logo from its own coordinates.
* The fidelity weight is a controller, not a constant: it rises while PSNR(B', B) is
  below the profile's target and falls above it, so H spends exactly the invisibility
  budget (≥ 30 dB) on a signal strong enough for surrogates to copy.
* The statistic cannot fool itself: ``logo_nc`` is the mean-centred NC of the ±1 images
  (pixel darker than 0.5 = ink). A blank, a faint logo-shaped residue, noise or an
  all-dark image score about 0; only a recovered logo scores near 1.
* The verdict pools all queries: the number of queries with ``logo_nc`` > threshold is
  tested against the success rate of null models (binomial, ``pooled_success_test``).
* A second, content-locked mark (``Signature``, colour keys): the output's own band-pass
  luminance at two scales, each carried on a keyed chroma direction. It commutes with
  rotation, flip and shift, so surrogates trained on augmented pairs still learn it where
  H's carrier averages away (Zhang et al., TPAMI 2024's failure case). Since session 13
  verify decides on both tests (Bonferroni); the signature's is owner-specific through
  an exact rank of the owner's key among random keys.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from pixmark import nets
from pixmark.errors import PixmarkError
from pixmark.keys import Key, new_key
from pixmark.metrics import centered_nc, psnr
from pixmark.schemes.base import (
    Protected,
    Query,
    Scalar,
    as_query,
    check_profile,
    independent_models,
    model_device,
)
from pixmark.stats import Verdict, decide, pooled_success_test
from pixmark.train import Device, run, seed_everything

SCHEME = "output"

#: Per-query success: ``logo_nc`` above this (the paper's NC threshold).
SUCCESS_NC = 0.95
#: The key's own threshold (:func:`success_threshold`, fixed at protect time): ``MARGIN``
#: below the median of its protected model's query scores, never above the paper's
#: ``SUCCESS_NC``, never below ``SUCCESS_FLOOR`` and always at least ``MARGIN`` above the
#: median score of every null model measured at protect time.
SUCCESS_FLOOR, MARGIN = 0.6, 0.1
#: Significance level of the pooled test.
ALPHA = 1e-3
#: A logo match also needs the suspect's 2 × 2 phase pattern to point along the key's
#: carrier (:func:`carrier_cos` at least this). Measured at quick (session 8): the
#: protected model and five plain surrogates (UNet L2 / perceptual, ResNet-9, ResNet-16
#: L1, CEILNet) 0.945-0.999; 24 fresh independent models -0.68 to 0.72, and the two of
#: them R read the logo from (weak stride-2 nets with their own 2 x 2 artefacts) 0.58
#: and 0.72.
CARRIER_GATE = 0.85


@dataclass(frozen=True)
class Profile:
    """Training budget and network sizes of one ``protect`` profile.

    Sizes in px; ``target_psnr`` in dB is where the fidelity controller holds
    PSNR(B', B); steps are optimiser steps of ``batch`` crops.
    """

    size: int
    batch: int
    pool: int  # (A, B) crop pairs drawn once for stage 1 and R fine-tuning
    steps: int  # stage 1 (H, R, D)
    surrogate_steps: int  # each stage-2 surrogate
    finetune_steps: int  # stage 2: R alone
    h_width: int
    h_depth: int
    r_width: int
    r_blocks: int
    d_width: int
    d_layers: int
    surrogate_width: int
    lr: float
    beta1: float
    target_psnr: float
    n_queries: int
    perceptual: float = 1.0  # λ2
    perceptual_layers: int = 2  # FFDNet layers used as perceptual features
    adversarial: float = 0.01  # λ3
    extract: float = 1.0  # λ
    warmup: float = 0.2  # fraction of stage 1 with the fidelity weight held at 1
    carrier: float = 0.03  # amplitude of the keyed carrier H is started on (see protect)
    # weight of 1 - cos(H's residual, carrier), all of stage 1: without it H drifted off the
    # carrier to a texture that weak independent U-Nets also make (1-5 of 99 verified)
    carrier_hold: float = 1.0
    # stage 2: (architecture, loss) of each surrogate of the watermarked model; the clean
    # model gets one UNet L2 surrogate (the negatives)
    stage2: tuple[tuple[str, str], ...] = (("unet", "l2"), ("unet", "perceptual"))
    # PSNR in dB of the content signature (colour keys only; 0 = none): see ``Signature``
    signature_psnr: float = 38.0
    # independent clean models of the task (``INDEPENDENT``): steps, width, crop size
    independent_steps: int = 100
    independent_width: int = 8
    independent_size: int = 40


PROFILES: dict[str, Profile] = {
    # Tests and demo: about 3 minutes on 2 CPU cores.
    "quick": Profile(
        size=64, batch=8, pool=256, steps=360, surrogate_steps=240, finetune_steps=150,
        h_width=12, h_depth=3, r_width=16, r_blocks=3, d_width=16, d_layers=2,
        surrogate_width=16, lr=1e-3, beta1=0.9, target_psnr=35.0, n_queries=32,
        perceptual_layers=1,
    ),
    # About 40 minutes on 2 CPU cores (measured per step, session 20: stage 1 0.86 s,
    # surrogates 0.27-0.42 s, R fine-tune 0.41 s). Until session 20 this profile had
    # H 32 / R 48 (9 blocks) / surrogates 32 wide and 4000 / 4 x 2500 / 1500 steps: about
    # 5 hours on 2 cores (1.93 s per stage-1 step); the GPU bench lines keep those sizes.
    "cpu": Profile(
        size=96, batch=8, pool=1024, steps=1500, surrogate_steps=500, finetune_steps=600,
        h_width=24, h_depth=4, r_width=32, r_blocks=6, d_width=32, d_layers=3,
        surrogate_width=16, lr=5e-4, beta1=0.5, target_psnr=38.0, n_queries=64,
        stage2=(("unet", "l2"), ("resnet9", "l1"), ("unet", "perceptual")), independent_steps=300,
        independent_width=16, independent_size=64,
    ),
    # The paper: 256 × 256, batch 16, Adam 2e-4 (β1 0.5), 200 epochs of 6000 images.
    "paper": Profile(
        size=256, batch=16, pool=6000, steps=75000, surrogate_steps=75000,
        finetune_steps=20000, h_width=64, h_depth=7, r_width=128, r_blocks=9, d_width=64,
        d_layers=3, surrogate_width=64, lr=2e-4, beta1=0.5, target_psnr=40.0, n_queries=100,
        stage2=(("unet", "l2"), ("resnet9", "l1"), ("ceilnet", "perceptual")),
        independent_steps=3000, independent_width=32, independent_size=96,
    ),
}  # fmt: skip


#: Independent clean models trained at protect (architecture, fraction of the profile's
#: ``independent_steps``): the first ones' outputs are R's negatives in stage 2, the last
#: ``CHECK_MODELS`` are null models for the key's threshold and null rate. Weak stride-2
#: networks (U-Net, ResNet, CEILNet) make 2 x 2 checkerboard artefacts of their own; without
#: them among the negatives R read the logo from 5 of 99 such null models
#: (benchmarks/fpr.yaml, session 5).
INDEPENDENT = (
    ("unet", 0.3),
    ("unet", 1.0),
    ("resnet9", 0.5),
    ("ceilnet", 1.0),
    ("resnet9", 1.0),
    ("dncnn", 1.0),
    ("unet", 0.6),
    ("resnet9", 0.2),
    ("unet", 0.15),
    ("ceilnet", 0.4),
    ("unet", 0.8),
    ("resnet9", 0.8),
)
CHECK_MODELS = 2


# --------------------------------------------------------------------------- logo, statistic


def render_logo(text: str, size: int = 64, channels: int = 3, generator: Any = None) -> Tensor:
    """A logo rendered from ``text``, dark on light: up to 3 bold initials filling most of
    the square, plus a bar and a dot placed from ``generator`` (the key), so that two
    owners' logos differ even with equal initials. Returns [1, channels, size, size] in
    [0, 1] (anti-aliased), background 1."""
    if size < 16:
        raise PixmarkError(f"logo size must be at least 16 px, got {size}")
    words = [w for w in text.replace("-", " ").split() if w[:1].isalnum()]
    initials = "".join(w[0] for w in words[:3]).upper() or text.strip()[:2].upper() or "?"
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    stroke = max(1, size // 32)
    font_size = int(size * 0.6)
    while True:
        font = ImageFont.load_default(size=font_size)
        box = draw.textbbox((0, 0), initials, font=font, stroke_width=stroke)
        if box[2] - box[0] <= 0.9 * size or font_size <= 6:
            break
        font_size -= 1
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.text(((size - tw) // 2 - box[0], int(size * 0.4) - th // 2 - box[1]), initials,
              fill=0, font=font, stroke_width=stroke, stroke_fill=0)  # fmt: skip
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    u = [float(v) for v in torch.rand(4, generator=g)]
    bar_w = int(size * (0.25 + 0.35 * u[0]))
    bar_x = int((size - bar_w) * u[1])
    bar_y = int(size * (0.76 + 0.08 * u[2]))
    draw.rectangle([bar_x, bar_y, bar_x + bar_w, bar_y + max(2, size // 12)], fill=0)
    r = max(2, size // 12)
    dot_x = int(r + (size - 2 * r) * u[3])
    if bar_x - r <= dot_x <= bar_x + bar_w + r:  # keep the dot off the bar
        dot_x = (dot_x + size // 2) % (size - 2 * r) + r
    draw.ellipse([dot_x - r, bar_y - 1, dot_x + r, bar_y - 1 + 2 * r], fill=0)
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float() / 255.0
    return t.view(1, 1, size, size).expand(1, channels, size, size).contiguous()


#: A pixel of an extracted watermark counts as ink when darker than this. It sits well
#: below 0.5 so that an undecided extractor, whose output in the logo's ink is the
#: average of logo (0) and blank (1), does not count as having found the logo.
INK = 0.3


def _sign(x: Tensor, ink: float = INK) -> Tensor:
    return torch.where(x > ink, 1.0, -1.0).to(torch.float32)


def logo_nc(extracted: Tensor, logo: Tensor) -> Tensor:
    """Per-image similarity of extracted watermarks to the logo, in [-1, 1].

    Mean-centred NC (Pearson correlation) of the ±1 images ``sign(x - INK)`` (INK = 0.3),
    i.e. of the ink masks. A blank, an all-dark image, a faint or half-hearted
    logo-shaped residue (nothing crosses 0.3) and noise score about 0; the logo itself
    scores 1. ``logo`` [1 or N, C, H, W] is
    resized (bilinear) to the extracted size when they differ.
    """
    logo = logo.to(extracted.device)
    if logo.shape[-2:] != extracted.shape[-2:]:
        logo = F.interpolate(logo, size=extracted.shape[-2:], mode="bilinear", align_corners=False)
    logo = logo.expand(extracted.shape[0], -1, -1, -1)
    return centered_nc(_sign(extracted.detach().float()), _sign(logo.float(), 0.5))


# --------------------------------------------------------------------------- networks


class Extractor(nn.Module):
    """The extractor R: a CEILNet fed the image plus two coordinate channels.

    The coordinates (x and y in [-1, 1]) let R paint the logo at its place from a
    stationary signature. (Not space-to-depth: CEILNet's instance norm would then
    subtract a stationary fine pattern as a per-channel mean.) Input [N, channels, H, W]
    in [0, 1]; output the recovered logo [N, out_channels, H, W] (linear; the logo is in
    [0, 1]).
    """

    def __init__(self, channels: int = 3, out_channels: int = 3, width: int = 64,
                 n_blocks: int = 9) -> None:  # fmt: skip
        super().__init__()
        self.config = {
            "channels": channels,
            "out_channels": out_channels,
            "width": width,
            "n_blocks": n_blocks,
        }
        self.net = nets.create(
            "ceilnet", channels=channels, width=width, n_blocks=n_blocks,
            in_channels=channels + 2, out_channels=out_channels,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(n, 2, h, w)
        return self.net(torch.cat([x, grid], dim=1))


#: Band-pass scales of the content signature in px: one band per σ, the difference of
#: Gaussians at σ/2 and σ. Keys protected before session 13 have the one band σ = 3.
SIGNATURE_SIGMAS = (1.5, 3.0)
#: Split each band into its positive and negative parts, each carried on its own chroma
#: vector (session 14): 8 key coefficients instead of 4 from the same two scales, which
#: the exact owner test needs (with 4, even a fit cos of 0.99 ranks the key only in the top
#: ~6e-4 of random keys). Keys protected before session 14 are unsplit.
SIGNATURE_SPLIT = True
#: Random keys the signature's exact test ranks the owner's key among (p ≥ 1 / (n + 1)).
SIGNATURE_RANDOM_KEYS = 99_999

#: Two orthonormal chroma axes (orthogonal to grey): a signature's coefficients live here.
CHROMA = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
CHROMA = CHROMA / CHROMA.norm(dim=1, keepdim=True)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, [radius] * 4, mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _band_pass(x: Tensor, sigma: float) -> Tensor:
    return _gaussian_blur(x, sigma / 2) - _gaussian_blur(x, sigma)


def signature_maps(
    sigmas: Sequence[float] = SIGNATURE_SIGMAS, split: bool = SIGNATURE_SPLIT
) -> int:
    """How many band-pass maps a signature weighs: one per band, two when split."""
    return len(sigmas) * (2 if split else 1)


def random_signature_coefficients(count: int, maps: int, generator: torch.Generator) -> Tensor:
    """``count`` signature keys as unit vectors of 2·``maps`` chroma coefficients,
    uniform on the sphere: [count, maps, 2]. Owners' keys and the exact test's random
    keys are drawn alike, which is what makes that test exact."""
    v = torch.randn(count, maps * 2, generator=generator, dtype=torch.float64)
    return (v / v.norm(dim=1, keepdim=True)).float().view(count, maps, 2)


def signature_direction(key: Key, maps: int | None = None) -> Tensor:
    """The key's chroma vector for each band-pass map, [maps, 3] (RGB, orthogonal to grey;
    the whole [maps, 3] has unit norm). ``maps`` defaults to :func:`signature_maps`."""
    maps = signature_maps() if maps is None else maps
    coef = random_signature_coefficients(1, maps, key.generator("signature"))[0]
    return coef @ CHROMA


class Signature(nn.Module):
    """The content signature, pixmark's answer to augmented surrogates (beyond the paper).

    ``template(B) = Σ_b c_b · DoG_σb(luma(B))``: the image's own band-pass luminance
    structure at each scale σ_b (difference of Gaussians at σ_b/2 and σ_b) carried on the
    key's chroma vector c_b for that band (RGB, orthogonal to grey). With ``split`` each
    band is two maps, its positive and negative parts, each with its own chroma vector:
    ``c_b⁺ · max(DoG, 0) + c_b⁻ · min(DoG, 0)``, still isotropic. The null-model test
    correlates with :meth:`detector`, the template without its local mean. The deployed model
    adds ``amp · template(B)`` to its output. Unlike H's 2 × 2 carrier, which is locked to
    pixel parity, it is a function of the content with isotropic kernels: it commutes with
    rotation, flip and shift and barely changes under resizing, so a thief's rotated,
    flipped and cropped-and-resized pairs are still pairs of the same function and the
    surrogate learns it (docs/schemes/output.md, sessions 8 and 13). The 2 × bands chroma
    coefficients are the key: :func:`signature_key_test` ranks them among random keys.
    ``direction`` [maps, 3] (or [3] for one map); images [N, 3, H, W] in [0, 1].
    """

    def __init__(self, direction: Tensor, sigmas: Sequence[float] = SIGNATURE_SIGMAS,
                 amp: float = 1.0, split: bool = SIGNATURE_SPLIT) -> None:  # fmt: skip
        super().__init__()
        direction = direction.detach().float().reshape(-1, 3)
        maps = signature_maps(sigmas, split)
        if len(direction) != maps:
            raise PixmarkError(f"a signature needs one chroma vector per band-pass map: got "
                               f"{len(direction)} for {maps} maps")  # fmt: skip
        self.config = {"sigmas": [float(s) for s in sigmas], "amp": float(amp), "split": split}
        self.register_buffer("direction", direction.reshape(-1, 3, 1, 1).clone())

    @classmethod
    def from_config(cls, config: dict[str, Any], direction: Tensor | None = None) -> Signature:
        """Rebuild from a saved ``config`` ({"sigmas", "amp", "split"}; unsplit before
        session 14; one band {"sigma", "amp"} before session 13). Without ``direction`` its
        buffer is zeros, to load weights into."""
        sigmas = config.get("sigmas") or [config["sigma"]]
        split = bool(config.get("split", False))
        if direction is None:
            direction = torch.zeros(signature_maps(sigmas, split), 3)
        return cls(direction, sigmas, config["amp"], split)

    def bands(self, b: Tensor) -> Tensor:
        """The band-pass luma maps of images ``b``: [N, maps, 1, H, W] (per scale its
        band-pass, or with ``split`` its positive and then its negative part)."""
        luma = b.mean(dim=1, keepdim=True)
        maps = []
        for sigma in self.config["sigmas"]:
            band = _band_pass(luma, sigma)
            maps += [band.clamp_min(0), band.clamp_max(0)] if self.config["split"] else [band]
        return torch.stack(maps, dim=1)

    def template(self, b: Tensor) -> Tensor:
        """The unit-amplitude signature of images ``b``: [N, 3, H, W]."""
        return (self.direction.to(b.dtype)[None] * self.bands(b)).sum(dim=1)

    def detector(self, b: Tensor) -> Tensor:
        """What the correlation tests (:func:`signature_rho`) compare a deviation with: the
        template minus its Gaussian blur at twice each band's σ. Split parts are not
        zero-mean (|DoG| is positive on texture), so the template carries a local colour
        cast that innocent models share; without it their correlations spread 4.6 times
        less (99 null models, session 14). An unsplit template is band-pass already and
        is its own detector (keys before session 14 read as they did)."""
        if not self.config["split"]:
            return self.template(b)
        per_map = self.direction.to(b.dtype)[None] * self.bands(b)  # [N, maps, 3, H, W]
        sigmas = [s for s in self.config["sigmas"] for _ in range(2)]
        return sum(
            m - _gaussian_blur(m, 2 * s) for m, s in zip(per_map.unbind(1), sigmas, strict=True)
        )

    def basis(self, b: Tensor) -> Tensor:
        """The maps a key's coefficients weigh, band × chroma axis: [N, bands, 2, 3, H, W]."""
        axes = CHROMA.to(b.device, b.dtype).view(1, 1, 2, 3, 1, 1)
        return self.bands(b)[:, :, None] * axes

    def coefficients(self) -> Tensor:
        """The key's chroma coefficients, [maps, 2] (its direction on ``CHROMA``)."""
        return self.direction.flatten(1) @ CHROMA.to(self.direction.device).T

    def component(self, d: Tensor) -> Tensor:
        """The part of a deviation ``d`` [N, 3, H, W] that the statistic sees, for evidence
        images: in each band, its band-pass along that band's chroma vector (split bands:
        in the plane of their two vectors, i.e. all of the band's chroma)."""
        out = torch.zeros_like(d)
        per_band = self.direction.to(d.dtype).flatten(1).view(len(self.config["sigmas"]), -1, 3)
        for vectors, sigma in zip(per_band, self.config["sigmas"], strict=True):
            axes = torch.linalg.qr(vectors.T).Q.T  # orthonormal rows spanning the vectors
            band = _band_pass(d, sigma)
            for c in axes:
                c = c[None, :, None, None]
                out = out + c * (c * band).sum(dim=1, keepdim=True)
        return out

    def forward(self, b: Tensor) -> Tensor:
        return b + self.config["amp"] * self.template(b)


def signature_key_test(outputs: Tensor, unmarked: Tensor, signature: Signature,
                       n_random: int = SIGNATURE_RANDOM_KEYS) -> dict[str, float]:  # fmt: skip
    """Exact test of "signed with this key": the owner's key ranked among random keys.

    For every key (chroma coefficients c over the signature's basis maps), the score is
    the pooled correlation of the suspect's deviation d = ``outputs`` − ``unmarked`` with
    that key's template. A suspect that was not derived from a model signed with this key
    is independent of the key, and the owner's key was drawn exactly as the random ones
    are (:func:`random_signature_coefficients`), so its rank among them is uniform:
    ``p = (1 + #{random keys scoring ≥ the owner's}) / (n_random + 1)`` is an exact
    p-value that needs no null models and holds between owners too. The random keys come
    from a fixed seed (the same for every verify). Returns ``key_p``, ``fit_cos`` (the
    cosine, in the basis' own metric, between the key and the coefficients that fit d
    best: 1 for a copy) and ``random_max`` (the best random key's correlation).
    Images [N, 3, H, W] in [0, 1].
    """
    u = unmarked.float()
    maps = signature.basis(u).permute(1, 2, 0, 3, 4, 5).flatten(2).flatten(0, 1).double()
    d = (outputs.float() - u).flatten().double()
    g, gram = maps @ d, maps @ maps.T  # [K], [K, K]: K = 2 x maps

    def score(c: Tensor) -> Tensor:  # keys [k, K] -> correlations [k]
        norms = ((c @ gram) * c).sum(-1).clamp_min(1e-30).sqrt() * d.norm().clamp_min(1e-30)
        return (c @ g) / norms

    maps = len(signature.direction)
    own = float(score(signature.coefficients().flatten().double()[None])[0])
    gen = torch.Generator().manual_seed(20261204)
    others = score(random_signature_coefficients(n_random, maps, gen).flatten(1).double())
    p = (1 + int((others >= own).sum())) / (n_random + 1)
    best = torch.linalg.lstsq(gram, g[:, None]).solution.T  # the suspect's own coefficients
    best_rho = float(score(best)[0]) if float(best.abs().sum()) > 0 else 0.0
    fit = own / best_rho if best_rho > 1e-12 else 0.0
    return {"key_p": p, "fit_cos": round(fit, 4), "random_max": round(float(others.max()), 6)}


def signature_rho(outputs: Tensor, unmarked: Tensor, signature: Signature) -> Tensor:
    """Per-image correlation of a suspect's deviation from the owner's unmarked outputs
    with the signature's detector (:meth:`Signature.detector`, the template without its
    local mean), in [-1, 1]: ``<S - B, t(B)> / (|S - B| |t(B)|)``.

    ``outputs`` (the suspect's answers) and ``unmarked`` (B = M(queries)) are
    [N, 3, H, W] in [0, 1]; an output equal to B scores 0.
    """
    d = (outputs.float() - unmarked.float()).flatten(1)
    t = signature.detector(unmarked.float()).flatten(1)
    denom = d.norm(dim=1) * t.norm(dim=1)
    zero = torch.zeros((), device=d.device)
    return torch.where(denom > 0, (d * t).sum(1) / denom.clamp_min(1e-12), zero)


def pooled_rho(outputs: Tensor, unmarked: Tensor, signature: Signature) -> float:
    """:func:`signature_rho` over all images at once (one number per suspect)."""
    d = (outputs.float() - unmarked.float()).flatten()
    t = signature.detector(unmarked.float()).flatten()
    denom = float(d.norm() * t.norm())
    return float((d @ t) / denom) if denom > 0 else 0.0


class Watermarked(nn.Module):
    """The deployed model: ``H(M(x) ⊕ δ)`` (+ the content signature) with δ baked in.

    ``model`` is the untouched protected model M; ``embedder`` the UNet H (input
    2·C channels: output and logo; residual output); ``signature`` an optional
    :class:`Signature` added to M's output on top of H's. Input and output
    [N, C, H, W] in [0, 1]; the logo is resized to the image size. TorchScript-traceable.
    """

    def __init__(self, model: nn.Module, embedder: nn.Module, logo: Tensor,
                 signature: Signature | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.embedder = embedder
        self.signature = signature
        self.register_buffer("logo", logo.detach().clone().float())

    def embed(self, b: Tensor) -> Tensor:
        """Hide the logo (and the signature) in images ``b`` [N, C, H, W] in [0, 1]."""
        logo = self.logo
        if logo.shape[-2:] != b.shape[-2:]:
            logo = F.interpolate(logo, size=b.shape[-2:], mode="bilinear", align_corners=False)
        logo = logo.expand(b.shape[0], -1, -1, -1)
        out = self.embedder(torch.cat([b, logo], dim=1))
        if self.signature is not None:
            out = out + self.signature(b) - b
        return out.clamp(0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.model(x).clamp(0.0, 1.0))


def load_extractor(key: Key) -> Extractor:
    """Rebuild the trained extractor R stored in ``key``."""
    cfg = key.params.get("extractor")
    if cfg is None:
        raise PixmarkError(
            f"the output key of {key.owner!r} has no extractor; protect a model with it first"
        )
    r = Extractor(**cfg)
    prefix = "extractor."
    state = {k.removeprefix(prefix): v for k, v in key.tensors.items() if k.startswith(prefix)}
    try:
        r.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PixmarkError(f"the key's extractor weights do not fit its config ({exc})") from None
    return r.eval()


@torch.no_grad()
def extract(key: Key, images: Tensor, batch_size: int = 16) -> Tensor:
    """Recover the watermark from ``images`` [N, C, H, W] in [0, 1] with the key's R."""
    r = load_extractor(key)
    channels = key.params["channels"]
    if images.dim() != 4 or images.shape[1] != channels:
        raise PixmarkError(
            f"the key expects {channels}-channel images [N, {channels}, H, W], got "
            f"{tuple(images.shape)}"
        )
    outs = [r(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(outs).clamp(0.0, 1.0)


def query_scores(query: Query, key: Key, queries: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Send the query images to a suspect; return (its outputs, per-query ``logo_nc``)."""
    q = key.tensor("queries") if queries is None else queries
    out = query(q.float())
    if not isinstance(out, Tensor) or out.shape != q.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise PixmarkError(
            f"the suspect returned {shape} for {tuple(q.shape)} queries; it must return "
            "images of the input's shape"
        )
    out = out.float().clamp(0, 1)
    return out, logo_nc(extract(key, out), key.tensor("logo"))


# --------------------------------------------------------------------------- keygen


def keygen(
    owner: str,
    *,
    logo: str | os.PathLike[str] | None = None,
    channels: int = 3,
    size: int = 64,
    secret: str | None = None,
) -> Key:
    """A new ``output`` key: the logo δ and the blank δ0 (white), both [1, C, size, size].

    δ is stored as a two-level image (each channel thresholded at 0.5: 0 = ink, 1 =
    paper), so colours of a user's logo are reduced to dark/light.

    ``logo``: an image file (resized to ``size`` × ``size``, converted to ``channels``);
    by default a logo is rendered from the owner's name (initials, frame and a bar
    placed from the key's secret). Dark parts (< 0.5) are the logo's ink: a logo without
    ink, or all ink, cannot be recognised and is refused.
    """
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
    key = new_key(SCHEME, owner, secret=secret)
    if logo is None:
        delta = render_logo(key.owner, size, channels, key.generator("logo"))
        source = "rendered from the owner's name"
    else:
        from pixmark.data import load_image

        img = load_image(logo, channels=channels)
        delta = F.interpolate(img, size=(size, size), mode="area").clamp(0, 1)
        source = Path(logo).name
    # Stored as a two-level ink mask (0 = ink, 1 = paper): R is trained on crisp targets
    # and ``logo_nc(logo, logo)`` is exactly 1 (grey anti-aliasing would cap it lower).
    delta = (delta >= 0.5).float()
    ink = float((delta < 0.5).float().mean())
    if not 0.02 <= ink <= 0.9:
        raise PixmarkError(
            f"logo {source} has {ink:.0%} dark pixels (< 0.5); use a logo with dark marks "
            "on a light background (between 2 % and 90 % dark)"
        )
    params = {"channels": channels, "size": size, "logo_source": source, "blank": "white"}
    tensors = {"logo": delta.float(), "blank": torch.ones_like(delta, dtype=torch.float32)}
    return key.with_updates(params=params, tensors=tensors)


# --------------------------------------------------------------------------- training


def _roll(x: Tensor, g: torch.Generator) -> Tensor:
    """Circularly shift each image by its own random even offset.

    This destroys absolute position (a logo painted at fixed pixels lands elsewhere)
    but keeps the 2 × 2 phase, which stride-2 surrogates reproduce.
    """
    h, w = x.shape[-2:]
    shifts = (2 * torch.randint(0, max(h, w) // 2, (len(x), 2), generator=g)).tolist()
    rolled = [
        torch.roll(img, (dy % h, dx % w), dims=(1, 2))
        for img, (dy, dx) in zip(x, shifts, strict=True)
    ]
    return torch.stack(rolled)


def carrier(key: Key, channels: int, size: int) -> Tensor:
    """The keyed carrier H starts from: a 2 × 2 tile of ±1 per channel (two of each sign,
    in an order drawn from the key), repeated over ``size`` × ``size``. [1, C, size, size].

    A pattern with period 2 is invisible at small amplitude, stationary, and is exactly
    what the stride-2 layers of UNet / ResNet / CEILNet surrogates can reproduce.
    """
    g = key.generator("carrier")
    tiles = [torch.tensor([1.0, 1.0, -1.0, -1.0])[torch.randperm(4, generator=g)] for _ in
             range(channels)]  # fmt: skip
    tile = torch.stack(tiles).view(channels, 2, 2)
    reps = (size + 1) // 2
    return tile.repeat(1, reps, reps)[None, :, :size, :size].contiguous()


def carrier_cos(outputs: Tensor, key: Key) -> float:
    """Cosine between the key's carrier tile and the 2 × 2 phase pattern of ``outputs``.

    The phase pattern: the high-pass of the outputs (minus a 3 × 3 box blur), averaged
    over images and over every 2 × 2 cell into one tile per channel, mean-free. A copy of
    H's output reproduces the carrier (near 1); weak stride-2 networks make 2 × 2
    artefacts of their own, in a direction that depends on their seed. ``outputs``
    [N, C, H, W] in [0, 1], H and W even.
    """
    n, c, h, w = outputs.shape
    x = outputs.float()
    high = x - F.avg_pool2d(F.pad(x, [1] * 4, mode="replicate"), 3, stride=1)
    tile = high.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(0, 2, 4))
    tile = tile - tile.mean(dim=(1, 2), keepdim=True)
    ref = carrier(key, c, 2)[0].to(tile.device)
    return float(F.cosine_similarity(tile.flatten(), ref.flatten(), dim=0))


def _dihedral(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random rotation by k·90° and flip for both batches."""
    turns = int(torch.randint(4, (1,), generator=g))
    x, y = torch.rot90(x, turns, dims=(2, 3)), torch.rot90(y, turns, dims=(2, 3))
    if bool(torch.randint(2, (1,), generator=g)):
        x, y = x.flip(3), y.flip(3)
    return x, y


class _Pool:
    """A fixed pool of (A, B) crops; ``batch`` draws random pairs with a dihedral flip."""

    def __init__(self, a: Tensor, b: Tensor, seed: int) -> None:
        self.a, self.b = a, b
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(self.a), (n,), generator=self.generator)
        return _dihedral(self.a[idx], self.b[idx], self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _extract_loss(
    r: nn.Module,
    positives: Tensor,
    negatives: Tensor,
    logo: Tensor,
    blank: Tensor,
    g: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """L_ext = ℓ_wm + ℓ_clean + ℓ_cst with randomly shifted inputs (one R pass)."""
    n_pos = len(positives)
    out = r(_roll(torch.cat([positives, negatives]), g))
    pos, neg = out[:n_pos], out[n_pos:]
    wm = F.mse_loss(pos, logo.expand_as(pos))
    clean = F.mse_loss(neg, blank.expand_as(neg))
    cst = F.mse_loss(pos, pos.mean(dim=0, keepdim=True).expand_as(pos))
    parts = {"wm": float(wm.detach()), "clean": float(clean.detach()), "cst": float(cst.detach())}
    return wm + clean + cst, parts


def _prior_weight(step: int, warmup: int) -> float:
    """Weight of the carrier prior: 1000 during warm-up, then linearly down to 0."""
    if step < warmup:
        return 1000.0
    return max(0.0, 1000.0 * (1 - (step - warmup) / max(1, warmup)))


def _ckpt(checkpoint: str | os.PathLike[str] | None, stage: str) -> Path | None:
    return None if checkpoint is None else Path(f"{checkpoint}.{stage}.pt")


@torch.no_grad()
def _apply(model: nn.Module, x: Tensor, dev: torch.device, batch: int = 16) -> Tensor:
    """``model`` on ``x`` in batches, outputs on the CPU. Runs where the model's weights
    are (``dev`` only for a model without any): surrogates come back on the CPU."""
    dev = model_device(model, default=dev)
    outs = [model(x[i : i + batch].to(dev)).float().clamp(0, 1).cpu() for i in
            range(0, len(x), batch)]  # fmt: skip
    return torch.cat(outs)


def protect(
    model: nn.Module,
    key: Key,
    *,
    task: str = "derain",
    data: str | None = None,
    profile: str | Profile = "quick",
    device: str = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    vgg16_weights: str | os.PathLike[str] | None = None,
) -> Protected:
    """Protect ``model`` (M, left untouched) by hiding the key's logo in all its outputs.

    Stage 1 trains H, R, D on (A, B = M(A)) crops of the task's real training images;
    stage 2 trains surrogates on (A, H(B)) (the profile's ``stage2`` list of architecture
    and loss; quick: UNet L2 and UNet perceptual, cpu: + ResNet-9 L1, paper: UNet L2,
    ResNet-9 L1, CEILNet perceptual) and a UNet L2 one on (A, B), then fine-tunes R to
    find the logo in the first ones' outputs and a blank in the last one's and in those of
    small independent models of the task (``INDEPENDENT``). ResNet-16 is never used here,
    so benchmarks can test a surrogate architecture stage 2 never saw.

    Args:
        model: the image-to-image model to protect ([N, C, H, W] in [0, 1] -> same).
        key: an ``output`` key from :func:`keygen` (its channels must match the model's).
        task: the task M solves (``pixmark.data.TASKS``): how inputs A are made.
        data: image source for A ("builtin", "builtin:xray" or a folder; default the
            task's own).
        profile: "quick" (≈ 3 min on 2 CPU cores), "cpu" or "paper" (see ``PROFILES``).
        device: "auto", "cpu" or "cuda".
        checkpoint: training-state path prefix (``<checkpoint>.<stage>.pt``); with
            ``resume`` an interrupted run continues where it stopped.
        vgg16_weights: a torchvision VGG-16 state dict for the perceptual loss; default
            features of the pretrained FFDNet (see :mod:`pixmark.losses`).

    Returns:
        ``Protected(model=Watermarked(M, H, δ), key=<key with R, queries and null
        statistics>, report={...})``.
    """
    from pixmark.api import task_splits
    from pixmark.attacks.surrogate import train_surrogate
    from pixmark.data import PairSampler, fixed_pairs
    from pixmark.losses import lsgan_d_loss, lsgan_g_loss, perceptual_loss, perceptual_name

    if key.scheme != SCHEME:
        raise PixmarkError(f"this is a {key.scheme!r} key; the output scheme needs an output key")
    prof = profile if isinstance(profile, Profile) else PROFILES[check_profile(profile)]
    channels = int(key.params["channels"])
    dev_spec = Device(device)
    dev = dev_spec.torch
    spec, channels, splits = task_splits(task, channels, data)
    train_imgs = [img for _, img in splits["train"]]
    val_imgs = [img for _, img in splits["val"]]
    logo = key.tensor("logo").float()
    if logo.shape[-1] != prof.size:
        logo = F.interpolate(
            logo, size=(prof.size, prof.size), mode="bilinear", align_corners=False
        )
    blank = torch.ones_like(logo)
    logo_d, blank_d = logo.to(dev), blank.to(dev)
    t_start = time.perf_counter()

    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    # ---- data: a pool of (A, B) crops, and held-out queries for verification
    sampler = PairSampler(train_imgs, spec, prof.size, channels, seed=key.seed("pool") % 2**31)
    a_pool = torch.cat([sampler.batch(64)[0] for _ in range(math.ceil(prof.pool / 64))])
    a_pool = a_pool[: prof.pool]
    try:
        b_pool = _apply(model, a_pool, dev)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PixmarkError(
            f"the model failed on {channels}-channel {prof.size} px inputs ({first}); does the "
            "key's channel count match the model?"
        ) from None
    if b_pool.shape != a_pool.shape:
        raise PixmarkError(
            f"the model returned {tuple(b_pool.shape[1:])} for {tuple(a_pool.shape[1:])} "
            "inputs; the output scheme protects image-to-image models"
        )
    queries = fixed_pairs(val_imgs, spec, prof.size, prof.n_queries,
                          seed=key.seed("queries") % 2**31, channels=channels)[0]  # fmt: skip

    # ---- stage 1: H, R, D
    seed_everything(key.seed("init") % 2**31)
    h = nets.create("unet", channels=channels, width=prof.h_width, depth=prof.h_depth,
                    in_channels=2 * channels, out="residual")  # fmt: skip
    r = Extractor(channels, channels, prof.r_width, prof.r_blocks)
    d = nets.create("patchgan", channels=channels, width=prof.d_width, n_layers=prof.d_layers)
    h, r, d = h.to(dev), r.to(dev), d.to(dev)
    perc = perceptual_loss(channels, vgg16_weights, prof.perceptual_layers).to(dev)
    betas = (prof.beta1, 0.999)
    opt = torch.optim.Adam(list(h.parameters()) + list(r.parameters()), lr=prof.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=prof.lr, betas=betas)
    pool = _Pool(a_pool, b_pool, key.seed("stage1") % 2**31)
    weight = Scalar(1.0)
    carrier_d = carrier(key, channels, prof.size).to(dev)
    g_aug = torch.Generator().manual_seed(key.seed("augment") % 2**31)
    warmup = int(prof.warmup * prof.steps)
    half = max(1, prof.batch // 2)

    def stage1(step: int) -> dict[str, float]:
        a, b = (t.to(dev) for t in pool.batch(prof.batch))
        logo_in = logo_d.expand(len(b), -1, -1, -1)
        b_wm = h(torch.cat([b, logo_in], dim=1)).clamp(0, 1)
        fid = F.mse_loss(b_wm, b)
        emd = weight.value * fid
        prior = _prior_weight(step, warmup)
        if prior > 0:  # start H on the keyed carrier, then let it learn freely
            emd = emd + prior * F.mse_loss(b_wm - b, (prof.carrier * carrier_d).expand_as(b))
        if prof.carrier_hold:  # keep the residual's direction on the keyed carrier
            cos = F.cosine_similarity((b_wm - b).flatten(1), carrier_d.expand_as(b).flatten(1))
            emd = emd + prof.carrier_hold * (1 - cos).mean()
        if prof.perceptual:
            emd = emd + prof.perceptual * perc(b_wm, b)
        if prof.adversarial:
            emd = emd + prof.adversarial * lsgan_g_loss(d(b_wm))
        ext, parts = _extract_loss(r, b_wm, torch.cat([a[:half], b[half:]]), logo_d, blank_d,
                                   g_aug)  # fmt: skip
        loss = emd + prof.extract * ext
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if prof.adversarial:
            d_loss = lsgan_d_loss(d(b), d(b_wm.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        fid_db = -10 * math.log10(max(float(fid.detach()), 1e-10))
        if step >= warmup:  # the fidelity controller (a Lagrange-multiplier-like weight)
            weight.value *= 1.03 if fid_db < prof.target_psnr else 1 / 1.03
            weight.value = min(max(weight.value, 1.0), 1e6)
        return {"psnr": fid_db, "w": weight.value, **parts}

    state1 = {"h": h, "r": r, "d": d, "opt": opt, "opt_d": opt_d, "pool": pool,
              "weight": weight}  # fmt: skip
    hist1 = run(stage1, state1, prof.steps, checkpoint=_ckpt(checkpoint, "stage1"),
                resume=resume, description="protect: stage 1 (H, R, D)",
                progress=progress)  # fmt: skip
    h.eval()
    for p in h.parameters():
        p.requires_grad_(False)
    signature = None
    if channels == 3 and prof.signature_psnr > 0:
        signature = Signature(signature_direction(key)).to(dev)
        with torch.no_grad():
            unit = float(signature.template(b_pool[:256].to(dev)).pow(2).mean().sqrt())
        signature.config["amp"] = 10 ** (-prof.signature_psnr / 20) / max(unit, 1e-8)
    wm = Watermarked(model, h, logo, signature).to(dev).eval()

    # ---- stage 2: surrogates of the watermarked and of the clean teacher
    snap_inputs = a_pool[: min(len(a_pool), 128)]
    snaps: dict[str, list[Tensor]] = {"wm": [], "clean": []}
    marks = {prof.surrogate_steps // 2 - 1, (3 * prof.surrogate_steps) // 4 - 1}

    def snapshot(kind: str):  # noqa: ANN202
        def hook(step: int, sm: nn.Module) -> None:
            if step in marks:
                was = sm.training
                sm.eval()
                snaps[kind].append(_apply(sm, snap_inputs, dev))
                sm.train(was)

        return hook

    surrogates: dict[str, nn.Module] = {}
    # The first watermarked surrogate keeps the names (seed, checkpoint) of the single one
    # earlier versions trained, so their training states still resume.
    plan = [(f"wm{i}" if i else "wm", wm, arch, loss) for i, (arch, loss) in enumerate(prof.stage2)]
    plan.append(("clean", model, "unet", "l2"))
    for name, teacher, arch, loss in plan:
        kind = "clean" if name == "clean" else "wm"
        sm_sampler = PairSampler(train_imgs, spec, prof.size, channels,
                                 seed=key.seed(f"surrogate-{name}") % 2**31)  # fmt: skip
        surrogates[name] = train_surrogate(
            as_query(teacher), sm_sampler, arch=arch, loss=loss, steps=prof.surrogate_steps,
            size=prof.size, width=prof.surrogate_width, batch_size=prof.batch, lr=prof.lr,
            channels=channels, seed=key.seed("surrogate") % 2**31, device=dev_spec,
            progress=progress, checkpoint=_ckpt(checkpoint, f"surrogate-{name}"),
            resume=resume, on_step=snapshot(kind),
        )  # fmt: skip
        snaps[kind].append(_apply(surrogates[name], snap_inputs, dev))
    others = independent_models(
        key, task, INDEPENDENT, steps=prof.independent_steps, width=prof.independent_width,
        size=prof.independent_size, channels=channels, data=data, device=device,
    )  # fmt: skip
    for other in others[:-CHECK_MODELS]:
        snaps["clean"].append(_apply(other.to(dev), snap_inputs, dev))
        other.cpu()
    pos_pool = torch.cat(snaps["wm"])
    neg_pool = torch.cat(snaps["clean"])
    bwm_pool = _embed_all(wm, b_pool, dev)

    # ---- stage 2: fine-tune R
    r.train()
    opt_r = torch.optim.Adam(r.parameters(), lr=prof.lr, betas=betas)
    g2 = torch.Generator().manual_seed(key.seed("stage2") % 2**31)

    def pick(x: Tensor, n: int) -> Tensor:
        return x[torch.randint(len(x), (n,), generator=g2)].to(dev)

    def stage2(step: int) -> dict[str, float]:
        q = max(1, prof.batch // 4)
        positives = torch.cat([pick(pos_pool, 2 * q), pick(bwm_pool, q)])
        negatives = torch.cat([pick(neg_pool, 2 * q), pick(a_pool, q), pick(b_pool, q)])
        loss, parts = _extract_loss(r, positives, negatives, logo_d, blank_d, g_aug)
        opt_r.zero_grad(set_to_none=True)
        loss.backward()
        opt_r.step()
        return parts

    hist2 = run(stage2, {"r": r, "opt": opt_r}, prof.finetune_steps,
                checkpoint=_ckpt(checkpoint, "stage2"), resume=resume,
                description="protect: stage 2 (R on surrogates)", progress=progress)  # fmt: skip
    r = r.cpu().eval()
    wm = wm.cpu().eval()
    model.cpu()

    # ---- key: R, queries, null statistics measured on held-out queries
    key = key.with_updates(
        params={"extractor": r.config, "task": task,
                "profile": profile if isinstance(profile, str) else "custom"},
        tensors={"queries": queries.contiguous(),
                 **{f"extractor.{k}": v.detach().clone() for k, v in r.state_dict().items()}},
    )  # fmt: skip
    held_out = {f"independent_{i}": as_query(m) for i, m in enumerate(others[-CHECK_MODELS:])}
    populations = {
        "protected": as_query(wm),
        "unprotected": as_query(model),
        "identity": lambda x: x.clamp(0, 1),
        "surrogate_of_protected": as_query(surrogates["wm"]),
        "surrogate_of_unprotected": as_query(surrogates["clean"]),
        **held_out,
    }
    scores = {name: query_scores(q, key)[1] for name, q in populations.items()}
    b_q = _apply(model, queries, torch.device("cpu"))
    bwm_q = _apply(wm, queries, torch.device("cpu"))
    sig_report: dict[str, Any] = {}
    if signature is not None:
        # Null values of the signature statistic: every independent model (the signature
        # is not trained, so R's negatives are unseen by it) and the clean surrogate.
        sig_nulls = {f"independent_{i}": as_query(m) for i, m in enumerate(others)}
        sig_nulls["surrogate_of_unprotected"] = as_query(surrogates["clean"])
        sig_cpu = signature.cpu()
        null_rho = {n: pooled_rho(q(queries.float()).float().clamp(0, 1), b_q, sig_cpu)
                    for n, q in sig_nulls.items()}  # fmt: skip
        key = key.with_updates(
            params={"signature": {**sig_cpu.config, "psnr": prof.signature_psnr,
                                  "null_rho": [round(v, 6) for v in null_rho.values()],
                                  "null_models": list(null_rho)}},
            tensors={"signature.direction": sig_cpu.direction.flatten().clone(),
                     "unmarked": b_q.half().contiguous()},
        )  # fmt: skip
        sur_q = _apply(surrogates["wm"], queries, torch.device("cpu"))
        sig_report = {
            "psnr_signature_alone": prof.signature_psnr,
            "rho_protected": round(pooled_rho(bwm_q, b_q, sig_cpu), 4),
            "rho_surrogate_of_protected": round(pooled_rho(sur_q, b_q, sig_cpu), 4),
            "null_rho": {n: round(v, 4) for n, v in null_rho.items()},
        }
    null_names = ("unprotected", "identity", "surrogate_of_unprotected", *held_out)
    null_scores = torch.cat([scores[n] for n in null_names])
    success_nc = success_threshold(scores["protected"], [scores[n] for n in null_names])
    null_rate = float((null_scores > success_nc).float().mean())
    paper_null_rate = float((null_scores > SUCCESS_NC).float().mean())
    key = key.with_updates(
        params={"success_nc": success_nc, "null_rate": null_rate,
                "paper_null_rate": paper_null_rate, "n_null_queries": len(null_scores),
                "null_models": list(null_names)}
    )  # fmt: skip
    report = {
        "profile": asdict(prof),
        "perceptual": perceptual_name(vgg16_weights),
        "psnr_protected_vs_unprotected": float(psnr(bwm_q, b_q)),
        "stage1": hist1.to_dict(),
        "stage2": hist2.to_dict(),
        "logo_nc": {n: _summary(s) for n, s in scores.items()},
        "success_nc": success_nc,
        "null_rate": null_rate,
        "signature": sig_report,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    return Protected(model=wm, key=key, report=report)


def success_threshold(protected: Tensor, nulls: Sequence[Tensor]) -> float:
    """The key's per-query success threshold on ``logo_nc``, fixed at protect time.

    ``protected``: the protected model's query scores; ``nulls``: one tensor of query
    scores per null model (unprotected model, identity, surrogate of the unprotected
    model, held-out independent models). The threshold is ``MARGIN`` below the median
    protected score, capped at the paper's 0.95, floored at ``SUCCESS_FLOOR`` and at
    ``MARGIN`` above the median score of every null model.

    A surrogate reproduces its teacher's scores a little lower, so a fixed 0.95 fails
    surrogates of protected models that themselves score just above it (session 11: the
    demo's model at 0.95-0.96, its surrogate at 0.88). Session 11 floored at ``MARGIN``
    above the single highest null query instead; one query of a held-out independent
    model near 0.85 then held both keys protected that session at 0.95. A few high null
    queries are what the pooled test's null rate (measured at this threshold) is for; the
    floor only keeps the threshold clear of a null model's typical score. Verify also
    reports the paper's count (scores > 0.95) and its decision.
    """
    if not len(nulls):
        raise PixmarkError("success_threshold needs the query scores of at least one null model")
    adapted = float(protected.median()) - MARGIN
    highest_null = max(float(s.median()) for s in nulls)
    adapted = max(adapted, SUCCESS_FLOOR, highest_null + MARGIN)
    return round(min(adapted, SUCCESS_NC), 4)


@torch.no_grad()
def _embed_all(wm: Watermarked, b: Tensor, dev: torch.device, batch: int = 32) -> Tensor:
    return torch.cat([wm.embed(b[i : i + batch].to(dev)).cpu() for i in range(0, len(b), batch)])


def _summary(scores: Tensor) -> dict[str, float]:
    s = scores.float()
    return {
        "mean": round(float(s.mean()), 4),
        "min": round(float(s.min()), 4),
        "median": round(float(s.median()), 4),
        "max": round(float(s.max()), 4),
        "success_rate": round(float((s > SUCCESS_NC).float().mean()), 4),
    }


# --------------------------------------------------------------------------- verify


def verify(
    query: Query,
    key: Key,
    *,
    queries: Tensor | None = None,
    nulls: list[Query] | None = None,
    evidence_dir: str | os.PathLike[str] | None = None,
    alpha: float = ALPHA,
) -> Verdict:
    """Is the suspect behind ``query`` derived from the model protected with ``key``?

    The suspect answers the key's held-out query images (or ``queries``); R extracts a
    watermark from each answer, and each scores ``logo_nc`` against the logo. A query
    succeeds when its score exceeds ``key.params["success_nc"]`` (0.1 below the median
    score of the key's protected model, at most the paper's 0.95:
    :func:`success_threshold`; ``paper_successes``, ``paper_p_value`` and
    ``paper_decision`` in ``details`` apply the paper's fixed 0.95). The number of
    successes is tested against the per-query success rate of null models
    (``pooled_success_test``): the models in ``nulls`` if given (independent models of
    the same task), else the rate measured at protect time on the unprotected model, the
    identity and a surrogate of the unprotected model. Match when p ≤ ``alpha`` and the
    suspect's 2 × 2 phase pattern is the key's carrier (``carrier_cos`` ≥
    ``CARRIER_GATE``; otherwise p is reported as 1 and the pooled value as
    ``pooled_p_value``): R alone also reacts to the 2 × 2 artefacts of some weak
    independent networks.

    Keys with a content signature (colour keys protected since session 8) get a second
    test on the same answers, made for the thief the logo test misses (rotated, flipped,
    cropped-and-resized training pairs average H's carrier away, JPEG removes it; the
    signature survives both). Its p-value ``signature_p_value`` is the larger of two:
    ``signature_key_p``, the owner's key ranked among random keys
    (:func:`signature_key_test`, exact: "with this key, not another owner's"), and
    ``signature_null_p``, the pooled correlation ρ of (answers − the owner's unmarked
    outputs, stored in the key) with the key's template against the ρ of null models
    (measured at protect, or three or more ``nulls``; predictive Student t): "signed".
    Since session 13 the decision takes both tests, Bonferroni-corrected so that its level stays
    ``alpha``: p = 2 · min(logo p, signature p), capped at 1; ``logo_p_value``,
    ``logo_match``, ``signature_match`` (each at ``alpha`` / 2) and ``matched_by`` say
    which test found it. A key with the one-band signature of sessions 8-12 has two
    coefficients (one angle): ``signature_key_p`` is then the share of random angles at
    least as close. With user ``queries`` the signature is skipped (the unmarked outputs
    are the key's).

    Evidence (with ``evidence_dir``): ``evidence.png``, a grid of queries, suspect
    outputs and recovered logos, next to the key's logo.
    """
    if key.scheme != SCHEME:
        raise PixmarkError(f"this is a {key.scheme!r} key; verify it with the {key.scheme} scheme")
    threshold = float(key.params.get("success_nc", SUCCESS_NC))
    outputs, scores = query_scores(query, key, queries)
    n = len(scores)
    successes = int((scores > threshold).sum())
    cos = _carrier_cos_or_none(outputs, key)
    details: dict[str, Any] = {
        "statistic_name": "mean logo NC (centred, ±1)",
        "alpha": alpha,
        "success_threshold": threshold,
        "successes": successes,
        "paper_successes": int((scores > SUCCESS_NC).sum()),
        "carrier_cos": None if cos is None else round(cos, 4),
        "carrier_gate": CARRIER_GATE,
        "scores": [round(float(s), 4) for s in scores],
    }
    if nulls:
        answers = [query_scores(q, key, queries) for q in nulls]
        per_null = [s for _, s in answers]
        null_scores = torch.cat(per_null)
        null_rate = float((null_scores > threshold).float().mean())
        paper_null_rate: float | None = float((null_scores > SUCCESS_NC).float().mean())
        n_null = len(null_scores)
        # Each null model's logo p-value, as the suspect's is taken (for null_fpr below).
        null_logo_p = [
            pooled_success_test(int((s > threshold).sum()), len(s), null_rate, n_null)
            if _passes_gate(_carrier_cos_or_none(o, key)) else 1.0
            for o, s in answers
        ]  # fmt: skip
        details.update({"n_null_models": len(per_null),
                        "null_mean": float(null_scores.mean())})  # fmt: skip
    else:
        if "null_rate" not in key.params:
            raise PixmarkError(
                f"the output key of {key.owner!r} has no null statistics; protect a model "
                "with it first, or pass null models"
            )
        null_rate = float(key.params["null_rate"])
        paper_null_rate = key.params.get("paper_null_rate")  # keys since session 11
        n_null = int(key.params["n_null_queries"])
        details["null_source"] = "measured at protect: " + ", ".join(key.params["null_models"])
    details["null_rate"] = null_rate
    p_value = pooled_success_test(successes, n, null_rate, n_null)
    gate = _passes_gate(cos)  # False: R reacted to a 2 x 2 artefact that is not the key's carrier
    if paper_null_rate is not None:  # the paper's rule: successes are scores > 0.95
        paper_p = pooled_success_test(details["paper_successes"], n, paper_null_rate, n_null)
        details["paper_p_value"] = paper_p if gate else 1.0
        details["paper_decision"] = decide(details["paper_p_value"], alpha)
    if not gate:
        details["pooled_p_value"] = p_value
        p_value = 1.0
    details["logo_p_value"] = p_value
    null_outputs = [o for o, _ in answers] if nulls else []
    # B = M(queries) is known for the key's own queries only
    sig = None if queries is not None else _signature_test(key, outputs, null_outputs)
    level, null_sig_p = alpha, [1.0] * len(null_outputs)
    if sig is not None:  # two tests of one claim, Bonferroni: the decision's level stays alpha
        sig_details, null_sig_p = sig
        details.update(sig_details)
        level = alpha / 2
        details["logo_match"] = p_value <= level
        details["signature_match"] = sig_details["signature_p_value"] <= level
        details["matched_by"] = [name for name in ("logo", "signature")
                                 if details[f"{name}_match"]]  # fmt: skip
        p_value = min(1.0, 2.0 * min(p_value, sig_details["signature_p_value"]))
    if nulls:  # the share of the null models this rule itself calls a match
        hits = sum(min(a, b) <= level for a, b in zip(null_logo_p, null_sig_p, strict=True))
        details["null_fpr"] = hits / len(nulls)
    evidence: dict[str, str] = {}
    if evidence_dir is not None:
        evidence["grid"] = str(_evidence(key, queries, outputs, scores, Path(evidence_dir)))
    return Verdict(
        scheme=SCHEME,
        statistic=float(scores.mean()),
        threshold=threshold,
        p_value=p_value,
        decision=decide(p_value, alpha),  # type: ignore[arg-type]
        n_queries=n,
        evidence=evidence,
        details=details,
    )


def _carrier_cos_or_none(outputs: Tensor, key: Key) -> float | None:
    h, w = outputs.shape[-2:]
    return carrier_cos(outputs, key) if h % 2 == 0 and w % 2 == 0 else None


def _passes_gate(cos: float | None) -> bool:
    return cos is None or cos >= CARRIER_GATE


def load_signature(key: Key) -> Signature | None:
    """The key's content signature, or None (grayscale keys, keys made before it)."""
    cfg = key.params.get("signature")
    if cfg is None:
        return None
    return Signature.from_config(cfg, key.tensor("signature.direction")).eval()


def _signature_nulls(key: Key, passed: list[float]) -> tuple[list[float], str]:
    """The null models' ρ the signature test compares with, and where they come from:
    three or more passed to verify replace the key's (measured at protect); fewer cannot
    fit a null alone and are added to them."""
    stored = [float(v) for v in key.params["signature"]["null_rho"]]
    source = "measured at protect: " + ", ".join(key.params["signature"]["null_models"])
    if len(passed) >= 3:
        return passed, f"{len(passed)} null models passed to verify"
    if passed:
        return stored + passed, f"{source} + {len(passed)} passed to verify"
    return stored, source


def _signature_test(key: Key, outputs: Tensor, null_outputs: list[Tensor],
                    ) -> tuple[dict[str, Any], list[float]] | None:  # fmt: skip
    """The signature half of verify: the owner's key ranked among random keys (exact,
    :func:`signature_key_test`) and the pooled ρ against the null models' (predictive).

    ``outputs``: the suspect's answers to the key's queries; ``null_outputs``: those of
    the null models passed to verify (may be empty). Returns the details, and each null
    model's signature p-value taken as the suspect's is (against the other null models),
    or None for keys without a signature.
    """
    signature = load_signature(key)
    if signature is None:
        return None
    from pixmark.stats import predictive_p_value

    unmarked = key.tensor("unmarked").float()

    def p_value(answers: Tensor, rho: float, null_rho: list[float]) -> tuple[float, dict]:
        # Both must be small: "with this key" (exact, among random keys) and "signed"
        # (against null models). The larger is the test's p-value: its level is exact.
        exact = signature_key_test(answers, unmarked, signature)
        null_p = predictive_p_value(rho, null_rho)
        return max(exact["key_p"], null_p), {**exact, "null_p": null_p}

    passed = [pooled_rho(o, unmarked, signature) for o in null_outputs]
    null_rho, source = _signature_nulls(key, passed)
    rho = pooled_rho(outputs, unmarked, signature)
    p, parts = p_value(outputs, rho, null_rho)
    per_null = [
        p_value(o, r, _signature_nulls(key, passed[:i] + passed[i + 1 :])[0])[0]
        for i, (o, r) in enumerate(zip(null_outputs, passed, strict=True))
    ]
    details = {
        "signature_rho": round(rho, 4),
        "signature_p_value": p,
        "signature_key_p": parts["key_p"],
        "signature_null_p": parts["null_p"],
        "signature_fit_cos": parts["fit_cos"],
        "signature_bands": len(signature.config["sigmas"]),
        "signature_split": bool(signature.config.get("split", False)),
        "signature_null_mean": round(sum(null_rho) / len(null_rho), 4),
        "signature_null_max": round(max(null_rho), 4),
        "signature_null_source": source,
    }
    return details, per_null


def _evidence(key: Key, queries: Tensor | None, outputs: Tensor, scores: Tensor,
              out_dir: Path, count: int = 6) -> Path:  # fmt: skip
    from pixmark.viz import save_grid

    q = key.tensor("queries") if queries is None else queries
    order = torch.argsort(scores, descending=True)[:count].tolist()
    recovered = extract(key, outputs[order])
    logo = key.tensor("logo")[0]
    rows = [
        [q[i] for i in order],
        [outputs[i] for i in order],
        [recovered[j] for j in range(len(order))],
        [logo] + [key.tensor("blank")[0]],
    ]
    labels = ["queries", "suspect outputs", "recovered", "logo, blank"]
    signature = load_signature(key)
    if signature is not None and queries is None:  # what the signature test correlates
        unmarked = key.tensor("unmarked").float()[order]
        gain = 0.5 / max(float(signature.config["amp"] * signature.template(unmarked).abs().max()),
                         1e-6)  # fmt: skip
        rows.insert(3, [(0.5 + gain * signature.config["amp"] * t).clamp(0, 1)
                        for t in signature.template(unmarked)])  # fmt: skip
        seen = signature.component(outputs[order].float() - unmarked)
        rows.insert(4, [(0.5 + gain * t).clamp(0, 1) for t in seen])
        labels[3:3] = ["signature (key)", "in the suspect"]
    cols = [f"NC {float(scores[i]):.2f}" for i in order]
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_grid(rows, out_dir / "evidence.png", row_labels=labels, col_labels=cols)


__all__ = [
    "PROFILES",
    "Extractor",
    "Signature",
    "Profile",
    "Watermarked",
    "extract",
    "keygen",
    "load_extractor",
    "load_signature",
    "logo_nc",
    "protect",
    "query_scores",
    "pooled_rho",
    "render_logo",
    "signature_key_test",
    "signature_rho",
    "verify",
]
