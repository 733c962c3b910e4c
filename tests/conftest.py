"""Shared test settings.

`make test` runs the files on 2 worker processes (pytest-xdist, one file per worker), so
each process uses one torch thread: on small convolutions two single-threaded processes
beat one process with two threads, and they never fight over the cores.
"""

import json
from collections.abc import Callable

import pytest
import torch
from filelock import FileLock

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


#: The output tests' key secret (a fixed key: the protected fixture is reproducible).
OUTPUT_SECRET = "5e" * 32


@pytest.fixture(scope="session")
def output_protected(tmp_path_factory, worker_id):  # noqa: ANN001, ANN201
    """``(target, protected)``: the output tests' deraining model M (a small UNet on real
    photos) and M protected at the quick profile, made once per test run.

    ``tests/test_output*.py`` share it. Under pytest-xdist the first worker to ask trains
    and saves both under the run's shared temp folder; the others wait on a file lock and
    load the files (protect takes minutes, so it is not repeated per worker).
    """
    from pixmark import api
    from pixmark.checkpoint import load_model, save_model
    from pixmark.keys import load_key, save_key
    from pixmark.schemes import output

    root = tmp_path_factory.getbasetemp()
    folder = (root if worker_id == "master" else root.parent) / "output-protected"
    with FileLock(f"{folder}.lock"):
        if not (folder / "report.json").exists():
            folder.mkdir(exist_ok=True)
            target = api.train_model(
                "derain", "unet", steps=150, width=8, arch_kwargs={"depth": 3}, seed=0,
                progress=False, out=folder / "target.safetensors", force=True,
            )  # fmt: skip
            key = output.keygen("ACME Imaging", secret=OUTPUT_SECRET)
            protected = output.protect(target.model, key, profile="quick", progress=False)
            save_model(protected.model, folder / "protected.safetensors", task="derain")
            save_key(protected.key, folder / "key.key")
            scalars = {k: v for k, v in protected.report.items() if isinstance(v, int | float)}
            (folder / "report.json").write_text(json.dumps(scalars))
    target = load_model(folder / "target.safetensors").eval()
    protected = output.Protected(
        model=load_model(folder / "protected.safetensors").eval(),
        key=load_key(folder / "key.key", "output"),
        report=json.loads((folder / "report.json").read_text()),
    )
    return target, protected
