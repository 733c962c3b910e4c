"""Degradations that turn clean images into the inputs of image-to-image tasks.

Each function takes clean images [N, C, H, W] in [0, 1] (C = 1 or 3) and returns the
degraded images with the same shape, also in [0, 1]. Random parameters are drawn per
image from the ``torch.Generator`` passed in (on the CPU, then moved to the images'
device), so the result is identical for the same generator state on any device.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pixmark.errors import PixmarkError


def _check(clean: Tensor, what: str) -> tuple[int, int, int, int]:
    if clean.dim() != 4 or clean.shape[1] not in (1, 3):
        raise PixmarkError(
            f"{what} expects images [N, C, H, W] with C = 1 or 3, got shape {tuple(clean.shape)}"
        )
    n, c, h, w = clean.shape
    return n, c, h, w


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> Tensor:
    """n numbers uniform in [low, high), drawn on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator)


def line_kernel(
    length: float, angle: float, thickness: float = 1.0, size: int | None = None
) -> Tensor:
    """Anti-aliased straight line through the centre of a square kernel, peak value 1.

    length and thickness in pixels; angle in degrees counter-clockwise from the image's
    x axis (90 = vertical). ``size`` (odd) defaults to just fit the line. Returns [size, size].
    """
    if size is None:
        size = 2 * math.ceil(length / 2 + thickness) + 1
    r = torch.arange(size, dtype=torch.float32) - size // 2
    y, x = torch.meshgrid(-r, r, indexing="ij")  # y points up so angles read naturally
    a = math.radians(angle)
    along = x * math.cos(a) + y * math.sin(a)
    across = -x * math.sin(a) + y * math.cos(a)
    width = (thickness / 2 + 0.5 - across.abs()).clamp(0, 1)
    extent = (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return width * extent


def gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    """Normalised 2-D Gaussian [size, size]; sigma in pixels, size odd (default 6 sigma + 1)."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def convolve(images: Tensor, kernels: Tensor) -> Tensor:
    """Convolve images [N, C, H, W] with one odd square kernel [k, k] or one per image [N, k, k].

    Same-size output, image edges replicated. Computed with FFTs, so long kernels (rain
    streaks, motion blur) cost no more than short ones.
    """
    n, c, h, w = images.shape
    k = kernels.shape[-1]
    pad = k // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    size = padded.shape[-2:]
    kernels = kernels.to(images).reshape(-1, 1, k, k)  # [1 or N, 1, k, k], broadcast over C
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernels, s=size)
    full = torch.fft.irfft2(spectrum, s=size)
    # Circular convolution: rows/columns from k - 1 on saw no wrap-around.
    return full[..., k - 1 : k - 1 + h, k - 1 : k - 1 + w].contiguous()


# --------------------------------------------------------------------------- noise


def gaussian_noise(clean: Tensor, generator: torch.Generator, sigma: float = 25 / 255) -> Tensor:
    """Additive white Gaussian noise, standard deviation ``sigma`` in [0, 1] units; clipped."""
    _check(clean, "gaussian_noise")
    noise = torch.randn(clean.shape, generator=generator).to(clean)
    return (clean + sigma * noise).clamp(0, 1)


# --------------------------------------------------------------------------- rain

# Two layers of streaks per image, like the usual synthetic rain (Fu et al. 2017,
# Rain100L/H): a near layer of sparse, long, thick, bright streaks and a far layer of
# dense, short, thin, faint ones. Ranges: (low, high) of a uniform draw per image.
RAIN_LAYERS = (
    {
        "density": (0.001, 0.004),
        "length": (15, 35),
        "thickness": (1.0, 2.0),
        "brightness": (0.5, 0.9),
    },
    {
        "density": (0.004, 0.02),
        "length": (6, 15),
        "thickness": (0.5, 1.0),
        "brightness": (0.2, 0.5),
    },
)
RAIN_ANGLE_RANGE = 25.0
"""Streaks fall within this many degrees of vertical (one direction per image)."""
RAIN_KERNEL_SIZE = 41
"""Side of the streak kernel: fits the longest, thickest streak at any angle."""


def rain_streaks(shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """Synthetic rain layers [N, 1, H, W] in [0, 1] for ``shape`` = (N, H, W).

    Per image: one fall direction (vertical +- ``RAIN_ANGLE_RANGE`` degrees); per layer
    in ``RAIN_LAYERS``: random seed points (density = fraction of pixels, random
    intensity), motion-blurred along the fall direction (+- 3 degrees) into streaks of
    random length, thickness and brightness; finally a light Gaussian blur (sigma 0.6 px)
    softens the edges.
    """
    n, h, w = shape
    rain = torch.zeros(n, 1, h, w)
    angles = 90 + _uniform(generator, n, -RAIN_ANGLE_RANGE, RAIN_ANGLE_RANGE)
    for layer in RAIN_LAYERS:
        density, length, thickness, brightness = (
            _uniform(generator, n, *layer[key])
            for key in ("density", "length", "thickness", "brightness")
        )
        jitter = _uniform(generator, n, -3, 3)
        seeds = torch.rand(n, 1, h, w, generator=generator) < density.view(n, 1, 1, 1)
        seeds = seeds * (0.5 + 0.5 * torch.rand(n, 1, h, w, generator=generator))
        kernels = torch.stack(
            [
                line_kernel(
                    float(length[i]),
                    float(angles[i] + jitter[i]),
                    float(thickness[i]),
                    RAIN_KERNEL_SIZE,
                )
                for i in range(n)
            ]
        )
        rain += brightness.view(n, 1, 1, 1) * convolve(seeds, kernels).clamp(0, 1)
    return convolve(rain.clamp(0, 1), gaussian_kernel(0.6)).clamp(0, 1)


def add_rain(clean: Tensor, generator: torch.Generator) -> Tensor:
    """Rainy images: ``rain_streaks`` screen-blended onto ``clean``: 1 - (1 - clean)(1 - rain).

    Screen blending brightens like light scattered by drops and never exceeds 1; the
    same (white) rain layer is used for every colour channel.
    """
    n, _, h, w = _check(clean, "add_rain")
    rain = rain_streaks((n, h, w), generator).to(clean)
    return 1 - (1 - clean) * (1 - rain)


# --------------------------------------------------------------------------- super-resolution


def bicubic_down_up(clean: Tensor, scale: int) -> Tensor:
    """Bicubic downscale by ``scale`` then bicubic upscale back to the same size (VDSR input).

    This is the VDSR / SRCNN convention: the network sees an interpolated image of the
    target size and restores the detail. Downscaling is antialiased (like MATLAB's
    ``imresize`` and Pillow's BICUBIC); sizes that are not a multiple of ``scale`` are
    downscaled to ``floor(H / scale) x floor(W / scale)``. Deterministic.
    """
    _, _, h, w = _check(clean, "bicubic_down_up")
    if scale < 1 or h < scale or w < scale:
        raise PixmarkError(f"cannot downscale a {h}x{w} image by {scale}; need size >= scale >= 1")
    small = F.interpolate(
        clean, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# --------------------------------------------------------------------------- blur

BLUR_KERNEL_SIZE = 21


def random_blur(clean: Tensor, generator: torch.Generator) -> Tensor:
    """Blur each image with a random kernel and add a little noise.

    Per image, with equal odds: a Gaussian blur (sigma uniform in [0.8, 3.0] px) or a
    linear motion blur (length uniform in [5, 17] px, any direction); then white
    Gaussian noise with sigma uniform in [0.5, 2]/255. Kernels are 21x21, edges
    replicated. Output clipped to [0, 1].
    """
    n = _check(clean, "random_blur")[0]
    use_motion = torch.rand(n, generator=generator) < 0.5
    sigmas = _uniform(generator, n, 0.8, 3.0)
    lengths = _uniform(generator, n, 5.0, 17.0)
    angles = _uniform(generator, n, 0.0, 180.0)
    noise_sigmas = _uniform(generator, n, 0.5 / 255, 2 / 255)
    noise = torch.randn(clean.shape, generator=generator).to(clean)
    kernels = []
    for i in range(n):
        if use_motion[i]:
            kernel = line_kernel(float(lengths[i]), float(angles[i]), 1.0, BLUR_KERNEL_SIZE)
            kernels.append(kernel / kernel.sum())
        else:
            kernels.append(gaussian_kernel(float(sigmas[i]), BLUR_KERNEL_SIZE))
    blurred = convolve(clean, torch.stack(kernels))
    return (blurred + noise_sigmas.view(n, 1, 1, 1).to(clean) * noise).clamp(0, 1)


# --------------------------------------------------------------------------- JPEG


def jpeg(images: Tensor, quality: int) -> Tensor:
    """Re-encode each image [N, C, H, W] as 8-bit JPEG at ``quality`` (1..95) with Pillow.

    Colour images use Pillow's default 4:2:0 chroma subsampling. Deterministic.
    """
    return _jpeg_each(images, [quality] * _check(images, "jpeg")[0])


def _jpeg_each(images: Tensor, qualities: list[int]) -> Tensor:
    out = torch.empty_like(images)
    for i, quality in enumerate(qualities):
        if not 1 <= quality <= 95:
            raise PixmarkError(f"JPEG quality must be in 1..95, got {quality}")
        array = (images[i].detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        if decoded.ndim == 2:
            decoded = decoded[..., None]
        out[i] = torch.from_numpy(decoded).permute(2, 0, 1).to(out)
    return out


def random_jpeg(
    clean: Tensor, generator: torch.Generator, qualities: tuple[int, int] = (10, 30)
) -> Tensor:
    """JPEG artifacts: re-encode each image at a quality uniform in ``qualities`` (inclusive)."""
    n = _check(clean, "random_jpeg")[0]
    low, high = qualities
    drawn = torch.randint(low, high + 1, (n,), generator=generator).tolist()
    return _jpeg_each(clean, drawn)


# --------------------------------------------------------------------------- X-ray

XRAY_ATTENUATION = 3.0
"""Display value 1 (dense bone) transmits exp(-3) = 5 % of the photons, value 0 all of them."""


def low_dose_xray(clean: Tensor, generator: torch.Generator) -> Tensor:
    """Simulated low-dose, low-contrast radiograph (display values, bright = dense tissue).

    Per image: photon count I0 uniform in [300, 3000] per pixel; transmission
    t = exp(-3 x); detected counts ~ Poisson(I0 t) (quantum noise, stronger where
    tissue is dense); back to display values x' = -log(counts / I0) / 3; then contrast
    reduced around mid-grey, 0.5 + c (x' - 0.5) with c uniform in [0.55, 0.85]. Clipped.
    """
    n = _check(clean, "low_dose_xray")[0]
    photons = _uniform(generator, n, 300.0, 3000.0).view(n, 1, 1, 1)
    contrast = _uniform(generator, n, 0.55, 0.85).view(n, 1, 1, 1)
    rates = photons * torch.exp(-XRAY_ATTENUATION * clean.detach().float().cpu().clamp(0, 1))
    counts = torch.poisson(rates, generator=generator).clamp(min=0.5)
    noisy = -torch.log(counts / photons) / XRAY_ATTENUATION
    return (0.5 + contrast * (noisy - 0.5)).clamp(0, 1).to(clean)


def clahe(images: Tensor, clip_limit: float = 0.01, kernel_size: int | None = None) -> Tensor:
    """Contrast-limited adaptive histogram equalisation of each channel (scikit-image).

    Meant for whole images: tiles default to 1/8 of the image side, and each image is
    first stretched to its own min..max. A flat image is returned unchanged.
    """
    from skimage.exposure import equalize_adapthist

    _check(images, "clahe")
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        for ch in range(images.shape[1]):
            plane = images[i, ch].detach().float().cpu()
            if float(plane.max() - plane.min()) < 1e-6:
                out[i, ch] = images[i, ch]
                continue
            result = equalize_adapthist(
                plane.numpy().astype(np.float64), kernel_size=kernel_size, clip_limit=clip_limit
            )
            out[i, ch] = torch.from_numpy(result.astype(np.float32)).to(out)
    return out
