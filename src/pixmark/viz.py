"""Pictures people look at: image grids with labels, written as PNG.

Evidence of a verdict (queries, suspect outputs, recovered watermarks) and report
figures are grids of [C, H, W] images in [0, 1].
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from pixmark.fileio import atomic_write_bytes


def to_pil(image: Tensor) -> Image.Image:
    """A [C, H, W] or [1, C, H, W] tensor in [0, 1] (C = 1 or 3) as an RGB PIL image."""
    t = image.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    array = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def amplify(diff: Tensor, gain: float = 10.0) -> Tensor:
    """Show a signed difference image: 0.5 + gain * diff, clipped to [0, 1]."""
    return (0.5 + gain * diff).clamp(0, 1)


def grid(
    rows: list[list[Tensor]],
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    cell: int = 128,
    pad: int = 4,
) -> Image.Image:
    """Lay out ``rows`` of images (each [C, H, W] in [0, 1]) resized to ``cell`` px cells."""
    label_w = 110 if row_labels else 0
    label_h = 18 if col_labels else 0
    n_cols = max(len(r) for r in rows)
    width = label_w + n_cols * (cell + pad) + pad
    height = label_h + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels or []):
        draw.text((label_w + pad + c * (cell + pad), 3), text, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = label_h + pad + r * (cell + pad)
        if row_labels:
            draw.text((4, y + cell // 2 - 6), row_labels[r], fill=(0, 0, 0))
        for c, img in enumerate(row):
            tile = to_pil(img).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (cell + pad), y))
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_grid(
    rows: list[list[Tensor]],
    path: str | os.PathLike[str],
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    cell: int = 128,
) -> Path:
    """:func:`grid` written to ``path`` as PNG."""
    return save_png(grid(rows, row_labels, col_labels, cell), path)


def stack_rows(*images: Tensor) -> list[Tensor]:
    """Split [N, C, H, W] batches into a list of [C, H, W] images, in order."""
    out: list[Tensor] = []
    for batch in images:
        out.extend(torch.unbind(batch.detach().cpu(), 0))
    return out
