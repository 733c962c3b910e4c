"""Classical baselines of the output scheme (spread spectrum, DCT, DFT, DWT) on real photos.

Every assertion is about a measured property: invisibility (PSNR), blind detection on
marked images, no detection on unmarked images or with another key, calibration of the
null, the effect of JPEG, and errors a user can act on.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pixmark import api, baselines, data
from pixmark.attacks.image import jpeg
from pixmark.errors import PixmarkError
from pixmark.metrics import psnr
from pixmark.schemes.base import as_query

METHODS = list(baselines.METHODS)
SECRET = "5e" * 32


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """16 clean 64 px colour crops of held-out (validation) bundled photos."""
    spec, channels, splits = api.task_splits("derain")
    _, clean = data.fixed_pairs([im for _, im in splits["val"]], spec, 64, 16, seed=5)
    return clean


@pytest.fixture(scope="module")
def key():
    return baselines.keygen("ACME Imaging", secret=SECRET)


@pytest.fixture(scope="module")
def marked(photos, key) -> dict[str, torch.Tensor]:
    return {m: baselines.embed(photos, key, m) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_mark_is_invisible_and_detected(photos, key, marked, method) -> None:
    fidelity = psnr(marked[method], photos, reduction="none")
    assert float(fidelity.min()) >= 38.0  # strength 0.01: RMS change ≈ 40 dB or less
    verdict = baselines.detect(marked[method], key, method)
    assert verdict.decision == "match", verdict.summary()
    assert verdict.statistic <= 0.05 and verdict.p_value <= 1e-3
    assert verdict.scheme == f"baseline-{method}" and verdict.n_queries == len(photos)


@pytest.mark.parametrize("method", METHODS)
def test_unmarked_images_and_other_keys_do_not_match(photos, key, marked, method) -> None:
    clean = baselines.detect(photos, key, method)
    assert clean.decision == "no match" and clean.p_value > 1e-3, clean.summary()
    other = baselines.keygen("Zeta Labs", secret="7a" * 32)
    wrong = baselines.detect(marked[method], other, method)
    assert wrong.decision == "no match" and wrong.p_value > 1e-3, wrong.summary()
    # Another method's detector does not read this method's mark either.
    for second in METHODS:
        if second != method:
            assert baselines.detect(marked[method], key, second).decision == "no match"


def test_null_is_calibrated(photos) -> None:
    """Over 24 random keys, unmarked photos give z ≈ N(0, 1) and no false positive."""
    zs, bers = [], []
    for i in range(24):
        k = baselines.keygen(f"owner {i}", secret=f"{i:064x}")
        for method in METHODS:
            zs.append(baselines.bit_scores(photos, k, method).flatten())
            bers.append(baselines.detect(photos, k, method).statistic)
    z = torch.cat(zs)
    assert abs(float(z.mean())) < 0.1
    assert 0.7 < float(z.std()) < 1.4
    assert max(bers) < 0.7 and min(bers) > 0.3  # the pooled BER stays near 1/2
    assert abs(sum(bers) / len(bers) - 0.5) < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_other_sizes_and_grayscale(photos, key, method) -> None:
    gray = photos.mean(dim=1, keepdim=True)
    odd = torch.nn.functional.interpolate(gray, size=(45, 77), mode="bilinear")
    out = baselines.embed(odd, key, method)
    assert out.shape == odd.shape and out.dtype == odd.dtype
    assert float(psnr(out, odd, reduction="none").min()) >= 38.0
    assert baselines.detect(out, key, method).decision == "match"


def test_additive_marks_are_one_pattern_multiplicative_follow_the_image(photos, key) -> None:
    """ss and dwt add the same pattern to every image (the paper's "unified δ");
    dct and dft scale each image's own coefficients."""
    a, b = photos[4:5], photos[9:10]
    for method in METHODS:
        da = baselines.embed(a, key, method) - a
        db = baselines.embed(b, key, method) - b
        inside = (a > 0.05) & (a < 0.95) & (b > 0.05) & (b < 0.95)  # away from clipping
        same = torch.allclose(da[inside], db[inside], atol=1e-6)
        assert same == (method in ("ss", "dwt")), method


def test_jpeg_weakens_spread_spectrum(photos, key, marked) -> None:
    """Measured: JPEG q = 50 removes most of the white ±1 carrier from each image (per-image
    BER ≈ 0.02 -> ≈ 0.26), though pooled over 16 images the mark is still found."""
    before = baselines.detect(marked["ss"], key, "ss")
    after = baselines.detect(jpeg(marked["ss"], 50), key, "ss")
    assert after.details["mean_per_image_ber"] > before.details["mean_per_image_ber"] + 0.1
    assert after.details["mark_z"] < 0.5 * before.details["mark_z"]
    assert after.details["success_rate"] < before.details["success_rate"]
    assert after.decision == "match", after.summary()


def test_baseline_marked_model_is_m_then_the_mark(photos, key) -> None:
    model = nn.Identity()
    for method in METHODS:
        deploy = baselines.BaselineMarked(model, key, method)
        out = deploy(photos)
        assert torch.equal(out, baselines.embed(photos, key, method))
        assert torch.equal(deploy(photos), out)  # deterministic per image
        served = as_query(deploy)(photos)
        assert baselines.detect(served, key, method).decision == "match"
    net = nn.Conv2d(3, 3, 1)  # any image-to-image network in front
    deploy = baselines.BaselineMarked(net, key, "ss")
    with torch.no_grad():
        m_out = net(photos).clamp(0, 1)
        assert torch.equal(deploy(photos), baselines.embed(m_out, key, "ss"))


def test_threshold_matches_the_p_value() -> None:
    e_max, threshold = baselines.ber_threshold(1e-3)
    assert e_max == 19 and math.isclose(threshold, 19.5 / 64)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda x, k: baselines.embed(x[0], k), "4 dimensions"),
        (lambda x, k: baselines.embed(torch.cat([x, x[:, :1]], 1), k), "1 or 3 channels"),
        (lambda x, k: baselines.embed(x, k, "lsb"), "unknown baseline method 'lsb'"),
        (lambda x, k: baselines.embed(x, k, "ss", 0.0), "strength must be in (0, 0.1]"),
        (lambda x, k: baselines.embed(x, k, "ss", 0.5), "strength must be in (0, 0.1]"),
        (lambda x, k: baselines.embed(x, k, "ss", float("nan")), "strength must be in"),
        (lambda x, k: baselines.embed(x.clone().fill_(math.nan), k), "NaN"),
        (lambda x, k: baselines.detect(x * 255, k), "must lie in [0, 1]"),
        (lambda x, k: baselines.detect((x * 255).byte(), k), "floating point"),
        (lambda x, k: baselines.detect(x[..., :16, :16], k), "at least 32"),
        (lambda x, k: baselines.detect(x[:0], k), "empty batch"),
        (lambda x, k: baselines.detect(x.numpy(), k), "torch tensor"),
        (lambda x, k: baselines.detect(x, "my key"), "pixmark Key"),
        (lambda x, k: baselines.BaselineMarked(nn.Identity(), k, "fft"), "unknown baseline"),
    ],
)
def test_bad_inputs_are_named(photos, key, call, words) -> None:
    with pytest.raises(PixmarkError) as info:
        call(photos[:2], key)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_task_specific_variant_trains_and_refuses_bad_options(key) -> None:
    """Plumbing only: at a CPU budget the logo is not embedded (docs/schemes/baselines.md)."""
    from pixmark.schemes import output

    okey = output.keygen("ACME Imaging", secret=SECRET)
    ts = baselines.train_task_specific(
        okey, steps=3, size=32, width=8, arch_kwargs={"depth": 2}, r_width=8, r_blocks=1,
        n_test=4, progress=False,
    )  # fmt: skip
    x = torch.rand(2, 3, 48, 48)
    assert ts.model(x).shape == x.shape
    assert ts.extractor(x).shape[1] == 3
    assert all(math.isfinite(v) for v in ts.report.values() if isinstance(v, float)), ts.report
    with pytest.raises(PixmarkError, match="logo"):
        baselines.train_task_specific(key, steps=3, progress=False)
    with pytest.raises(PixmarkError, match="steps"):
        baselines.train_task_specific(okey, steps=0, progress=False)
