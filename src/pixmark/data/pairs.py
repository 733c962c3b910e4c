"""Training and evaluation pairs: random crops of real images, degraded by a task.

``PairSampler`` draws an endless, reproducible stream of (input, target) batches;
``fixed_pairs`` gives one fixed set for validation or testing. Use images from
different splits (``split_images``) for the two so that no image is in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pixmark.data.sources import to_channels
from pixmark.data.tasks import TaskSpec
from pixmark.data.tasks import task as get_task
from pixmark.errors import PixmarkError


def _as_image(item: Tensor | tuple[str, Tensor]) -> Tensor:
    """Accept a [C, H, W] tensor or a ``(name, tensor)`` pair as returned by ``images``."""
    image = item[1] if isinstance(item, tuple) else item
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise PixmarkError(f"expected images [C, H, W] with C = 1 or 3, got {shape}")
    return image


class PairSampler:
    """Random (degraded input, target) crop pairs from a list of images.

    Each crop comes from an image picked uniformly at random (images smaller than the
    crop are skipped), at a random position, with a random flip and rotation by a
    multiple of 90 degrees. ``batch`` returns CPU tensors [n, channels, size, size] in
    [0, 1]. All randomness comes from the sampler's own generator, seeded with ``seed``:
    the same seed gives the same stream, and ``state_dict``/``load_state_dict`` resume
    it exactly.
    """

    def __init__(
        self,
        images: Sequence[Tensor | tuple[str, Tensor]],
        task: TaskSpec | str,
        size: int,
        channels: int,
        seed: int = 0,
    ) -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        if channels not in (1, 3):
            raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
        if size < 1:
            raise PixmarkError(f"crop size must be a positive number of pixels, got {size}")
        all_images = [_as_image(item) for item in images]
        if not all_images:
            raise PixmarkError("no images given to PairSampler; pass at least one [C, H, W] image")
        usable = [im for im in all_images if min(im.shape[-2:]) >= size]
        if not usable:
            largest = max(all_images, key=lambda im: min(im.shape[-2:]))
            raise PixmarkError(
                f"crop size {size} is larger than every image (the largest is "
                f"{largest.shape[-2]}x{largest.shape[-1]}); use a crop size of at most "
                f"{min(largest.shape[-2:])} or larger images"
            )
        self.size = size
        self.channels = channels
        self.seed = seed
        self.clean = [to_channels(im, channels).float() for im in usable]
        # The target is computed on whole images so that context-dependent targets
        # (CLAHE for xray) do not change with the crop.
        self.targets = [self.task.target(im[None])[0] for im in self.clean]
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        """The next ``n`` pairs: (degraded input x, target y), each [n, channels, size, size]."""
        if n < 1:
            raise PixmarkError(f"batch size must be at least 1, got {n}")
        g = self.generator
        clean_crops, target_crops = [], []
        picks = torch.randint(len(self.clean), (n,), generator=g).tolist()
        for index in picks:
            clean, target = self.clean[index], self.targets[index]
            height, width = clean.shape[-2:]
            top = int(torch.randint(height - self.size + 1, (1,), generator=g))
            left = int(torch.randint(width - self.size + 1, (1,), generator=g))
            turns = int(torch.randint(4, (1,), generator=g))
            flip = bool(torch.randint(2, (1,), generator=g))
            for source, out in ((clean, clean_crops), (target, target_crops)):
                crop = source[:, top : top + self.size, left : left + self.size]
                crop = torch.rot90(crop, turns, dims=(1, 2))
                out.append(crop.flip(2) if flip else crop)
        clean_batch = torch.stack(clean_crops).contiguous()
        y = torch.stack(target_crops).contiguous()
        x = self.task.degrade(clean_batch, g)
        self.batches_drawn += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream exactly (generator state as a uint8 tensor)."""
        return {
            "task": self.task.name,
            "size": self.size,
            "channels": self.channels,
            "seed": self.seed,
            "batches_drawn": self.batches_drawn,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` of a sampler built with the same images and settings."""
        ours = {"task": self.task.name, "size": self.size, "channels": self.channels}
        for key, value in ours.items():
            if state.get(key) != value:
                raise PixmarkError(
                    f"cannot resume the pair sampler: the saved {key} is {state.get(key)!r} "
                    f"but this sampler has {value!r}; build it with the saved settings"
                )
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])
        self.generator.set_state(state["generator"])


def fixed_pairs(
    images: Sequence[Tensor | tuple[str, Tensor]],
    task: TaskSpec | str,
    size: int,
    count: int,
    seed: int = 0,
    channels: int | None = None,
) -> tuple[Tensor, Tensor]:
    """A fixed set of ``count`` (input, target) crop pairs, identical on every call.

    Same sampling as ``PairSampler`` with its own generator seeded by ``seed``.
    ``channels`` defaults to the task's ``default_channels``.
    """
    spec = get_task(task) if isinstance(task, str) else task
    if channels is None:
        channels = spec.default_channels
    sampler = PairSampler(images, spec, size, channels, seed)
    return sampler.batch(count)
