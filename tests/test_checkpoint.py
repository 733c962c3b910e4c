"""Checkpoints: round trip, TorchScript and factory specs, and every bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixmark import nets
from pixmark.checkpoint import load_model, model_info, read_config, save_model
from pixmark.errors import PixmarkError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return nets.create("dncnn", channels=3, depth=4, width=8)


def test_round_trip_keeps_outputs_and_config(tmp_path: Path) -> None:
    model = _model().eval()
    path = save_model(
        model, tmp_path / "m.safetensors", task="denoise", data_seed=3, metrics={"psnr": 30.5}
    )
    loaded = load_model(path)
    x = torch.rand(1, 3, 21, 17)
    torch.testing.assert_close(loaded(x), model(x))
    config = read_config(path)
    assert config["arch"] == "dncnn" and config["task"] == "denoise"
    assert config["data_seed"] == 3 and config["metrics"]["psnr"] == 30.5
    info = model_info(path)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(PixmarkError, match="already exists; pass --force"):
        save_model(_model(), path)
    assert path.read_bytes() == before
    save_model(_model(), path, force=True)


def test_torchscript_file_loads(tmp_path: Path) -> None:
    model = _model().eval()
    x = torch.rand(1, 3, 32, 32)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(model, x), str(path))
    torch.testing.assert_close(load_model(path)(x), model(x))


def test_factory_spec_with_weights(tmp_path: Path) -> None:
    model = nets.create("dncnn")  # the factory below builds the default dncnn
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    loaded = load_model("pixmark.nets.dncnn:DnCNN", weights=weights)
    x = torch.rand(1, 3, 16, 16)
    assert loaded(x).shape == x.shape


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PixmarkError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PixmarkError, match="not a readable safetensors"):
        load_model(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(PixmarkError, match="neither a pixmark checkpoint"):
        load_model(junk)
    with pytest.raises(PixmarkError, match="cannot import"):
        load_model("no_such_pkg.mod:factory")


def test_config_that_does_not_match_weights(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path / "m.safetensors")
    config = read_config(path)
    config["kwargs"]["width"] = 16
    save_file(load_file(str(path)), str(path), metadata={"pixmark": json.dumps(config)})
    with pytest.raises(PixmarkError, match="weights do not match its config"):
        load_model(path)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 4)
    tensors[name][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"pixmark": json.dumps(read_config(path))})
    with pytest.raises(PixmarkError, match="NaN or infinite weights"):
        load_model(path)
    model = _model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(PixmarkError, match="NaN or infinite"):
        save_model(model, tmp_path / "inf.safetensors")
    assert not (tmp_path / "inf.safetensors").exists()


def test_baseline_marked_model_round_trip(tmp_path: Path) -> None:
    from pixmark import baselines

    key = baselines.keygen("ACME Imaging", secret="5e" * 32)
    model = baselines.BaselineMarked(_model().eval(), key, "dct", strength=0.02)
    path = save_model(model, tmp_path / "marked.safetensors")
    loaded = load_model(path)
    assert isinstance(loaded, baselines.BaselineMarked)
    assert loaded.mark == baselines.mark_of(key, "dct") and loaded.strength == 0.02
    assert key.secret.encode() not in path.read_bytes()  # only the derived seed is stored
    x = torch.rand(2, 3, 40, 48)
    torch.testing.assert_close(loaded(x), model(x))


def test_chain_and_twice_watermarked_round_trip(tmp_path: Path) -> None:
    from pixmark.checkpoint import Chain, model_channels
    from pixmark.schemes.output import Signature, Watermarked

    torch.manual_seed(0)
    purifier = nets.create("unet", channels=3, width=4, depth=2)
    chain = Chain(_model(), purifier).eval()
    path = save_model(chain, tmp_path / "chain.safetensors")
    assert read_config(path)["arch"] == "chain" and read_config(path)["channels"] == 3
    loaded = load_model(path)
    assert isinstance(loaded, Chain) and len(loaded) == 2
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        out = loaded(x)
        torch.testing.assert_close(out, chain(x))
    assert float(out.min()) >= 0 and float(out.max()) <= 1

    # An overwritten output-scheme model: H2(H(M(x))), each embedder with its own logo.
    def embedder() -> torch.nn.Module:
        return nets.create("unet", channels=3, in_channels=6, width=4, depth=2, out="residual")

    signature = Signature(
        torch.tensor([[0.8, -0.6, -0.2], [0.1, 0.2, -0.3]]), (2.0, 4.0), 0.05, split=False
    )
    once = Watermarked(_model(), embedder(), torch.rand(1, 3, 16, 16), signature)
    twice = Watermarked(once, embedder(), torch.rand(1, 3, 16, 16)).eval()
    path = save_model(twice, tmp_path / "twice.safetensors")
    assert read_config(path)["channels"] == 3
    loaded = load_model(path)
    assert isinstance(loaded.model, Watermarked) and model_channels(loaded) == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), twice(x))
    # The inner model's content signature comes back with its direction, scale and amplitude.
    assert loaded.signature is None and loaded.model.signature.config == signature.config
    torch.testing.assert_close(loaded.model.signature.direction, signature.direction)
