"""The benchmark report: ``report.html`` (self-contained, images inlined) and ``report.md``.

Both are made from ``results.jsonl`` alone (plus the PNGs the runner left under the
output folder), so a report can be rebuilt at any time with :func:`write_bench_report`.

Detection at a fixed false-positive rate: the null models' scores (rows with attack
``null``) calibrate a threshold on each scheme's score (see :func:`calibrated_on`) with
:func:`pixmark.stats.calibrate_threshold`; a threshold that certifies FPR f needs at
least ``1/f - 1`` null scores (99 for 1e-2, 999 for 1e-3). With fewer, the report says
so instead of printing a number, and gives the detection rate at the strictest level the
nulls can certify (every null score below the threshold: FPR <= 1/(n+1)).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean, median
from typing import Any

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write_bytes, atomic_write_text

#: Whether a larger statistic is more evidence of derivation, for the schemes whose
#: report calibrates on the statistic. Schemes not listed are scored by their p-value
#: (smaller is more evidence): ``output``, whose decision combines two statistics (the
#: logo NC and the carrier signature, p = 2 min(p_logo, p_sig)); the logo NC alone does
#: not separate null models of the target's own architecture (in the 999-null run three
#: null UNets score 0.94 on it, as high as the protected model).
GREATER_IS_EVIDENCE: dict[str, bool] = {"trigger": False, "keyed": False}
#: False-positive rates the report certifies, when enough null scores exist.
TARGET_FPRS = (1e-2, 1e-3)
#: Smallest p-value drawn in the plots (smaller ones, and exact zeros, are drawn here).
P_FLOOR = 1e-20


# --------------------------------------------------------------------------- data


def load_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The current rows of a bench folder: the last row per cell id, in grid order.

    When ``grid.json`` (written by the runner) exists, only cells of the current grid
    are kept, so rows of an older config in the same folder do not leak in.
    """
    from pixmark.bench.runner import RESULTS, read_rows

    out = Path(out_dir)
    rows = read_rows(out / RESULTS)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("decision") == "error" and latest.get(row["cell_id"], {}).get(
            "decision"
        ) not in (None, "error"):
            continue
        latest[row["cell_id"]] = row
    grid_file = out / "grid.json"
    if grid_file.is_file():
        order = json.loads(grid_file.read_text(encoding="utf-8"))["cells"]
        return [latest[c] for c in order if c in latest]
    return list(latest.values())


def _score(row: dict[str, Any]) -> float | None:
    """The row's evidence score, oriented so that larger means more evidence."""
    scheme = row["scheme"]
    if scheme in GREATER_IS_EVIDENCE:
        value = row.get("statistic")
        if value is None:
            return None
        return float(value) if GREATER_IS_EVIDENCE[scheme] else -float(value)
    p = row.get("p_value")
    if p is None:
        return None
    return -math.log10(max(float(p), 1e-300))


def calibrated_on(scheme: str) -> str:
    """What the report's fixed-FPR thresholds are set on for ``scheme``, in words."""
    if scheme in GREATER_IS_EVIDENCE:
        return (
            "statistic ("
            + ("larger" if GREATER_IS_EVIDENCE[scheme] else "smaller")
            + " = evidence)"
        )
    return "decision p-value"


def _null_row_scores(row: dict[str, Any]) -> list[float]:
    """A null row's evidence scores: its own, plus its random-key statistics (trigger)."""
    own = _score(row)
    scores = [own] if own is not None else []
    orientation = GREATER_IS_EVIDENCE.get(row["scheme"])
    if orientation is not None:
        for value in row.get("random_key_statistics") or []:
            if value is not None:
                scores.append(float(value) if orientation else -float(value))
    return scores


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _sort_strengths(values: list[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    return sorted(unique) if _numeric(unique) else unique


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}g}"
    return str(value)


def detection_at_fpr(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, task): detection rate on attacked derived models at fixed FPRs."""
    from pixmark.stats import calibrate_threshold, nulls_needed

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("decision") != "error":
            groups[(row["scheme"], row["task"])].append(row)
    table = []
    for (scheme, task), group in groups.items():
        nulls = [r for r in group if r["level"] == "null"]
        derived = [r for r in group if r["level"] not in ("null", "clean")]
        clean = [r for r in group if r["level"] == "clean"]
        null_scores = [s for r in nulls for s in _null_row_scores(r)]
        derived_scores = [_score(r) for r in derived]
        entry: dict[str, Any] = {
            "scheme": scheme,
            "task": task,
            "calibrated on": calibrated_on(scheme),
            "null models": len(nulls),
            "null scores": len(null_scores),
            "attacked cells": len(derived),
            "clean detected": _rate(sum(r["decision"] == "match" for r in clean), len(clean)),
            "TPR (scheme decision)": _rate(
                sum(r["decision"] == "match" for r in derived), len(derived)
            ),
            "FPR (scheme decision)": _rate(
                sum(r["decision"] == "match" for r in nulls), len(nulls)
            ),
        }
        for fpr in TARGET_FPRS:
            label = f"TPR @ FPR {fpr:g}"
            if len(null_scores) < nulls_needed(fpr):
                entry[label] = (
                    f"not certifiable: {len(null_scores)} null scores < {nulls_needed(fpr)}"
                )
                continue
            threshold = calibrate_threshold(null_scores, fpr)
            hits = sum(s is not None and s > threshold for s in derived_scores)
            entry[label] = _rate(hits, len(derived))
        if null_scores:
            top = max(null_scores)
            hits = sum(s is not None and s > top for s in derived_scores)
            entry["TPR above every null"] = _rate(hits, len(derived))
            entry["its FPR bound"] = f"<= {1 / (len(null_scores) + 1):.3g}"
        else:
            entry["TPR above every null"] = "no null models"
            entry["its FPR bound"] = "-"
        table.append(entry)
    return table


def exact_tests(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, task) with a rank test (trigger): detection at exact p-value levels.

    The trigger scheme's rank test gives an exact p-value for any model made without the
    key (K's score ranked among ``rank_keys`` random triggers on the same suspect), so a
    level needs no null models: rejecting at ``rank_p <= f`` has FPR <= f by
    construction (attainable down to ``1 / (rank_keys + 1)``). The null rows' rates are
    shown as a check. The scheme's decision ORs the rank test (at ``rank_alpha``) with
    the distance test; its FPR is at most the distance test's plus ``rank_alpha``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("decision") != "error":
            groups[(row["scheme"], row["task"])].append(row)
    table = []
    for (scheme, task), group in groups.items():
        if all(r.get("rank_p") is None for r in group):
            continue  # a scheme without the test (bench rows may carry rank_p = None)
        nulls = [r for r in group if r["level"] == "null"]
        derived = [r for r in group if r["level"] not in ("null", "clean")]
        entry: dict[str, Any] = {"scheme": scheme, "task": task, "test": "rank"}
        for fpr in TARGET_FPRS:
            entry[f"TPR @ p <= {fpr:g}"] = _rate(_rank_hits(derived, fpr), len(derived))
            entry[f"nulls @ p <= {fpr:g}"] = _rate(_rank_hits(nulls, fpr), len(nulls))
        entry["cells without the test"] = sum(r.get("rank_p") is None for r in group)
        entry["TPR by this test alone"] = _rate(
            sum(r.get("matched_by") == ["rank"] for r in derived), len(derived)
        )
        table.append(entry)
    return table


def _rank_hits(rows: list[dict[str, Any]], level: float) -> int:
    """How many ``rows`` ran the rank test and reached ``rank_p <= level``."""
    return sum(r.get("rank_p") is not None and r["rank_p"] <= level * (1 + 1e-9) for r in rows)


def _rate(hits: int, n: int) -> str:
    return f"{hits}/{n} ({hits / n:.0%})" if n else "-"


def per_attack(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (scheme, task, attack, strength), pooled over seeds (and null models)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        strength = "each null" if row["level"] == "null" else row.get("strength")
        groups[(row["scheme"], row["task"], row["attack"], json.dumps(strength))].append(row)
    lines = []
    for (scheme, task, attack, strength), group in groups.items():
        ok = [r for r in group if r.get("decision") != "error"]
        stats = [r["statistic"] for r in ok if r.get("statistic") is not None]
        ps = [r["p_value"] for r in ok if r.get("p_value") is not None]
        quality = [
            r["suspect_psnr_vs_protected"]
            for r in ok
            if r.get("suspect_psnr_vs_protected") is not None
        ]
        lines.append(
            {
                "scheme": scheme,
                "task": task,
                "attack": attack,
                "level": group[0]["level"],
                "strength": _fmt(json.loads(strength)),
                "detected": _rate(sum(r["decision"] == "match" for r in ok), len(ok)),
                "mean statistic": mean(stats) if stats else None,
                "median p": median(ps) if ps else None,
                "suspect PSNR vs protected (dB)": mean(quality) if quality else None,
                "errors": len(group) - len(ok),
            }
        )
    return lines


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, task): fidelity, cost, and headline detection numbers."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["scheme"], row["task"])].append(row)
    out = []
    for (scheme, task), group in groups.items():
        ok = [r for r in group if r.get("decision") != "error"]
        fid = {
            r["seed"]: (
                r["fidelity_psnr"],
                r["fidelity_ssim"],
                r["protect_seconds"],
                r.get("task_psnr_unprotected"),
                r.get("task_psnr_protected"),
            )
            for r in ok
        }
        psnrs = [v[0] for v in fid.values() if v[0] is not None]
        before = [v[3] for v in fid.values() if v[3] is not None]
        after = [v[4] for v in fid.values() if v[4] is not None]
        out.append(
            {
                "scheme": scheme,
                "task": task,
                "seeds": len(fid),
                "fidelity PSNR (dB)": mean(psnrs) if psnrs else None,
                "fidelity SSIM": mean(v[1] for v in fid.values()) if fid else None,
                "task PSNR unprotected (dB)": mean(before) if before else None,
                "task PSNR protected (dB)": mean(after) if after else None,
                "protect time (s)": mean(v[2] for v in fid.values()) if fid else None,
                "cells": len(group),
                "errors": len(group) - len(ok),
                "statistic": ok[0]["statistic_name"] if ok else "-",
            }
        )
    return out


# --------------------------------------------------------------------------- plots


def plot_scheme(rows: list[dict[str, Any]], scheme: str, task: str, path: Path) -> Path | None:
    """Success rate, statistic and p-value vs attack strength, one column per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [
        r
        for r in rows
        if r["scheme"] == scheme and r["task"] == task and r.get("decision") != "error"
    ]
    attacks = list(dict.fromkeys(r["attack"] for r in mine if r["level"] not in ("clean", "null")))
    if not attacks:
        return None
    clean = [r for r in mine if r["level"] == "clean"]
    nulls = [r for r in mine if r["level"] == "null"]
    fig, axes = plt.subplots(
        3, len(attacks), figsize=(3.2 * len(attacks) + 0.6, 7.2), squeeze=False
    )
    for col, attack in enumerate(attacks):
        cells = [r for r in mine if r["attack"] == attack]
        strengths = _sort_strengths([r["strength"] for r in cells])
        numeric = _numeric(strengths)
        xs = strengths if numeric else list(range(len(strengths)))
        by = {json.dumps(s): [r for r in cells if r["strength"] == s] for s in strengths}
        rate = [mean(r["decision"] == "match" for r in by[json.dumps(s)]) for s in strengths]
        stat = [_mean_or_nan([r.get("statistic") for r in by[json.dumps(s)]]) for s in strengths]
        pval = [
            _mean_or_nan([r.get("p_value") for r in by[json.dumps(s)]], floor=P_FLOOR)
            for s in strengths
        ]
        series = ((rate, "detection rate"), (stat, "statistic"), (pval, "p-value"))
        for row_i, (ys, label) in enumerate(series):
            ax = axes[row_i][col]
            ax.plot(xs, ys, marker="o", color="C0", label="attacked")
            if row_i == 0:
                ax.set_ylim(-0.05, 1.05)
                ax.set_title(f"{attack}", fontsize=10)
            if row_i == 1:
                thresholds = [r["threshold"] for r in cells if r.get("threshold") is not None]
                if thresholds:
                    ax.axhline(thresholds[0], color="C3", ls="--", lw=1, label="threshold")
                null_stats = [r["statistic"] for r in nulls if r.get("statistic") is not None]
                if null_stats:
                    ax.axhspan(min(null_stats), max(null_stats), color="0.85", label="null models")
                clean_stats = [r["statistic"] for r in clean if r.get("statistic") is not None]
                if clean_stats:
                    ax.axhline(mean(clean_stats), color="C2", ls=":", lw=1, label="no attack")
            if row_i == 2:
                ax.set_yscale("log")
                ax.set_ylim(P_FLOOR / 10, 2)
                alphas = [r["alpha"] for r in cells if isinstance(r.get("alpha"), int | float)]
                if alphas:
                    ax.axhline(alphas[0], color="C1", ls="-.", lw=1, label="alpha")
            if col == 0:
                ax.set_ylabel(label)
            if not numeric:
                ax.set_xticks(xs, [str(s) for s in strengths])
            if row_i == 2:
                ax.set_xlabel("strength")
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(
        f"{scheme} on {task}: detection vs attack strength (mean over seeds; "
        f"p-values below {P_FLOOR:g} drawn at {P_FLOOR:g})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _mean_or_nan(values: list[Any], floor: float | None = None) -> float:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return float("nan")
    m = mean(vals)
    return max(m, floor) if floor is not None else m


# --------------------------------------------------------------------------- images


def _gallery(rows: list[dict[str, Any]], scheme: str, task: str) -> list[tuple[str, str]]:
    """(caption, relative PNG path): fidelity grid, then evidence of chosen cells."""
    mine = [
        r
        for r in rows
        if r["scheme"] == scheme and r["task"] == task and r.get("decision") != "error"
    ]
    if not mine:
        return []
    seed = min(r["seed"] for r in mine)
    mine = [r for r in mine if r["seed"] == seed]
    out: list[tuple[str, str]] = []
    if mine[0].get("fidelity_grid"):
        out.append(
            (
                f"seed {seed}: input, ground truth, unprotected output, protected output, "
                f"amplified difference; fidelity PSNR {_fmt(mine[0]['fidelity_psnr'])} dB",
                mine[0]["fidelity_grid"],
            )
        )
    picked: list[dict[str, Any]] = [r for r in mine if r["level"] == "clean"][:1]
    for attack in dict.fromkeys(r["attack"] for r in mine if r["level"] not in ("clean", "null")):
        cells = [r for r in mine if r["attack"] == attack]
        strengths = _sort_strengths([r["strength"] for r in cells])
        # The strongest setting: for most attacks the largest value; for jpeg, resize and
        # crop the smallest (lower is stronger).
        strongest = strengths[0] if attack in ("jpeg", "resize", "crop") else strengths[-1]
        picked += [r for r in cells if r["strength"] == strongest][:1]
    picked += [r for r in mine if r["level"] == "null"][:1]
    for r in picked:
        what = (
            "no attack"
            if r["level"] == "clean"
            else (
                f"null model {r['strength']}"
                if r["level"] == "null"
                else f"{r['attack']} {_fmt(r['strength'])}"
            )
        )
        for name, path in (r.get("evidence") or {}).items():
            out.append(
                (
                    f"{what}: {r['decision']} (statistic {_fmt(r.get('statistic'))}, "
                    f"p = {_fmt(r.get('p_value'))}) - {name} evidence",
                    path,
                )
            )
    return out


# --------------------------------------------------------------------------- writers


def _md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(rows[0])
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    body = "".join(
        "| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |\n"
        for r in rows
    )
    return head + body


def _html_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    from pixmark.report import table

    formatted = [{k: _fmt(v) for k, v in r.items()} for r in rows]
    return table(formatted, columns)


def _meta(rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    config = {}
    if (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return {
        "config": config.get("name", "-"),
        "profile": config.get("profile", "-"),
        "commit": ", ".join(sorted({str(r.get("git_commit")) for r in rows})) or "-",
        "pixmark": ", ".join(sorted({str(r.get("pixmark_version")) for r in rows})) or "-",
        "device": ", ".join(sorted({str(r["device"]) for r in rows if r.get("device")})) or "-",
        "cells": len(rows),
        "cell time (s, sum)": round(sum(r.get("seconds") or 0 for r in rows), 1),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }


_ABOUT = (
    "Each cell protects a target model with a scheme, attacks it (model level: the "
    "protected weights; surrogate: a new model trained on its outputs; image level: its "
    "outputs are distorted before the verifier sees them), and verifies the suspect with "
    "the key. <i>null</i> rows verify independently trained models that never saw the "
    "key: every match there is a false positive. TPR at a fixed FPR uses a threshold on "
    "the score named in 'calibrated on' (the statistic, or the decision's p-value where the "
    "decision combines several statistics), set on the null scores; it needs at least "
    "1/FPR - 1 of them. "
    "For the trigger scheme a null model also scores random keys drawn like the owner's "
    "(nulls.random_keys, the paper's uniqueness test), so one innocent model gives many "
    "null scores."
)


_EXACT_NOTE = (
    "The trigger scheme's rank test ranks the key's trigger among random "
    "triggers sent to the same suspect: its p-value is exact for any model made without "
    "the key, so 'p ≤ f' has false-positive rate at most f with no null models (the "
    "null columns are a check, not a calibration). The fixed-FPR table above is "
    "calibrated on the distance d alone and does not see this test; the scheme's decision "
    "takes either test, so its FPR is at most the distance test's plus rank_alpha "
    "(0.001). 'by this test alone': attacked cells that only the rank test found."
)


def write_bench_report(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` from the bench folder's results."""
    from pixmark.report import image_tag, write_report

    out = Path(out_dir)
    rows = load_rows(out)
    if not rows:
        raise PixmarkError(f"{out} holds no benchmark results (results.jsonl is missing or empty)")
    meta = _meta(rows, out)
    summ, fpr_table, attacks = summary(rows), detection_at_fpr(rows), per_attack(rows)
    exact = exact_tests(rows)
    pairs = list(dict.fromkeys((r["scheme"], r["task"]) for r in rows))
    plots: dict[tuple[str, str], Path | None] = {
        (s, t): plot_scheme(rows, s, t, out / "plots" / f"{s}_{t}.png") for s, t in pairs
    }
    errors = [r for r in rows if r.get("decision") == "error"]
    cell_columns = [
        "cell_id",
        "decision",
        "statistic",
        "p_value",
        "empirical_p",
        "suspect_psnr_vs_protected",
        "attack_seconds",
        "verify_seconds",
    ]

    sections: list[tuple[str, str]] = [
        ("Run", _html_table([meta]) + f"<p class='note'>{_ABOUT}</p>"),
        ("Summary", _html_table(summ)),
        ("Detection at a fixed false-positive rate", _html_table(fpr_table)),
    ]
    if exact:
        note = f"<p class='note'>{html.escape(_EXACT_NOTE)}</p>"
        sections.append(("Exact tests (no calibration needed)", _html_table(exact) + note))
    sections.append(("Per attack and strength", _html_table(attacks)))
    for s, t in pairs:
        body = ""
        if plots[(s, t)] is not None:
            body += image_tag(plots[(s, t)], f"{s} {t} plots")
        for caption, rel in _gallery(rows, s, t):
            if (out / rel).is_file():
                figure = image_tag(out / rel, caption)
                body += f"<figure>{figure}<figcaption>{html.escape(caption)}</figcaption></figure>"
        sections.append((f"{s} on {t}", body or "<p class='note'>(no plots or images)</p>"))
    if errors:
        sections.append(("Errors", _html_table(errors, ["cell_id", "error"])))
    sections.append(("All cells", _html_table(rows, cell_columns)))
    html_path, _ = write_report(
        out,
        f"pixmark benchmark: {meta['config']}",
        sections,
        {
            "meta": meta,
            "summary": summ,
            "detection_at_fpr": fpr_table,
            "exact_tests": exact,
            "per_attack": attacks,
        },
    )

    md = [
        f"# pixmark benchmark: {meta['config']}\n",
        _md_table([meta]),
        "\n" + _ABOUT.replace("<i>", "*").replace("</i>", "*") + "\n",
    ]
    md += ["\n## Summary\n\n", _md_table(summ)]
    md += ["\n## Detection at a fixed false-positive rate\n\n", _md_table(fpr_table)]
    if exact:
        md += ["\n## Exact tests (no calibration needed)\n\n", _md_table(exact)]
        md += ["\n" + _EXACT_NOTE + "\n"]
    md += ["\n## Per attack and strength\n\n", _md_table(attacks)]
    for s, t in pairs:
        md.append(f"\n## {s} on {t}\n\n")
        if plots[(s, t)] is not None:
            md.append(f"![{s} {t} plots]({os.path.relpath(plots[(s, t)], out)})\n\n")
        for caption, rel in _gallery(rows, s, t):
            md.append(f"{caption}\n\n![{caption}]({rel})\n\n")
    if errors:
        md += ["\n## Errors\n\n", _md_table(errors, ["cell_id", "error"])]
    md += ["\n## All cells\n\n", _md_table(rows, cell_columns)]
    md_path = atomic_write_text(out / "report.md", "".join(md))
    return html_path, md_path
