"""Surrogate (model-stealing) attack: train a copy on a black-box teacher's outputs only.

The attacker has their own degraded inputs of the same task (e.g. rainy photos), sends
them to the teacher (a :data:`~pixmark.schemes.base.Query`: batch in, outputs back, no
weights, no gradients) and trains a network of their choice to map input -> teacher
output. This is the attack Zhang et al. (AAAI 2020) defend against, and the ``output``
scheme's stage 2 uses this same code to build the surrogates its extractor learns from.

    from pixmark.attacks.surrogate import train_surrogate
    sm = train_surrogate(as_query(protected), sampler, arch="unet", loss="l2", steps=600)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark import nets
from pixmark.errors import PixmarkError
from pixmark.schemes.base import Query
from pixmark.train import Device, fit, pixel_loss, run, seed_everything

ARCHS = ("unet", "ceilnet", "resnet9", "resnet16", "dncnn")
LOSSES = ("l1", "l2", "perceptual", "ssim")

#: Default surrogate widths for the CPU profiles (the paper's are 64).
DEFAULT_WIDTH = {"unet": 16, "ceilnet": 32, "resnet9": 16, "resnet16": 16, "dncnn": 32}

#: Weight of the adversarial term when ``adv=True`` (Zhang et al.'s λ3).
ADV_WEIGHT = 0.01


def augment_pairs(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random geometric change for each input and its stolen output.

    Per pair: rotation by a multiple of 90°, a horizontal flip (p = 0.5), and with
    p = 0.5 a random crop of 60–100 % of the side resized back (bilinear) to the
    original size. Inputs/outputs [N, C, H, W] in [0, 1]; returns the same shapes.
    """
    xs, ys = [], []
    h, w = x.shape[-2:]
    for i in range(len(x)):
        a, b = x[i], y[i]
        turns = int(torch.randint(4, (1,), generator=generator))
        a, b = torch.rot90(a, turns, dims=(1, 2)), torch.rot90(b, turns, dims=(1, 2))
        if bool(torch.randint(2, (1,), generator=generator)):
            a, b = a.flip(2), b.flip(2)
        if bool(torch.randint(2, (1,), generator=generator)):
            scale = 0.6 + 0.4 * float(torch.rand(1, generator=generator))
            ch, cw = max(1, round(a.shape[1] * scale)), max(1, round(a.shape[2] * scale))
            top = int(torch.randint(a.shape[1] - ch + 1, (1,), generator=generator))
            left = int(torch.randint(a.shape[2] - cw + 1, (1,), generator=generator))
            crop = torch.stack([a, b])[:, :, top : top + ch, left : left + cw]
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            a, b = crop[0].clamp(0, 1), crop[1].clamp(0, 1)
        xs.append(a)
        ys.append(b)
    return torch.stack(xs), torch.stack(ys)


class StolenPairs:
    """(input, teacher output) batches: the attacker's training data.

    ``inputs`` is either an object with ``batch(n)`` returning degraded inputs or
    ``(inputs, targets)`` (a :class:`pixmark.data.PairSampler`; its targets are ignored:
    the attacker only has the teacher's outputs), or a tensor [N, C, H, W] of input images
    from which random ``size`` × ``size`` crops are drawn. With ``teacher=None`` the
    teacher was already asked: ``inputs.batch(n)`` returns (input, teacher output) pairs,
    e.g. a :class:`pixmark.remote.PairsSource` over answers scraped from a service.
    """

    def __init__(
        self,
        teacher: Query | None,
        inputs: Any,
        *,
        size: int = 64,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(inputs, Tensor):
            if inputs.dim() != 4 or min(inputs.shape[-2:]) < size:
                raise PixmarkError(
                    f"surrogate inputs must be images [N, C, H, W] of at least {size} px, got "
                    f"{tuple(inputs.shape)}"
                )
        elif teacher is None and not hasattr(inputs, "batch"):
            raise PixmarkError(
                "without a teacher the surrogate needs collected (input, output) pairs, e.g. "
                f"a pixmark.remote.PairsSource; got {type(inputs).__name__}"
            )
        elif not hasattr(inputs, "batch"):
            raise PixmarkError(
                "surrogate inputs must be a pixmark.data.PairSampler (or anything with "
                f"batch(n)) or an image tensor, got {type(inputs).__name__}"
            )
        self.teacher = teacher
        self.inputs = inputs
        self.size = size
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def _inputs(self, n: int) -> Tensor:
        if isinstance(self.inputs, Tensor):
            g, s = self.generator, self.size
            picks = torch.randint(len(self.inputs), (n,), generator=g).tolist()
            crops = []
            for i in picks:
                h, w = self.inputs.shape[-2:]
                top = int(torch.randint(h - s + 1, (1,), generator=g))
                left = int(torch.randint(w - s + 1, (1,), generator=g))
                crops.append(self.inputs[i, :, top : top + s, left : left + s])
            return torch.stack(crops).float()
        out = self.inputs.batch(n)
        return out[0] if isinstance(out, tuple | list) else out

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        if self.teacher is None:
            x, y = self.inputs.batch(n)
        else:
            x = self._inputs(n)
            with torch.no_grad():
                y = self.teacher(x).float().clamp(0, 1)
        if y.shape != x.shape:
            raise PixmarkError(
                f"the teacher returned {tuple(y.shape)} for {tuple(x.shape)} inputs; a "
                "surrogate needs outputs of the input's shape"
            )
        if self.augment:
            x, y = augment_pairs(x, y, self.generator)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state()}
        if hasattr(self.inputs, "state_dict"):
            state["inputs"] = self.inputs.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if "inputs" in state and hasattr(self.inputs, "load_state_dict"):
            self.inputs.load_state_dict(state["inputs"])


def surrogate_loss(loss: str, channels: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The surrogate's reconstruction loss: ``l1``, ``l2``, ``ssim`` or ``perceptual``."""
    if loss not in LOSSES:
        raise PixmarkError(f"unknown surrogate loss {loss!r}; choose from {', '.join(LOSSES)}")
    if loss == "perceptual":
        from pixmark.losses import perceptual_loss

        return perceptual_loss(channels)
    return pixel_loss(loss)


def create_surrogate(arch: str, channels: int, width: int | None = None) -> nn.Module:
    """A fresh surrogate network of ``arch`` (residual/linear image-to-image output)."""
    if arch not in ARCHS:
        raise PixmarkError(
            f"unknown surrogate architecture {arch!r}; choose from {', '.join(ARCHS)}"
        )
    width = width or DEFAULT_WIDTH[arch]
    kwargs: dict[str, Any] = {"channels": channels, "width": width}
    if arch == "unet":
        kwargs["depth"] = 3
    elif arch == "ceilnet":
        kwargs["n_blocks"] = 5
    elif arch == "dncnn":
        kwargs["depth"] = 8
    return nets.create(arch, **kwargs)


def train_surrogate(
    teacher: Query | None,
    inputs_source: Any,
    *,
    arch: str = "unet",
    loss: str = "l2",
    adv: bool = False,
    augment: bool = False,
    steps: int = 600,
    size: int = 64,
    width: int | None = None,
    batch_size: int = 8,
    lr: float = 1e-3,
    channels: int | None = None,
    seed: int = 0,
    device: str | Device = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train a surrogate of ``teacher`` from its outputs only (black-box model stealing).

    Args:
        teacher: the model under attack, as a Query (images [N, C, H, W] in [0, 1] ->
            outputs of the same shape). Only its outputs are used. ``None`` when
            ``inputs_source`` already holds its answers (stealing offline from pairs
            collected with :func:`pixmark.remote.collect_pairs`).
        inputs_source: the attacker's own degraded inputs: a ``PairSampler`` (targets
            ignored) or an image tensor [N, C, H, W] to crop from; with ``teacher=None``
            a :class:`pixmark.remote.PairsSource` of (input, teacher output) pairs.
        arch: ``unet``, ``ceilnet`` ("CNet"), ``resnet9``, ``resnet16`` or ``dncnn``.
        loss: ``l1``, ``l2``, ``perceptual`` (pretrained-FFDNet features, see
            :mod:`pixmark.losses`) or ``ssim``.
        adv: add an LSGAN PatchGAN term (weight 0.01) to the loss.
        augment: random rotate / flip / crop-and-resize of each stolen pair.
        steps: optimisation steps (batches of ``batch_size`` crops of ``size`` px).
        width: network width (default per architecture, see ``DEFAULT_WIDTH``).
        channels: image channels; by default taken from the first batch.
        checkpoint, resume: training state file, and whether to continue from it.
        on_step: called as ``on_step(step, model)`` after every step.

    Returns:
        The trained surrogate on the CPU, in eval mode.
    """
    if steps < 1:
        raise PixmarkError(f"surrogate steps must be >= 1, got {steps}")
    dev = device if isinstance(device, Device) else Device(device)
    source = StolenPairs(teacher, inputs_source, size=size, augment=augment, seed=seed)
    if channels is None:
        probe = source._inputs(1) if isinstance(inputs_source, Tensor) else None
        channels = int(probe.shape[1]) if probe is not None else _channels_of(inputs_source)
    seed_everything(seed)
    model = create_surrogate(arch, channels, width)
    criterion = surrogate_loss(loss, channels)
    if isinstance(criterion, nn.Module):
        criterion.to(dev.torch)
    hook = (lambda step: on_step(step, model)) if on_step is not None else None
    description = f"surrogate {arch}/{loss}{'+adv' if adv else ''}"
    if not adv:
        fit(
            model,
            source,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            loss=criterion,
            device=dev,
            seed=seed,
            checkpoint=checkpoint,
            resume=resume,
            description=description,
            progress=progress,
            on_step=hook,
        )
        return model.cpu().eval()

    d = nets.create("patchgan", channels=channels, width=16, n_layers=2).to(dev.torch)
    model.to(dev.torch).train()
    opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    from pixmark.losses import lsgan_d_loss, lsgan_g_loss

    def step_fn(step: int) -> dict[str, float]:
        x, y = source.batch(batch_size)
        x, y = x.to(dev.torch), y.to(dev.torch)
        out = model(x)
        rec = criterion(out, y)
        g_loss = rec + ADV_WEIGHT * lsgan_g_loss(d(out))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_loss = lsgan_d_loss(d(y), d(out.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        return {"loss": float(rec.detach()), "d": float(d_loss.detach())}

    state = {"model": model, "d": d, "opt_g": opt_g, "opt_d": opt_d, "source": source}
    run(
        step_fn,
        state,
        steps,
        checkpoint=checkpoint,
        resume=resume,
        description=description,
        progress=progress,
        on_step=hook,
    )
    return model.cpu().eval()


def _channels_of(inputs: Any) -> int:
    channels = getattr(inputs, "channels", None)
    if channels in (1, 3):
        return int(channels)
    raise PixmarkError("cannot tell the image channels of the surrogate inputs; pass channels=")
