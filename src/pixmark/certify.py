"""Ownership certificates: a signed, public record that binds a key to a model and a time.

An owner makes an Ed25519 signing key pair once (:func:`generate_owner_key`), keeps the
private half secret and publishes the public half. After protecting a model,
:func:`certify` signs a statement

    {"format": "pixmark-certificate/1", "scheme", "owner", "key_commitment",
     "model_sha256", "model_hash_method", "model_file", "issued_at", "released_at",
     "signer", "pixmark_version"}

where ``key_commitment`` is the SHA-256 commitment of the watermark key (the key itself,
its secret and logo stay private: the certificate can be published) and
``model_sha256`` hashes the protected model's weights. The signature covers the
canonical JSON of the statement (sorted keys, no whitespace, UTF-8). The certificate
file is itself canonical (sorted keys, two-space indent, ASCII): :func:`check_certificate`
rejects any file that is not byte-for-byte the canonical form of what it parses to, so
changing any byte of it fails.

In a dispute, the owner reveals the key to the arbiter: :func:`check_certificate` with
``key`` shows that this key is the one committed to before the suspect was released
(``suspect_released_at``), which defeats an ambiguity attack where a forger crafts a key
for a model after the fact. ``issued_at`` is the owner's own clock; for a timestamp a
court accepts, also have the certificate's SHA-256 stamped by an RFC 3161 time-stamping
authority or published somewhere dated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write, check_output_path
from pixmark.keys import Key, load_key

FORMAT = "pixmark-certificate/1"
FIELDS = (
    "format",
    "scheme",
    "owner",
    "key_commitment",
    "model_sha256",
    "model_hash_method",
    "model_file",
    "issued_at",
    "released_at",
    "signer",
    "pixmark_version",
)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise PixmarkError(
            "certificates need the cryptography package; install it with `pip install cryptography`"
        ) from None
    return serialization, ed25519


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _file_text(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def parse_time(value: str | datetime, what: str = "time") -> datetime:
    """An aware UTC datetime from ISO 8601 text (a date alone means 00:00 UTC)."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise PixmarkError(
                f"{what} {value!r} is not an ISO 8601 date or time (e.g. 2026-03-01T12:00:00Z)"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- owner keys


def generate_owner_key(
    path_private: str | os.PathLike[str],
    path_public: str | os.PathLike[str],
    *,
    force: bool = False,
) -> tuple[Path, Path]:
    """Make an Ed25519 signing key pair: private PEM (PKCS#8, mode 0600) and public PEM.

    Keep the private file secret; publish the public one. Neither file is overwritten
    unless ``force``. Returns both paths.
    """
    serialization, ed25519 = _crypto()
    private_path = check_output_path(path_private, force)
    public_path = check_output_path(path_public, force)
    if private_path.resolve() == public_path.resolve():
        raise PixmarkError("the private and public key paths must differ")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def write(data: bytes, mode: int) -> Any:
        def _write(tmp: Path) -> None:
            tmp.write_bytes(data)
            os.chmod(tmp, mode)

        return _write

    atomic_write(private_path, write(private_pem, 0o600))
    atomic_write(public_path, write(public_pem, 0o644))
    return private_path, public_path


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"{what} {p} does not exist")
    return p.read_bytes()


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 private key in PEM file ``path``."""
    serialization, ed25519 = _crypto()
    data = _read_pem(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PixmarkError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PixmarkError(f"{path} is not an Ed25519 key; make one with generate_owner_key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 public key in PEM file ``path``."""
    serialization, ed25519 = _crypto()
    data = _read_pem(path, "public key file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise PixmarkError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PixmarkError(f"{path} is not an Ed25519 public key")
    return key


def fingerprint(public_key: Any) -> str:
    """``sha256:<hex>`` of the raw 32-byte Ed25519 public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- model hash


def model_hash(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(sha256 hex, method)`` of a model file's weights.

    For ``.safetensors`` (pixmark checkpoints) the hash covers every tensor's name,
    dtype, shape and bytes, not the metadata, so re-saving with other metrics keeps it;
    for any other file (TorchScript, ONNX) it is the SHA-256 of the file's bytes.
    """
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"model file {p} does not exist")
    if p.suffix == ".safetensors":
        import torch
        from safetensors import SafetensorError, safe_open

        h = hashlib.sha256()
        try:
            with safe_open(str(p), framework="pt") as fh:
                for name in sorted(fh.keys()):
                    t = fh.get_tensor(name).contiguous()
                    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    if t.numel():
                        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        except (SafetensorError, OSError, ValueError) as exc:
            raise PixmarkError(f"{p} is not a readable safetensors file ({exc})") from None
        return h.hexdigest(), "safetensors-tensors"
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), "file-bytes"


# --------------------------------------------------------------------------- certificates


def certify(
    key: Key | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    owner_private_pem: str | os.PathLike[str],
    out_cert: str | os.PathLike[str],
    *,
    released_at: str | datetime | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Sign a certificate binding ``key``'s commitment to the model file and the time.

    ``key`` is a :class:`Key` or a key file; ``model_path`` the protected model file;
    ``owner_private_pem`` the owner's Ed25519 private key. ``released_at`` (optional,
    ISO 8601) records when the model was first released. The certificate (public: it
    holds no secret) is written atomically to ``out_cert`` and never overwrites a file
    unless ``force``. Returns the certificate document (``certificate`` and
    ``signature``).
    """
    from pixmark import __version__

    loaded = key if isinstance(key, Key) else load_key(key)
    out = check_output_path(out_cert, force)
    private = load_private_key(owner_private_pem)
    digest, method = model_hash(model_path)
    statement = {
        "format": FORMAT,
        "scheme": loaded.scheme,
        "owner": loaded.owner,
        "key_commitment": loaded.commitment,
        "model_sha256": digest,
        "model_hash_method": method,
        "model_file": Path(model_path).name,
        "issued_at": _iso(datetime.now(UTC)),
        "released_at": _iso(parse_time(released_at, "released_at")) if released_at else None,
        "signer": fingerprint(private.public_key()),
        "pixmark_version": __version__,
    }
    signature = private.sign(canonical_json(statement))
    document = {
        "certificate": statement,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    atomic_write(out, lambda tmp: tmp.write_text(_file_text(document), encoding="ascii"))
    return document


def check_certificate(
    cert_path: str | os.PathLike[str],
    public_pem: str | os.PathLike[str],
    *,
    key: Key | str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    suspect_released_at: str | datetime | None = None,
) -> dict[str, Any]:
    """Check a certificate; return its statement plus ``"checked"`` (what was verified).

    Always checks that the file is an untouched certificate signed by the owner of
    ``public_pem``. With ``key``: that the certificate commits to this key. With
    ``model_path``: that it names this model file's weights. With
    ``suspect_released_at``: that it was issued before the suspect was released. Any
    failure raises :class:`PixmarkError` saying which.
    """
    p = Path(cert_path)
    if not p.is_file():
        raise PixmarkError(f"certificate {p} does not exist")
    raw = p.read_bytes()
    try:
        document = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PixmarkError(f"certificate {p} is corrupt (not valid JSON); it was altered") from None
    if (
        not isinstance(document, dict)
        or set(document) != {"certificate", "signature"}
        or not isinstance(document["certificate"], dict)
        or not isinstance(document["signature"], str)
    ):
        raise PixmarkError(f"{p} is not a pixmark certificate")
    statement = document["certificate"]
    if statement.get("format") != FORMAT or set(statement) != set(FIELDS):
        raise PixmarkError(f"{p} is not a {FORMAT} certificate (unexpected fields)")
    if _file_text(document).encode("ascii") != raw:
        raise PixmarkError(
            f"certificate {p} is not byte-for-byte as it was signed (it was altered or "
            "reformatted); use the original file"
        )
    public = load_public_key(public_pem)
    try:
        signature = base64.b64decode(document["signature"], validate=True)
    except ValueError:
        raise PixmarkError(f"certificate {p} has a corrupt signature; it was altered") from None
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, canonical_json(statement))
    except InvalidSignature:
        if statement.get("signer") != fingerprint(public):
            raise PixmarkError(
                f"certificate {p} was not signed by the owner key {public_pem} (it names "
                f"signer {statement.get('signer')}); use that owner's public key"
            ) from None
        raise PixmarkError(
            f"the signature of certificate {p} does not match its content: it was altered"
        ) from None
    checked = ["signature"]
    if key is not None:
        loaded = key if isinstance(key, Key) else load_key(key)
        if loaded.commitment != statement["key_commitment"]:
            raise PixmarkError(
                f"certificate {p} commits to another key (commitment "
                f"{statement['key_commitment'][:16]}…, this key {loaded.commitment[:16]}…)"
            )
        checked.append("key_commitment")
    if model_path is not None:
        digest, method = model_hash(model_path)
        if method != statement["model_hash_method"] or digest != statement["model_sha256"]:
            raise PixmarkError(
                f"certificate {p} is for another model file: the weights of {model_path} "
                f"hash to {digest[:16]}…, the certificate names {statement['model_sha256'][:16]}…"
            )
        checked.append("model_sha256")
    if suspect_released_at is not None:
        issued = parse_time(statement["issued_at"], "issued_at")
        released = parse_time(suspect_released_at, "suspect_released_at")
        if issued > released:
            raise PixmarkError(
                f"certificate {p} was issued at {_iso(issued)}, after the suspect was "
                f"released at {_iso(released)}; it cannot prove prior ownership"
            )
        checked.append("issued_before_suspect")
    return {**statement, "checked": checked}
