"""Classical baselines of the ``output`` scheme against black-box surrogates (Zhang et al. 2020).

    nice -n 5 .venv/bin/python benchmarks/output/baselines.py --profile quick
    .venv/bin/python benchmarks/output/baselines.py --profile paper --device cuda   # one GPU

One run, every figure from it: a small deraining target M is trained on the bundled
photos; each baseline (``ss``, ``dct``, ``dft``, ``dwt`` from :mod:`pixmark.baselines`,
64 bits at RMS strength 0.01 ≈ 40 dB) marks M's outputs (``BaselineMarked``). For each we
measure (a) fidelity, PSNR(marked, unmarked outputs), and blind detection on the marked
outputs, on the unmarked outputs and after JPEG q = 50; (b) surrogates (L2, the
profile's architectures) trained on the marked model's outputs by an attacker with their
own inputs, and detection on the surrogates' outputs for held-out queries; surrogates
of the *unmarked* M are the null. The task-specific variant (one network does the task
and hides a logo) is trained, checked and attacked the same way.

Writes ``benchmarks/output/results/baselines_<profile>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pixmark import api, baselines, data
from pixmark.attacks.image import jpeg
from pixmark.attacks.surrogate import train_surrogate
from pixmark.fileio import atomic_write
from pixmark.metrics import psnr
from pixmark.schemes import output
from pixmark.schemes.base import as_query
from pixmark.stats import Verdict

SECRET = "5e" * 32


@dataclass(frozen=True)
class Profile:
    size: int  # crop side, px
    target_steps: int
    target_width: int
    target_depth: int
    surrogate_steps: int
    surrogate_archs: tuple[str, ...]
    surrogate_width: int | None  # None: pixmark.attacks.surrogate.DEFAULT_WIDTH
    n_queries: int  # held-out query crops
    strength: float  # RMS luminance change of every baseline
    ts_steps: int  # task-specific variant
    ts_lam: float
    ts_r_width: int
    ts_r_blocks: int


PROFILES = {
    # ≈ 30 min on a 2-core CPU shared with other jobs (one torch thread).
    "quick": Profile(size=64, target_steps=150, target_width=8, target_depth=3,
                     surrogate_steps=200, surrogate_archs=("unet", "resnet9"),
                     surrogate_width=None, n_queries=32, strength=0.01, ts_steps=150,
                     ts_lam=1.0, ts_r_width=16, ts_r_blocks=3),
    # The paper's scale (256 px, width-64 networks, the four Table 2 architectures); GPU.
    "paper": Profile(size=256, target_steps=20000, target_width=64, target_depth=6,
                     surrogate_steps=20000, surrogate_archs=("ceilnet", "resnet9", "resnet16",
                                                             "unet"),
                     surrogate_width=64, n_queries=100, strength=0.01, ts_steps=20000,
                     ts_lam=1.0, ts_r_width=64, ts_r_blocks=9),
}  # fmt: skip


def verdict_row(v: Verdict) -> dict[str, Any]:
    d = v.details
    return {
        "ber": round(v.statistic, 4),
        "p_value": float(f"{v.p_value:.3g}"),
        "decision": v.decision,
        "errors": d["errors"],
        "mean_per_image_ber": d["mean_per_image_ber"],
        "success_rate": d["success_rate"],
        "mark_z": d["mark_z"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--machine", default="2-core shared CPU", help="recorded as is")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--methods", default=",".join(baselines.METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = PROFILES[args.profile]
    methods = [m for m in args.methods.split(",") if m]
    out_path = args.out or Path(__file__).parent / "results" / f"baselines_{args.profile}.json"
    t_start = time.perf_counter()
    log = lambda *a: print(f"[{time.perf_counter() - t_start:7.1f}s]", *a, flush=True)  # noqa: E731

    # ---- the owner's target M and the held-out queries
    trained = api.train_model(
        "derain", "unet", steps=prof.target_steps, size=prof.size, width=prof.target_width,
        arch_kwargs={"depth": prof.target_depth}, seed=0, device=args.device, progress=False,
    )  # fmt: skip
    target = trained.model.eval()
    log("target", trained.metrics)
    spec, channels, splits = api.task_splits("derain")
    queries, clean_q = data.fixed_pairs([im for _, im in splits["val"]], spec, prof.size,
                                        prof.n_queries, seed=5, channels=channels)  # fmt: skip
    unmarked_q = api.apply_model(target, queries)
    key = baselines.keygen("ACME Imaging", secret=SECRET)
    train_imgs = [im for _, im in splits["train"]]

    def steal(teacher: torch.nn.Module, arch: str) -> torch.nn.Module:
        """The attacker: own rainy crops (seed 777), the teacher's answers, L2."""
        sampler = data.PairSampler(train_imgs, spec, prof.size, channels, seed=777)
        return train_surrogate(
            as_query(teacher), sampler, arch=arch, loss="l2", steps=prof.surrogate_steps,
            size=prof.size, width=prof.surrogate_width, seed=11, device=args.device,
            progress=False,
        )  # fmt: skip

    record: dict[str, Any] = {
        "command": "nice -n 5 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": args.machine,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "profile": args.profile,
        "settings": asdict(prof),
        "decision_rule": "match iff p <= 1e-3 (64 pooled bits, exact binomial null)",
        "target": {k: round(v, 4) for k, v in trained.metrics.items()},
        "complete": False,
        "methods": {},
        "null_surrogates": {},
    }
    results = record

    def save() -> None:
        """Write what is measured so far (atomically): a cut-off run leaves its results."""
        record["seconds"] = round(time.perf_counter() - t_start, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(out_path, lambda tmp: tmp.write_text(text))

    def nulls() -> None:
        """Surrogates of the unmarked model, read with every method (the null)."""
        for arch in prof.surrogate_archs:
            sm_out = as_query(steal(target, arch))(queries)
            results["null_surrogates"][arch] = {
                "psnr_vs_teacher": round(float(psnr(sm_out, unmarked_q)), 2),
                **{m: verdict_row(baselines.detect(sm_out, key, m)) for m in methods},
            }
            log("null surrogate", arch, results["null_surrogates"][arch])
            save()

    for i, method in enumerate(methods):
        marked = baselines.BaselineMarked(target, key, method, prof.strength).eval()
        marked_q = as_query(marked)(queries)
        fid = psnr(marked_q, unmarked_q, reduction="none")
        row: dict[str, Any] = {
            "psnr_marked_vs_unmarked": {
                "mean": round(float(fid.mean()), 2),
                "min": round(float(fid.min()), 2),
            },  # fmt: skip
            "marked_outputs": verdict_row(baselines.detect(marked_q, key, method)),
            "unmarked_outputs": verdict_row(baselines.detect(unmarked_q, key, method)),
            "marked_outputs_jpeg50": verdict_row(baselines.detect(jpeg(marked_q, 50), key, method)),
            "surrogates": {},
        }
        log(method, {k: v for k, v in row.items() if k != "surrogates"})
        for arch in prof.surrogate_archs:
            sm_out = as_query(steal(marked, arch))(queries)
            row["surrogates"][arch] = {
                "psnr_vs_teacher": round(float(psnr(sm_out, marked_q)), 2),
                **verdict_row(baselines.detect(sm_out, key, method)),
            }
            log(method, arch, row["surrogates"][arch])
            results["methods"][method] = row
            save()
        if i == 0:
            nulls()

    # ---- the task-specific variant: M hides the logo itself; R reads it
    okey = output.keygen("ACME Imaging", secret=SECRET)
    ts = baselines.train_task_specific(
        okey, task="derain", arch="unet", steps=prof.ts_steps, size=prof.size,
        width=prof.target_width, arch_kwargs={"depth": prof.target_depth},
        r_width=prof.ts_r_width, r_blocks=prof.ts_r_blocks, lam=prof.ts_lam, device=args.device,
        progress=False,
    )  # fmt: skip

    def nc_row(images: torch.Tensor) -> dict[str, float]:
        s = baselines.logo_scores(ts, images)
        sr = float((s > output.SUCCESS_NC).float().mean())
        return {"mean_nc": round(float(s.mean()), 4), "success_rate": round(sr, 4)}

    ts_q = as_query(ts.model)(queries)
    task_specific: dict[str, Any] = {
        "task_psnr": round(ts.report["psnr"], 2),
        "task_ssim": round(ts.report["ssim"], 4),
        "plain_target_task_psnr": round(trained.metrics["psnr"], 2),
        "plain_target_task_ssim": round(trained.metrics["ssim"], 4),
        "own_outputs": nc_row(ts_q),
        "inputs": nc_row(queries),
        "clean_targets": nc_row(clean_q),
        "unmarked_target_outputs": nc_row(unmarked_q),
        "surrogates": {},
    }
    for arch in prof.surrogate_archs[:1]:
        sm_out = as_query(steal(ts.model, arch))(queries)
        task_specific["surrogates"][arch] = {
            "psnr_vs_teacher": round(float(psnr(sm_out, ts_q)), 2),
            **nc_row(sm_out),
        }
        null_out = as_query(steal(target, arch))(queries)
        task_specific["surrogates"][f"{arch} (of the plain target: null)"] = nc_row(null_out)
    results["task_specific"] = task_specific
    log("task-specific", task_specific)
    record["complete"] = True
    save()
    log("wrote", out_path)
    print(table(record))
    return 0


def table(record: dict[str, Any]) -> str:
    """A Markdown table: detection per method × (own outputs, JPEG, surrogates)."""
    archs = list(next(iter(record["methods"].values()))["surrogates"])
    head = ["method", "PSNR dB", "marked", "unmarked", "JPEG 50"] + archs
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v: dict[str, Any]) -> str:
        return f"BER {v['ber']:.2f}, p {v['p_value']:.2g}, {v['decision']}"

    for method, row in record["methods"].items():
        cells = [method, f"{row['psnr_marked_vs_unmarked']['mean']:.1f}",
                 cell(row["marked_outputs"]), cell(row["unmarked_outputs"]),
                 cell(row["marked_outputs_jpeg50"])]  # fmt: skip
        cells += [cell(row["surrogates"][a]) for a in archs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
