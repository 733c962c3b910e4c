"""Readable reports: a JSON file for machines and a self-contained HTML page for people.

The HTML inlines every image as base64, so the one file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from pixmark.fileio import atomic_write_json, atomic_write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.match { color: #0a7d22; font-weight: bold; } .nomatch { color: #b00020; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; } .note { color: #555; }
"""


def image_tag(path: str | os.PathLike[str], alt: str = "") -> str:
    """An <img> with the PNG at ``path`` inlined as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """An HTML table of ``rows`` (floats shown with 4 significant digits)."""
    if not rows:
        return "<p class='note'>(no rows)</p>"
    columns = columns or list(rows[0])

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        css = {"match": "match", "no match": "nomatch"}.get(text, "")
        return (
            f"<td class='{css}'>{html.escape(text)}</td>"
            if css
            else f"<td>{html.escape(text)}</td>"
        )

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    sections: list[tuple[str, str]],
    results: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``report.html`` (title + (heading, html) sections) and ``results.json``."""
    out = Path(out_dir)
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>"
    )
    return atomic_write_text(out / "report.html", page), atomic_write_json(
        out / "results.json", results
    )
