"""pixmark.data on the real images bundled in installed packages."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pixmark.data import (
    MAX_PIXELS,
    TASKS,
    PairSampler,
    builtin_images,
    fixed_pairs,
    folder_images,
    images,
    load_image,
    rain_streaks,
    save_image,
    split_images,
    task,
    tile_images,
    to_channels,
)
from pixmark.errors import PixmarkError


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(1 / mse)


@pytest.fixture(scope="module")
def natural() -> dict[str, torch.Tensor]:
    return dict(builtin_images("natural"))


@pytest.fixture(scope="module")
def xrays() -> dict[str, torch.Tensor]:
    return dict(builtin_images("xray"))


def clean_crops(natural: dict[str, torch.Tensor], channels: int, size: int = 96) -> torch.Tensor:
    """Central crops of a few detailed photos, [N, channels, size, size]."""
    names = ["skimage/astronaut", "sporco/kodim23", "sporco/barbara", "skimage/camera"]
    crops = []
    for name in names:
        image = to_channels(natural[name], channels)
        h, w = image.shape[-2:]
        crops.append(image[:, (h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2])
    return torch.stack(crops)


# --------------------------------------------------------------------------- builtin sets


def test_builtin_natural_images_are_many_distinct_real_photos(natural):
    assert len(natural) >= 15
    digests = set()
    for name, image in natural.items():
        assert image.dtype == torch.float32
        assert image.dim() == 3 and image.shape[0] in (1, 3), name
        assert float(image.min()) >= 0 and float(image.max()) <= 1, name
        assert float(image.std()) > 0.02, f"{name} is nearly flat"
        digests.add(hashlib.sha256(image.numpy().tobytes()).hexdigest())
    assert len(digests) == len(natural), "duplicate images in the builtin set"
    assert {"skimage/astronaut", "sporco/kodim23", "matplotlib/grace_hopper", "pywt/aero"} <= set(
        natural
    )
    assert natural["skimage/astronaut"].shape[0] == 3 and natural["skimage/camera"].shape[0] == 1


def test_builtin_images_are_copies(natural):
    first = builtin_images("natural")[0][1]
    first.zero_()
    assert float(builtin_images("natural")[0][1].max()) > 0


def test_builtin_xrays_are_gray_radiographs_with_bone_bright(xrays):
    assert len(xrays) >= 2
    for name, image in xrays.items():
        assert image.shape[0] == 1 and max(image.shape[-2:]) <= 1024, name
        assert float(image.min()) >= 0 and float(image.max()) <= 1, name
        assert float(image.std()) > 0.1, name
    # MONOCHROME1 must be inverted: on a PA chest film the spine and mediastinum
    # (centre column) are brighter than the air-filled lungs either side of them.
    chest = xrays["pydicom-data/rg1_chest"][0]
    h, w = chest.shape
    rows = slice(h // 4, h // 2)
    centre = chest[rows, w // 2 - w // 20 : w // 2 + w // 20].mean()
    lungs = (
        chest[rows, w // 4 - w // 20 : w // 4 + w // 20].mean()
        + chest[rows, 3 * w // 4 - w // 20 : 3 * w // 4 + w // 20].mean()
    ) / 2
    assert centre > lungs + 0.1


def test_builtin_textures_are_stationary_material_close_ups(natural):
    textures = dict(builtin_images("texture"))
    assert sorted(textures) == ["skimage/brick", "skimage/grass", "skimage/gravel"]

    def spread(image: torch.Tensor) -> float:  # std of the 4 x 4 block means, gray
        return float(F.adaptive_avg_pool2d(to_channels(image, 1)[None], 4).std())

    others = [spread(im) for name, im in natural.items() if name not in textures]
    for name, image in textures.items():
        assert image.shape == (1, 512, 512), name
        assert torch.equal(image, natural[name])
        # one material everywhere: only the star field is as even as a texture
        assert spread(image) < 0.02 and sum(o <= spread(image) for o in others) <= 1, name
    assert [name for name, _ in images("builtin:texture", channels=3)] == sorted(textures)


def test_unknown_builtin_kind_is_an_error():
    with pytest.raises(PixmarkError, match="natural, xray, texture"):
        builtin_images("cats")


def test_images_converts_channels(natural):
    gray = images("builtin", channels=1)
    colour = images("builtin", channels=3)
    assert all(im.shape[0] == 1 for _, im in gray) and all(im.shape[0] == 3 for _, im in colour)
    # Replicated gray has equal channels; luminance of RGB matches Pillow's "L" conversion.
    camera = dict(colour)["skimage/camera"]
    assert torch.equal(camera[0], camera[2])
    astronaut = (
        np.asarray(
            Image.fromarray(
                (natural["skimage/astronaut"].permute(1, 2, 0).numpy() * 255)
                .round()
                .astype(np.uint8)
            ).convert("L"),
            dtype=np.float32,
        )
        / 255
    )
    assert np.abs(dict(gray)["skimage/astronaut"][0].numpy() - astronaut).max() <= 1.01 / 255


# --------------------------------------------------------------------------- files


def test_save_and_load_round_trip_exactly(tmp_path, natural):
    image = natural["sporco/monarch"][:, :40, :50]
    path = save_image(image, tmp_path / "sub" / "monarch.png")
    loaded = load_image(path)
    assert loaded.shape == (1, 3, 40, 50)
    assert torch.equal(loaded[0], image)  # 8-bit source: every value survives
    assert load_image(path, channels=1).shape == (1, 1, 40, 50)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_load_image_missing_corrupt_and_truncated(tmp_path, natural):
    with pytest.raises(PixmarkError, match="nothere.png does not exist"):
        load_image(tmp_path / "nothere.png")
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(PixmarkError, match="noise.png is not an image"):
        load_image(noise)
    whole = io.BytesIO()
    Image.fromarray((natural["skimage/camera"][0].numpy() * 255).astype(np.uint8)).save(
        whole, format="PNG"
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(PixmarkError, match="cut.png is truncated or corrupt"):
        load_image(cut)
    with pytest.raises(PixmarkError, match="channels=2"):
        load_image(cut, channels=2)


def test_load_image_rgba_and_16_bit(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert loaded.shape == (1, 3, 6, 8)  # alpha dropped, colour kept as stored
    assert torch.allclose(loaded[0, :, 0, 0], torch.tensor([200, 100, 50]) / 255)

    deep = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    for name in ("deep.png", "deep.tif"):
        Image.fromarray(deep).save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.shape == (1, 1, 64, 64)
        assert float(loaded.max()) == 1.0 and float(loaded.min()) == 0.0
        # 16-bit precision kept: far more than 256 distinct levels.
        assert len(torch.unique(loaded)) > 1000
        assert torch.allclose(loaded[0, 0], torch.from_numpy(deep / 65535).float(), atol=1e-6)


def test_load_image_refuses_huge_images(tmp_path):
    width = 8000
    height = MAX_PIXELS // width + 1
    Image.new("1", (width, height)).save(tmp_path / "huge.png")
    with pytest.raises(PixmarkError, match="image too large"):
        load_image(tmp_path / "huge.png")


def test_save_image_errors(tmp_path):
    with pytest.raises(PixmarkError, match=r"\.png suffix"):
        save_image(torch.zeros(1, 4, 4), tmp_path / "a.jpg")
    with pytest.raises(PixmarkError, match="shape"):
        save_image(torch.zeros(2, 2, 4, 4), tmp_path / "a.png")
    with pytest.raises(PixmarkError, match="NaN"):
        save_image(torch.full((1, 4, 4), float("nan")), tmp_path / "a.png")


def test_folder_images_recursive_sorted(tmp_path, natural):
    save_image(natural["skimage/coins"], tmp_path / "b" / "coins.png")
    save_image(natural["skimage/chelsea"], tmp_path / "a.png")
    Image.fromarray(
        (natural["skimage/rocket"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    ).save(tmp_path / "b" / "rocket.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    found = folder_images(tmp_path)
    assert [name for name, _ in found] == ["a.png", "b/coins.png", "b/rocket.JPG"]
    assert torch.equal(found[0][1], natural["skimage/chelsea"])
    assert [im.shape[0] for _, im in images(str(tmp_path), channels=1)] == [1, 1, 1]
    with pytest.raises(PixmarkError, match="no images found"):
        folder_images(_empty(tmp_path))
    with pytest.raises(PixmarkError, match="does not exist"):
        folder_images(tmp_path / "missing")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- splits


def test_split_is_by_image_disjoint_and_deterministic(natural):
    items = list(natural.items())
    split = split_images(items, seed=1)
    names = {key: [name for name, _ in value] for key, value in split.items()}
    assert set(names) == {"train", "val", "test"}
    assert all(names.values())
    assert sorted(sum(names.values(), [])) == sorted(natural)  # a partition of the images
    assert names == {k: [n for n, _ in v] for k, v in split_images(items, seed=1).items()}
    assert names != {k: [n for n, _ in v] for k, v in split_images(items, seed=2).items()}
    assert len(names["train"]) > len(names["val"])
    for n in (3, 4, 5):
        assert all(split_images(items[:n], seed=0).values())
    with pytest.raises(PixmarkError, match="at least 3"):
        split_images(items[:2])


def test_tiles_of_xrays_split_without_shared_pixels(xrays):
    tiles = tile_images(list(xrays.items()), grid=2)
    assert len(tiles) == 4 * len(xrays)
    chest = xrays["pydicom-data/rg1_chest"]
    quadrants = [im for name, im in tiles if name.startswith("pydicom-data/rg1_chest#")]
    assert sum(q.numel() for q in quadrants) == chest.numel()
    assert all(split_images(tiles, seed=0).values())


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_is_deterministic_per_seed_and_degrades(name, natural, xrays):
    spec = task(name)
    if spec.source == "builtin:xray":
        clean = torch.stack([im[:, 300:396, 300:396] for im in xrays.values()])
    else:
        clean = clean_crops(natural, spec.default_channels)
    first = spec.degrade(clean, torch.Generator().manual_seed(7))
    again = spec.degrade(clean, torch.Generator().manual_seed(7))
    other = spec.degrade(clean, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    if name not in ("sr2", "sr4"):  # the only tasks with no randomness
        assert not torch.equal(first, other)
    assert first.shape == clean.shape and first.dtype == clean.dtype
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    quality = psnr(first, spec.target(clean))
    assert 10 < quality < 35, f"{name}: {quality:.1f} dB"


def test_psnr_of_each_task_is_sensible(natural):
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    gray, colour = clean_crops(natural, 1), clean_crops(natural, 3)
    noisy = psnr(task("denoise").degrade(gray, gen()), gray)
    assert 19.5 < noisy < 21.5  # sigma 25/255 -> 20.2 dB before clipping
    assert 19.5 < psnr(task("denoise").degrade(colour, gen()), colour) < 21.5
    rainy = psnr(task("derain").degrade(colour, gen()), colour)
    assert 10 < rainy < 30
    sr2 = psnr(task("sr2").degrade(gray, gen()), gray)
    sr4 = psnr(task("sr4").degrade(gray, gen()), gray)
    assert sr4 + 2 < sr2 < 40
    assert psnr(task("jpeg").degrade(gray, gen()), gray) < 36


def test_rain_brightens_and_falls_near_vertically(natural):
    rain = rain_streaks((4, 128, 128), torch.Generator().manual_seed(0))
    # Streaks vary much more across x than along y (they fall within 25 deg of vertical).
    across = (rain[..., :, 1:] - rain[..., :, :-1]).abs().mean()
    along = (rain[..., 1:, :] - rain[..., :-1, :]).abs().mean()
    assert across > 2 * along
    assert 0.01 < float(rain.mean()) < 0.5
    clean = clean_crops(natural, 3)
    rainy = task("derain").degrade(clean, torch.Generator().manual_seed(0))
    assert bool((rainy >= clean - 1e-6).all())  # screen blending only adds light


def test_xray_target_enhances_contrast(xrays):
    spec = task("xray")
    chest = xrays["pydicom-data/rg1_chest"][None]
    enhanced = spec.target(chest)
    assert (
        enhanced.shape == chest.shape and 0 <= float(enhanced.min()) <= float(enhanced.max()) <= 1
    )
    assert float(enhanced.std()) > float(chest.std())
    assert "CLAHE" in spec.description and "bone suppression" in spec.description


def test_unknown_task_lists_the_names():
    with pytest.raises(PixmarkError, match="unknown task 'foo'; choose from denoise, derain"):
        task("foo")


# --------------------------------------------------------------------------- pairs


def test_pair_sampler_shapes_determinism_and_resume(natural):
    pictures = list(natural.values())[:6]
    sampler = PairSampler(pictures, "denoise", size=32, channels=1, seed=3)
    x, y = sampler.batch(5)
    assert x.shape == y.shape == (5, 1, 32, 32)
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(y.min()) >= 0
    assert 18 < psnr(x, y) < 23  # targets are the clean crops the noise was added to
    twin = PairSampler(pictures, "denoise", size=32, channels=1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((x, y), twin.batch(5), strict=True))
    assert not torch.equal(y, PairSampler(pictures, "denoise", 32, 1, seed=4).batch(5)[1])

    state = sampler.state_dict()
    expected = sampler.batch(4)
    resumed = PairSampler(pictures, task("denoise"), size=32, channels=1, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed.batch(4), strict=True))
    with pytest.raises(PixmarkError, match="saved size"):
        PairSampler(pictures, "denoise", size=16, channels=1).load_state_dict(state)


def test_pair_sampler_crops_come_from_the_images(natural):
    sail = natural["sporco/sail"]
    tiny = natural["skimage/microaneurysms"]  # 102 x 102: too small for 128 crops, skipped
    x, y = PairSampler([("tiny", tiny), ("sail", sail)], "sr2", 128, 3, seed=0).batch(3)
    assert y.shape == (3, 3, 128, 128) and psnr(x, y) > 20


def test_crop_larger_than_every_image_is_an_error(natural):
    with pytest.raises(PixmarkError, match=r"crop size 600 .* largest is 303x384"):
        PairSampler([natural["skimage/chelsea"], natural["skimage/coins"]], "derain", 600, 3)


def test_fixed_pairs_are_identical_every_call(xrays):
    first = fixed_pairs(list(xrays.values()), "xray", size=48, count=3, seed=5)
    second = fixed_pairs(list(xrays.values()), "xray", size=48, count=3, seed=5)
    assert first[0].shape == (3, 1, 48, 48)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # the xray input is not its target
