"""Ownership certificates: real Ed25519 keys, real key and model files, every byte flipped."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from pixmark import nets
from pixmark.certify import (
    canonical_json,
    certify,
    check_certificate,
    generate_owner_key,
    model_hash,
)
from pixmark.checkpoint import save_model
from pixmark.errors import PixmarkError
from pixmark.keys import new_key, save_key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cert")
    generate_owner_key(d / "owner.pem", d / "owner.pub")
    generate_owner_key(d / "thief.pem", d / "thief.pub")
    gen = torch.Generator().manual_seed(0)
    key = new_key(
        "trigger", "ACME Imaging", tensors={"trigger": torch.rand(1, 3, 8, 8, generator=gen)}
    )
    save_key(key, d / "acme.key.safetensors")
    other = new_key(
        "trigger", "ACME Imaging", tensors={"trigger": torch.rand(1, 3, 8, 8, generator=gen)}
    )
    save_key(other, d / "other.key.safetensors")
    torch.manual_seed(0)
    save_model(nets.create("unet", channels=3, width=8, depth=2), d / "model.safetensors")
    save_model(nets.create("unet", channels=3, width=8, depth=2), d / "other.safetensors")
    certify(d / "acme.key.safetensors", d / "model.safetensors", d / "owner.pem", d / "cert.json")
    return {
        "dir": d,
        "cert": d / "cert.json",
        "pub": d / "owner.pub",
        "key": d / "acme.key.safetensors",
        "model": d / "model.safetensors",
    }


def later(days: int = 1) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_valid_certificate_passes_every_check(world) -> None:
    result = check_certificate(
        world["cert"],
        world["pub"],
        key=world["key"],
        model_path=world["model"],
        suspect_released_at=later(),
    )
    assert result["checked"] == [
        "signature",
        "key_commitment",
        "model_sha256",
        "issued_before_suspect",
    ]
    assert result["owner"] == "ACME Imaging" and result["scheme"] == "trigger"


def test_certificate_is_public_it_holds_no_secret(world) -> None:
    from pixmark.keys import load_key

    key = load_key(world["key"])
    text = world["cert"].read_text()
    assert key.secret not in text
    assert key.commitment in text


def test_one_flipped_byte_anywhere_fails(world, tmp_path) -> None:
    raw = world["cert"].read_bytes()
    bad = tmp_path / "bad.json"
    for i in range(len(raw)):
        for mask in (0x01, 0x20):
            altered = bytearray(raw)
            altered[i] ^= mask
            bad.write_bytes(bytes(altered))
            with pytest.raises(PixmarkError):
                check_certificate(bad, world["pub"])


def test_semantic_forgeries_fail(world, tmp_path) -> None:
    document = json.loads(world["cert"].read_text())
    # Re-dating a certificate (properly re-serialised) breaks the signature.
    document["certificate"]["issued_at"] = "2001-01-01T00:00:00Z"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
    with pytest.raises(PixmarkError, match="does not match its content"):
        check_certificate(forged, world["pub"])
    # Reformatting an untouched certificate is refused too (it is not what was signed).
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(world["cert"].read_text()), indent=4))
    with pytest.raises(PixmarkError, match="byte-for-byte"):
        check_certificate(pretty, world["pub"])


def test_wrong_public_key_fails(world) -> None:
    with pytest.raises(PixmarkError, match="not signed by the owner key"):
        check_certificate(world["cert"], world["dir"] / "thief.pub")


def test_thief_cannot_certify_the_owners_model_under_the_owners_name(world, tmp_path) -> None:
    stolen = tmp_path / "stolen.json"
    certify(world["key"], world["model"], world["dir"] / "thief.pem", stolen)
    check_certificate(stolen, world["dir"] / "thief.pub")  # valid for the thief's own key ...
    with pytest.raises(PixmarkError, match="not signed by the owner key"):
        check_certificate(stolen, world["pub"])  # ... but not the owner's


def test_key_and_model_mismatches_fail(world) -> None:
    with pytest.raises(PixmarkError, match="commits to another key"):
        check_certificate(world["cert"], world["pub"], key=world["dir"] / "other.key.safetensors")
    with pytest.raises(PixmarkError, match="another model file"):
        check_certificate(
            world["cert"], world["pub"], model_path=world["dir"] / "other.safetensors"
        )


def test_certificate_dated_after_suspect_release_fails(world, tmp_path) -> None:
    issued = json.loads(world["cert"].read_text())["certificate"]["issued_at"]
    before = (
        datetime.fromisoformat(issued.replace("Z", "+00:00")) - timedelta(seconds=1)
    ).isoformat()
    with pytest.raises(PixmarkError, match="after the suspect was released"):
        check_certificate(world["cert"], world["pub"], suspect_released_at=before)
    check_certificate(world["cert"], world["pub"], suspect_released_at=issued)  # same second: ok
    with pytest.raises(PixmarkError, match="not an ISO 8601"):
        check_certificate(world["cert"], world["pub"], suspect_released_at="last tuesday")


def test_model_hash_covers_weights_not_metadata(world, tmp_path) -> None:
    from pixmark.checkpoint import load_model

    model = load_model(world["model"])
    resaved = tmp_path / "resaved.safetensors"
    save_model(model, resaved, metrics={"psnr": 1.0})  # other metadata, same weights
    assert model_hash(resaved) == model_hash(world["model"])
    check_certificate(world["cert"], world["pub"], model_path=resaved)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    tweaked = tmp_path / "tweaked.safetensors"
    save_model(model, tweaked)
    assert model_hash(tweaked)[0] != model_hash(world["model"])[0]


def test_owner_keys_are_protected(world) -> None:
    mode = stat.S_IMODE((world["dir"] / "owner.pem").stat().st_mode)
    assert mode == 0o600
    with pytest.raises(PixmarkError, match="already exists"):
        generate_owner_key(world["dir"] / "owner.pem", world["dir"] / "new.pub")
    with pytest.raises(PixmarkError, match="already exists"):
        certify(world["key"], world["model"], world["dir"] / "owner.pem", world["cert"])
    with pytest.raises(PixmarkError, match="not an unencrypted PEM private key"):
        certify(world["key"], world["model"], world["pub"], world["dir"] / "x.json")


def test_signed_bytes_are_canonical() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
