"""The training loop: it learns, it resumes exactly after a kill, it never leaves half a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixmark import data, nets
from pixmark.api import train_model
from pixmark.errors import PixmarkError
from pixmark.train import Device, fit, load_training_state, run

ROOT = Path(__file__).resolve().parents[1]


def _sampler(seed: int = 0) -> data.PairSampler:
    imgs = [img for _, img in data.images("builtin", channels=1)][:6]
    return data.PairSampler(imgs, "denoise", size=32, channels=1, seed=seed)


def _small_dncnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return nets.create("dncnn", channels=1, depth=4, width=8)


class _Kill(Exception):
    pass


def test_resume_after_kill_reaches_the_same_weights(tmp_path: Path) -> None:
    """Interrupt at step 13, resume from the step-10 checkpoint: same result as no interrupt."""
    reference = _small_dncnn()
    fit(
        reference,
        _sampler(),
        steps=20,
        batch_size=4,
        checkpoint=tmp_path / "ref.pt",
        checkpoint_every=5,
        progress=False,
    )

    def kill_at_13(step: int) -> None:
        if step == 12:
            raise _Kill

    interrupted = _small_dncnn()
    ckpt = tmp_path / "run.pt"
    with pytest.raises(_Kill):
        fit(
            interrupted,
            _sampler(),
            steps=20,
            batch_size=4,
            checkpoint=ckpt,
            checkpoint_every=5,
            progress=False,
            on_step=kill_at_13,
        )
    step, _ = load_training_state(ckpt, {})
    assert step == 10

    resumed = _small_dncnn()
    history = fit(
        resumed,
        _sampler(),
        steps=20,
        batch_size=4,
        checkpoint=ckpt,
        checkpoint_every=5,
        resume=True,
        progress=False,
    )
    assert history.resumed_from == 10
    assert history.steps == 20
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_nan_loss_stops_with_a_clear_error() -> None:
    def step_fn(step: int) -> dict[str, float]:
        return {"loss": float("nan") if step == 3 else 1.0}

    with pytest.raises(PixmarkError, match="loss 'loss' became nan at step 3"):
        run(step_fn, {}, 10, progress=False)


def test_corrupt_training_checkpoint_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "state.pt"
    ckpt.write_bytes(b"not a checkpoint")
    model = _small_dncnn()
    with pytest.raises(PixmarkError, match="corrupt"):
        fit(model, _sampler(), steps=5, checkpoint=ckpt, resume=True, progress=False)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(PixmarkError, match="unknown device 'tpu'"):
        Device("tpu")


@pytest.mark.slow
def test_dncnn_learns_to_denoise_held_out_images() -> None:
    """A few hundred CPU steps at sigma=25 gain >= 3 dB over the noisy input on unseen images."""
    result = train_model(
        "denoise",
        "dncnn",
        steps=300,
        size=40,
        batch_size=8,
        width=32,
        channels=1,
        arch_kwargs={"depth": 8},
        device="cpu",
        progress=False,
    )
    gain = result.metrics["psnr"] - result.metrics["psnr_input"]
    assert gain >= 3.0, result.metrics


def test_gray_model_of_a_colour_task_trains_and_evaluates_in_gray() -> None:
    # deblur defaults to colour; with channels=1 the validation and test crops must be gray
    # too (they were colour, and evaluation crashed on the channel count).
    result = train_model("deblur", "dncnn", steps=2, size=32, width=4, channels=1, progress=False)
    assert result.model.config["channels"] == 1
    assert result.metrics["psnr"] > 0


def test_killed_cli_training_resumes_to_the_full_step_count(tmp_path: Path) -> None:
    """SIGKILL the CLI mid-run; --resume finishes the run and the checkpoint is intact."""
    out = tmp_path / "model.safetensors"
    state = tmp_path / "model.safetensors.state.pt"
    cmd = [
        sys.executable,
        "-m",
        "pixmark.cli",
        "train",
        "--task",
        "denoise",
        "--arch",
        "dncnn",
        "--width",
        "8",
        "--channels",
        "1",
        "--size",
        "24",
        "--batch-size",
        "2",
        "--steps",
        "400",
        "--checkpoint-every",
        "10",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    # One torch thread, like the test workers (conftest.py): on 2 busy cores a tiny model
    # with 2 intra-op threads can run 100x slower than with one.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written before the kill"
    assert not out.exists()
    killed_at, _ = load_training_state(state, {})
    assert 0 < killed_at < 400

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert out.exists() and not state.exists()
    from pixmark.checkpoint import read_config

    config = read_config(out)
    assert config["train"]["steps"] == 400
    assert config["arch"] == "dncnn"


def test_train_model_is_reproducible_from_its_seed() -> None:
    """Same seed, same weights (the initial weights included); another seed differs."""
    a, b, c = (
        train_model("denoise", "dncnn", steps=3, size=32, width=8, channels=1, seed=s,
                        arch_kwargs={"depth": 3}, device="cpu", progress=False).model
        for s in (5, 5, 6)
    )  # fmt: skip
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.state_dict()["body.0.weight"], c.state_dict()["body.0.weight"])
