"""Removal attacks on a black box's outputs, on real bundled images (pixmark.attacks.removal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixmark import data, nets
from pixmark.attacks import MODEL_ATTACKS, apply_model_attack
from pixmark.attacks.removal import (
    PostProcessed,
    SubtractPattern,
    estimate_and_subtract,
    estimate_pattern,
    removal_network,
)
from pixmark.checkpoint import Chain, load_model, save_model
from pixmark.errors import PixmarkError
from pixmark.metrics import ncc, psnr
from pixmark.schemes.base import as_query

SIZE = 64


def _crops(images: list[torch.Tensor], n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random ``size`` px crops, cycling through ``images``: [n, C, size, size]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        img = images[k % len(images)]
        h, w = img.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g))
        left = int(torch.randint(w - size + 1, (1,), generator=g))
        out.append(img[:, top : top + size, left : left + size])
    return torch.stack(out).contiguous()


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    """The attacker's own crops (train split) and held-out crops (test split), RGB."""
    splits = data.split_images(data.images("builtin", channels=3), seed=0)
    own = _crops([img for _, img in splits["train"]], 64, SIZE, seed=2)
    held_out = _crops([img for _, img in splits["test"]], 24, SIZE, seed=1)
    return {"own": own, "held_out": held_out}


@pytest.fixture(scope="module")
def pattern() -> torch.Tensor:
    """A fixed additive ±0.02 random pattern [1, 3, 64, 64] (the 'watermark')."""
    g = torch.Generator().manual_seed(5)
    return 0.02 * (torch.randint(0, 2, (1, 3, SIZE, SIZE), generator=g).float() * 2 - 1)


def _marked(pattern: torch.Tensor):  # noqa: ANN202 - a Query
    """A suspect whose every output is its input plus the pattern (an ideal additive mark)."""
    return lambda x: (x + pattern).clamp(0, 1)


def _pattern_ncc(residual: torch.Tensor, pattern: torch.Tensor) -> float:
    return float(ncc(residual, pattern.expand_as(residual)).mean())


# ----------------------------------------------------------------------------- estimate


def test_estimate_and_subtract_removes_a_fixed_additive_pattern(photos, pattern) -> None:
    clean = photos["held_out"]
    suspect = _marked(pattern)
    answers = suspect(clean)
    before_ncc = _pattern_ncc(answers - clean, pattern)
    before_db = float(psnr(answers, clean))
    assert before_ncc > 0.99 and 33.5 < before_db < 34.5  # ±0.02 is 34 dB

    # The attacker estimates from their own images, never the held-out ones.
    estimate = estimate_pattern(suspect, photos["own"])
    assert estimate.shape == (1, 3, SIZE, SIZE)
    assert _pattern_ncc(estimate, pattern) > 0.9

    cleaned = estimate_and_subtract(suspect, photos["own"], strength=1.0)
    assert isinstance(cleaned, PostProcessed) and isinstance(cleaned.stage, SubtractPattern)
    out = cleaned(clean)
    after_ncc = _pattern_ncc(out - clean, pattern)
    after_db = float(psnr(out, clean))
    print(f"estimate_and_subtract: NCC {before_ncc:.3f} -> {after_ncc:.3f}, "
          f"PSNR {before_db:.2f} -> {after_db:.2f} dB")  # fmt: skip
    assert after_ncc < 0.3  # measured 0.12 (64 images, blur sigma 2)
    assert after_db > before_db + 5  # measured 34.0 -> 41.9 dB
    assert float(out.min()) >= 0 and float(out.max()) <= 1

    # Strength 0 changes nothing; the clean model's answers are barely touched.
    unchanged = estimate_and_subtract(suspect, photos["own"], strength=0.0)
    assert torch.equal(unchanged(clean), answers)
    identity = estimate_and_subtract(lambda x: x.clone(), photos["own"], strength=1.0)
    assert float(psnr(identity(clean), clean)) > 40  # measured 42.6 dB: content leaks in


def test_pattern_is_resized_for_other_sizes_and_saves_as_a_chain(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nets.create("dncnn", channels=3, depth=3, width=8).eval()
    images = torch.rand(8, 3, 32, 32)
    chain = apply_model_attack("estimate_and_subtract", model, 1.0, images=images)
    assert isinstance(chain, Chain) and isinstance(chain[1], SubtractPattern)
    x = torch.rand(2, 3, 48, 40)  # another size than the estimate's
    with torch.no_grad():
        expected = chain(x)
    assert expected.shape == x.shape
    path = save_model(chain, tmp_path / "cleaned.safetensors", task="denoise")
    loaded = load_model(path)
    assert isinstance(loaded, Chain)
    torch.testing.assert_close(loaded(x), expected)
    torch.testing.assert_close(loaded[1].pattern, chain[1].pattern)


# ----------------------------------------------------------------------------- purifier


@pytest.fixture(scope="module")
def purifier(photos) -> PostProcessed:
    """A purifier trained briefly (150 steps, 32 px crops) in front of the clean identity."""
    return removal_network(
        lambda x: x.clone(), photos["own"], strength=0.03, steps=150, arch="unet", width=8, size=32
    )


def test_removal_network_keeps_answers_and_weakens_a_pattern(photos, pattern, purifier) -> None:
    clean = photos["held_out"]
    # On clean answers the purifier stays close to what it was given.
    kept_db = float(psnr(purifier(clean), clean))
    assert kept_db >= 28  # measured ~36 dB
    marked = (clean + pattern).clamp(0, 1)
    out = purifier(marked)
    before = _pattern_ncc(marked - clean, pattern)
    after = _pattern_ncc(out - clean, pattern)
    # How much of the pattern itself goes through g (1 = all of it).
    passed = float(((out - purifier(clean)) * pattern).sum() / (pattern.expand_as(out) ** 2).sum())
    print(f"removal_network: kept {kept_db:.2f} dB, NCC {before:.3f} -> {after:.3f}, "
          f"pattern gain {passed:.3f}")  # fmt: skip
    assert before > 0.99
    assert after < 0.95  # the pattern is a smaller part of what differs from the truth
    # Honest limit: a denoiser trained this briefly passes nearly all of a ±0.02
    # pattern through (measured gain ~1.0); it is far from a trained purifier.
    assert passed > 0.5


def test_removal_network_fidelity_and_model_chain(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nets.create("dncnn", channels=1, depth=3, width=8).eval()
    images = torch.rand(6, 1, 40, 40)
    chain = apply_model_attack(
        "removal_network", model, 0.05, images=images, steps=3, width=4, size=24, fidelity=0.5
    )
    assert isinstance(chain, Chain) and len(chain) == 2
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        expected = chain(x)
    path = save_model(chain, tmp_path / "purified.safetensors")
    torch.testing.assert_close(load_model(path)(x), expected)
    # The chain is exactly the black-box attack's answers.
    direct = removal_network(model, images, strength=0.05, steps=3, width=4, size=24, fidelity=0.5)
    torch.testing.assert_close(direct(x), as_query(chain)(x))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda q, x: estimate_and_subtract(q, x, strength=-0.1), "strength"),
        (lambda q, x: estimate_and_subtract(q, x, strength=2.5), "strength"),
        (lambda q, x: estimate_and_subtract(q, x, strength="1"), "strength"),
        (lambda q, x: estimate_and_subtract(q, x, smoother="wiener"), "smoother"),
        (lambda q, x: estimate_and_subtract(q, x, sigma=0), "sigma"),
        (lambda q, x: estimate_and_subtract(q, x[0]), "images"),
        (lambda q, x: estimate_and_subtract("model.pt", x), "query"),
        (lambda q, x: removal_network(q, x, strength=0.0), "strength"),
        (lambda q, x: removal_network(q, x, strength=0.3), "strength"),
        (lambda q, x: removal_network(q, x, strength=True), "strength"),
        (lambda q, x: removal_network(q, x, steps=0), "steps"),
        (lambda q, x: removal_network(q, x, fidelity=1.0), "fidelity"),
        (lambda q, x: removal_network(q, x, arch="vgg"), "arch"),
        (lambda q, x: estimate_and_subtract(lambda y: y[:, :, :8], x), "shape"),
    ],
)
def test_bad_removal_arguments_name_the_parameter(call, parameter: str) -> None:
    with pytest.raises(PixmarkError, match=parameter):
        call(lambda y: y.clone(), torch.rand(4, 3, 16, 16))


def test_removal_attacks_are_in_the_model_attack_table() -> None:
    assert {"estimate_and_subtract", "removal_network", "overwrite"} <= set(MODEL_ATTACKS)
    model = nets.create("dncnn", channels=1, depth=3, width=4)
    with pytest.raises(PixmarkError, match="images="):
        apply_model_attack("removal_network", model, 0.03)
    with pytest.raises(PixmarkError, match="scheme"):
        apply_model_attack("overwrite", model, "quick", task="denoise")


# ----------------------------------------------------------------------------- CLI


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``pixmark ARGS`` in-process as the console script does; (exit code, stderr)."""
    import sys

    from pixmark.cli import main

    old, sys.argv = sys.argv, ["pixmark", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def test_removal_attacks_via_cli_save_loadable_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pixmark

    torch.manual_seed(0)
    model_path = save_model(
        nets.create("dncnn", channels=1, depth=3, width=8),
        tmp_path / "m.safetensors",
        task="denoise",
    )
    cleaned = tmp_path / "cleaned.safetensors"
    code, output = _cli(
        ["attack", "estimate_and_subtract", "--model", str(model_path), "--strength", "1.0",
         "--size", "32", "--out", str(cleaned)],
        capsys,
    )  # fmt: skip
    assert code == 0, output
    chain = load_model(cleaned)
    assert isinstance(chain, Chain) and isinstance(chain[1], SubtractPattern)
    assert chain[1].pattern.shape == (1, 1, 32, 32)
    purified = tmp_path / "purified.safetensors"
    code, output = _cli(
        ["attack", "removal_network", "--model", str(model_path), "--strength", "0.05",
         "--steps", "2", "--width", "4", "--size", "32", "--device", "cpu", "--out",
         str(purified)],
        capsys,
    )  # fmt: skip
    assert code == 0, output
    assert isinstance(load_model(purified), Chain)
    # The API on a black box returns the cleaned query; it cannot be saved.
    query = as_query(load_model(model_path))
    attacked = pixmark.api.attack(
        "estimate_and_subtract", query, 0.5, task="denoise", size=32, channels=1
    )
    assert isinstance(attacked, PostProcessed)
    with pytest.raises(PixmarkError, match="black box"):
        pixmark.api.attack(
            "estimate_and_subtract", query, 0.5, task="denoise", size=32, channels=1,
            out=tmp_path / "x.safetensors",
        )  # fmt: skip
    # Bad inputs: one line, exit 2.
    code, output = _cli(
        ["attack", "estimate_and_subtract", "--model", str(model_path), "--strength", "3",
         "--out", str(tmp_path / "bad.safetensors")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "strength" in output
    code, output = _cli(
        ["attack", "overwrite", "--model", str(model_path), "--task", "denoise", "--out",
         str(tmp_path / "ow.safetensors")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "--scheme" in output
    code, output = _cli(
        ["attack", "overwrite", "--model", str(model_path), "--task", "denoise", "--scheme",
         "visible", "--out", str(tmp_path / "ow.safetensors")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "scheme" in output
