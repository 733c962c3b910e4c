"""What every scheme shares.

A scheme is a module with three functions (see ``schemes/trigger.py`` for the shape)::

    keygen(owner, **options) -> Key
    protect(model, key, **options) -> Protected
    verify(query, key, **options) -> Verdict

``verify`` never needs the suspect's weights: it gets a :data:`Query`, a function from a
batch of input images to the suspect's outputs. A local model, a TorchScript file and a
URL all become a ``Query`` (:func:`as_query`), so black-box verification is the default.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.keys import Key

#: A suspect as seen by verify: [N, C, H, W] images in [0, 1] -> outputs of the same shape.
Query = Callable[[Tensor], Tensor]

#: Training budgets. ``quick``: tests and demo (minutes on 2 CPU cores); ``cpu``: the
#: largest setting that finishes in about 45 minutes on 2 cores; ``paper``: the papers'
#: setting, for one GPU.
PROFILE_NAMES = ("quick", "cpu", "paper")


@dataclass
class Protected:
    """What ``protect`` returns: the model to deploy, the updated key and a report."""

    model: nn.Module
    key: Key
    report: dict[str, Any] = field(default_factory=dict)


def check_profile(profile: str) -> str:
    if profile not in PROFILE_NAMES:
        raise PixmarkError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    return profile


def profile_settings(
    table: dict[str, dict[str, Any]], profile: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of ``table[profile]`` with ``overrides`` applied; unknown entries are an error."""
    settings = dict(table[check_profile(profile)])
    unknown = sorted(set(overrides or {}) - set(settings))
    if unknown:
        raise PixmarkError(
            f"unknown profile entries {', '.join(unknown)}; use {', '.join(settings)}"
        )
    settings.update(overrides or {})
    return settings


class Scalar:
    """A float that checkpoints with the training state (a loss weight a controller moves)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def independent_models(
    key: Key,
    task: str,
    plan: tuple[tuple[str, float], ...],
    *,
    steps: int,
    width: int,
    size: int,
    channels: int,
    data: str | None = None,
    device: str = "auto",
) -> list[nn.Module]:
    """Small clean models of ``task`` trained from scratch, one per ``(arch, fraction)``.

    Model i trains ``fraction * steps`` steps with its own seed and by-image data split,
    both drawn from the key, so together they stand for "other models of the task" that
    never saw the mark: protect uses them as its extractor's negatives and holds some out
    to check that it reads none of them. Returned in eval mode on the CPU, frozen.
    """
    from pixmark.api import train_model

    models = []
    for i, (arch, fraction) in enumerate(plan):
        seed = key.seed(f"independent-{i}") % 2**31
        trained = train_model(
            task,
            arch,
            steps=max(int(steps * fraction), 1),
            size=size,
            width=width,
            channels=channels,
            source=data,
            seed=seed,
            data_seed=seed,
            device=device,
            progress=False,
        )
        models.append(trained.model.cpu().eval().requires_grad_(False))
    return models


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """Where ``model`` runs: its first parameter's device, else its first buffer's (a
    parameter-free stage such as ``SubtractPattern``), else ``default`` (the CPU)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None:
        return first.device
    return default if default is not None else torch.device("cpu")


#: The most repeats :func:`repeated` accepts per question.
MAX_REPEATS = 4096


class _Repeated:
    """The query :func:`repeated` returns; see there."""

    def __init__(self, query: Query, repeats: int, dither: float, seed: int) -> None:
        self.query, self.repeats, self.dither = query, repeats, dither
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: Tensor) -> Tensor:
        total = None
        for _ in range(self.repeats):
            x = images
            if self.dither > 0:
                noise = torch.randn(images.shape, generator=self.generator).to(images.device)
                x = (images + self.dither * noise.to(images.dtype)).clamp(0, 1)
            answer = self.query(x).float()
            total = answer if total is None else total + answer
        return total / self.repeats

    @property
    def remaining(self) -> int | None:
        """Questions left within the wrapped query's request budget (None: no budget)."""
        left = getattr(self.query, "remaining", None)
        return left // self.repeats if isinstance(left, int) else None


def repeated(query: Query, repeats: int, dither: float = 0.0, seed: int = 0) -> Query:
    """A query that asks every question ``repeats`` times and averages the answers.

    Against a suspect whose answers carry fresh random noise (an attacker drowning a mark),
    the noise's standard deviation falls by sqrt(``repeats``); a deterministic model's
    answers are unchanged. ``dither`` (standard deviation in [0, 1] intensity units, at
    most 0.1; e.g. 1/255) adds fresh Gaussian noise to the input of every repeat, so that
    noise the attacker derives from the input bytes (same question, same noise) is drawn
    anew as well; the answer is then the mean of M(x + d), which for a restoration model
    stays within a fraction of ``dither`` of M(x). repeats: integer 1-4096. The dither is
    reproducible from ``seed`` and the order of the calls. A request budget of the wrapped
    query (``remaining``) is reported in questions, i.e. divided by ``repeats``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise PixmarkError(f"repeats must be an integer from 1 to {MAX_REPEATS}, got {repeats!r}")
    if isinstance(dither, bool) or not isinstance(dither, int | float) or not 0 <= dither <= 0.1:
        raise PixmarkError(f"dither must be a noise level in [0, 0.1], got {dither!r}")
    return _Repeated(query, repeats, float(dither), seed)


def as_query(model: nn.Module, batch_size: int = 8, name: str = "suspect") -> Query:
    """Wrap a local model as a :data:`Query` (no grad, batched, outputs clamped to [0, 1])."""
    model.eval()
    device = model_device(model)

    @torch.no_grad()
    def query(images: Tensor) -> Tensor:
        outs = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            try:
                y = model(x)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise PixmarkError(
                    f"{name} failed on a {tuple(x.shape)} input ({first}); does it take "
                    f"{x.shape[1]}-channel images?"
                ) from None
            if not isinstance(y, Tensor) or y.shape != x.shape:
                shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise PixmarkError(
                    f"{name} returned {shape} for a {tuple(x.shape)} input; pixmark verifies "
                    "image-to-image models whose output has the input's shape"
                )
            if not torch.isfinite(y).all():
                raise PixmarkError(f"{name} returned NaN or infinite values")
            outs.append(y.float().clamp(0, 1).cpu())
        return torch.cat(outs)

    return query
