"""Key files: what an owner keeps secret to prove ownership later.

A key is one ``.safetensors`` file (written atomically, never overwritten without
``force``) holding

* tensors: the scheme's secret material (logo δ and blank δ0, trigger images,
  extractor weights, query images, key bits, ...), and
* metadata: ``{"format": "pixmark-key/1", "scheme", "owner", "created", "secret",
  "params", "commitment"}``.

``secret`` is 32 random bytes made at keygen. Every pseudo-random choice a scheme makes
(trigger noise, key bits, query crops) is derived from it and the owner's name with
HMAC-SHA256 (:meth:`Key.seed`), so nothing in a key can be chosen after the fact without
changing its commitment.

``commitment`` is SHA-256 over the metadata (without the commitment) and every tensor's
name, dtype, shape and bytes. :func:`load_key` recomputes it and refuses a key that was
modified after it was written. The commitment is what a certificate signs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write, check_output_path

FORMAT = "pixmark-key/1"


@dataclass(frozen=True)
class Key:
    """A scheme's secret key. Tensors are float32 images in [0, 1] unless a scheme says."""

    scheme: str
    owner: str
    secret: str  # 64 hex digits
    params: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    created: str = ""

    def seed(self, purpose: str) -> int:
        """A 63-bit seed for ``purpose``: HMAC-SHA256(secret, scheme | owner | purpose)."""
        message = f"{self.scheme}|{self.owner}|{purpose}".encode()
        digest = hmac.new(bytes.fromhex(self.secret), message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    def generator(self, purpose: str) -> torch.Generator:
        """A CPU torch generator seeded by :meth:`seed`."""
        return torch.Generator().manual_seed(self.seed(purpose))

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "scheme": self.scheme,
            "owner": self.owner,
            "created": self.created,
            "secret": self.secret,
            "params": self.params,
        }

    @property
    def commitment(self) -> str:
        """SHA-256 (hex) over the metadata and every tensor: changes if any byte does."""
        h = hashlib.sha256(json.dumps(self.metadata(), sort_keys=True).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name].detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def with_updates(
        self, params: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None
    ) -> Key:
        """A copy with ``params``/``tensors`` merged in (e.g. the trained extractor)."""
        return replace(
            self,
            params={**self.params, **(params or {})},
            tensors={**self.tensors, **(tensors or {})},
        )

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise PixmarkError(
                f"the {self.scheme} key of {self.owner!r} has no {name!r}; was it protected yet?"
            )
        return self.tensors[name]


def new_key(
    scheme: str,
    owner: str,
    params: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    secret: str | None = None,
) -> Key:
    """A fresh key with a random 256-bit secret (or the given hex ``secret``)."""
    if not owner or not owner.strip():
        raise PixmarkError("owner must be a non-empty name")
    secret = secret or secrets.token_hex(32)
    if len(secret) != 64:
        raise PixmarkError("secret must be 64 hex digits (32 bytes)")
    try:
        bytes.fromhex(secret)
    except ValueError:
        raise PixmarkError("secret must be 64 hex digits (32 bytes)") from None
    return Key(
        scheme=scheme,
        owner=owner.strip(),
        secret=secret,
        params=dict(params or {}),
        tensors=dict(tensors or {}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def save_key(key: Key, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write ``key`` atomically; refuse to overwrite an existing file unless ``force``."""
    out = check_output_path(path, force)
    meta = {"pixmark-key": json.dumps({**key.metadata(), "commitment": key.commitment})}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in key.tensors.items()}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return out


def load_key(path: str | os.PathLike[str], scheme: str | None = None) -> Key:
    """Read a key file, check its commitment, and (optionally) that it is for ``scheme``."""
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"key file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("pixmark-key")
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PixmarkError(f"{p} is not a readable pixmark key ({exc})") from None
    if raw is None:
        raise PixmarkError(f"{p} is not a pixmark key (no key metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise PixmarkError(f"key file {p} has corrupt metadata") from None
    if meta.get("format") != FORMAT:
        raise PixmarkError(f"key file {p} has format {meta.get('format')!r}; expected {FORMAT!r}")
    try:
        key = Key(
            scheme=meta["scheme"],
            owner=meta["owner"],
            secret=meta["secret"],
            params=meta["params"],
            tensors=tensors,
            created=meta["created"],
        )
    except KeyError as exc:
        raise PixmarkError(f"key file {p} lacks the field {exc}") from None
    if not hmac.compare_digest(key.commitment, str(meta.get("commitment", ""))):
        raise PixmarkError(
            f"key file {p} was modified after it was written (commitment mismatch); "
            "use an untouched copy of the key"
        )
    if scheme is not None and key.scheme != scheme:
        raise PixmarkError(f"key file {p} is a {key.scheme!r} key, not a {scheme!r} key")
    return key
