"""Saving and loading models.

A *pixmark checkpoint* is one ``.safetensors`` file: the weights, plus a JSON config in
the file's metadata under the key ``"pixmark"``::

    {"format": "pixmark-model/1", "arch": "dncnn", "kwargs": {...}, "task": "denoise",
     "channels": 3, "data_seed": 0, "metrics": {...}, "pixmark_version": "0.1.0"}

``arch`` and ``kwargs`` rebuild the network with :func:`pixmark.nets.create`; the rest
describes how it was made. ``load_model`` also accepts a TorchScript file and a
``package.module:factory`` spec plus a weights file, so users can bring their own models.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write, check_output_path

FORMAT = "pixmark-model/1"
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def arch_name(model: nn.Module) -> str:
    """The zoo name of ``model``'s class (e.g. ``"dncnn"``)."""
    from pixmark import nets

    for name, cls in nets.ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise PixmarkError(
        f"{type(model).__name__} is not a pixmark zoo architecture; save it with "
        "torch.jit.save and load it as a TorchScript file instead"
    )


class Chain(nn.Sequential):
    """Models applied one after the other, each output clamped to [0, 1].

    A suspect followed by an attacker's post-processing (``pixmark.attacks.removal``) is
    a ``Chain(suspect, purifier)``. Input and output [N, C, H, W] in [0, 1]; it is saved
    as the configs of its stages (``{"arch": "chain", "kwargs": {"stages": [...]}}``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self:
            x = stage(x).clamp(0.0, 1.0)
        return x


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"arch", "kwargs"}`` that rebuilds ``model`` with :func:`build_model`.

    Zoo networks store their constructor arguments in ``model.config``. A protected
    ``output`` model (``Watermarked``: M followed by the embedder H) is stored as the
    configs of its two parts plus the shape of its logo buffer; a :class:`Chain` as the
    configs of its stages; ``pixmark.attacks.removal.SubtractPattern`` by its ``config``.
    """
    from pixmark.attacks.removal import SubtractPattern
    from pixmark.baselines import BaselineMarked
    from pixmark.schemes.output import Watermarked

    if isinstance(model, BaselineMarked):  # M + a classical mark; seed/message are buffers
        return {
            "arch": "baseline_marked",
            "kwargs": {"model": model_config(model.model), "method": model.method,
                       "strength": model.strength},
        }  # fmt: skip
    if isinstance(model, Chain):
        return {"arch": "chain", "kwargs": {"stages": [model_config(m) for m in model]}}
    if isinstance(model, SubtractPattern):
        return {"arch": "subtract_pattern", "kwargs": dict(model.config)}
    if isinstance(model, Watermarked):
        return {
            "arch": "watermarked",
            "kwargs": {
                "model": model_config(model.model),
                "embedder": model_config(model.embedder),
                "logo_shape": list(model.logo.shape),
                **({"signature": dict(model.signature.config)} if model.signature is not None
                   else {}),
            },
        }  # fmt: skip
    return {"arch": arch_name(model), "kwargs": dict(model.config)}


def build_model(config: dict[str, Any]) -> nn.Module:
    """The (untrained) network described by ``{"arch", "kwargs"}``."""
    from pixmark import nets

    if config["arch"] == "chain":
        return Chain(*(build_model(stage) for stage in config["kwargs"]["stages"]))
    if config["arch"] == "subtract_pattern":
        from pixmark.attacks.removal import SubtractPattern

        return SubtractPattern(**config["kwargs"])
    if config["arch"] == "baseline_marked":
        from pixmark.baselines import BaselineMarked, Mark

        kw = config["kwargs"]
        placeholder = Mark(kw["method"], 0, (0,) * 64)  # buffers come from the weights
        return BaselineMarked(build_model(kw["model"]), placeholder, strength=kw["strength"])
    if config["arch"] == "watermarked":
        from pixmark.schemes.output import Signature, Watermarked

        kw = config["kwargs"]
        signature = None  # its direction is a buffer: it comes from the weights
        if "signature" in kw:
            signature = Signature.from_config(kw["signature"])
        return Watermarked(
            build_model(kw["model"]),
            build_model(kw["embedder"]),
            torch.zeros(kw["logo_shape"]),
            signature,
        )
    return nets.create(config["arch"], **config["kwargs"])


def check_finite(model: nn.Module, what: str) -> None:
    """Raise if any floating-point parameter or buffer of ``model`` is NaN or infinite."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PixmarkError(f"{what} has NaN or infinite weights in {name!r}; it is unusable")


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    data_seed: int | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model`` (a zoo network with a ``config`` dict) as a pixmark checkpoint.

    Refuses to overwrite an existing file unless ``force``; writes atomically.
    """
    out = check_output_path(path, force)
    if out.suffix != ".safetensors":
        raise PixmarkError(f"checkpoint path {out} must end in .safetensors")
    check_finite(model, "the model to save")
    config = {
        "format": FORMAT,
        **model_config(model),
        "task": task,
        "channels": _channels(model),
        "data_seed": data_seed,
        "metrics": metrics or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "pixmark_version": _version(),
    }
    if extra:
        config.update(extra)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"pixmark": json.dumps(config)}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return out


def _channels(model: nn.Module) -> int | None:
    if isinstance(model, Chain) and len(model):
        return _channels(model[0])
    config = getattr(model, "config", None)
    if config is None and isinstance(getattr(model, "model", None), nn.Module):
        return _channels(model.model)  # Watermarked, also when watermarked twice
    return (config or {}).get("channels")


def _version() -> str:
    from pixmark import __version__

    return __version__


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON config stored in a pixmark checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"model file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PixmarkError(f"{p} is not a readable safetensors file ({exc})") from None
    if "pixmark" not in metadata:
        raise PixmarkError(f"{p} is a safetensors file without a pixmark config")
    try:
        config = json.loads(metadata["pixmark"])
    except json.JSONDecodeError:
        raise PixmarkError(f"{p} has a corrupt pixmark config") from None
    if config.get("format") != FORMAT:
        raise PixmarkError(f"{p} has format {config.get('format')!r}; expected {FORMAT!r}")
    return config


def _load_pixmark(path: Path) -> nn.Module:
    config = read_config(path)
    model = build_model(config)
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise PixmarkError(
            f"{path}: weights do not match its config ({config['arch']} "
            f"{config['kwargs']}): {first}"
        ) from None
    return model


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixmarkError(
            f"{path} is neither a pixmark checkpoint (.safetensors) nor a TorchScript file "
            f"({first})"
        ) from None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PixmarkError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise PixmarkError(f"cannot read weights file {path} ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PixmarkError(f"weights file {path} does not hold a state dict")
    return state


def _load_factory(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PixmarkError(f"cannot import {spec!r} ({exc})") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise PixmarkError(f"{spec} returned {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        try:
            model.load_state_dict(_load_weights(Path(weights)), strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise PixmarkError(f"weights {weights} do not fit {spec}: {first}") from None
    return model


def load_model(
    spec: str | os.PathLike[str] | nn.Module,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model for inference (eval mode, on ``device``).

    ``spec`` is one of: an ``nn.Module`` (returned as is), a pixmark checkpoint
    (``.safetensors``), a TorchScript file, or ``"package.module:factory"`` — a function
    returning an ``nn.Module`` — with its ``weights`` (``.safetensors`` or a torch state
    dict). The model maps [0, 1] NCHW images to [0, 1] NCHW images.
    """
    if isinstance(spec, nn.Module):
        model = spec
    else:
        text = str(spec)
        path = Path(text)
        if path.is_file():
            model = (
                _load_pixmark(path) if path.suffix == ".safetensors" else _load_torchscript(path)
            )
        elif _FACTORY.fullmatch(text):
            model = _load_factory(text, weights)
        else:
            raise PixmarkError(
                f"model {text!r} does not exist; give a .safetensors checkpoint, a TorchScript "
                "file, or package.module:factory with --weights"
            )
    check_finite(model, f"model {spec if not isinstance(spec, nn.Module) else ''}".strip())
    return model.to(device).eval()


def model_info(spec: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture, parameter count, task and metrics of a saved model, as a dict."""
    path = Path(spec)
    model = load_model(spec)
    info: dict[str, Any] = {
        "path": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if path.suffix == ".safetensors":
        config = read_config(path)
        info.update(
            {
                k: config.get(k)
                for k in (
                    "arch",
                    "kwargs",
                    "task",
                    "channels",
                    "data_seed",
                    "metrics",
                    "created",
                    "pixmark_version",
                )
            }
        )
    else:
        info["arch"] = "torchscript" if isinstance(model, torch.jit.ScriptModule) else "factory"
    return info


def model_channels(model: nn.Module) -> int:
    """The channel count ``model`` takes (1 or 3), from its config or its first conv."""
    for holder in (model, getattr(model, "model", None)):
        config = getattr(holder, "config", None)
        if isinstance(config, dict) and config.get("channels") in (1, 3):
            return int(config["channels"])
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels if module.in_channels in (1, 3) else 3
    return 3
