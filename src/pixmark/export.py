"""Export a model to TorchScript or ONNX, and verify an exported ONNX model.

Both formats are traced, and tracing freezes every Python branch the model takes on the
example input. pixmark's networks branch on the image size (``pad_to_multiple`` pads
only sizes that are not a multiple of the network's stride), so a plain trace at 64×64
silently drops the padding and fails or drifts on other sizes. The exported graph is
therefore :class:`SizeAgnostic`: it pads every input itself (replicating the border, as
the networks do) to the network's stride with shape-generic indexing, runs the network
on a size where it never pads, and crops the result. The inner branches are then the
same for every input, and the exported model accepts any H × W.

After writing, each export is checked against the original model on the example size
and on two odd sizes; a graph that does not reproduce the model raises
:class:`~pixmark.errors.PixmarkError` instead of shipping a wrong file.

ONNX export uses the TorchScript-based exporter (``dynamo=False``), which needs only
the ``onnx`` package. The newer dynamo exporter (needs ``onnxscript``) is slower on CPU
and, at torch 2.13, specialises the size branches without warning: its graphs were off
by up to 1.1 on odd sizes. ``onnx_query`` runs an exported model with ``onnxruntime``
so ``pixmark.verify`` can check an ONNX file like any other suspect.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write, check_output_path
from pixmark.schemes.base import Query

#: ONNX opset used by :func:`export_onnx`.
OPSET = 17

#: Largest absolute difference allowed between an export and the model (float32 noise).
TOLERANCE = 1e-4


def pad_spec(model: nn.Module) -> tuple[int, int] | None:
    """``(multiple, min_size)`` to which a zoo network pads its inputs, else ``None``."""
    from pixmark import nets

    if isinstance(model, nets.UNet):
        return 2**model.depth, 1
    if isinstance(model, nets.ResNetGenerator):
        return 4, 8
    if isinstance(model, nets.CEILNet):
        return 2, 4
    if isinstance(model, nets.FFDNet):
        return 2, 1
    if isinstance(model, nets.RED):
        return 1, 2 * int(model.depth) + 1
    if isinstance(model, tuple(nets.ARCHITECTURES.values())):
        return 1, 1
    return None


def _replicate_to(x: Tensor, size: Tensor, dim: int) -> Tensor:
    """Extend ``x`` along ``dim`` to ``size`` by repeating its last row (shape-generic)."""
    n = x.shape[dim]
    index = torch.arange(size, device=x.device).clamp(max=n - 1)
    return x.index_select(dim, index)


class SizeAgnostic(nn.Module):
    """``model`` behind traceable replicate padding to ``multiple`` (and ``min_size``).

    Same outputs as ``model`` for every H × W, and the same graph for every size, so a
    trace of it is valid for all sizes.
    """

    def __init__(self, model: nn.Module, multiple: int = 1, min_size: int = 1) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(multiple)
        self.min_size = int(min_size)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tensor(x.shape[-2]) if not torch.jit.is_tracing() else x.shape[-2]
        w = torch.tensor(x.shape[-1]) if not torch.jit.is_tracing() else x.shape[-1]
        m = self.multiple
        lo = -(-self.min_size // m) * m
        th = torch.clamp((h + (m - 1)) // m * m, min=lo)
        tw = torch.clamp((w + (m - 1)) // m * m, min=lo)
        y = _replicate_to(_replicate_to(x, th, 2), tw, 3)
        y = self.model(y)
        return y[:, :, :h, :w]


def _example(channels: int, size: int, multiple: int) -> Tensor:
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise PixmarkError(f"size must be >= 1, got {size}")
    h = -(-size // multiple) * multiple
    # Non-square, so no branch keyed to a square size (e.g. a 64×64 logo) is frozen.
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, channels, h, h + multiple, generator=gen)


def _check_sizes(size: int) -> list[tuple[int, int]]:
    return [(size, size), (max(size // 2 + 3, 5), size + 7), (13, 9)]


def size_agnostic(
    model: nn.Module, multiple: int | None = None, min_size: int | None = None
) -> nn.Module:
    """``model`` made safe to trace at one size and run at any (same outputs).

    A zoo network is wrapped in :class:`SizeAgnostic` with its own stride; a protected
    ``output`` model (M then the embedder H) has each part wrapped, since its logo is
    resized to the unpadded image size. Other models are wrapped only when ``multiple``
    or ``min_size`` is given; the export check still catches a wrong trace.
    """
    if multiple is not None or min_size is not None:
        return SizeAgnostic(model, multiple or 1, min_size or 1).eval()
    spec = pad_spec(model)
    if spec is not None:
        return SizeAgnostic(model, *spec).eval() if spec != (1, 1) else model
    inner, embedder = getattr(model, "model", None), getattr(model, "embedder", None)
    if isinstance(inner, nn.Module) and isinstance(embedder, nn.Module):
        clone = copy.copy(model)
        clone._modules = dict(model._modules)
        clone.model = size_agnostic(inner)
        clone.embedder = size_agnostic(embedder)
        return clone.eval()
    return model


def _wrap(
    model: nn.Module, multiple: int | None, min_size: int | None
) -> tuple[nn.Module, nn.Module, int]:
    model = model.cpu().eval()
    wrapped = size_agnostic(model, multiple, min_size)
    step = wrapped.multiple if isinstance(wrapped, SizeAgnostic) else 1
    return model, wrapped, step


def _compare(
    reference: nn.Module, run: Any, channels: int, size: int, what: str, path: Path
) -> None:
    gen = torch.Generator().manual_seed(1)
    for h, w in _check_sizes(size):
        x = torch.rand(2, channels, h, w, generator=gen)
        with torch.no_grad():
            expected = reference(x).float()
        try:
            got = run(x)
        except PixmarkError as exc:
            raise PixmarkError(f"{exc}; pass multiple= (how the model pads its inputs)") from None
        if got.shape != expected.shape:
            raise PixmarkError(
                f"the {what} export at {path} returns {tuple(got.shape)} for a {tuple(x.shape)} "
                f"input instead of {tuple(expected.shape)}; pass multiple= (the model's stride)"
            )
        diff = float((got - expected).abs().max())
        if not diff <= TOLERANCE:
            raise PixmarkError(
                f"the {what} export at {path} differs from the model by {diff:.3g} on a "
                f"{h}x{w} input; pass multiple=/min_size= (how the model pads its inputs)"
            )


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    channels: int,
    size: int = 64,
    *,
    multiple: int | None = None,
    min_size: int | None = None,
    force: bool = False,
) -> Path:
    """Trace ``model`` into a TorchScript file that accepts any H × W; return the path.

    The trace runs at about ``size`` px and is checked against the model on other sizes.
    ``pixmark.load_model`` and ``pixmark verify`` read the file. Refuses to overwrite
    ``path`` unless ``force``.
    """
    out = check_output_path(path, force)
    model, wrapper, step = _wrap(model, multiple, min_size)
    example = _example(channels, size, step)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp)))
    loaded = torch.jit.load(str(out), map_location="cpu")

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return loaded(x).float()

    try:
        _compare(model, run, channels, size, "TorchScript", out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise PixmarkError(
            f"ONNX support needs the {module} package; install it with "
            "`pip install onnx onnxruntime` (or `pip install pixmark[onnx]`)"
        ) from None


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    channels: int,
    size: int = 64,
    *,
    multiple: int | None = None,
    min_size: int | None = None,
    force: bool = False,
) -> Path:
    """Export ``model`` to ONNX (opset 17) with dynamic batch, height and width.

    Input ``"input"`` and output ``"output"`` are float32 [N, C, H, W] in [0, 1]. The file
    is checked with ``onnxruntime`` against the model on several sizes before returning.
    Needs ``onnx`` and ``onnxruntime``. Refuses to overwrite ``path`` unless ``force``.
    """
    _require("onnx")
    _require("onnxruntime")
    out = check_output_path(path, force)
    model, wrapper, step = _wrap(model, multiple, min_size)
    example = _example(channels, size, step)
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes},
                opset_version=OPSET,
            )

    try:
        atomic_write(out, write)
    except PixmarkError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixmarkError(f"cannot export the model to ONNX ({first})") from None
    try:
        _compare(model, _onnx_runner(out), channels, size, "ONNX", out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def _onnx_runner(path: str | os.PathLike[str], batch_size: int = 8) -> Query:
    """Run the ONNX model at ``path`` on [N, C, H, W] float images (outputs unclamped)."""
    ort = _require("onnxruntime")
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"ONNX model {p} does not exist")
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise PixmarkError(f"{p} is not a loadable ONNX model ({exc})") from None
    name = session.get_inputs()[0].name

    def query(images: Tensor) -> Tensor:
        outs = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].detach().cpu().float().contiguous().numpy()
            try:
                (y,) = session.run(None, {name: x})[:1]
            except Exception as exc:  # noqa: BLE001
                first = str(exc).strip().splitlines()[0]
                raise PixmarkError(
                    f"ONNX model {p} failed on a {x.shape} input ({first})"
                ) from None
            y = torch.from_numpy(np.asarray(y, dtype=np.float32))
            if y.shape != x.shape:
                raise PixmarkError(
                    f"ONNX model {p} returned {tuple(y.shape)} for a {x.shape} input; pixmark "
                    "verifies image-to-image models whose output has the input's shape"
                )
            outs.append(y)
        return torch.cat(outs) if outs else images.new_zeros(images.shape)

    return query


def onnx_query(path: str | os.PathLike[str], batch_size: int = 8) -> Query:
    """A :data:`~pixmark.schemes.base.Query` running the ONNX model at ``path``.

    Inputs [N, C, H, W] in [0, 1]; outputs clamped to [0, 1], as for any suspect.
    Needs ``onnxruntime``.
    """
    run = _onnx_runner(path, batch_size)

    def query(images: Tensor) -> Tensor:
        out = run(images)
        if not torch.isfinite(out).all():
            raise PixmarkError(f"ONNX model {path} returned NaN or infinite values")
        return out.clamp(0, 1)

    return query
