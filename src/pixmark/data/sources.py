"""Real images: files, folders, photos bundled in installed packages, and splits.

Every image pixmark trains or verifies on comes from here, as a float32 tensor in
[0, 1]. Nothing is downloaded: the builtin sets are read straight from the data
folders of packages pixmark depends on (scikit-image, PyWavelets, sporco,
matplotlib, pydicom-data).

Shapes: ``load_image`` returns [1, C, H, W]; the list helpers (``builtin_images``,
``folder_images``, ``images``) return ``(name, tensor)`` pairs with tensors [C, H, W].
C is 1 (gray) or 3 (RGB).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write

MAX_PIXELS = 40_000_000
"""Largest image (width x height) ``load_image`` accepts: fail fast, not out of memory."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""File endings ``folder_images`` picks up (case-insensitive)."""

XRAY_MAX_SIDE = 1024
"""Builtin radiographs are downscaled so that their long side is at most this many pixels."""

# ITU-R BT.601 luma weights, the same ones Pillow uses for RGB -> "L".
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- files


def load_image(path: str | os.PathLike[str], channels: int | None = None) -> Tensor:
    """Read an image file as a float32 tensor [1, C, H, W] in [0, 1].

    Formats are whatever Pillow reads (PNG, JPEG, TIFF, BMP, ...). 8-bit files are
    divided by 255, 16-bit gray PNG/TIFF (and 32-bit integer files) by 65535. A 16-bit
    *RGB* PNG is reduced to 8 bits by Pillow itself. A 32-bit float TIFF is taken as
    already in [0, 1] and clipped. An alpha channel (RGBA, LA) is dropped: the colour is
    kept as stored, not composited onto a background. Palette images become RGB. The
    EXIF orientation of photos is applied. Only the first frame of a multi-frame file
    is read.

    ``channels``: None keeps the file's own (1 for gray, 3 for colour); 1 converts to
    luminance (BT.601 weights); 3 converts to RGB (gray replicated).
    """
    if channels not in (None, 1, 3):
        raise PixmarkError(f"cannot load {path} with channels={channels!r}; choose 1, 3 or None")
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"image file {p} does not exist")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires far above MAX_PIXELS; our check below wins.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                _check_size(im.size, p)
                im.load()
                array = _pil_to_array(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError:
        raise PixmarkError(
            f"image too large: {p} exceeds {MAX_PIXELS:,} pixels; downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise PixmarkError(
            f"{p} is not an image file pixmark can read (PNG, JPEG, TIFF or BMP)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PixmarkError(f"image file {p} is truncated or corrupt ({exc})") from None
    image = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    return to_channels(image, channels) if channels is not None else image


def _check_size(size: tuple[int, int], path: Path) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise PixmarkError(
            f"image too large: {path} is {width}x{height} pixels, more than "
            f"MAX_PIXELS={MAX_PIXELS:,}; downscale it first"
        )


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Pillow image -> float32 array [H, W, C] in [0, 1], C in (1, 3)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (np.asarray(im, dtype=np.float32) / 65535.0)[..., None]
    if mode == "I":  # 32-bit ints: older Pillow opens 16-bit gray PNGs this way
        a = np.asarray(im, dtype=np.float64) / 65535.0
        return np.clip(a, 0.0, 1.0).astype(np.float32)[..., None]
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None]
    if mode in ("1", "L", "LA", "La"):
        im = im.convert("L")
        return (np.asarray(im, dtype=np.float32) / 255.0)[..., None]
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    if mode != "RGB":
        im = im.convert("RGB")  # RGBA drops alpha; CMYK, YCbCr, LAB, HSV are converted
    return np.asarray(im, dtype=np.float32) / 255.0


def save_image(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` ([1, C, H, W] or [C, H, W], C 1 or 3, values in [0, 1]) as 8-bit PNG.

    Values are clipped to [0, 1] and rounded to 256 levels. The file is written
    atomically (temporary file, then rename). Returns the path written.
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise PixmarkError(f"save_image writes PNG; give {p} a .png suffix")
    t = image.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise PixmarkError(
            f"cannot save a tensor of shape {tuple(image.shape)} to {p}; "
            "expected [1, C, H, W] or [C, H, W] with C = 1 or 3"
        )
    if not torch.isfinite(t).all():
        raise PixmarkError(f"cannot save {p}: the image contains NaN or infinite values")
    array = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    return atomic_write(p, lambda tmp: pil.save(tmp, format="PNG"))


def to_channels(image: Tensor, channels: int) -> Tensor:
    """Convert [..., C, H, W] (C 1 or 3) to ``channels``: 3 -> 1 luminance, 1 -> 3 replicate."""
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
    c = image.shape[-3]
    if c == channels:
        return image
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * w).sum(dim=-3, keepdim=True).clamp(0, 1)
    if c == 1 and channels == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
    raise PixmarkError(f"cannot convert an image with {c} channels to {channels}")


# --------------------------------------------------------------------------- builtin sets

# Real photographs in scikit-image's local data folder (loaded from the files directly,
# never through skimage.data's pooch fetcher). Left out on purpose: synthetic images
# (chessboard, color, phantom, logo, horse), clock_motion (already motion-blurred, so it
# cannot serve as a clean target), motorcycle_right (a near-copy of motorcycle_left that
# would leak across a split), and the tiny GIF/TIFF test files.
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
_PYWT_PHOTOS = ("camera", "aero", "ascent")  # npz files in pywt/data
_SPORCO_PHOTOS = ("barbara.png", "kodim23.png", "monarch.png", "sail.png", "tulips.png")
_MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)  # in matplotlib/mpl-data/sample_data

# Computed-radiography DICOMs in pydicom-data (the uncompressed, lossless copies).
_XRAYS = {"rg1_chest": "RG1_UNCR.dcm", "rg3_tibia": "RG3_UNCR.dcm"}

# Three of the photographs above are close-ups of one material each: the stand-in for a
# texture data set (Quan et al. fine-tune on KTH-TIPS textures as "other data").
_TEXTURES = ("skimage/brick", "skimage/grass", "skimage/gravel")

BUILTIN_KINDS = ("natural", "xray", "texture")


def _package_dir(package: str, *parts: str) -> Path:
    """Folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PixmarkError(
            f"package {package!r} is not installed, so its bundled images are missing; "
            f"reinstall pixmark (pip install pixmark) to get it"
        )
    folder = Path(spec.origin).parent.joinpath(*parts)
    if not folder.is_dir():
        raise PixmarkError(
            f"the data folder {folder} of package {package!r} is missing; "
            f"reinstall that package (pip install --force-reinstall {package})"
        )
    return folder


def _data_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise PixmarkError(f"bundled image {path} is missing; reinstall the package that ships it")
    return path


def _array_to_image(array: np.ndarray) -> Tensor:
    """uint8 or float array [H, W] or [H, W, 3] -> [C, H, W]; RGB with R = G = B becomes gray."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
    if t.shape[0] == 3 and torch.equal(t[0], t[1]) and torch.equal(t[1], t[2]):
        t = t[:1].clone()
    return t


@functools.cache
def _natural() -> tuple[tuple[str, Tensor], ...]:
    found: list[tuple[str, Tensor]] = []
    folder = _package_dir("skimage", "data")
    for file in _SKIMAGE_PHOTOS:
        found.append((f"skimage/{Path(file).stem}", load_image(_data_file(folder, file))[0]))
    folder = _package_dir("pywt", "data")
    for stem in _PYWT_PHOTOS:
        with np.load(_data_file(folder, f"{stem}.npz")) as npz:
            found.append((f"pywt/{stem}", _array_to_image(npz["data"])))
    folder = _package_dir("sporco", "data")
    for file in _SPORCO_PHOTOS:
        found.append((f"sporco/{Path(file).stem}", load_image(_data_file(folder, file))[0]))
    folder = _package_dir("matplotlib", "mpl-data", "sample_data")
    for file in _MATPLOTLIB_PHOTOS:
        found.append((f"matplotlib/{Path(file).stem}", load_image(_data_file(folder, file))[0]))
    return tuple(_dedupe(found))


def _dedupe(items: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """Drop exact pixel duplicates (skimage's and pywt's camera are the same image)."""
    seen: set[str] = set()
    unique = []
    for name, image in items:
        digest = hashlib.sha256(
            str(tuple(image.shape)).encode() + image.numpy().tobytes()
        ).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append((name, image))
    return unique


def load_dicom(path: str | os.PathLike[str], max_side: int | None = XRAY_MAX_SIDE) -> Tensor:
    """Read a single-frame gray DICOM radiograph as [1, H, W] float32 in [0, 1].

    Steps: raw pixels -> modality rescale (slope/intercept) -> the file's VOI window
    (or VOI LUT) when it has one -> robust stretch of the 0.5th..99.5th percentiles to
    [0, 1] -> inverted if MONOCHROME1, so bone and dense tissue are bright -> area
    downscale so the long side is at most ``max_side`` (None keeps full size).
    """
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"DICOM file {p} does not exist")
    try:
        ds = pydicom.dcmread(p)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad files
        raise PixmarkError(f"{p} is not a readable DICOM image ({exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim != 2 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixmarkError(f"{p} is not a single-frame gray radiograph ({photometric})")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        raise PixmarkError(f"{p} is a flat image (all pixels equal); nothing to use")
    values = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    image = torch.from_numpy(values.astype(np.float32))[None]
    height, width = image.shape[-2:]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = torch.nn.functional.interpolate(
            image[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0].clamp(0, 1)
    return image


@functools.cache
def _xray() -> tuple[tuple[str, Tensor], ...]:
    folder = _package_dir("data_store", "data")  # pydicom-data installs as data_store
    return tuple(
        (f"pydicom-data/{name}", load_dicom(_data_file(folder, file)))
        for name, file in _XRAYS.items()
    )


def builtin_images(kind: str = "natural") -> list[tuple[str, Tensor]]:
    """Real images bundled in installed packages, as ``(name, [C, H, W] float32 in [0, 1])``.

    kind "natural": 26 distinct photographs from scikit-image, PyWavelets, sporco and
    matplotlib (C = 3 for colour, 1 for gray; 102x102 to 1411x1411 pixels). kind "xray": two real
    computed radiographs from pydicom-data (a chest PA view and a tibia/ankle view), 1
    channel, downscaled to a long side of at most ``XRAY_MAX_SIDE``. kind "texture": the
    three gray 512x512 material close-ups among the natural photos (brick, grass, gravel).
    Loaded once per process; the returned tensors are copies, safe to modify.
    """
    if kind == "natural":
        items = _natural()
    elif kind == "xray":
        items = _xray()
    elif kind == "texture":
        items = tuple(item for item in _natural() if item[0] in _TEXTURES)
    else:
        raise PixmarkError(
            f"unknown builtin image kind {kind!r}; choose from {', '.join(BUILTIN_KINDS)}"
        )
    return [(name, image.clone()) for name, image in items]


def folder_images(path: str | os.PathLike[str]) -> list[tuple[str, Tensor]]:
    """Every PNG/JPEG/TIFF/BMP file under ``path`` (recursive, sorted by relative path).

    Names are paths relative to ``path``; tensors are [C, H, W] with the file's own
    channel count (1 or 3).
    """
    root = Path(path)
    if not root.is_dir():
        raise PixmarkError(f"image folder {root} does not exist or is not a folder")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PixmarkError(
            f"no images found in {root}; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return [(f.relative_to(root).as_posix(), load_image(f)[0]) for f in files]


def images(source: str = "builtin", channels: int = 3) -> list[tuple[str, Tensor]]:
    """Images from ``source`` converted to ``channels`` (1 or 3), as ``(name, [C, H, W])``.

    source: "builtin" (natural photos), "builtin:natural", "builtin:xray",
    "builtin:texture", or a folder.
    """
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
    if source in ("builtin", "builtin:natural"):
        items = builtin_images("natural")
    elif source.startswith("builtin:"):
        items = builtin_images(source.removeprefix("builtin:"))
    else:
        items = folder_images(source)
    return [(name, to_channels(image, channels)) for name, image in items]


# --------------------------------------------------------------------------- splits


def split_images(
    items: Sequence,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict[str, list]:
    """Split ``items`` (whole images, never crops) into train/val/test.

    The order is a seeded permutation, so a seed always gives the same split. val and
    test get ``round(n * fraction)`` items but at least one each, train gets the rest;
    every split is non-empty when there are at least 3 items. Items keep their type
    (e.g. ``(name, tensor)`` pairs).
    """
    n = len(items)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise PixmarkError(
            f"fractions must be three non-negative numbers (train, val, test), got {fractions}"
        )
    if n < 3:
        raise PixmarkError(
            f"cannot split {n} image(s) into non-empty train/val/test sets; give at least 3 "
            "(for few large images, cut them into tiles with tile_images first)"
        )
    total = sum(fractions)
    n_val = max(1, round(n * fractions[1] / total))
    n_test = max(1, round(n * fractions[2] / total))
    n_train = n - n_val - n_test
    if n_train < 1:  # only possible for tiny n with a small train fraction
        n_train, n_val = 1, n - 1 - n_test
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    picked = [items[i] for i in order]
    return {
        "train": picked[:n_train],
        "val": picked[n_train : n_train + n_val],
        "test": picked[n_train + n_val :],
    }


def tile_images(items: Sequence[tuple[str, Tensor]], grid: int = 2) -> list[tuple[str, Tensor]]:
    """Cut each ``(name, [C, H, W])`` image into ``grid x grid`` non-overlapping tiles.

    For sets with very few large images (the two builtin radiographs): tiles share no
    pixels, so splitting tiles keeps train and test disjoint, though neighbouring tiles
    of one image are alike. Tile names are ``name#r{row}c{col}``.
    """
    if grid < 1:
        raise PixmarkError(f"grid must be at least 1, got {grid}")
    tiles = []
    for name, image in items:
        height, width = image.shape[-2:]
        rows = [round(i * height / grid) for i in range(grid + 1)]
        cols = [round(j * width / grid) for j in range(grid + 1)]
        for i in range(grid):
            for j in range(grid):
                tile = image[..., rows[i] : rows[i + 1], cols[j] : cols[j + 1]].clone()
                tiles.append((f"{name}#r{i}c{j}", tile))
    return tiles
