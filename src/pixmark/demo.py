"""``pixmark demo``: the whole story on bundled real images, in minutes on a CPU.

1. Train a small deraining model M (the owner's model) on real photos with synthetic rain.
2. Make an ``output`` key for "ACME Imaging" and protect M: every output now hides the logo.
3. An attacker queries the protected model as a black box and trains a surrogate on its
   answers; a second one augments the stolen pairs (rotate / flip / crop-and-resize).
4. Verify: the surrogate matches; the augmented one defeats the paper's logo test but
   not the content signature, which is part of the decision since session 13; the
   unprotected M and an independent model match neither test.
5. Write ``report.html`` (image grids, verdicts) and ``results.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from pixmark import api, data
from pixmark.report import image_tag, table, write_report
from pixmark.stats import Verdict
from pixmark.viz import amplify, save_grid

TASK = "derain"
OWNER = "ACME Imaging"


def _verdict_row(name: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "suspect": name,
        "decision": verdict.decision,
        "statistic": verdict.statistic,
        "threshold": verdict.threshold,
        "p_value": f"{verdict.p_value:.3g}",
        "queries": verdict.n_queries,
        # the output scheme's two tests (colour keys): which one found the suspect
        "logo p": f"{verdict.details.get('logo_p_value', verdict.p_value):.3g}",
        "signature p": f"{verdict.details['signature_p_value']:.3g}"
        if "signature_p_value" in verdict.details
        else "-",
        "matched by": ", ".join(verdict.details.get("matched_by", [])) or "-",
    }


def run_demo(out: str | os.PathLike[str], device: str = "auto", seed: int = 0) -> Path:
    """Run the demo into folder ``out``; return the path of ``report.html``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)

    target = api.train_model(
        TASK,
        "unet",
        steps=300,
        size=64,
        width=16,
        seed=seed,
        device=device,
        out=folder / "target.safetensors",
        force=True,
    )
    key_path = folder / "acme.key"
    api.keygen("output", OWNER, out=key_path, force=True, channels=3)
    protected = api.protect(
        target.model,
        key_path,
        out=folder / "protected.safetensors",
        force=True,
        task=TASK,
        profile="quick",
        device=device,
    )

    surrogate = api.attack(
        "surrogate",
        protected.model,
        task=TASK,
        arch="unet",
        loss="l2",
        steps=300,
        seed=seed + 1,
        device=device,
        out=folder / "surrogate.safetensors",
        force=True,
    )
    # A careful thief: rotates, flips and crops-and-resizes every stolen pair. That
    # averages H's logo carrier away; the content signature survives (see verify).
    augmented = api.attack(
        "surrogate",
        protected.model,
        task=TASK,
        arch="unet",
        loss="l2",
        augment=True,
        steps=600,
        seed=seed + 3,
        device=device,
        out=folder / "surrogate_augmented.safetensors",
        force=True,
    )
    independent = api.train_model(
        TASK,
        "unet",
        steps=200,
        size=64,
        width=16,
        seed=seed + 2,
        data_seed=seed + 2,
        device=device,
        out=folder / "independent.safetensors",
        force=True,
    )
    suspects = {
        "surrogate of the protected model": surrogate,
        "augmented surrogate (rot/flip/crop)": augmented,
        "unprotected model M": target.model,
        "independently trained model": independent.model,
    }
    verdicts = {}
    for i, (name, model) in enumerate(suspects.items()):
        verdicts[name] = api.verify(model, key_path, evidence_dir=folder / f"evidence{i}")

    # What the protected model does to an image: input, M, protected, 10x difference.
    _, _, splits = api.task_splits(TASK)
    x, _ = data.fixed_pairs([img for _, img in splits["test"]], TASK, 128, 3, seed=5)
    with torch.no_grad():
        clean = target.model.cpu()(x).clamp(0, 1)
        marked = protected.model.cpu()(x).clamp(0, 1)
    rows = [[x[i], clean[i], marked[i], amplify(marked[i] - clean[i])] for i in range(len(x))]
    grid = save_grid(
        rows,
        folder / "protected_outputs.png",
        col_labels=["rainy input", "M(input)", "protected", "10x difference"],
    )

    results = {
        "task": TASK,
        "owner": OWNER,
        "target_metrics": target.metrics,
        "protect_report": {
            k: v for k, v in protected.report.items() if isinstance(v, int | float | str)
        },
        "verdicts": {name: v.to_dict() for name, v in verdicts.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    sections = [
        ("Verdicts", table([_verdict_row(n, v) for n, v in verdicts.items()])),
        ("Protected outputs", image_tag(grid, "protected outputs")),
    ]
    for name, verdict in verdicts.items():
        grid_path = verdict.evidence.get("grid")
        if grid_path:
            sections.append((f"Evidence: {name}", image_tag(grid_path, name)))
    sections.append(("Numbers", "<pre>" + str(results["protect_report"]) + "</pre>"))
    report, _ = write_report(
        folder, "pixmark demo: output watermark on deraining", sections, results
    )
    for name, verdict in verdicts.items():
        print(f"{name:>34}: {verdict.summary()}")
    return report
