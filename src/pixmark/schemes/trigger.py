"""The ``trigger`` scheme (Quan et al., TNNLS 2020): a backdoor only the owner can open.

Keygen draws a random trigger image K (uniform noise) from the key's secret and the
owner's name (HMAC-SHA256 -> PRNG), so nobody can choose a trigger after the fact, and a
*designed* verification image S0 = G(K): a simple, non-learned filter of K that no useful
model of the task computes. Protect fine-tunes the host on

    l(theta) = l_d + lambda * copies * ||M(K; theta) - S0||^2        (paper eq. 4-6)

until the trigger response is close to S0, then stores S <- M(K; theta*) in the key,
together with a small copyright visualizer (a zoo U-Net) that turns S into a picture of
the owner's name. Verify needs only black-box access: it sends K and compares the answer
S' with S.

Images are float32 in [0, 1], NCHW. Trigger sizes are in pixels (M x N = size x size).

Designs G (the rule for every task):

* denoising and every other task whose input and output have one size (derain, deblur,
  jpeg, xray, user tasks): the model input is K itself, and
  ``"sobel"`` (default; the authors' code): S0 = clip(K - |Sobel_xy(K)|, 0, 1), the
  residual of the network tied to the absolute mixed Sobel derivative (OpenCV ``dx=1,
  dy=1``, 3x3, reflect border);
  ``"gradient"`` (the paper's eq. 2, K - grad K): S0 = clip(K - |grad K|, 0, 1) with the
  forward-difference gradient magnitude (replicated border).
* super-resolution (``sr<s>``, VDSR convention: the model gets an image already upsampled
  to the output size): K is (size/s) x (size/s) noise, the model input is its bilinear
  upsampling K^ (size x size), and S0 = clip(K^ + s * D(K^), 0, 1) (paper eq. 3,
  "K^ + grad K^"), D the design's derivative magnitude; the factor s restores the
  magnitude that interpolation took out of the derivative.

Verification statistic (paper eq. 8): ``d = ||S' - S||_2 / #S`` over all triggers of the
key stacked (several triggers = one bigger trigger), with ``eta`` the 5 % quantile of the
paper's Gamma null (sigma = 1/4, :func:`pixmark.stats.trigger_threshold`), 6.07e-3 for one
40 x 40 gray trigger. The paper's second test, NCC > 0.95, is computed on *residuals*
(response minus trigger input, the branch the authors' code watermarks): in output space
every response shares the trigger itself and even the identity map scores NCC ~ 0.6.
The decision is "match" iff the key passes the ownership checks below, d <= eta and
NCC above the key's ``match_ncc`` (set at protect above what other keys reach, between
0.75 and the paper's 0.95: :func:`match_threshold`). The p-value is the Gamma null's;
with ``nulls`` an empirical p-value and false-positive rate over null models and random
keys go into ``details``.

Ownership checks (the ambiguity attack, :func:`forge_key`): a thief who holds the model
can pick any key K' and set S' = M(K'); then d(M(K'), S') = 0. pixmark rejects such a
key because (1) K must be the trigger derived from the key's own secret and owner, and
(2) the stored S must itself pass the verification test against the design G(K):
a genuine S was trained to G(K), while a natural model's response to noise lies far from
it (d ~ 8e-3 to 1e-2 > eta, residual NCC < 0.6 on the models we measured). The key's
commitment and creation time go into the verdict for a certificate to bind.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from pixmark import data as pdata
from pixmark.errors import PixmarkError
from pixmark.keys import Key, new_key
from pixmark.schemes.base import Protected, Query, as_query, profile_settings
from pixmark.stats import Verdict, empirical_p_value, trigger_p_value, trigger_threshold
from pixmark.train import Device, run

SCHEME = "trigger"
DESIGNS = ("sobel", "gradient", "bernoulli")
#: NCC (Pearson, on residuals) a response must exceed, as in the paper: what protect
#: requires of the embedded response and the key check of the stored S against G(K).
NCC_THRESHOLD = 0.95
#: A suspect's NCC threshold is set per key at protect (:func:`match_threshold`): the
#: highest NCC that the original host (on K and ``NULL_KEYS`` random keys) and the
#: protected host (on the random keys) reach, plus ``MATCH_NCC_MARGIN``, at least
#: ``MATCH_NCC_FLOOR``, at most the paper's 0.95. Measured
#: (benchmarks/fpr.yaml): 1089 null scores on 99 independent models never exceeded 0.51,
#: while fine-tuned (25-400 steps) and 30-50 % pruned hosts kept 0.70-0.92.
MATCH_NCC_FLOOR = 0.75
MATCH_NCC_MARGIN = 0.25
NULL_KEYS = 50
#: The rank test (:func:`rank_test`): random triggers sent to the suspect beside K, and
#: the level at which K's rank among them decides "match" on its own. With 999 keys the
#: smallest p-value is exactly 1e-3, so K must out-score every one of them.
RANK_KEYS = 999
RANK_ALPHA = 1e-3
#: The Gamma null's level (p < 0.05) and per-pixel error std (1/4), as in the paper.
NULL_P = 0.05
NULL_SIGMA = 0.25
MIN_SIZE, MAX_SIZE = 8, 1024
#: Side of the rendered owner logo and of the visualizer's output, pixels.
LOGO_SIZE = 96
#: Residual NCC the embedding aims for before it stops early (quick profile).
EMBED_NCC = 0.99

#: Training budgets. ``lam``, ``copies``: paper eq. 4 (lambda = 1e-3, 5 trigger copies as
#: in the authors' code). ``patch``: data crop side. ``steps``: the most fine-tuning steps;
#: with ``early_stop`` training ends once d <= eta * ``embed_fraction`` and residual NCC
#: >= 0.99 (checked every ``check_every`` steps). ``vis_*``: copyright visualizer.
#: ``paper``: Adam 1e-4, batch 128, 40 x 40 crops, ~8 epochs of the DnCNN patch set.
#: ``awp``: the trigger loss is also taken at weights moved by ``awp * ||W||`` in its worst
#: direction (:func:`_perturbed_trigger_loss`); with training past the first fit (no early
#: stop) that is what kept the mark through 100 fine-tuning steps in
#: benchmarks/trigger/experiments/embedding.py. ``negatives``: that many other noise
#: triggers per step answered as the original host does (off: it made the mark K's own but
#: more fragile under fine-tuning, same experiment). ``area_ref``: the trigger side (pixels)
#: ``lam`` is stated for; a larger trigger's weight is scaled by (area_ref / size)^2, since the
#: trigger loss is a sum over its pixels and a 600 x 600 trigger would otherwise weigh 225
#: times a 40 x 40 one against the same task loss (0: no scaling; :func:`trigger_weight`).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "steps": 600,
        "batch_size": 8,
        "patch": 40,
        "lr": 1e-4,
        "lam": 1e-2,
        "copies": 5,
        "area_ref": 40,
        "early_stop": True,
        "check_every": 25,
        "embed_fraction": 0.25,
        "negatives": 0,
        "awp": 0.0,
        "vis_steps": 300,
        "vis_width": 16,
        "vis_batch": 8,
        "eval_size": 64,
        "eval_count": 16,
    },
    "cpu": {
        "steps": 2000,
        "batch_size": 16,
        "patch": 40,
        "lr": 1e-4,
        "lam": 1e-2,
        "copies": 5,
        "area_ref": 40,
        "early_stop": False,
        "check_every": 100,
        "embed_fraction": 0.25,
        "negatives": 0,
        "awp": 0.01,
        "vis_steps": 1000,
        "vis_width": 32,
        "vis_batch": 16,
        "eval_size": 96,
        "eval_count": 32,
    },
    "paper": {
        "steps": 15000,
        "batch_size": 128,
        "patch": 40,
        "lr": 1e-4,
        "lam": 1e-3,
        "copies": 5,
        "area_ref": 40,
        "early_stop": False,
        "check_every": 500,
        "embed_fraction": 0.25,
        "negatives": 0,
        "awp": 0.01,
        "vis_steps": 3000,
        "vis_width": 32,
        "vis_batch": 32,
        "eval_size": 180,
        "eval_count": 68,
    },
}


# --------------------------------------------------------------------------- designs


def sr_scale(task: str) -> int | None:
    """The upscaling factor of a super-resolution task name (``sr2`` -> 2), else None."""
    found = re.fullmatch(r"sr(\d+)", task)
    return int(found.group(1)) if found else None


def sobel_xy(images: Tensor) -> Tensor:
    """|d^2/dx dy| by the 3x3 Sobel kernel (OpenCV ``dx=1, dy=1``), reflect border. >= 0."""
    kernel = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
    c = images.shape[1]
    weight = kernel.to(images).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), weight, groups=c).abs()


def gradient_magnitude(images: Tensor) -> Tensor:
    """|grad| from forward differences, replicated border, per channel. >= 0."""
    padded = F.pad(images, (0, 1, 0, 1), mode="replicate")
    gx = padded[..., :-1, 1:] - padded[..., :-1, :-1]
    gy = padded[..., 1:, :-1] - padded[..., :-1, :-1]
    return (gx * gx + gy * gy).sqrt()


def _derivative(images: Tensor, design: str) -> Tensor:
    if design == "sobel":
        return sobel_xy(images)
    if design == "gradient":
        return gradient_magnitude(images)
    raise PixmarkError(f"unknown trigger design {design!r}; choose from {', '.join(DESIGNS)}")


def trigger_input(noise: Tensor, task: str) -> Tensor:
    """The model input made from trigger noise: K itself, or its bilinear upsampling (SR)."""
    scale = sr_scale(task)
    if scale is None:
        return noise
    return F.interpolate(noise, scale_factor=scale, mode="bilinear", align_corners=False)


def bernoulli_labels(inputs: Tensor) -> Tensor:
    """A fair-coin 0/1 "label image" read off trigger inputs: bit 16 of each pixel value.

    The paper's Base-1 baseline: the host is trained to answer its trigger with a random
    label image, as a classifier is trained on a backdoor set. The bits are a fixed
    function of K (so anyone can recompute the design), and uniform noise gives fair coins.
    """
    return torch.remainder(torch.floor(inputs * 65536.0), 2.0)


def designed(inputs: Tensor, task: str, design: str = "sobel") -> Tensor:
    """The designed verification images S0 = G(K) for trigger inputs [T, C, M, N] in [0, 1].

    Denoising and other same-size tasks: clip(K - D(K)); super-resolution ``sr<s>``:
    clip(K^ + s * D(K^)); D = |Sobel_xy| (``sobel``) or |grad| (``gradient``).
    ``bernoulli`` (the paper's Base-1 baseline, for comparison only): a random 0/1 label
    image, :func:`bernoulli_labels` of the model input.
    """
    scale = sr_scale(task)
    if design == "bernoulli":
        return bernoulli_labels(inputs)
    derivative = _derivative(inputs, design)
    if scale is None:
        return (inputs - derivative).clamp(0, 1)
    return (inputs + scale * derivative).clamp(0, 1)


# --------------------------------------------------------------------------- keygen


def _params(key: Key) -> dict[str, Any]:
    if key.scheme != SCHEME:
        raise PixmarkError(
            f"this is a {key.scheme!r} key; the trigger scheme needs a key made by "
            "keygen --scheme trigger"
        )
    needed = ("size", "task", "channels", "design", "count")
    missing = [name for name in needed if name not in key.params]
    if missing:
        raise PixmarkError(f"the trigger key of {key.owner!r} lacks {', '.join(missing)}")
    return key.params


def make_triggers(key: Key) -> Tensor:
    """Regenerate the key's trigger inputs [count, C, size, size] from its secret and owner."""
    return random_triggers(key, 1, "trigger")[0]


def random_triggers(key: Key, count: int, stream: str) -> list[Tensor]:
    """``count`` trigger sets drawn like the key's (same size, channels, task and number of
    triggers) from the key's PRNG stream ``stream``; stream "trigger" gives the key's own."""
    p = _params(key)
    side = p["size"] // (sr_scale(p["task"]) or 1)
    g = key.generator(stream)
    shape = (p["count"], p["channels"], side, side)
    return [trigger_input(torch.rand(*shape, generator=g), p["task"]) for _ in range(count)]


def keygen(
    owner: str,
    *,
    size: int = 40,
    task: str = "denoise",
    channels: int = 1,
    design: str = "sobel",
    count: int = 1,
    secret: str | None = None,
) -> Key:
    """A trigger key: ``count`` random size x size triggers derived from the secret and owner.

    Args:
        owner: the owner's name (also rendered as the logo at protect time).
        size: side of the trigger and verification images in pixels, 8-1024 (paper: 40 for
            denoising, 20 for SR; must be divisible by the SR scale).
        task: the host's task (``pixmark.data.TASKS`` name or any name; ``sr<s>`` selects
            the SR design).
        channels: 1 (gray) or 3 (RGB) like the host model.
        design: ``sobel`` (default) or ``gradient`` (see the module docstring), or
            ``bernoulli``: the paper's Base-1 baseline (a random label image as the
            response), for comparison only.
        count: number of triggers, 1-64; they are verified as one stacked image.
        secret: 64 hex digits to make a reproducible key (default: fresh random).

    Returns:
        An unprotected key (tensor ``trigger``); :func:`protect` adds the response S.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise PixmarkError(f"trigger size must be an integer from {MIN_SIZE} to {MAX_SIZE} px")
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
    if design not in DESIGNS:
        raise PixmarkError(f"unknown trigger design {design!r}; choose from {', '.join(DESIGNS)}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise PixmarkError(f"count must be an integer from 1 to 64 triggers, got {count!r}")
    if not isinstance(task, str) or not task:
        raise PixmarkError("task must be a task name such as 'denoise' or 'sr2'")
    scale = sr_scale(task)
    if scale is not None and (scale < 1 or size % scale):
        raise PixmarkError(
            f"trigger size {size} is not divisible by the {task} scale {scale}; "
            f"use a multiple of {scale} such as {max(scale, size - size % scale)}"
        )
    params = {
        "size": size,
        "task": task,
        "channels": channels,
        "design": design,
        "count": count,
        "eta": trigger_threshold(count * size, size * channels, NULL_P, NULL_SIGMA),
        "protected": False,
    }
    key = new_key(SCHEME, owner, params=params, secret=secret)
    return key.with_updates(tensors={"trigger": make_triggers(key)})


# --------------------------------------------------------------------------- statistics


def distance(response: Tensor, reference: Tensor) -> float:
    """Paper eq. 8: ||S' - S||_2 / #S (Frobenius norm over everything / element count)."""
    return float((response.double() - reference.double()).norm() / reference.numel())


def residual_ncc(response: Tensor, reference: Tensor, inputs: Tensor) -> float:
    """Pearson correlation of the residuals (response - input) and (reference - input)."""
    a = (response.double() - inputs.double()).flatten()
    b = (reference.double() - inputs.double()).flatten()
    a, b = a - a.mean(), b - b.mean()
    energy = float((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / math.sqrt(energy)) if energy > 0 else 0.0


def _threshold(reference: Tensor) -> float:
    t, c, m, n = reference.shape
    return trigger_threshold(t * m, n * c, NULL_P, NULL_SIGMA)


def _p_value(d: float, reference: Tensor) -> float:
    t, c, m, n = reference.shape
    return trigger_p_value(d, t * m, n * c, NULL_SIGMA)


def _passes(d: float, ncc: float, eta: float, ncc_threshold: float = NCC_THRESHOLD) -> bool:
    return d <= eta and ncc > ncc_threshold


def match_threshold(null_nccs: list[float]) -> float:
    """A suspect's residual-NCC threshold from null NCCs (see ``MATCH_NCC_FLOOR``)."""
    top = max(null_nccs, default=NCC_THRESHOLD)
    return min(max(top + MATCH_NCC_MARGIN, MATCH_NCC_FLOOR), NCC_THRESHOLD)


def _match_ncc(key: Key) -> float:
    """The key's suspect NCC threshold; keys made before it existed keep the paper's."""
    return float(key.params.get("match_ncc", NCC_THRESHOLD))


def _check_tensors(key: Key) -> tuple[Tensor, Tensor]:
    """The key's trigger and response, checked for consistent shapes."""
    p = _params(key)
    if not p.get("protected") or "response" not in key.tensors:
        raise PixmarkError(
            f"the trigger key of {key.owner!r} has no verification image yet; protect a model "
            "with it first (pixmark protect)"
        )
    trigger, response = key.tensor("trigger").float(), key.tensor("response").float()
    expected = (p["count"], p["channels"], p["size"], p["size"])
    for name, t in (("trigger", trigger), ("verification image", response)):
        if tuple(t.shape) != expected:
            raise PixmarkError(
                f"the key's {name} has shape {tuple(t.shape)} but the key says {p['count']} "
                f"trigger(s) of {p['size']}x{p['size']} px with {p['channels']} channel(s); "
                "the key was altered or mixes triggers of different sizes"
            )
    return trigger, response


def check_key(key: Key) -> dict[str, Any]:
    """The ownership checks a claim must pass before its key is used as evidence.

    Returns ``{"valid", "reason", "trigger_derived", "design_d", "design_ncc", "eta"}``:
    the trigger must be the one derived from the key's secret and owner, and the stored
    verification image S must pass the verification test against the design G(K) (which a
    forged S = M(K') of a natural model does not).
    """
    trigger, response = _check_tensors(key)
    p = key.params
    derived = bool(torch.allclose(make_triggers(key), trigger, atol=1e-6, rtol=0))
    target = designed(trigger, p["task"], p["design"])
    eta = _threshold(response)
    d = distance(response, target)
    ncc = residual_ncc(response, target, trigger)
    reason = ""
    if not derived:
        reason = "the trigger is not the one derived from the key's secret and owner"
    elif not _passes(d, ncc, eta):
        reason = (
            f"the verification image is not the designed G(K) (d {d:.3g} vs eta {eta:.3g}, "
            f"residual NCC {ncc:.3f}); it was read off a model instead of embedded"
        )
    return {
        "valid": not reason,
        "reason": reason,
        "trigger_derived": derived,
        "design_d": d,
        "design_ncc": ncc,
        "eta": eta,
    }


# --------------------------------------------------------------------------- visualizer


def render_logo(owner: str, size: int = LOGO_SIZE) -> Tensor:
    """The owner's name as black text on white, [1, 1, size, size] in [0, 1]."""
    words = f"\u00a9 {owner}".split()
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    margin = max(2, size // 16)
    for font_size in range(size // 2, 5, -1):
        font = ImageFont.load_default(size=font_size)
        lines: list[str] = []
        for word in words:
            candidate = f"{lines[-1]} {word}" if lines else word
            if lines and draw.textlength(candidate, font=font) <= size - 2 * margin:
                lines[-1] = candidate
            else:
                lines.append(word)
        widths = [draw.textlength(line, font=font) for line in lines]
        height = len(lines) * font_size * 1.15
        if max(widths) <= size - 2 * margin and height <= size - 2 * margin:
            break
    y = (size - height) / 2
    for line, width in zip(lines, widths, strict=True):
        draw.text(((size - width) / 2, y), line, fill=0, font=font)
        y += font_size * 1.15
    draw.rectangle([0, 0, size - 1, size - 1], outline=0, width=max(1, size // 48))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return (pixels.view(1, 1, size, size).float() / 255.0).contiguous()


class CopyrightVisualizer(nn.Module):
    """The copyright visualizer R (paper sec. IV-D): trigger responses -> a logo picture.

    A small encoder-decoder: two stride-2 4x4 convolutions and adaptive average pooling to
    4 x 4 encode the responses (stacked channel-wise, any M x N), two linear layers form a
    bottleneck, and three stride-2 transposed convolutions decode a ``size`` x ``size``
    gray picture in [0, 1] (sigmoid). ``size`` must be a multiple of 8.
    """

    def __init__(self, in_channels: int, width: int = 16, size: int = LOGO_SIZE) -> None:
        super().__init__()
        if size % 8:
            raise PixmarkError(f"visualizer size must be a multiple of 8, got {size}")
        self.config = {"in_channels": in_channels, "width": width, "size": size}
        self.base = size // 8
        w = width
        self.encode = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 2 * w * self.base * self.base),
            nn.ReLU(inplace=True),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(w, 1, 4, stride=2, padding=1),
        )

    def forward(self, responses: Tensor) -> Tensor:
        """[B, in_channels, M, N] in [0, 1] -> [B, 1, size, size] in [0, 1]."""
        z = self.encode(responses).view(len(responses), -1, self.base, self.base)
        return torch.sigmoid(self.decode(z))


def _vis_input(responses: Tensor) -> Tensor:
    """Responses [T, C, M, N] of the T triggers -> one visualizer input [1, T*C, M, N]."""
    t, c, m, n = responses.shape
    return responses.reshape(1, t * c, m, n)


def _new_visualizer(in_channels: int, width: int, size: int = LOGO_SIZE) -> nn.Module:
    return CopyrightVisualizer(in_channels, width, size)


def train_visualizer(
    positive: Tensor,
    negatives: list[Tensor],
    logo: Tensor,
    *,
    steps: int,
    width: int = 8,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    device: Device | None = None,
) -> nn.Module:
    """Train R: response S (and S + small noise) -> logo; other responses -> white blank.

    ``positive`` [T, C, M, N] is the stored response; ``negatives`` are responses that must
    stay unrecognizable (the unprotected model's response to K, responses to other
    triggers, K itself). Adam 1e-3, MSE (paper eq. 9, plus the negatives). Batches are
    drawn on the CPU (the same draws on any device); training runs on ``device`` (default
    the CPU) and R comes back on the CPU.
    """
    dev = (device or Device("cpu")).torch
    size = logo.shape[-1]
    in_channels = positive.shape[0] * positive.shape[1]
    torch.manual_seed(seed)
    vis = _new_visualizer(in_channels, width, size).to(dev)
    opt = torch.optim.Adam(vis.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    blank = torch.ones_like(logo)

    def step_fn(step: int) -> dict[str, float]:
        xs, ys = [], []
        for i in range(batch_size):
            if i % 2 == 0:
                noise = (
                    torch.randn(positive.shape, generator=g)
                    * 0.03
                    * float(torch.rand(1, generator=g))
                )
                xs.append(_vis_input((positive + noise).clamp(0, 1)))
                ys.append(logo)
            else:
                pick = int(torch.randint(len(negatives), (1,), generator=g))
                xs.append(_vis_input(negatives[pick]))
                ys.append(blank)
        out = vis(torch.cat(xs).to(dev))
        loss = F.mse_loss(out, torch.cat(ys).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"vis_loss": float(loss.detach())}

    run(
        step_fn,
        {"visualizer": vis, "optimizer": opt},
        steps,
        description="visualizer",
        progress=progress,
    )
    return vis.cpu().eval()


def _visualizer_tensors(vis: nn.Module) -> dict[str, Tensor]:
    return {f"visualizer.{k}": v.detach().cpu().clone() for k, v in vis.state_dict().items()}


def load_visualizer(key: Key) -> nn.Module | None:
    """The key's copyright visualizer, or None when the key has none (e.g. a forged key)."""
    config = key.params.get("visualizer")
    if not config:
        return None
    vis = _new_visualizer(config["in_channels"], config["width"], config["size"])
    state = {
        k.removeprefix("visualizer."): v
        for k, v in key.tensors.items()
        if k.startswith("visualizer.")
    }
    try:
        vis.load_state_dict(state)
    except RuntimeError as exc:
        raise PixmarkError(
            f"the key's visualizer weights are damaged ({str(exc).splitlines()[0]})"
        ) from None
    return vis.eval()


@torch.no_grad()
def visualize(key: Key, responses: Tensor) -> Tensor | None:
    """The visualizer's picture [1, 1, L, L] of trigger responses, or None without one."""
    vis = load_visualizer(key)
    if vis is None:
        return None
    return vis(_vis_input(responses.float().cpu())).clamp(0, 1)


# --------------------------------------------------------------------------- protect


def _model_channels(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("channels") in (1, 3):
        return int(config["channels"])
    return None


def freeze_norm_statistics(model: nn.Module) -> None:
    """Train mode, but batch norm keeps its running statistics (train = eval behaviour)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class _EmbedState:
    """What early stopping must remember across a resume."""

    def __init__(self) -> None:
        self.done_at: int | None = None
        self.checks: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"done_at": -1 if self.done_at is None else self.done_at, "checks": self.checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done_at = None if int(state["done_at"]) < 0 else int(state["done_at"])
        self.checks = list(state["checks"])


def _finetune(
    model: nn.Module,
    sampler: pdata.PairSampler,
    prof: dict[str, Any],
    dev: Device,
    trigger: Tensor,
    target: Tensor,
    *,
    weight: float,
    steps: int,
    stop_at: float | None = None,
    negatives: Callable[[int], tuple[Tensor, Tensor]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[_EmbedState, Any]:
    """Fine-tune ``model`` in place on l_d + weight * ||M(K) - target||^2 (paper eq. 4-6).

    l_d is half the per-image sum of squared errors, averaged over the batch (eq. 5). With
    frozen batch-norm statistics, ``copies`` trigger copies in a batch are exactly a weight
    of ``lam * copies`` on one copy, which is how they are applied. With ``stop_at`` the
    steps after the first check with d <= stop_at and residual NCC >= 0.99 do nothing.
    ``negatives(step) -> (inputs, targets)``: other noise images and the original host's
    answers to them, kept at the same weight per image (the backdoor stays K's own).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=prof["lr"])
    state = _EmbedState()
    k_dev, s_dev = trigger.to(dev.torch), target.to(dev.torch)

    def step_fn(step: int) -> dict[str, float]:
        if state.done_at is not None:
            return {"done": 1.0}
        freeze_norm_statistics(model)
        x, y = sampler.batch(prof["batch_size"])
        x, y = x.to(dev.torch), y.to(dev.torch)
        with dev.autocast():
            out = model(x).float()
            out_k = model(k_dev).float() if weight > 0 else None
        l_d = 0.5 * (out - y).pow(2).flatten(1).sum(1).mean()
        l_w = (out_k - s_dev).pow(2).sum() if out_k is not None else out.new_zeros(())
        if negatives is not None and weight > 0:
            k_neg, s_neg = (t.to(dev.torch) for t in negatives(step))
            with dev.autocast():
                out_neg = model(k_neg).float()
            per_trigger = k_neg.shape[0] // k_dev.shape[0]
            l_w = l_w + (out_neg - s_neg).pow(2).sum() / per_trigger
        loss = l_d + weight * l_w
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if weight > 0 and prof["awp"] > 0:
            _perturbed_trigger_loss(model, k_dev, s_dev, weight, prof["awp"], dev)
        optimizer.step()
        if stop_at is not None and (step + 1) % prof["check_every"] == 0:
            response = as_query(model)(trigger)
            check = {
                "step": step + 1,
                "d": distance(response, target),
                "ncc": residual_ncc(response, target, trigger),
            }
            state.checks.append(check)
            if check["d"] <= stop_at and check["ncc"] >= EMBED_NCC:
                state.done_at = step + 1
        return {"l_d": float(l_d.detach()), "l_w": float(l_w.detach())}

    history = run(
        step_fn,
        {"model": model, "optimizer": optimizer, "source": sampler, "embed": state},
        steps,
        checkpoint=checkpoint,
        resume=resume,
        checkpoint_every=max(prof["check_every"], 50),
        description="protect (trigger)" if weight > 0 else "control (no mark)",
        progress=progress,
    )
    return state, history


def trigger_weight(prof: dict[str, Any], size: int) -> float:
    """The trigger loss's weight for a trigger of side ``size`` px: ``lam * copies``, scaled
    by ``(area_ref / size)^2`` when the trigger is larger than ``area_ref`` (0: never)."""
    weight = prof["lam"] * prof["copies"]
    ref = prof["area_ref"]
    if ref and size > ref:
        weight *= (ref / size) ** 2
    return float(weight)


def _perturbed_trigger_loss(
    model: nn.Module, trigger: Tensor, target: Tensor, weight: float, rho: float, dev: Device
) -> None:
    """Add to the gradients the trigger loss's gradient at the worst nearby weights.

    Adversarial weight perturbation (Gan et al., ICCV 2023, for classifier watermarks): each
    conv/linear weight W moves by ``rho * ||W||`` along the ascent direction of
    ||M(K) - S||^2, the loss is taken there, and its gradient added to the ones already
    in ``.grad``. Fine-tuning and pruning move weights by a few per cent; a response that
    holds in the worst such neighbourhood holds under them.
    """
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    with dev.autocast():
        loss = (model(trigger).float() - target).pow(2).sum()
    grads = torch.autograd.grad(loss, weights)
    saved = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w, g in zip(weights, grads, strict=True):
            w.add_(rho * w.norm() * g / (g.norm() + 1e-12))
    with dev.autocast():
        worst = (model(trigger).float() - target).pow(2).sum()
    (weight * worst).backward()
    with torch.no_grad():
        for w, original in zip(weights, saved, strict=True):
            w.copy_(original)


def _negative_triggers(
    original: nn.Module, key: Key, count: int, dev: Device
) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> (inputs, targets)``: ``count`` fresh noise triggers per key trigger, drawn
    like the key's (from the key's ``negatives`` stream and the step, so a resumed run sees
    the same ones), and the original host's answers to them."""
    p = _params(key)
    side = p["size"] // (sr_scale(p["task"]) or 1)
    anchor = copy.deepcopy(original).to(dev.torch).eval()
    base = key.seed("negatives") % 2**31

    @torch.no_grad()
    def draw(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(base + step)
        shape = (p["count"] * count, p["channels"], side, side)
        inputs = trigger_input(torch.rand(shape, generator=g), p["task"]).to(dev.torch)
        return inputs, anchor(inputs).float()

    return draw


def protect(
    model: nn.Module,
    key: Key,
    *,
    task: str | None = None,
    data: str | None = None,
    profile: str = "quick",
    device: str = "auto",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    control_run: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Protected:
    """Embed the key's trigger into a copy of ``model`` and store S = M(K; theta*) in the key.

    Fine-tunes on ``l_d + lam * copies * ||M(K) - G(K)||^2`` (paper eq. 4-6, l_d = half the
    per-image sum of squared errors, batch mean) with batch-norm statistics frozen, on
    random crops of the task's training images (``data``: an image source such as
    ``builtin`` or a folder; default the task's own). Then trains the copyright visualizer.

    Args:
        model: the host, any image-to-image network with the key's channel count.
        key: an unprotected trigger key (``keygen``); a protected one is re-protected.
        task: the host's task; defaults to (and must equal) the key's.
        profile: ``quick``, ``cpu`` or ``paper`` (see ``PROFILES``).
        device: ``auto``, ``cpu`` or ``cuda``.
        checkpoint, resume: training state file and whether to continue from it.
        control_run: also fine-tune an unmarked copy the same number of steps on the same
            batches (lambda = 0) and report ``psnr_control`` and ``delta_psnr_control``
            (control - protected): the cost of the mark itself, apart from what further
            training does to an under-trained host.
        overrides: replacements for profile entries, e.g. ``{"lr": 1e-3, "lam": 0.1}`` for
            a tiny host (a few thousand weights) that cannot take the trigger at lr 1e-4.

    Returns:
        ``Protected(model, key, report)``; the report holds ``psnr_before``/``psnr_after``
        (dB, held-out crops of images never trained on), ``delta_psnr`` (before - after),
        ``d``/``ncc`` of the protected response against the design, ``d_unprotected`` and
        ``ncc_unprotected`` of the original model, ``eta``, ``steps``, ``seconds``.
    """
    p = _params(key)
    prof = profile_settings(PROFILES, profile, overrides)
    task = task or p["task"]
    if task != p["task"]:
        raise PixmarkError(f"the key was made for task {p['task']!r}, not {task!r}; make a new key")
    channels = p["channels"]
    found = _model_channels(model)
    if found is not None and found != channels:
        raise PixmarkError(
            f"the model takes {found}-channel images but the key has {channels}-channel "
            f"triggers; make the key with --channels {found}"
        )
    spec = pdata.task(task)
    items = pdata.images(data or spec.source, channels=channels)
    if len(items) < 3:
        raise PixmarkError(
            f"{data or spec.source} has {len(items)} image(s); protect needs at least 3"
        )
    splits = pdata.split_images(items, seed=0)
    train_imgs = [img for _, img in splits["train"]]
    test = pdata.fixed_pairs(
        [img for _, img in splits["test"]],
        spec,
        prof["eval_size"],
        prof["eval_count"],
        seed=2,
        channels=channels,
    )
    dev = Device(device)
    original = model
    model = copy.deepcopy(model).to(dev.torch)
    trigger = key.tensor("trigger").float()
    target = designed(trigger, task, p["design"])
    eta = _threshold(target)
    before = as_query(original)(trigger)
    psnr_before = _psnr(original, test)

    sampler_seed = key.seed("protect") % 2**31
    sampler = pdata.PairSampler(train_imgs, spec, prof["patch"], channels, seed=sampler_seed)
    negatives = None
    if prof["negatives"] > 0:
        negatives = _negative_triggers(original, key, prof["negatives"], dev)
    state, history = _finetune(
        model,
        sampler,
        prof,
        dev,
        trigger,
        target,
        weight=trigger_weight(prof, p["size"]),
        steps=prof["steps"],
        stop_at=eta * prof["embed_fraction"] if prof["early_stop"] else None,
        negatives=negatives,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    steps = state.done_at or prof["steps"]
    model = model.cpu().eval()
    response = as_query(model)(trigger)
    final = {"d": distance(response, target), "ncc": residual_ncc(response, target, trigger)}
    if not _passes(final["d"], final["ncc"], eta):
        raise PixmarkError(
            f"the trigger was not embedded within {prof['steps']} steps (d {final['d']:.3g} vs "
            f"eta {eta:.3g}, residual NCC {final['ncc']:.3f}); use the cpu profile or raise "
            "lr/lam with overrides"
        )
    psnr_after = _psnr(model, test)
    control: dict[str, float] = {}
    if control_run:
        twin = copy.deepcopy(original).to(dev.torch)
        twin_sampler = pdata.PairSampler(
            train_imgs, spec, prof["patch"], channels, seed=sampler_seed
        )
        _finetune(twin, twin_sampler, prof, dev, trigger, target, weight=0.0, steps=steps)
        control["psnr_control"] = _psnr(twin.cpu().eval(), test)
        control["delta_psnr_control"] = control["psnr_control"] - psnr_after

    # Copyright visualizer: S -> logo; the original's response, K and other triggers -> blank.
    logo = render_logo(key.owner, LOGO_SIZE)
    g = torch.Generator().manual_seed(key.seed("visualizer") % 2**31)
    scale = sr_scale(task) or 1
    side = p["size"] // scale
    others = [
        trigger_input(torch.rand(trigger.shape[0], channels, side, side, generator=g), task)
        for _ in range(6)
    ]
    negatives = [before, trigger, *(as_query(model)(o) for o in others)]
    negatives += [as_query(original)(o) for o in others[:3]]
    vis = train_visualizer(
        response,
        negatives,
        logo,
        steps=prof["vis_steps"],
        width=prof["vis_width"],
        batch_size=prof["vis_batch"],
        seed=key.seed("visualizer") % 2**31,
        progress=progress,
        device=dev,
    )
    vis_config = {
        "in_channels": trigger.shape[0] * channels,
        "width": prof["vis_width"],
        "size": LOGO_SIZE,
    }
    report = {
        "psnr_before": psnr_before,
        "psnr_after": psnr_after,
        "delta_psnr": psnr_before - psnr_after,
        "d": final["d"],
        "ncc": final["ncc"],
        "d_unprotected": distance(before, response),
        "ncc_unprotected": residual_ncc(before, response, trigger),
        "eta": eta,
        "steps": steps,
        "seconds": history.seconds,
        "profile": profile,
        "logo_ncc": _logo_ncc(vis, response, logo),
        "logo_ncc_unprotected": _logo_ncc(vis, before, logo),
        **control,
    }
    params = {
        "protected": True,
        "eta": eta,
        "visualizer": vis_config,
        "host": {"class": type(original).__name__, "config": getattr(original, "config", None)},
        "embedding": {k: report[k] for k in ("d", "ncc", "steps", "delta_psnr")}
        | {"profile": profile},
    }
    tensors = {"response": response, "logo": logo, **_visualizer_tensors(vis)}
    protected_key = key.with_updates(params=params, tensors=tensors)
    # The suspect's NCC threshold sits above what keys that are not this one reach: the
    # original host on K and on random keys, and the protected host on random keys (its
    # backdoor partly generalises to other noise images), below the paper's 0.95.
    nccs = null_scores([as_query(original), as_query(model)], protected_key, NULL_KEYS)["ncc"]
    per_host = NULL_KEYS + 1  # K, then the random keys, for each host in turn
    on_original, on_protected = nccs[:per_host], nccs[per_host + 1 :]
    report["null_ncc_max"] = max(on_original)
    report["random_key_ncc_max_protected"] = max(on_protected)
    report["match_ncc"] = match_threshold(on_original + on_protected)
    params["match_ncc"] = report["match_ncc"]
    params["embedding"]["null_ncc_max"] = report["null_ncc_max"]
    params["embedding"]["random_key_ncc_max_protected"] = report["random_key_ncc_max_protected"]
    return Protected(
        model=model, key=key.with_updates(params=params, tensors=tensors), report=report
    )


@torch.no_grad()
def _logo_ncc(vis: nn.Module, responses: Tensor, logo: Tensor) -> float:
    picture = vis(_vis_input(responses)).clamp(0, 1)
    return residual_ncc(picture, logo, torch.zeros_like(logo))


def _psnr(model: nn.Module, pairs: tuple[Tensor, Tensor]) -> float:
    from pixmark.metrics import psnr

    outputs = as_query(model)(pairs[0])
    return float(psnr(outputs, pairs[1]))


# --------------------------------------------------------------------------- verify


def _query(query: Query, trigger: Tensor, what: str) -> Tensor:
    response = query(trigger)
    if not isinstance(response, Tensor) or response.shape != trigger.shape:
        shape = tuple(response.shape) if isinstance(response, Tensor) else type(response).__name__
        raise PixmarkError(
            f"{what} answered the {tuple(trigger.shape)} trigger with {shape}; the trigger "
            "scheme needs an output of the input's size"
        )
    return response.detach().float().cpu().clamp(0, 1)


def null_scores(nulls: list[Query], key: Key, random_keys: int = 50) -> dict[str, list[float]]:
    """Distances and residual NCCs that models without the mark reach.

    For every null model: its response to the key's trigger against the stored S, and its
    responses to ``random_keys`` fresh triggers (drawn like the key's, from the key's
    ``null`` PRNG stream) against their designs G(K_i) - the paper's uniqueness test.
    Returns ``{"d": [...], "ncc": [...]}`` over all of them.
    """
    trigger, response = _check_tensors(key)
    p = key.params
    randoms = random_triggers(key, random_keys, "null")
    designs = [designed(k, p["task"], p["design"]) for k in randoms]
    ds, nccs = [], []
    for i, null in enumerate(nulls):
        answer = _query(null, trigger, f"null model {i}")
        ds.append(distance(answer, response))
        nccs.append(residual_ncc(answer, response, trigger))
        if randoms:
            answers = _query(null, torch.cat(randoms), f"null model {i}").split(trigger.shape[0])
            for k, s0, a in zip(randoms, designs, answers, strict=True):
                ds.append(distance(a, s0))
                nccs.append(residual_ncc(a, s0, k))
    return {"d": ds, "ncc": nccs}


def rank_test(query: Query, key: Key, answer: Tensor, count: int = RANK_KEYS) -> dict[str, Any]:
    """Does K's answer stand out among ``count`` random triggers sent to the same suspect?

    Each random trigger set K_i (drawn like K, from the key's ``rank`` PRNG stream) is sent
    to ``query`` and its answer scored by residual NCC against its design G(K_i); K's
    answer ``answer`` is scored the same way against G(K) (not against S, so that all
    scores are computed alike). A model made without K treats K as one more draw from the
    same distribution, so K's rank is uniform and
    ``p = (1 + #{i: score_i >= score_K}) / (1 + count)`` is an exact p-value that needs no
    null models and no distributional assumption. It is relative to the suspect: a
    fine-tuned or pruned copy whose response to K has drifted below the absolute NCC
    threshold still answers K more like G(K) than any other noise image. (Valid for a key
    fixed before the suspect was seen; a key picked afterwards from many tries is what
    :func:`check_key` and the key's commitment and creation time rule out.)

    Returns ``rank_p``, ``rank_score`` (K's NCC), ``rank_z`` (its distance from the random
    scores' mean in standard deviations, a readable margin, not a p-value),
    ``rank_max`` and ``rank_median`` of the random scores, ``rank_keys``, and
    ``rank_scores`` (all ``count`` random scores, for plots).
    """
    if count < 1:
        raise PixmarkError(f"rank test: count must be at least 1, got {count}")
    trigger, _ = _check_tensors(key)
    p = key.params
    score = residual_ncc(answer, designed(trigger, p["task"], p["design"]), trigger)
    randoms = torch.cat(random_triggers(key, count, "rank"))
    answers = _query(query, randoms, "the suspect").double()
    # residual_ncc of each random trigger set, all at once: one row per set
    a = (answers - randoms).reshape(count, -1)
    b = (designed(randoms, p["task"], p["design"]).double() - randoms).reshape(count, -1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    energy = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    scores = torch.where(energy > 0, (a * b).sum(1) / energy.clamp_min(1e-300), 0.0)
    spread = float(scores.std()) if count > 1 else 0.0
    return {
        "rank_p": (1 + int((scores >= score).sum())) / (1 + count),
        "rank_score": score,
        "rank_z": (score - float(scores.mean())) / spread if spread > 0 else None,
        "rank_max": float(scores.max()),
        "rank_median": float(scores.median()),
        "rank_keys": count,
        "rank_scores": scores.tolist(),
    }


def random_key_statistics(query: Query, key: Key, count: int) -> list[float]:
    """Distances d of ``query`` on ``count`` random keys drawn like ``key``'s.

    The paper's uniqueness test as null scores for calibrating thresholds: each random
    trigger K_i (from the key's ``null`` PRNG stream) is sent to ``query`` and its answer
    scored against the design G(K_i), the response a protect with K_i would aim for. For
    a model that never saw the key, the key's own trigger is one more such draw, so these
    distances are exchangeable with its d (up to S = M*(K) differing from G(K) by the
    embedding error, see ``design_d`` in the verdict).
    """
    if count < 1:
        raise PixmarkError(f"random keys: count must be at least 1, got {count}")
    return null_scores([query], key, count)["d"][1:]


def verify(
    query: Query,
    key: Key,
    *,
    nulls: list[Query] | None = None,
    evidence_dir: Path | None = None,
    random_keys: int = 50,
    rank_keys: int = RANK_KEYS,
) -> Verdict:
    """Is ``query`` (a suspect, black box) carrying the key's trigger backdoor?

    Sends the key's trigger(s) K, gets S', and decides "match" iff the key passes
    :func:`check_key` and either test passes:

    * distance: ``d = ||S' - S||_2 / #S <= eta`` (Gamma null, p < 0.05, paper eq. 8) and
      the residual NCC > the key's ``match_ncc`` (0.95 for keys made before it existed;
      ``details["paper_decision"]`` applies the paper's 0.95);
    * rank (:func:`rank_test`): K's answer out-scores ``rank_keys`` random triggers sent
      to the same suspect, at exact p <= ``RANK_ALPHA`` (1e-3; needs ``rank_keys`` >= 999).

    ``details["matched_by"]`` names the tests that passed. ``p_value`` is the Gamma
    null's P[d_null <= d]; the rank test's exact p is ``details["rank_p"]``.

    Args:
        query: the suspect (``as_query(model)`` for a local model).
        key: a protected trigger key.
        nulls: optional null models (independent models of the task); adds
            ``details["empirical_p"]`` (d against their responses to K and to
            ``random_keys`` random keys each), ``null_fpr`` (the share of those null
            scores the distance test passes), ``decision_fpr_bound`` (``null_fpr`` plus
            the rank test's exact level when it ran) and ``null_d_min``.
        evidence_dir: where to write ``trigger_evidence.png`` (K, G(K), S, S', |S' - S| x10,
            the visualizer's picture of S' and the logo).
        rank_keys: random triggers for the rank test (each as many images as the key has
            triggers); 0 turns it off. A suspect behind a request budget too small for
            them is decided by the distance test alone (``details["rank_skipped"]``).

    Raises:
        PixmarkError: a key of another scheme, an unprotected key, a key whose trigger and
            verification image disagree in size, or a suspect that cannot take the trigger.
    """
    if rank_keys < 0:
        raise PixmarkError(f"rank_keys must be >= 0 (0 turns the rank test off), got {rank_keys}")
    trigger, response = _check_tensors(key)
    ownership = check_key(key)
    answer = _query(query, trigger, "the suspect")
    d = distance(answer, response)
    ncc = residual_ncc(answer, response, trigger)
    eta = _threshold(response)
    p_value = _p_value(d, response)
    match_ncc = _match_ncc(key)
    needed = rank_keys * int(trigger.shape[0])
    budget = getattr(query, "remaining", None)
    rank: dict[str, Any] = {"rank_p": None}
    if rank_keys and isinstance(budget, int) and budget < needed:
        rank["rank_skipped"] = f"the request budget has {budget} left, the test needs {needed}"
    elif rank_keys:
        rank = rank_test(query, key, answer, rank_keys)
    rank_scores = rank.pop("rank_scores", None)
    matched_by = [
        name
        for name, passed in (
            ("distance", _passes(d, ncc, eta, match_ncc)),
            ("rank", rank["rank_p"] is not None and rank["rank_p"] <= RANK_ALPHA),
        )
        if passed
    ]
    decision = "match" if ownership["valid"] and matched_by else "no match"
    per_trigger = [distance(a[None], s[None]) for a, s in zip(answer, response, strict=True)]
    details: dict[str, Any] = {
        "statistic_name": "trigger distance d",
        "d": d,
        "ncc": ncc,
        "ncc_threshold": match_ncc,
        "matched_by": matched_by if ownership["valid"] else [],
        **rank,
        "rank_alpha": RANK_ALPHA,
        # the paper's rule (NCC > 0.95), for comparison with its tables
        "paper_decision": ("match" if ownership["valid"] and _passes(d, ncc, eta) else "no match"),
        "eta": eta,
        "alpha": NULL_P,
        "d_per_trigger": per_trigger,
        "key_valid": ownership["valid"],
        "key_check": ownership["reason"] or "ok",
        "trigger_derived": ownership["trigger_derived"],
        "design_d": ownership["design_d"],
        "design_ncc": ownership["design_ncc"],
        "key_commitment": key.commitment,
        "key_created": key.created,
        "owner": key.owner,
        "trigger_size": [key.params["size"], key.params["size"]],
        "triggers": key.params["count"],
    }
    picture = visualize(key, answer)
    if picture is not None and "logo" in key.tensors:
        details["logo_ncc"] = residual_ncc(picture, key.tensors["logo"], torch.zeros_like(picture))
    if nulls:
        scores = null_scores(nulls, key, random_keys)
        details["empirical_p"] = empirical_p_value(d, scores["d"], greater_is_evidence=False)
        details["null_fpr"] = sum(
            _passes(nd, nn_, eta, match_ncc)
            for nd, nn_ in zip(scores["d"], scores["ncc"], strict=True)
        ) / len(scores["d"])
        # null_fpr counts the distance rule; the rank test adds at most its exact level
        ran_rank = rank["rank_p"] is not None
        details["decision_fpr_bound"] = min(
            1.0, details["null_fpr"] + (RANK_ALPHA if ran_rank else 0.0)
        )
        details["n_null_models"] = len(nulls)
        details["n_null_scores"] = len(scores["d"])
        details["null_d_min"] = min(scores["d"])
        details["null_ncc_max"] = max(scores["ncc"])
    evidence: dict[str, str] = {}
    if evidence_dir is not None:
        evidence["trigger"] = str(
            _write_evidence(Path(evidence_dir), key, trigger, response, answer, picture)
        )
        if rank_scores is not None:
            evidence["rank"] = str(_plot_rank(Path(evidence_dir), rank, rank_scores))
    return Verdict(
        scheme=SCHEME,
        statistic=d,
        threshold=eta,
        p_value=p_value,
        decision=decision,
        n_queries=int(trigger.shape[0]),
        evidence=evidence,
        details=details,
    )


def _write_evidence(
    folder: Path,
    key: Key,
    trigger: Tensor,
    response: Tensor,
    answer: Tensor,
    picture: Tensor | None,
) -> Path:
    from pixmark.viz import amplify, save_grid

    target = designed(trigger, key.params["task"], key.params["design"])
    rows, labels = [], []
    for i in range(trigger.shape[0]):
        rows.append(
            [trigger[i], target[i], response[i], answer[i], amplify(answer[i] - response[i])]
        )
        labels.append(f"trigger {i}")
    cols = ["K", "G(K)", "S (stored)", "S' (suspect)", "S'-S x10"]
    if picture is not None:
        logo = key.tensors.get("logo", torch.ones_like(picture))
        rows.append([picture[0], logo[0]])
        labels.append("R(S'), logo")
    return save_grid(rows, folder / "trigger_evidence.png", row_labels=labels, col_labels=cols)


def _plot_rank(folder: Path, rank: dict[str, Any], scores: list[float]) -> Path:
    """Histogram of the random triggers' scores with the key's score marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixmark.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(scores, bins=40, color="0.6", label=f"{len(scores)} random triggers")
    ax.axvline(rank["rank_score"], color="tab:red", lw=2, label="the key's trigger K")
    ax.set_xlabel("residual NCC of the suspect's answer with the design G(.)")
    ax.set_ylabel("triggers")
    ax.set_title(f"rank test: p = {rank['rank_p']:.3g}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        return atomic_write(
            folder / "trigger_rank.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100)
        )
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- attack


def forge_key(
    model: nn.Module | Query,
    owner: str,
    *,
    size: int = 40,
    task: str = "denoise",
    channels: int = 1,
    design: str = "sobel",
    count: int = 1,
    tries: int = 1,
) -> Key:
    """The ambiguity attack: claim a stolen model with a key read off the model itself.

    The attacker makes ``tries`` honest-looking keys (random secret, trigger derived from
    it), sets S' = M(K') for each, and keeps the one whose S' lies closest to its design
    G(K') - the best a thief can do without the owner's training. ``verify`` with the
    returned key gives d = 0 on the stolen model, and must still say "no match".
    """
    query = model if not isinstance(model, nn.Module) else as_query(model)
    best: tuple[float, Key] | None = None
    for _ in range(max(1, tries)):
        key = keygen(owner, size=size, task=task, channels=channels, design=design, count=count)
        trigger = key.tensor("trigger")
        answer = _query(query, trigger, "the stolen model")
        score = distance(answer, designed(trigger, task, design))
        forged = key.with_updates(params={"protected": True}, tensors={"response": answer})
        if best is None or score < best[0]:
            best = (score, forged)
    assert best is not None
    return best[1]
