"""Metrics on real images against reference implementations and known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data, img_as_float
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pixmark.errors import PixmarkError
from pixmark.metrics import ber, centered_nc, nc, ncc, psnr, ssim


def _real(name: str, size: int = 96) -> np.ndarray:
    """A crop of a scikit-image sample image as float64 in [0, 1], HW or HWC."""
    image = img_as_float(getattr(data, name)())
    return image[100 : 100 + size, 120 : 120 + size]


def _tensor(image: np.ndarray) -> torch.Tensor:
    """HW or HWC numpy image -> (1, C, H, W) float32 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(image)).float()
    return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]


def _noisy(image: np.ndarray, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, std, image.shape), 0.0, 1.0)


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    sigmas = (sigma, sigma) if image.ndim == 2 else (sigma, sigma, 0)
    return ndimage.gaussian_filter(image, sigmas)


def _text_logo() -> torch.Tensor:
    """Real 'logo': scikit-image's text sample binarised; about 91 % of it is white."""
    return torch.from_numpy((data.text() > 100).astype(np.float32))[None, None]


# --------------------------------------------------------------------------- PSNR


def test_psnr_known_values_per_image():
    x = torch.zeros(2, 1, 16, 16)
    y = torch.stack([torch.full((1, 16, 16), 0.1), torch.full((1, 16, 16), 0.01)])
    values = psnr(x, y, reduction="none")
    # MSE 0.01 -> 20 dB, MSE 1e-4 -> 40 dB
    torch.testing.assert_close(values, torch.tensor([20.0, 40.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(psnr(x, y), torch.tensor(30.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_psnr_matches_skimage_and_scales_with_data_range(name):
    clean = _real(name)
    noisy = _noisy(clean, 0.05, seed=1)
    expected = peak_signal_noise_ratio(clean, noisy, data_range=1.0)
    got = psnr(_tensor(clean), _tensor(noisy)).item()
    assert got == pytest.approx(expected, abs=1e-3)
    got_255 = psnr(_tensor(clean) * 255, _tensor(noisy) * 255, data_range=255.0).item()
    assert got_255 == pytest.approx(expected, abs=1e-3)


def test_psnr_of_identical_images_is_capped_at_100_db():
    image = _tensor(_real("camera"))
    assert psnr(image, image).item() == pytest.approx(100.0)
    assert psnr(image, image + 1e-7).item() <= 100.0


# --------------------------------------------------------------------------- SSIM


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=None if a.ndim == 2 else 2,
    )


@pytest.mark.parametrize("name", ["camera", "astronaut", "coffee", "chelsea"])
def test_ssim_matches_skimage_gray_and_colour(name):
    clean = _real(name)
    distorted = [_noisy(clean, 0.08, seed=2), _blurred(clean, 1.2), _noisy(clean, 0.01, seed=3)]
    batch_clean = torch.cat([_tensor(clean)] * len(distorted))
    batch_distorted = torch.cat([_tensor(d) for d in distorted])
    got = ssim(batch_clean, batch_distorted, reduction="none")
    expected = torch.tensor([_skimage_ssim(clean, d) for d in distorted], dtype=torch.float32)
    assert got.shape == (len(distorted),)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)
    # the three distortions really differ, so agreement is not an accident of one value
    assert expected.max() - expected.min() > 0.1


def test_ssim_matches_skimage_at_the_smallest_size_and_rejects_smaller():
    clean = _real("camera", size=11)
    noisy = _noisy(clean, 0.1, seed=4)
    assert ssim(_tensor(clean), _tensor(noisy)).item() == pytest.approx(
        _skimage_ssim(clean, noisy), abs=1e-3
    )
    tiny = _tensor(_real("camera", size=8))
    with pytest.raises(PixmarkError, match="smaller than the 11x11 window"):
        ssim(tiny, tiny)


def test_ssim_identical_is_one_and_a_gradient_step_increases_it():
    clean = _tensor(_real("astronaut", size=48))
    assert ssim(clean, clean).item() == pytest.approx(1.0, abs=1e-5)

    estimate = _tensor(_noisy(_real("astronaut", size=48), 0.1, seed=5)).requires_grad_(True)
    before = ssim(estimate, clean)
    before.backward()
    assert torch.isfinite(estimate.grad).all()
    with torch.no_grad():
        stepped = estimate + 0.5 * estimate.grad / estimate.grad.abs().max()
    assert ssim(stepped, clean).item() > before.item() + 1e-3


# --------------------------------------------------------------------------- NC family


def test_nc_and_centered_nc_match_numpy_references():
    a = _real("coffee")
    b = _blurred(_noisy(a, 0.1, seed=6), 1.0)
    got_nc = nc(_tensor(a), _tensor(b)).item()
    expected_nc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    assert got_nc == pytest.approx(expected_nc, abs=1e-5)

    got_centred = centered_nc(_tensor(a), _tensor(b)).item()
    expected_centred = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert got_centred == pytest.approx(expected_centred, abs=1e-5)
    # Quan's NCC is read as the (Pearson) correlation coefficient
    assert ncc(_tensor(a), _tensor(b)).item() == pytest.approx(expected_centred, abs=1e-5)


def test_plain_nc_fools_itself_on_bright_images_and_centered_nc_does_not():
    logo = _text_logo()
    white_fraction = logo.mean().item()
    assert 0.88 < white_fraction < 0.93
    blank = torch.ones_like(logo)  # the paper's blank watermark delta_0 is all white
    noise = torch.rand(logo.shape, generator=torch.Generator().manual_seed(0))

    # Plain NC passes the paper's 0.95 threshold for a blank that carries no logo at all ...
    assert nc(blank, logo).item() == pytest.approx(white_fraction**0.5, abs=1e-4)
    assert nc(blank, logo).item() > 0.95
    assert nc(noise, logo).item() > 0.8
    # ... the centred statistic sees no correlation in either case,
    assert centered_nc(blank, logo).item() == 0.0
    assert abs(centered_nc(noise, logo).item()) < 0.05
    # and still recognises a degraded copy of the logo.
    degraded = (0.7 * logo + 0.3 * noise).clamp(0, 1)
    assert centered_nc(degraded, logo).item() > 0.8


def test_centered_nc_of_constant_images_is_zero_with_finite_gradient():
    logo = _text_logo()[..., :32, :32]
    constant = torch.full_like(logo, 0.7, requires_grad=True)
    value = centered_nc(constant, logo)
    assert value.item() == 0.0
    assert centered_nc(torch.ones_like(logo), torch.ones_like(logo)).item() == 0.0
    value.sum().backward()
    assert torch.isfinite(constant.grad).all()
    assert nc(torch.zeros_like(logo), logo).item() == 0.0


# --------------------------------------------------------------------------- BER


def test_ber_counts_flipped_bits_per_item():
    rng = np.random.default_rng(7)
    bits = torch.from_numpy(rng.integers(0, 2, size=(3, 1024)))
    flipped = bits.clone()
    for row, n_flips in enumerate([0, 10, 512]):
        positions = torch.from_numpy(rng.choice(1024, size=n_flips, replace=False))
        flipped[row, positions] = 1 - flipped[row, positions]
    torch.testing.assert_close(ber(bits, flipped), torch.tensor([0.0, 10 / 1024, 0.5]))


def test_ber_thresholds_extracted_float_watermarks_at_half():
    truth = _text_logo()[..., :64, :64]
    # an extracted watermark: soft values on the right side of 0.5 except in one 8x8 block
    extracted = 0.2 + 0.6 * truth
    extracted[..., :8, :8] = 1.0 - extracted[..., :8, :8]
    assert ber(extracted, truth).item() == pytest.approx(64 / 4096)
    assert ber(truth.bool(), truth).item() == 0.0


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("metric", [psnr, ssim, nc, centered_nc, ncc, ber])
def test_shape_mismatch_names_both_shapes(metric):
    a = torch.rand(1, 3, 16, 16)
    b = torch.rand(1, 1, 16, 16)
    with pytest.raises(PixmarkError, match=r"\(1, 3, 16, 16\).*\(1, 1, 16, 16\)"):
        metric(a, b)


@pytest.mark.parametrize("metric", [psnr, ssim, nc, centered_nc, ncc, ber])
def test_nan_input_is_rejected(metric):
    a = torch.rand(1, 1, 16, 16)
    b = a.clone()
    b[0, 0, 3, 3] = float("nan")
    with pytest.raises(PixmarkError, match="NaN"):
        metric(a, b)


def test_other_bad_inputs_get_clear_errors():
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(PixmarkError, match="at least 4 dimensions"):
        psnr(image[0], image[0])
    with pytest.raises(PixmarkError, match="NCHW"):
        ssim(image[None], image[None])
    with pytest.raises(PixmarkError, match="reduction"):
        psnr(image, image, reduction="sum")
    with pytest.raises(PixmarkError, match="data_range"):
        ssim(image, image, data_range=0.0)
    with pytest.raises(PixmarkError, match="torch.Tensor"):
        nc(image.numpy(), image)
    with pytest.raises(PixmarkError, match="other than 0 and 1"):
        ber(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
