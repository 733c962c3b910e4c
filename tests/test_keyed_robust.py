"""The keyed scheme's robustness training distortions (``keyed.distort``) on a real image."""

from __future__ import annotations

import torch
from skimage import data as skdata

from pixmark.schemes import keyed


def _batch(n: int = 64, size: int = 64) -> torch.Tensor:
    """``n`` copies of a textured 64 x 64 crop of scikit-image's camera, [n, 1, 64, 64]."""
    cam = torch.from_numpy(skdata.camera()).float() / 255
    return cam[200 : 200 + size, 220 : 220 + size][None, None].repeat(n, 1, 1, 1).contiguous()


def _kinds(x: torch.Tensor, out: torch.Tensor) -> list[str]:
    """What ``distort`` did to each image, told from the result alone: JPEG decodes to
    whole 1/255 steps, Gaussian noise does not; a crop zeroes all but a square."""
    kinds = []
    for before, after in zip(x, out, strict=True):
        zero = after[0] == 0
        levels = after.detach() * 255
        if torch.equal(before, after):
            kinds.append("none")
        elif zero.float().mean() > 0.05 and torch.equal(after[0][~zero], before[0][~zero]):
            kinds.append("crop")
        elif float((levels - levels.round()).abs().max()) < 1e-3:
            kinds.append("jpeg")
        else:
            kinds.append("noise")
    return kinds


def test_distort_draws_each_attack_and_stays_in_range() -> None:
    x = _batch()
    out = keyed.distort(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    kinds = _kinds(x, out)
    # one of four kinds per image, uniformly: each about 16 of 64
    for kind in ("none", "crop", "jpeg", "noise"):
        assert 6 <= kinds.count(kind) <= 28, (kind, kinds.count(kind))
    # the reproducible draw: the same generator state gives the same distortions
    again = keyed.distort(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_distort_crops_keep_a_square_of_the_papers_sizes() -> None:
    x = _batch()
    out = keyed.distort(x, torch.Generator().manual_seed(1))
    sides = []
    for after, kind in zip(out, _kinds(x, out), strict=True):
        if kind != "crop":
            continue
        rows = (after[0] != 0).any(dim=1).nonzero().flatten()
        cols = (after[0] != 0).any(dim=0).nonzero().flatten()
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert height == width  # a square (the camera crop has no zero pixels of its own)
        sides.append(height)
    assert sides, "no crop was drawn"
    # kept side 128..240 of 256 px, scaled to 64 px: 32..60
    assert all(32 <= s <= 60 for s in sides), sides


def test_distort_noise_levels_span_the_papers_range() -> None:
    """Noise sigma is uniform on (0, 0.25] ([0, 1] units; the paper's (0, 0.5] on [-1, 1])."""
    x = _batch(256)
    out = keyed.distort(x, torch.Generator().manual_seed(2))
    noisy = [i for i, kind in enumerate(_kinds(x, out)) if kind == "noise"]
    assert len(noisy) >= 40
    sigmas = (out - x)[noisy].flatten(1).std(dim=1)  # clipping shrinks the largest a little
    assert float(sigmas.min()) < 0.03
    assert 0.18 < float(sigmas.max()) < 0.26
    # uniform: the median near 0.125 (clipped a little below it)
    assert 0.08 < float(sigmas.median()) < 0.14


def test_distort_passes_gradients_to_every_image() -> None:
    """Robust training back-propagates through the distortion (JPEG straight-through)."""
    x = _batch(32).requires_grad_()
    out = keyed.distort(x, torch.Generator().manual_seed(3))
    out.sum().backward()
    assert x.grad is not None
    per_image = x.grad.flatten(1).abs().sum(dim=1)
    assert bool((per_image > 0).all())
