"""The task-specific variant (Zhang et al. 2020, "Task Specific Deep Invisible Watermarks").

No separate embedder H: the target network M itself learns the task *and* to hide the
logo, trained jointly with the ``output`` scheme's extractor R (:class:`Extractor`):

    L = L2(M(A), B) + λ · (L2(R(M(A)), δ) + L2(R(A), δ0) + L2(R(B), δ0))

with δ the key's logo and δ0 the white blank. The paper reports task quality close to
an unwatermarked model (debone PSNR 24.49 vs 25.81 dB); it gives no surrogate results
for this variant. Training uses the project's one loop (:func:`pixmark.train.run`), so
it checkpoints and resumes like every scheme.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark import nets
from pixmark.errors import PixmarkError
from pixmark.keys import Key
from pixmark.metrics import psnr
from pixmark.schemes.output import Extractor, logo_nc
from pixmark.train import Device, evaluate, run, seed_everything


@dataclass
class TaskSpecific:
    """A task network that hides the logo itself, with the extractor that reads it.

    ``model``: M ([N, C, H, W] in [0, 1] -> same); ``extractor``: R; ``logo``: δ
    [1, C, size, size] in {0, 1}; ``report``: held-out task PSNR/SSIM and logo NCs.
    """

    model: nn.Module
    extractor: Extractor
    logo: Tensor
    report: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def logo_scores(ts: TaskSpecific, images: Tensor, batch_size: int = 16) -> Tensor:
    """Per-image ``logo_nc`` (in [-1, 1]; > 0.95 is the paper's success) of what R
    recovers from ``images`` [N, C, H, W] in [0, 1]."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise PixmarkError("logo_scores: images must be a tensor [N, C, H, W] in [0, 1]")
    r = ts.extractor.eval()
    device = next(r.parameters()).device
    outs = [r(images[i : i + batch_size].to(device).float()).clamp(0, 1).cpu()
            for i in range(0, len(images), batch_size)]  # fmt: skip
    return logo_nc(torch.cat(outs), ts.logo)


def train_task_specific(
    key: Key,
    *,
    task: str = "derain",
    arch: str = "unet",
    steps: int = 300,
    size: int = 64,
    batch_size: int = 8,
    width: int | None = 8,
    arch_kwargs: dict[str, Any] | None = None,
    r_width: int = 16,
    r_blocks: int = 3,
    lam: float = 1.0,
    lr: float = 1e-3,
    seed: int = 0,
    n_test: int = 16,
    device: str = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> TaskSpecific:
    """Train M (``arch`` on ``task``) to do the task and hide the logo of ``key``.

    Args:
        key: a key holding a ``"logo"`` tensor [1, C, S, S] in [0, 1] (an ``output``
            key from :func:`pixmark.schemes.output.keygen`); its channels set the task's.
        task, arch, width, arch_kwargs: the task network M (``pixmark.nets.create``).
        steps, size, batch_size, lr: Adam steps on ``size`` px crops of the task's
            training images.
        r_width, r_blocks: size of the extractor R.
        lam: λ, weight of the extraction loss (the paper's λ = 1).
        n_test: held-out test crops for the report.
        checkpoint, resume: training-state file, and whether to continue from it.

    Returns:
        :class:`TaskSpecific` on the CPU in eval mode. ``report``: ``psnr``/``ssim`` of M
        on held-out test crops (``psnr_input``: of the degraded inputs), and mean
        ``logo_nc`` of R on M's outputs, the inputs A and the clean targets B.
    """
    from pixmark.api import task_splits
    from pixmark.data import PairSampler, fixed_pairs

    if not isinstance(key, Key) or "logo" not in key.tensors:
        raise PixmarkError("train_task_specific needs a key with a logo, e.g. output.keygen(owner)")
    if steps < 1 or lam < 0:
        raise PixmarkError(f"steps must be >= 1 and lam >= 0, got steps={steps}, lam={lam}")
    channels = int(key.tensor("logo").shape[1])
    spec, channels, splits = task_splits(task, channels)
    logo = key.tensor("logo").float()
    if logo.shape[-1] != size:
        logo = F.interpolate(logo, size=(size, size), mode="bilinear", align_corners=False)
    logo = (logo >= 0.5).float()
    dev_spec = Device(device)
    dev = dev_spec.torch
    seed_everything(seed)
    kwargs = dict(arch_kwargs or {}, channels=channels)
    if width is not None:
        kwargs["width"] = width
    model = nets.create(arch, **kwargs).to(dev).train()
    r = Extractor(channels, channels, r_width, r_blocks).to(dev).train()
    opt = torch.optim.Adam(list(model.parameters()) + list(r.parameters()), lr=lr)
    sampler = PairSampler([im for _, im in splits["train"]], spec, size, channels, seed=seed)
    logo_d = logo.to(dev)
    blank_d = torch.ones_like(logo_d)
    t0 = time.perf_counter()

    def step_fn(step: int) -> dict[str, float]:
        a, b = (t.to(dev) for t in sampler.batch(batch_size))
        out = model(a)
        task_loss = F.mse_loss(out, b)
        rec = r(torch.cat([out, a, b]))
        n = len(a)
        wm = F.mse_loss(rec[:n], logo_d.expand_as(rec[:n]))
        clean = F.mse_loss(rec[n:], blank_d.expand_as(rec[n:]))
        loss = task_loss + lam * (wm + clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"task": float(task_loss.detach()), "wm": float(wm.detach()),
                "clean": float(clean.detach())}  # fmt: skip

    history = run(step_fn, {"model": model, "extractor": r, "opt": opt, "source": sampler},
                  steps, checkpoint=checkpoint, resume=resume,
                  description=f"task-specific {arch} on {task}", progress=progress)  # fmt: skip
    model, r = model.cpu().eval(), r.cpu().eval()
    ts = TaskSpecific(model=model, extractor=r, logo=logo)
    x, y = fixed_pairs([im for _, im in splits["test"]], spec, size, n_test, seed=2,
                       channels=channels)  # fmt: skip
    with torch.no_grad():
        out = model(x).clamp(0, 1)
    ts.report = {
        **evaluate(model, x, y),
        "psnr_input": float(psnr(x, y)),
        "logo_nc_outputs": float(logo_scores(ts, out).mean()),
        "logo_nc_inputs": float(logo_scores(ts, x).mean()),
        "logo_nc_targets": float(logo_scores(ts, y).mean()),
        "lam": lam,
        "steps": steps,
        "history": history.to_dict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ts
