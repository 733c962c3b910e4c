"""Image quality and watermark-similarity metrics on batched NCHW tensors.

All functions take images as float tensors, normally in [0, 1], shaped (N, C, H, W), and
return one value per image (shape (N,)) or, for ``psnr`` and ``ssim`` with the default
``reduction="mean"``, the batch mean as a 0-d tensor.

- ``psnr`` and ``ssim`` measure fidelity (protected output vs. unprotected output).
- ``nc``, ``centered_nc`` and ``ncc`` measure how similar an extracted watermark is to the
  logo (Zhang et al.) or a trigger response to the verification image (Quan et al.).
- ``ber`` is the bit error rate of an extracted binary watermark (Wu et al.).

Everything except ``ber`` is differentiable, so it can serve as a training loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pixmark.errors import PixmarkError

__all__ = ["ber", "centered_nc", "nc", "ncc", "psnr", "ssim"]

Reduction = Literal["mean", "none"]

PSNR_CAP_DB = 100.0
"""PSNR reported for identical images (MSE = 0) and the largest value ``psnr`` returns."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_tensor(name: str, fn: str, t: object, min_dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise PixmarkError(f"{fn}: {name} is a {type(t).__name__}, expected a torch.Tensor.")
    if t.dim() < min_dim:
        raise PixmarkError(
            f"{fn}: {name} has shape {_shape(t)} but needs at least {min_dim} dimensions "
            "with the batch first (N, C, H, W); add a batch axis with x[None]."
        )
    if t.numel() == 0:
        raise PixmarkError(f"{fn}: {name} is empty (shape {_shape(t)}); pass at least one pixel.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise PixmarkError(
            f"{fn}: {name} contains NaN or infinite values; check the model output that "
            "produced it."
        )
    return t


def _check_pair(
    fn: str, a: object, b: object, names: tuple[str, str], min_dim: int
) -> tuple[Tensor, Tensor]:
    a = _check_tensor(names[0], fn, a, min_dim)
    b = _check_tensor(names[1], fn, b, min_dim)
    if a.shape != b.shape:
        raise PixmarkError(
            f"{fn}: {names[0]} has shape {_shape(a)} but {names[1]} has shape {_shape(b)}; "
            "pass tensors of the same shape."
        )
    return a, b


def _as_float(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors in float64 if either is float64, else float32 (half inputs are upcast)."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.to(dtype), b.to(dtype)


def _check_images(fn: str, x: object, y: object) -> tuple[Tensor, Tensor]:
    x, y = _check_pair(fn, x, y, ("x", "y"), min_dim=4)
    if x.dim() != 4:
        raise PixmarkError(
            f"{fn}: images must be NCHW (4 dimensions), got shape {_shape(x)}; "
            "reshape to (N, C, H, W)."
        )
    return _as_float(x, y)


def _reduce(values: Tensor, reduction: str, fn: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise PixmarkError(f"{fn}: reduction must be 'mean' or 'none', got {reduction!r}.")


def _check_data_range(fn: str, data_range: float) -> float:
    if not math.isfinite(data_range) or data_range <= 0:
        raise PixmarkError(
            f"{fn}: data_range must be a positive number (1.0 for images in [0, 1]), "
            f"got {data_range!r}."
        )
    return float(data_range)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, reduction: Reduction = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, per image over all channels and pixels.

    ``PSNR = 10 * log10(data_range**2 / MSE)``. Identical images (MSE = 0) score
    ``PSNR_CAP_DB`` = 100 dB instead of infinity, and no pair scores more than that, so
    means over a batch stay finite.

    Args:
        x, y: images (N, C, H, W) of the same shape, values in [0, data_range].
        data_range: the span of possible pixel values (1.0 for images in [0, 1]).
        reduction: "mean" returns the mean over the batch (0-d tensor), "none" one value
            per image (shape (N,)).

    Returns:
        PSNR in dB, in (-inf, 100].
    """
    x, y = _check_images("psnr", x, y)
    data_range = _check_data_range("psnr", data_range)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    # Clamping MSE at data_range**2 * 1e-10 caps the result at exactly 100 dB.
    floor = data_range**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    values = 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))
    return _reduce(values, reduction, "psnr")


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (as scipy.ndimage.gaussian_filter builds it)."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _gaussian_blur_valid(images: Tensor, kernel: Tensor) -> Tensor:
    """Separable Gaussian blur without padding: (N, C, H, W) -> (N, C, H-k+1, W-k+1)."""
    channels = images.shape[1]
    size = kernel.numel()
    horizontal = kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(images, horizontal, groups=channels)
    return F.conv2d(out, vertical, groups=channels)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, reduction: Reduction = "mean") -> Tensor:
    """Structural similarity (Wang et al. 2004), averaged over pixels and channels.

    Gaussian window of 11 taps with sigma 1.5, K1 = 0.01, K2 = 0.03, population
    (co)variances. The SSIM map is evaluated only where the whole window fits inside the
    image (no padding) and averaged, and channels are averaged, which reproduces
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)``.

    Args:
        x, y: images (N, C, H, W) of the same shape, at least 11 x 11 pixels, values in
            [0, data_range].
        data_range: the span of possible pixel values (1.0 for images in [0, 1]).
        reduction: "mean" (0-d tensor, batch mean) or "none" (shape (N,)).

    Returns:
        SSIM in [-1, 1]; 1 for identical images.

    Raises:
        PixmarkError: if the images are smaller than the 11-pixel window.
    """
    x, y = _check_images("ssim", x, y)
    data_range = _check_data_range("ssim", data_range)
    height, width = x.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise PixmarkError(
            f"ssim: images of {height}x{width} pixels are smaller than the {SSIM_WINDOW}x"
            f"{SSIM_WINDOW} window; compare images of at least {SSIM_WINDOW} pixels per side "
            "(upsample them) or use psnr."
        )
    kernel = _gaussian_kernel(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    mu_x = _gaussian_blur_valid(x, kernel)
    mu_y = _gaussian_blur_valid(y, kernel)
    var_x = _gaussian_blur_valid(x * x, kernel) - mu_x * mu_x
    var_y = _gaussian_blur_valid(y * y, kernel) - mu_y * mu_y
    cov_xy = _gaussian_blur_valid(x * y, kernel) - mu_x * mu_y

    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator
    values = ssim_map.flatten(1).mean(dim=1)
    return _reduce(values, reduction, "ssim")


def _correlation(a: Tensor, b: Tensor, center: bool) -> Tensor:
    a = a.flatten(1)
    b = b.flatten(1)
    if center:
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
    numerator = (a * b).sum(dim=1)
    energy = (a * a).sum(dim=1) * (b * b).sum(dim=1)
    # Where an image has no energy (all zero, or constant when centred) the numerator is
    # zero too, and the clamp turns 0/0 into 0 while keeping gradients finite.
    tiny = torch.finfo(energy.dtype).tiny
    return numerator / energy.clamp_min(tiny).sqrt()


def nc(a: Tensor, b: Tensor) -> Tensor:
    """Normalised correlation of Zhang et al. (AAAI 2020), one value per image.

    ``NC(a, b) = sum(a * b) / sqrt(sum(a**2) * sum(b**2))`` over all channels and pixels of
    each image. The paper counts a watermark as extracted when NC > 0.95.

    Beware: for non-negative images NC is high whenever both images are mostly bright. A
    white blank against a logo that is 90 % white scores sqrt(0.9) ~ 0.95. Use
    ``centered_nc`` (or images in {-1, +1}) where that matters.

    Args:
        a, b: tensors of the same shape with the batch first, e.g. (N, C, H, W).

    Returns:
        Tensor of shape (N,), in [-1, 1] ([0, 1] for non-negative images). An all-zero
        image scores 0 against anything.
    """
    a, b = _as_float(*_check_pair("nc", a, b, ("a", "b"), min_dim=2))
    return _correlation(a, b, center=False)


def centered_nc(a: Tensor, b: Tensor) -> Tensor:
    """Mean-centred normalised correlation (Pearson correlation) per image.

    Each image has its own mean (over channels and pixels) subtracted before ``nc``. This is
    the statistic that cannot be fooled by brightness: a blank image, or random noise,
    scores about 0 against any logo.

    Args:
        a, b: tensors of the same shape with the batch first, e.g. (N, C, H, W).

    Returns:
        Tensor of shape (N,), in [-1, 1]. A constant image scores 0 (not NaN) against
        anything, including another constant image.
    """
    a, b = _as_float(*_check_pair("centered_nc", a, b, ("a", "b"), min_dim=2))
    return _correlation(a, b, center=True)


def ncc(a: Tensor, b: Tensor) -> Tensor:
    """Normalised correlation coefficient of Quan et al. (TNNLS 2020), per image.

    The paper compares the verification image S with a suspect's trigger response S' by
    their "normalized correlation coefficient (NCC)" and passes verification at NCC > 0.95,
    without printing a formula. A correlation *coefficient* is mean-centred, so pixmark
    reads NCC as the Pearson correlation over all pixels, i.e. exactly ``centered_nc``.
    (Plain, uncentred correlation scores two unrelated |Sobel| responses of uniform-noise
    triggers about 0.64, far from 0 however different they are.)

    Args:
        a, b: tensors of the same shape with the batch first, e.g. (N, C, H, W).

    Returns:
        Tensor of shape (N,), in [-1, 1]; a constant image scores 0.
    """
    a, b = _as_float(*_check_pair("ncc", a, b, ("a", "b"), min_dim=2))
    return _correlation(a, b, center=True)


def _to_bits(name: str, t: Tensor) -> Tensor:
    if t.is_floating_point():
        return t >= 0.5
    if t.dtype == torch.bool:
        return t
    if bool(((t != 0) & (t != 1)).any()):
        raise PixmarkError(
            f"ber: integer tensor {name} holds values other than 0 and 1; pass bits as "
            "{0, 1} integers, booleans, or floats (thresholded at 0.5)."
        )
    return t == 1


def ber(bits_a: Tensor, bits_b: Tensor) -> Tensor:
    """Bit error rate per item: the fraction of positions where two bit strings differ.

    Wu et al. (TCSVT 2020) binarise the extracted watermark and count the bits that differ
    from the ground truth. Float inputs are binarised here as ``value >= 0.5 -> 1``;
    integer inputs must be 0 or 1, booleans are used as they are. Not differentiable.

    Args:
        bits_a, bits_b: tensors of the same shape with the batch first, e.g. (N, 1, 64, 64)
            extracted watermarks or (N, L) bit strings.

    Returns:
        Tensor of shape (N,), float32, in [0, 1].
    """
    bits_a, bits_b = _check_pair("ber", bits_a, bits_b, ("bits_a", "bits_b"), min_dim=2)
    a = _to_bits("bits_a", bits_a).flatten(1)
    b = _to_bits("bits_b", bits_b).flatten(1)
    return (a != b).to(torch.float32).mean(dim=1)
