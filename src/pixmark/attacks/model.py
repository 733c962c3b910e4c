"""Model-level attacks: what a thief does to a stolen model's weights before serving it.

Every attack takes a model first and returns a NEW model of the same class (a deep copy;
the input is never modified), still a float32 ``nn.Module`` that runs on any device, so
it can be verified, benchmarked or saved like any other.

==================  ==========  ===================================================
function            strength    range
==================  ==========  ===================================================
``prune``           ``amount``  [0, 1): fraction of conv/linear weights zeroed (global)
``prune_channels``  ``amount``  [0, 1): fraction of output channels zeroed per layer
``quantize``        ``mode``    "int8", "fp16" or "bf16"
``fine_tune``       ``steps``   integer >= 0 optimisation steps on the thief's data
``overwrite``       ``profile`` "quick", "cpu" or "paper": the budget of the thief's own
                                ``protect`` run (``overrides`` set its steps exactly)
==================  ==========  ===================================================

``overwrite`` (a second watermark, the thief's own) returns a model of another class for
the ``output`` scheme (M followed by H followed by the thief's H2). Surrogate training is
in :mod:`pixmark.attacks.surrogate`; removal attacks on outputs in
:mod:`pixmark.attacks.removal` (``apply_model_attack`` appends them to a model).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pixmark.attacks import removal
from pixmark.errors import PixmarkError
from pixmark.schemes.base import Protected, check_profile
from pixmark.train import Device, fit

PRUNABLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
"""Layers whose ``weight`` the pruning and int8 attacks touch (biases and norms are kept)."""

_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)

QUANTIZE_MODES = ("int8", "fp16", "bf16")


# --------------------------------------------------------------------------- helpers


def _check_model(fn: str, model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PixmarkError(f"{fn}: model is a {type(model).__name__}, expected a torch nn.Module.")
    return model


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with ``model`` (weights, buffers, hooks' state)."""
    return copy.deepcopy(model)


def _output_axis(layer: nn.Module) -> int:
    """Weight axis that indexes output channels: 1 for transposed convolutions, else 0."""
    return 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every conv / transposed conv / linear layer with a weight."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE) and getattr(m, "weight", None) is not None
    ]


def sparsity(model: nn.Module) -> float:
    """Fraction of prunable weights (see ``PRUNABLE``) that are exactly zero, in [0, 1]."""
    weights = [m.weight for _, m in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 0.0
    return sum(int((w == 0).sum()) for w in weights) / total


def _check_amount(fn: str, amount: object) -> float:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not 0 <= amount < 1:
        raise PixmarkError(
            f"{fn}: amount must be a fraction in [0, 1) of the weights to zero, got {amount!r}."
        )
    return float(amount)


# --------------------------------------------------------------------------- pruning


@torch.no_grad()
def prune(model: nn.Module, amount: float, structured: bool = False) -> nn.Module:
    """Magnitude pruning: a copy of ``model`` with weights set to zero.

    amount: in [0, 1); higher is stronger, 0 returns an unchanged copy.

    Unstructured (default): global magnitude pruning over the weights of all conv,
    transposed-conv and linear layers (``PRUNABLE``; biases and normalisation layers are
    kept): exactly ``round(amount * total)`` weights with the smallest absolute values,
    pooled over all layers, become zero (ties broken by position).

    Structured: L1-norm channel pruning in every such layer except the last one in module
    order (the output layer, whose channels are image channels): in each layer the
    ``round(amount * out_channels)`` output channels with the smallest L1 weight norm are
    zeroed — their weights, their bias, and the affine weight and bias of a normalisation
    layer that directly follows with the same number of channels — so the channel outputs
    exactly zero, as if it had been removed. ``sparsity`` of the result is then about
    ``amount``.

    Pruned weights are plain zeros (no masks or hooks), so the model keeps its class,
    parameter names and checkpoint format.
    """
    fn = "prune"
    _check_model(fn, model)
    fraction = _check_amount(fn, amount)
    pruned = _copy(model)
    if fraction == 0:
        return pruned
    if structured:
        _prune_channels(pruned, fraction)
        return pruned
    weights = [m.weight for _, m in prunable_layers(pruned)]
    if not weights:
        raise PixmarkError(f"{fn}: the model has no conv or linear layers to prune.")
    magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    k = round(fraction * magnitudes.numel())
    if k == 0:
        return pruned
    order = torch.argsort(magnitudes, stable=True)
    mask = torch.ones(magnitudes.numel(), dtype=torch.bool)
    mask[order[:k]] = False
    start = 0
    for w in weights:
        part = mask[start : start + w.numel()].view_as(w).to(w.device)
        w.mul_(part)
        start += w.numel()
    return pruned


def _prune_channels(model: nn.Module, fraction: float) -> None:
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    layers = prunable_layers(model)
    if len(layers) < 2:
        raise PixmarkError(
            "prune: structured pruning needs at least two conv or linear layers (the output "
            "layer is never pruned); use structured=False."
        )
    names = {name for name, _ in layers[:-1]}
    for index, (name, layer) in enumerate(leaves):
        if name not in names:
            continue
        w: Tensor = layer.weight
        axis = _output_axis(layer)
        channels = w.shape[axis]
        k = round(fraction * channels)
        if k == 0:
            continue
        norms = w.detach().abs().float().transpose(0, axis).reshape(channels, -1).sum(dim=1)
        drop = torch.argsort(norms.cpu(), stable=True)[:k].to(w.device)
        w.index_fill_(axis, drop, 0.0)
        if getattr(layer, "bias", None) is not None:
            layer.bias.index_fill_(0, drop, 0.0)
        follower = leaves[index + 1][1] if index + 1 < len(leaves) else None
        if (
            isinstance(follower, _NORMS)
            and getattr(follower, "weight", None) is not None
            and follower.weight.shape[0] == channels
        ):
            follower.weight.index_fill_(0, drop, 0.0)
            follower.bias.index_fill_(0, drop, 0.0)


def prune_channels(model: nn.Module, amount: float) -> nn.Module:
    """Structured L1-norm channel pruning: ``prune(model, amount, structured=True)``.

    amount: in [0, 1), the fraction of output channels zeroed in each layer.
    """
    return prune(model, amount, structured=True)


# --------------------------------------------------------------------------- quantization


def _fake_int8(w: Tensor, axis: int) -> Tensor:
    """Symmetric per-channel int8 quantize -> dequantize along ``axis`` (scale = max|w| / 127)."""
    moved = w.detach().float().transpose(0, axis)
    flat = moved.reshape(moved.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(flat / scale), -127, 127)
    return (q * scale).reshape(moved.shape).transpose(0, axis).to(w.dtype)


@torch.no_grad()
def quantize(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` whose stored numbers are rounded as a low-precision deployment would.

    mode:
      * ``"int8"``: weight-only int8 (what dynamic quantization does to weights),
        simulated: the weight of every conv / transposed-conv / linear layer is quantized
        symmetrically per output channel (scale = max |w| / 127, integers in [-127, 127])
        and dequantized back to float32. Biases, normalisation layers and activations
        stay float32. Unlike ``torch.ao`` quantized modules this runs on every device
        and backend and keeps the model's class and checkpoint format.
      * ``"fp16"`` / ``"bf16"``: every floating-point parameter and buffer (weights,
        biases, normalisation statistics) is rounded to float16 / bfloat16 and stored
        back as float32, so the model still runs in float32 on a CPU; activations are not
        rounded.

    The output of a quantized model typically stays within a fraction of a dB to a few dB
    (int8, bf16) of the original's; fp16 is nearly lossless.
    """
    fn = "quantize"
    _check_model(fn, model)
    if mode not in QUANTIZE_MODES:
        raise PixmarkError(f"{fn}: mode must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}.")
    quantized = _copy(model)
    if mode == "int8":
        for _, layer in prunable_layers(quantized):
            layer.weight.copy_(_fake_int8(layer.weight, _output_axis(layer)))
        return quantized
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    for tensor in [*quantized.parameters(), *quantized.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return quantized


# --------------------------------------------------------------------------- fine-tuning


def fine_tune(
    model: nn.Module,
    source: Any,
    steps: int,
    lr: float = 1e-4,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "l2",
    device: Device | str | None = None,
    progress: bool = False,
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` trained for ``steps`` more steps on the attacker's own data.

    steps: integer >= 0 (Adam steps of ``batch_size`` pairs); more is stronger, 0 returns
    an unchanged copy. ``source`` is anything with ``batch(n) -> (input, target)`` and
    ``state_dict``/``load_state_dict`` (a ``pixmark.data.PairSampler``); it is advanced
    by the call. ``lr`` (> 0) starts a cosine schedule; ``loss`` is "l1", "l2", "ssim" or
    a callable. Training is ``pixmark.train.fit`` (one training loop for everything);
    ``device`` (a ``Device`` or ``"auto"``, ``"cpu"``, ``"cuda"``) defaults to CUDA when
    available. The result is in eval mode, on the device
    the input model was on.
    """
    fn = "fine_tune"
    _check_model(fn, model)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise PixmarkError(f"{fn}: steps must be an integer >= 0, got {steps!r}.")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise PixmarkError(f"{fn}: lr must be a finite learning rate > 0, got {lr!r}.")
    if not callable(getattr(source, "batch", None)):
        raise PixmarkError(
            f"{fn}: source must have a batch(n) method returning (input, target) batches, "
            f"such as pixmark.data.PairSampler; got a {type(source).__name__}."
        )
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    tuned = _copy(model)
    if steps > 0:
        fit(
            tuned,
            source,
            steps=int(steps),
            batch_size=batch_size,
            lr=float(lr),
            loss=loss,
            device=device,
            seed=seed,
            description="fine-tune attack",
            progress=progress,
        )
    return tuned.to(home).eval()


# --------------------------------------------------------------------------- overwriting


def overwrite_protected(
    model: nn.Module,
    scheme: str,
    *,
    task: str,
    owner: str = "attacker",
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    data: str | None = None,
    device: str = "cpu",
    seed: int | None = None,
    progress: bool = False,
    **keygen_options: Any,
) -> Protected:
    """:func:`overwrite`, also returning the thief's protected key and the protect report.

    Returns ``Protected(model, key, report)``: ``key`` is the thief's key, ready for
    ``pixmark.verify`` (it matches ``model`` if the second embedding worked).
    """
    from pixmark import api

    fn = "overwrite"
    _check_model(fn, model)
    if scheme not in api.SCHEMES:
        raise PixmarkError(f"{fn}: scheme must be one of {', '.join(api.SCHEMES)}, got {scheme!r}.")
    check_profile(profile)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise PixmarkError(f"{fn}: seed must be an integer or None, got {seed!r}.")
    from pixmark.checkpoint import model_channels

    channels = model_channels(model)
    secret = None
    if seed is not None:
        secret = hashlib.sha256(f"pixmark overwrite {scheme} {owner} {seed}".encode()).hexdigest()
    options: dict[str, Any] = {"channels": channels, **keygen_options}
    if scheme == "trigger":
        options.setdefault("task", task)
    key = api.keygen(scheme, owner, secret=secret, **options)
    protect_options: dict[str, Any] = {
        "task": task,
        "data": data,
        "device": device,
        "progress": progress,
        "profile": profile,
    }
    if overrides and scheme == "output":
        from pixmark.schemes.output import PROFILES

        fields = {f.name for f in dataclasses.fields(PROFILES[profile])}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise PixmarkError(
                f"{fn}: unknown profile entries {', '.join(unknown)}; "
                f"use {', '.join(sorted(fields))}."
            )
        protect_options["profile"] = dataclasses.replace(PROFILES[profile], **overrides)
    elif overrides:
        protect_options["overrides"] = dict(overrides)
    # The schemes may move the model or freeze its weights: protect a copy.
    return api.protect(_copy(model), key, **protect_options)


def overwrite(
    model: nn.Module,
    scheme: str,
    *,
    task: str,
    owner: str = "attacker",
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    data: str | None = None,
    device: str = "cpu",
    seed: int | None = None,
    progress: bool = False,
    **keygen_options: Any,
) -> nn.Module:
    """Overwriting attack: watermark the stolen (already protected) model again, with a new key.

    The thief makes a fresh key of the same ``scheme`` (``pixmark.api.keygen``; owner
    ``owner``, reproducible from ``seed``, fresh and random when ``seed`` is None;
    ``keygen_options`` go to keygen, the channel count is the model's) and runs the
    scheme's own ``protect`` on a copy of ``model`` for ``task`` (images from ``data``,
    default the task's own). Their mark can then be shown as well as the owner's, and
    the second embedding may weaken the owner's:

    * ``trigger``: the host is fine-tuned again so that it answers the thief's trigger
      with the thief's designed response.
    * ``output``: the model is wrapped again, H2(H(M(x))): what a thief with a copy of
      the deployed composite does; the owner's H is left as it is.

    profile: the strength, the budget of that protect run: ``"quick"`` < ``"cpu"`` <
    ``"paper"`` (the schemes' ``PROFILES``). ``overrides`` replaces profile entries
    (e.g. ``{"steps": 200}``, or ``{"lr": 1e-3, "lam": 0.1}`` for a tiny trigger host).
    A scheme not in ``pixmark.api.SCHEMES`` raises PixmarkError.

    Returns the re-watermarked model (CPU, eval mode); the input model is not modified.
    Use :func:`overwrite_protected` to keep the thief's key too.
    """
    return (
        overwrite_protected(
            model,
            scheme,
            task=task,
            owner=owner,
            profile=profile,
            overrides=overrides,
            data=data,
            device=device,
            seed=seed,
            progress=progress,
            **keygen_options,
        )
        .model.cpu()
        .eval()
    )


# --------------------------------------------------------------------------- registry

MODEL_ATTACKS: dict[str, Callable[..., nn.Module]] = {
    "prune": prune,
    "prune_channels": prune_channels,
    "quantize": quantize,
    "fine_tune": fine_tune,
    "overwrite": overwrite,
    "estimate_and_subtract": removal.estimate_and_subtract,
    "removal_network": removal.removal_network,
}
"""Name -> attack function; most are ``f(model, strength, **options)``. The exceptions,
which :func:`apply_model_attack` adapts: ``fine_tune`` is ``f(model, source, steps, ...)``,
``overwrite`` is ``f(model, scheme, *, task, profile, ...)``, and the removal attacks take
a query and images and return a query (:mod:`pixmark.attacks.removal`)."""


def apply_model_attack(name: str, model: nn.Module, strength: Any, **options: Any) -> nn.Module:
    """Apply the model attack called ``name`` (a key of ``MODEL_ATTACKS``) at ``strength``.

    For ``fine_tune`` the strength is ``steps`` and ``source=`` must be given in
    ``options``. For ``overwrite`` it is the profile, and ``scheme=`` and ``task=`` must
    be given. For ``estimate_and_subtract`` and ``removal_network`` it is the attack's
    ``strength``, ``images=`` (the attacker's own images) must be given, and the result is
    ``Chain(model, cleaning stage)`` (a model that saves as a pixmark checkpoint when
    ``model`` does). Raises PixmarkError for an unknown name.
    """
    if name not in MODEL_ATTACKS:
        raise PixmarkError(
            f"unknown model attack {name!r}; choose from {', '.join(MODEL_ATTACKS)}."
        )
    if name == "fine_tune":
        if "source" not in options:
            raise PixmarkError("model attack 'fine_tune' needs source= (a batch sampler).")
        return fine_tune(model, options.pop("source"), strength, **options)
    if name == "overwrite":
        missing = [k for k in ("scheme", "task") if k not in options]
        if missing:
            raise PixmarkError(f"model attack 'overwrite' needs {' and '.join(missing)}=.")
        profile = "quick" if strength is None else strength
        return overwrite(model, options.pop("scheme"), profile=profile, **options)
    if name in removal.REMOVAL_ATTACKS:
        _check_model(name, model)
        if "images" not in options:
            raise PixmarkError(f"model attack {name!r} needs images= (the attacker's own images).")
        victim = _copy(model)
        attacked = removal.REMOVAL_ATTACKS[name](
            victim, options.pop("images"), strength=strength, **options
        )
        return attacked.behind(victim)
    return MODEL_ATTACKS[name](model, strength, **options)


__all__ = [
    "MODEL_ATTACKS",
    "PRUNABLE",
    "QUANTIZE_MODES",
    "apply_model_attack",
    "fine_tune",
    "overwrite",
    "overwrite_protected",
    "prunable_layers",
    "prune",
    "prune_channels",
    "quantize",
    "sparsity",
]
