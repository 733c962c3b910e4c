"""The one training loop used by every task model, scheme and attack.

Two layers:

* :func:`run` is the generic loop. You give it a ``step_fn(step) -> {name: loss}`` that
  does one optimisation step, and a ``state`` dict of everything that must survive a
  kill (modules, optimisers, samplers: anything with ``state_dict``). ``run`` owns the
  progress bar, periodic atomic checkpoints, ``resume`` after a kill, and validation.
  Schemes with several networks (embedder, extractor, discriminator) use it directly.
* :func:`fit` is the common supervised case built on ``run``: one model, one sampler of
  (input, target) batches, an L1/L2/SSIM loss, Adam.

Device handling lives in :class:`Device`: ``auto`` picks CUDA when present, and
``autocast()`` gives bf16 autocast on CUDA (a no-op on CPU, where bf16 is slow).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Device:
    """Where training runs. ``name`` is ``auto``, ``cpu`` or ``cuda``."""

    name: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.name not in DEVICES and not self.name.startswith("cuda:"):
            raise PixmarkError(f"unknown device {self.name!r}; choose from {', '.join(DEVICES)}")
        if self.name.startswith("cuda") and not torch.cuda.is_available():
            raise PixmarkError(f"device {self.name!r} asked for but CUDA is not available here")

    @property
    def torch(self) -> torch.device:
        if self.name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.name)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``amp`` is set; nothing on CPU."""
        if self.amp and self.torch.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (CPU and CUDA)."""
    torch.manual_seed(seed)


@dataclass
class History:
    """What a run did: the last losses, validation metrics per check, and timing."""

    steps: int = 0
    resumed_from: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "losses": self.losses,
            "validation": self.validation,
            "seconds": round(self.seconds, 3),
        }


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any], step: int, history: History) -> None:
    """Write everything needed to resume at ``step`` to ``path`` atomically."""
    payload = {
        "step": step,
        "state": {name: obj.state_dict() for name, obj in state.items()},
        "rng": _rng_state(),
        "history": history.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: Path, state: dict[str, Any]) -> tuple[int, History]:
    """Restore ``state`` in place from ``path``; return the step reached and the history."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        for name, obj in state.items():
            obj.load_state_dict(payload["state"][name])
        _set_rng_state(payload["rng"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise PixmarkError(
            f"training checkpoint {path} does not match this run or is corrupt ({exc}); "
            "delete it or start without --resume"
        ) from None
    h = payload["history"]
    history = History(steps=h["steps"], losses=h["losses"], validation=h["validation"])
    history.seconds = float(h["seconds"])
    return int(payload["step"]), history


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


def run(
    step_fn: Callable[[int], dict[str, float]],
    state: dict[str, Any],
    steps: int,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    validate: Callable[[], dict[str, float]] | None = None,
    val_every: int = 0,
    description: str = "training",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> History:
    """Call ``step_fn(step)`` for ``step`` in ``[start, steps)`` and return the history.

    ``state`` names every object whose ``state_dict`` must be checkpointed. With
    ``checkpoint`` set, the state is written there atomically every ``checkpoint_every``
    steps; with ``resume`` and an existing checkpoint, training continues after the last
    saved step with the same RNG state, so an interrupted run ends where an uninterrupted
    one would. ``validate()`` is called every ``val_every`` steps (if > 0) and at the end.
    ``on_step(step)`` runs after each step (used by tests to simulate a kill).
    """
    if steps < 0:
        raise PixmarkError(f"steps must be >= 0, got {steps}")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start, history = 0, History()
    if resume and ckpt is not None and ckpt.exists():
        start, history = load_training_state(ckpt, state)
        history.resumed_from = start
    if start > steps:
        raise PixmarkError(f"checkpoint {ckpt} is at step {start}, beyond the {steps} steps asked")

    t0 = time.perf_counter() - history.seconds
    with _progress(progress) as bar:
        task = bar.add_task(description, total=steps, completed=start, info="", rate="")
        window_start, window_steps = time.perf_counter(), 0
        for step in range(start, steps):
            losses = step_fn(step)
            for name, value in losses.items():
                if value != value or value in (float("inf"), float("-inf")):
                    raise PixmarkError(
                        f"{description}: loss {name!r} became {value} at step {step}; "
                        "lower the learning rate or check the data"
                    )
            history.losses = {k: float(v) for k, v in losses.items()}
            history.steps = step + 1
            window_steps += 1
            elapsed = time.perf_counter() - window_start
            rate = f"{window_steps / elapsed:.1f} it/s" if elapsed > 0 else ""
            if elapsed > 5:
                window_start, window_steps = time.perf_counter(), 0
            info = _fmt(history.losses)
            if validate is not None and val_every > 0 and (step + 1) % val_every == 0:
                history.validation.append({"step": step + 1, **validate()})
            if history.validation:
                info += "  val " + _fmt(
                    {k: v for k, v in history.validation[-1].items() if k != "step"}
                )
            bar.update(task, completed=step + 1, info=info, rate=rate)
            history.seconds = time.perf_counter() - t0
            if ckpt is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
                save_training_state(ckpt, state, step + 1, history)
            if on_step is not None:
                on_step(step)
    if validate is not None and (not history.validation or history.validation[-1]["step"] != steps):
        history.validation.append({"step": steps, **validate()})
    history.steps = steps
    history.seconds = time.perf_counter() - t0
    return history


# --------------------------------------------------------------------------- supervised


def pixel_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """A reconstruction loss by name: ``l1``, ``l2`` or ``ssim`` (1 - SSIM)."""
    if name == "l1":
        return nn.functional.l1_loss
    if name == "l2":
        return nn.functional.mse_loss
    if name == "ssim":
        from pixmark.metrics import ssim

        return lambda out, target: 1.0 - ssim(out, target)
    raise PixmarkError(f"unknown loss {name!r}; choose from l1, l2, ssim")


class BatchSource(Protocol):
    """Anything that yields (input, target) batches and can save its position.

    ``pixmark.data.PairSampler`` is one; surrogate attacks wrap a teacher model in one.
    """

    def batch(self, n: int) -> tuple[Tensor, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    device: Device | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """PSNR and SSIM (means, dB and [0, 1]) of ``model(inputs)`` against ``targets``."""
    from pixmark.metrics import psnr, ssim

    dev = (device or Device("cpu")).torch
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(inputs), batch_size):
        outs.append(model(inputs[i : i + batch_size].to(dev)).float().clamp(0, 1).cpu())
    model.train(was_training)
    out = torch.cat(outs)
    return {"psnr": float(psnr(out, targets)), "ssim": float(ssim(out, targets))}


def fit(
    model: nn.Module,
    source: Any,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "l2",
    device: Device | str | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    val_pairs: tuple[Tensor, Tensor] | None = None,
    val_every: int = 0,
    description: str = "training",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> History:
    """Train ``model`` on batches ``source.batch(batch_size)`` with Adam and a cosine schedule.

    ``source`` is any object with ``batch(n) -> (x, y)`` and ``state_dict``/``load_state_dict``
    (a :class:`pixmark.data.PairSampler`). Images are in [0, 1], NCHW. Returns the history
    with the last losses and validation PSNR/SSIM on ``val_pairs``. ``device``: a
    :class:`Device` or its name (``auto``, ``cpu``, ``cuda``); default ``auto``.
    """
    device = device if isinstance(device, Device) else Device(device or "auto")
    dev = device.torch
    seed_everything(seed)
    model.to(dev).train()
    criterion = pixel_loss(loss) if isinstance(loss, str) else loss
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(steps, 1), eta_min=lr * 0.05
    )

    def step_fn(step: int) -> dict[str, float]:
        x, y = source.batch(batch_size)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with device.autocast():
            out = model(x)
        value = criterion(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        return {"loss": float(value.detach())}

    validate = None
    if val_pairs is not None:
        validate = lambda: evaluate(model, val_pairs[0], val_pairs[1], device)  # noqa: E731
    state = {"model": model, "optimizer": optimizer, "schedule": schedule, "source": source}
    history = run(
        step_fn,
        state,
        steps,
        checkpoint=checkpoint,
        resume=resume,
        checkpoint_every=checkpoint_every,
        validate=validate,
        val_every=val_every,
        description=description,
        progress=progress,
        on_step=on_step,
    )
    model.eval()
    return history


def batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Split ``x`` along the batch dimension into chunks of at most ``batch_size``."""
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]
