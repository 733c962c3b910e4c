"""pixmark's public functions. The CLI is a thin layer over these.

* :func:`train_model` trains a task model (a target to protect, or a null model).
* ``keygen``, ``protect``, ``verify``, ``attack`` come with the schemes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixmark import data, nets
from pixmark.checkpoint import save_model
from pixmark.errors import PixmarkError
from pixmark.fileio import check_output_path
from pixmark.train import Device, History, evaluate, fit

#: Validation/test crops drawn per split when training a task model.
EVAL_CROPS = 16


@dataclass
class TrainedModel:
    """A trained task model with its held-out metrics (PSNR in dB, SSIM in [0, 1])."""

    model: nn.Module
    task: str
    metrics: dict[str, float]
    history: History
    path: Path | None


def task_splits(
    task: str, channels: int | None = None, source: str | None = None, data_seed: int = 0
) -> tuple[data.TaskSpec, int, dict[str, list[Any]]]:
    """The task spec, the channel count and the by-image train/val/test split of its images."""
    spec = data.task(task)
    channels = channels or spec.default_channels
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels}")
    items = data.images(source or spec.source, channels=channels)
    if (source or spec.source) == "builtin:xray":
        # Only two real radiographs ship offline: split 3x3 tiles of them (tiles share no
        # pixels) so that validation and test crops still come from unseen regions.
        items = data.tile_images(items, grid=3)
    if len(items) < 3:
        raise PixmarkError(
            f"{source or spec.source} has {len(items)} image(s); at least 3 are needed to "
            "split into train, validation and test"
        )
    return spec, channels, data.split_images(items, seed=data_seed)


def train_model(
    task: str,
    arch: str,
    *,
    steps: int = 300,
    size: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    width: int | None = None,
    channels: int | None = None,
    source: str | None = None,
    seed: int = 0,
    data_seed: int = 0,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    force: bool = False,
    checkpoint_every: int = 50,
    arch_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train ``arch`` on ``task`` from the task's real images and report held-out quality.

    Crops of ``size`` px are drawn from the training split; validation and test crops
    come from images never seen in training. With ``out`` the model is saved as a pixmark
    checkpoint; its training state goes to ``<out>.state.pt`` every ``checkpoint_every``
    steps so ``resume=True`` continues after a kill. Returned metrics: ``psnr``/``ssim``
    of the model on the test crops and ``psnr_input`` of the degraded input (the gain is
    their difference).
    """
    out_path = check_output_path(out, force) if out is not None else None
    spec, channels, splits = task_splits(task, channels, source, data_seed)
    kwargs = dict(arch_kwargs or {})
    kwargs["channels"] = channels
    if width is not None:
        kwargs["width"] = width
    model = nets.create(arch, **kwargs)
    train_imgs = [img for _, img in splits["train"]]
    sampler = data.PairSampler(train_imgs, spec, size=size, channels=channels, seed=seed)
    val = data.fixed_pairs([img for _, img in splits["val"]], spec, size, EVAL_CROPS, seed=1)
    test = data.fixed_pairs([img for _, img in splits["test"]], spec, size, EVAL_CROPS, seed=2)
    dev = Device(device)
    state_path = out_path.with_name(out_path.name + ".state.pt") if out_path else None
    history = fit(
        model,
        sampler,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        device=dev,
        seed=seed,
        checkpoint=state_path,
        resume=resume,
        checkpoint_every=checkpoint_every,
        val_pairs=val,
        val_every=max(steps // 5, 1),
        description=f"train {arch} on {task}",
        progress=progress,
    )
    model = model.cpu().eval()
    metrics = evaluate(model, *test)
    from pixmark.metrics import psnr

    metrics["psnr_input"] = float(psnr(test[0], test[1]))
    metrics["val_psnr"] = history.validation[-1]["psnr"]
    if out_path is not None:
        save_model(
            model,
            out_path,
            task=task,
            data_seed=data_seed,
            metrics=metrics,
            extra={
                "train": {
                    "steps": steps,
                    "size": size,
                    "batch_size": batch_size,
                    "lr": lr,
                    "seed": seed,
                    "source": source or spec.source,
                }
            },
            force=force,
        )
        if state_path is not None:
            state_path.unlink(missing_ok=True)
    return TrainedModel(model=model, task=task, metrics=metrics, history=history, path=out_path)


@torch.no_grad()
def apply_model(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Run ``model`` on [N, C, H, W] images in [0, 1] in batches; outputs clamped to [0, 1]."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outs = [
        model(images[i : i + batch_size].to(device)).float().clamp(0, 1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outs)
