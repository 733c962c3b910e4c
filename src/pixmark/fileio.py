"""Files that survive a crash: atomic writes and overwrite protection.

Every file pixmark writes goes to a temporary sibling first and is moved onto the
target with ``os.replace``, so a reader sees either the old file or the new one,
never half of each.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixmark.errors import PixmarkError


def check_output_path(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Return ``path`` as a Path, refusing an existing file unless ``force`` is set."""
    p = Path(path)
    if p.exists() and not force:
        raise PixmarkError(f"{p} already exists; pass --force (force=True) to overwrite it")
    if p.exists() and p.is_dir():
        raise PixmarkError(f"{p} is a directory; give a file path")
    return p


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``.

    ``write`` receives a path in the same directory (so the rename is atomic) and must
    create the file there. On any exception the temporary file is removed and ``path``
    is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file, with a one-line error naming the file if it is missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"{what} {p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PixmarkError(f"{what} {p} is not valid JSON ({exc})") from None
