"""Image-level attacks: what happens to a protected model's outputs after they leave it.

One plain function per attack, AugLy style: images first, then one strength parameter with
a documented range, then keyword-only options. Every function takes images
[N, C, H, W] (C = 1 or 3) with values in [0, 1], returns new images with the same dtype,
device and value range, and never modifies its input. Random attacks draw everything from
``seed`` (an int, or a ``torch.Generator`` to continue a stream) on the CPU, so the same
seed gives the same result on any device.

=================  ==============  ===============================================  ==========
function           strength        range                                            stronger
=================  ==============  ===============================================  ==========
``jpeg``           ``quality``     integer in [1, 100]                              lower
``gaussian_noise`` ``sigma``       [0, 1], intensity units (25/255 ~ 0.098)         higher
``gaussian_blur``  ``sigma``       > 0 pixels (typically 0.5 - 3)                   higher
``resize``         ``scale``       (0, 1]: side factor of the intermediate image    lower
``crop``           ``fraction``    (0, 1]: fraction of the area kept                lower
``rotate``         ``degrees``     any real; counter-clockwise; 0 = identity        nearer 45
``flip``           ``horizontal``  True: left-right mirror, False: up-down          n/a
``color_jitter``   ``strength``    [0, 1]: max relative change of each factor       higher
=================  ==============  ===============================================  ==========

``IMAGE_ATTACKS`` maps each name to its function; ``apply_image_attack(name, images,
strength)`` calls one by name (what the benchmark grid does with a YAML line).
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pixmark.errors import PixmarkError

Seed = int | torch.Generator
"""A seed for a fresh CPU generator, or a generator whose stream is continued."""


# --------------------------------------------------------------------------- helpers


def _check_images(fn: str, images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise PixmarkError(f"{fn}: images is a {type(images).__name__}, expected a torch.Tensor.")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise PixmarkError(
            f"{fn}: images must be [N, C, H, W] with C = 1 or 3, got shape "
            f"{tuple(images.shape)}; add a batch axis with x[None]."
        )
    if not images.is_floating_point():
        raise PixmarkError(
            f"{fn}: images have dtype {images.dtype}; convert them to floats in [0, 1] first."
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise PixmarkError(f"{fn}: images are empty (shape {tuple(images.shape)}).")
    return images


def _work(images: Tensor) -> Tensor:
    """float32 (or float64) detached copy to compute on; half types are upcast."""
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    return images.detach().to(dtype)


def _finish(result: Tensor, like: Tensor) -> Tensor:
    return result.clamp(0, 1).to(dtype=like.dtype, device=like.device)


def _number(fn: str, name: str, value: object, valid: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PixmarkError(f"{fn}: {name} must be a number {valid}, got {value!r}.")
    return float(value)


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise PixmarkError(f"seed must be an int or a torch.Generator, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def _blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, C, H, W], kernel 2 ceil(3 sigma) + 1, edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    n, c, h, w = images.shape
    flat = images.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def _luma(images: Tensor) -> Tensor:
    """ITU-R BT.601 luma [N, 1, H, W] of RGB images (the gray image itself when C = 1)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------- attacks


def jpeg(images: Tensor, quality: int) -> Tensor:
    """Re-encode each image as an 8-bit baseline JPEG with Pillow and decode it again.

    quality: integer in [1, 100] (Pillow's scale); lower is stronger. Gray images are
    coded as one-channel JPEG, colour images as YCbCr with Pillow's default 4:2:0 chroma
    subsampling. Values are rounded to 8 bits first. Deterministic.
    """
    fn = "jpeg"
    images = _check_images(fn, images)
    q = _number(fn, "quality", quality, "in [1, 100]")
    if not (1 <= q <= 100) or q != int(q):
        raise PixmarkError(f"{fn}: quality must be an integer in [1, 100], got {quality!r}.")
    out = torch.empty(images.shape, dtype=torch.float32)
    arrays = (_work(images).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for i in range(images.shape[0]):
        array = arrays[i].permute(1, 2, 0).numpy()
        pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(q))
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        if decoded.ndim == 2:
            decoded = decoded[..., None]
        out[i] = torch.from_numpy(decoded).permute(2, 0, 1)
    return _finish(out, images)


def gaussian_noise(images: Tensor, sigma: float, *, seed: Seed = 0) -> Tensor:
    """Add white Gaussian noise of standard deviation ``sigma`` and clip to [0, 1].

    sigma: in [0, 1], in intensity units of the [0, 1] range (sigma 25 on a 0-255 scale
    is 25/255 ~ 0.098); 0 returns a copy. Noise is drawn from ``seed`` on the CPU.
    """
    fn = "gaussian_noise"
    images = _check_images(fn, images)
    s = _number(fn, "sigma", sigma, "in [0, 1]")
    if not 0 <= s <= 1:
        raise PixmarkError(f"{fn}: sigma must be in [0, 1] (intensity units), got {sigma!r}.")
    work = _work(images)
    noise = torch.randn(images.shape, generator=_generator(seed), dtype=work.dtype)
    return _finish(work + s * noise.to(work.device), images)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur with an isotropic Gaussian of standard deviation ``sigma`` pixels.

    sigma: > 0 pixels (typically 0.5 to 3); higher is stronger. The kernel spans
    2 * ceil(3 sigma) + 1 pixels and edges are replicated, so the size is unchanged.
    Deterministic.
    """
    fn = "gaussian_blur"
    images = _check_images(fn, images)
    s = _number(fn, "sigma", sigma, "> 0 (pixels)")
    if not 0 < s < math.inf:
        raise PixmarkError(f"{fn}: sigma must be a finite number of pixels > 0, got {sigma!r}.")
    return _finish(_blur(_work(images), s), images)


def resize(images: Tensor, scale: float) -> Tensor:
    """Downscale by ``scale`` and scale back up to the original size (detail is lost).

    scale: in (0, 1], the side-length factor of the intermediate image; lower is
    stronger, 1 returns a copy. The intermediate size is ``max(1, round(H * scale))`` x
    ``max(1, round(W * scale))``; downscaling is antialiased bicubic, upscaling bicubic.
    Deterministic.
    """
    fn = "resize"
    images = _check_images(fn, images)
    s = _number(fn, "scale", scale, "in (0, 1]")
    if not 0 < s <= 1:
        raise PixmarkError(f"{fn}: scale must be in (0, 1], got {scale!r}.")
    work = _work(images)
    h, w = images.shape[-2:]
    small_size = (max(1, round(h * s)), max(1, round(w * s)))
    if small_size == (h, w):
        return _finish(work, images)
    small = F.interpolate(
        work, size=small_size, mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)
    return _finish(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False), images)


def crop(images: Tensor, fraction: float, *, center: bool = True, seed: Seed = 0) -> Tensor:
    """Keep a rectangle covering ``fraction`` of each image's area; returns smaller images.

    fraction: in (0, 1]; lower is stronger, 1 returns a copy. Both sides are scaled by
    sqrt(fraction): the result is [N, C, max(1, round(H * sqrt(f))), max(1, round(W *
    sqrt(f)))], so the kept area matches ``fraction`` up to rounding to whole pixels. With
    ``center`` the rectangle is centred; otherwise its position is drawn per image from
    ``seed``.
    """
    fn = "crop"
    images = _check_images(fn, images)
    f = _number(fn, "fraction", fraction, "in (0, 1]")
    if not 0 < f <= 1:
        raise PixmarkError(f"{fn}: fraction must be in (0, 1] (area kept), got {fraction!r}.")
    n, _, h, w = images.shape
    side = math.sqrt(f)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    if center:
        tops, lefts = [(h - ch) // 2] * n, [(w - cw) // 2] * n
    else:
        g = _generator(seed)
        tops = torch.randint(h - ch + 1, (n,), generator=g).tolist()
        lefts = torch.randint(w - cw + 1, (n,), generator=g).tolist()
    work = _work(images)
    out = torch.stack(
        [
            work[i, :, t : t + ch, s : s + cw]
            for i, (t, s) in enumerate(zip(tops, lefts, strict=True))
        ]
    )
    return _finish(out, images)


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate counter-clockwise by ``degrees`` about the image centre, keeping the size.

    degrees: any real number (taken modulo 360); 0 is the identity and angles near 45
    (mod 90) lose the most. Multiples of 90 that keep the shape (any multiple on square
    images, multiples of 180 otherwise) are exact pixel permutations; other angles use
    bilinear interpolation, and corners that come from outside the image are black (0).
    Deterministic.
    """
    fn = "rotate"
    images = _check_images(fn, images)
    d = _number(fn, "degrees", degrees, "(any real)")
    if not math.isfinite(d):
        raise PixmarkError(f"{fn}: degrees must be a finite number, got {degrees!r}.")
    d = d % 360.0
    work = _work(images)
    h, w = images.shape[-2:]
    quarter = d / 90.0
    if quarter == int(quarter) and (h == w or int(quarter) % 2 == 0):
        return _finish(torch.rot90(work, int(quarter), dims=(-2, -1)), images)
    # Inverse map in pixel units (y down): the output pixel at offset (x, y) from the
    # centre takes the input at R(-a) applied to it, where a counter-clockwise turn on
    # screen is (x, y) -> (x cos a + y sin a, -x sin a + y cos a).
    a = math.radians(d)
    cos, sin = math.cos(a), math.sin(a)
    ys = torch.arange(h, dtype=work.dtype, device=work.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=work.dtype, device=work.device) - (w - 1) / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    src_x = x * cos - y * sin
    src_y = x * sin + y * cos
    # grid_sample coordinates with align_corners=False: pixel centre i -> (2 i + 1) / n - 1.
    grid = torch.stack((src_x * 2 / w, src_y * 2 / h), dim=-1)
    grid = grid.expand(images.shape[0], h, w, 2)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _finish(out, images)


def flip(images: Tensor, horizontal: bool = True) -> Tensor:
    """Mirror each image: left-right when ``horizontal`` (the default), else up-down.

    horizontal: bool; there is no other strength. Exact and deterministic.
    """
    fn = "flip"
    images = _check_images(fn, images)
    if not isinstance(horizontal, bool | np.bool_):
        raise PixmarkError(f"{fn}: horizontal must be True or False, got {horizontal!r}.")
    return _finish(_work(images).flip(-1 if horizontal else -2), images)


def color_jitter(images: Tensor, strength: float, *, seed: Seed = 0) -> Tensor:
    """Randomly change brightness, contrast and saturation of each image.

    strength: in [0, 1]; 0 returns a copy. Per image, three factors are drawn uniformly
    from [1 - strength, 1 + strength] and applied in this order, clipping to [0, 1] after
    each: brightness (x * b), contrast (blend with the image's mean luma:
    m + c (x - m)) and saturation (blend with the pixel's luma: l + s (x - l)). Saturation
    does nothing to gray images (C = 1), but the factor is drawn anyway so that the
    brightness and contrast of a given seed are the same for 1 and 3 channels.
    Factors are drawn from ``seed`` on the CPU.
    """
    fn = "color_jitter"
    images = _check_images(fn, images)
    s = _number(fn, "strength", strength, "in [0, 1]")
    if not 0 <= s <= 1:
        raise PixmarkError(f"{fn}: strength must be in [0, 1], got {strength!r}.")
    work = _work(images)
    n = images.shape[0]
    factors = 1 - s + 2 * s * torch.rand(n, 3, generator=_generator(seed), dtype=work.dtype)
    b, c, sat = (factors[:, k].view(n, 1, 1, 1).to(work.device) for k in range(3))
    out = (work * b).clamp(0, 1)
    mean = _luma(out).mean(dim=(1, 2, 3), keepdim=True)
    out = (mean + c * (out - mean)).clamp(0, 1)
    if images.shape[1] == 3:
        luma = _luma(out)
        out = luma + sat * (out - luma)
    return _finish(out, images)


# --------------------------------------------------------------------------- registry

IMAGE_ATTACKS: dict[str, Callable[..., Tensor]] = {
    "jpeg": jpeg,
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "resize": resize,
    "crop": crop,
    "rotate": rotate,
    "flip": flip,
    "color_jitter": color_jitter,
}
"""Name -> attack function; every function is ``f(images, strength, **options)``."""

_SEEDED = frozenset({"gaussian_noise", "crop", "color_jitter"})


def apply_image_attack(
    name: str, images: Tensor, strength: Any, *, seed: Seed = 0, **options: Any
) -> Tensor:
    """Apply the attack called ``name`` (a key of ``IMAGE_ATTACKS``) at ``strength``.

    ``seed`` reaches the random attacks (gaussian_noise, crop, color_jitter) and is
    ignored by the deterministic ones; other keyword ``options`` (e.g. ``center=False``
    for crop) are passed through. Raises PixmarkError for an unknown name.
    """
    if name not in IMAGE_ATTACKS:
        raise PixmarkError(
            f"unknown image attack {name!r}; choose from {', '.join(IMAGE_ATTACKS)}."
        )
    if name in _SEEDED:
        options = {"seed": seed, **options}
    try:
        return IMAGE_ATTACKS[name](images, strength, **options)
    except TypeError as exc:
        raise PixmarkError(f"image attack {name!r} rejected its options {options}: {exc}") from None


def served_through(
    query: Callable[[Tensor], Tensor],
    name: str,
    strength: Any,
    *,
    seed: int = 0,
    hashed: bool = False,
    **options: Any,
) -> Callable[[Tensor], Tensor]:
    """A suspect served behind the image attack ``name``: every answer distorted at ``strength``.

    ``query`` maps images [N, C, H, W] in [0, 1] to outputs; the result is a query of the
    same kind (a thief's noisy or JPEG-coding service). Attacks that change the size (crop)
    are resized back (bicubic) to the size asked for, as a verifier would before extraction.
    Random attacks (noise, random crop, colour jitter) draw anew on every call from one
    generator seeded with ``seed``; with ``hashed`` the draw is instead seeded from a SHA-256
    of ``seed`` and the request's bytes, so the same question always gets the same answer
    and plain repeats cannot average the noise away.
    """
    import hashlib

    if name not in IMAGE_ATTACKS:
        raise PixmarkError(
            f"unknown image attack {name!r}; choose from {', '.join(IMAGE_ATTACKS)}."
        )
    generator = torch.Generator().manual_seed(int(seed))

    def serve(images: Tensor) -> Tensor:
        out = query(images)
        draw: Seed = generator
        if hashed:
            digest = hashlib.sha256(str(seed).encode() + images.detach().cpu().numpy().tobytes())
            draw = int.from_bytes(digest.digest()[:6], "big")
        hit = apply_image_attack(name, out, strength, seed=draw, **options)
        if hit.shape != out.shape:
            hit = F.interpolate(hit, size=out.shape[-2:], mode="bicubic", align_corners=False)
        return hit.clamp(0, 1)

    return serve


__all__ = [
    "IMAGE_ATTACKS",
    "Seed",
    "apply_image_attack",
    "color_jitter",
    "crop",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "resize",
    "rotate",
    "served_through",
]
