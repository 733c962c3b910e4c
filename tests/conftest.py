"""Shared test settings.

`make test` runs the files on 2 worker processes (pytest-xdist, one file per worker), so
each process uses one torch thread: on small convolutions two single-threaded processes
beat one process with two threads, and they never fight over the cores.
"""

from collections.abc import Callable

import pytest
import torch

torch.set_num_threads(1)


def _tiny_dncnn(seed: int) -> torch.nn.Module:
    """A 6-layer, width-16 gray DnCNN denoiser trained 120 steps on 40 px real crops."""
    from pixmark.api import train_model

    return train_model(
        "denoise",
        "dncnn",
        steps=120,
        size=40,
        width=16,
        channels=1,
        seed=seed,
        arch_kwargs={"depth": 6},
        device="cpu",
        progress=False,
    ).model


@pytest.fixture(scope="session")
def tiny_dncnn() -> Callable[[int], torch.nn.Module]:
    """``tiny_dncnn(seed)``: the small trigger host the trigger and black-box tests share."""
    return _tiny_dncnn
