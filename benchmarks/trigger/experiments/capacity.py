"""Trigger capacity: embed one trigger of 40, 200 or 600 px in the same host (session 19).

    PYTHONPATH=src .venv/bin/python benchmarks/trigger/experiments/capacity.py \
        --sizes 40,200,600 --out runs/trigger-capacity.json

The paper shows capacity up to 600 x 600 triggers. ``--area-ref 0`` reproduces session 19
(lambda not scaled by the trigger's area); the default scales it as ``protect`` does.
Per size: keygen, protect ``run.py``'s DnCNN host (quick profile at lr 1e-3, lambda 0.1,
early stop), and report how many steps the embedding took, the response's d against eta
(which shrinks with the size) and its residual NCC against the design, the fidelity cost
against an unmarked control, and verify on the protected model, the unprotected host and
a null model. The rank test runs with ``--rank-keys`` random triggers up to
``--rank-max-size`` px (999 triggers of 600 x 600 px would take most of an hour on one
CPU thread); above it, the distance test decides alone. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import train_host  # noqa: E402

from pixmark.schemes import trigger  # noqa: E402
from pixmark.schemes.base import as_query  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40,200,600")
    parser.add_argument("--host-steps", type=int, default=400)
    parser.add_argument("--rank-keys", type=int, default=999)
    parser.add_argument("--rank-max-size", type=int, default=200)
    parser.add_argument(
        "--area-ref",
        type=int,
        default=trigger.PROFILES["quick"]["area_ref"],
        help="lam is scaled by (area_ref / size)^2 above this side; 0: no scaling (session 19)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    host, null = train_host("dncnn", 0, args.host_steps), train_host("dncnn", 100, args.host_steps)
    results: dict = {"args": vars(args), "sizes": []}
    overrides = {"lr": 1e-3, "lam": 0.1, "area_ref": args.area_ref}
    for size in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        key = trigger.keygen("ACME Imaging", secret="5e" * 32, size=size)
        try:
            protected = trigger.protect(
                host,
                key,
                profile="quick",
                progress=False,
                control_run=True,
                overrides=overrides,
            )
        except trigger.PixmarkError as exc:  # not embedded within the profile's steps
            results["sizes"].append({"size": size, "error": str(exc)})
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(size, exc, flush=True)
            continue
        seconds = time.perf_counter() - t
        rank_keys = args.rank_keys if size <= args.rank_max_size else 0
        report = protected.report
        row = {
            "size": size,
            "weight": trigger.trigger_weight(
                trigger.profile_settings(trigger.PROFILES, "quick", overrides), size
            ),
            "eta": report["eta"],
            "steps": report["steps"],
            "protect_seconds": seconds,
            "d_vs_design": report["d"],
            "ncc_vs_design": report["ncc"],
            "delta_psnr_control": report.get("delta_psnr_control"),
            "rank_keys": rank_keys,
            "verify": {},
        }
        for name, model in (("protected", protected.model), ("unprotected", host), ("null", null)):
            v = trigger.verify(as_query(model), protected.key, rank_keys=rank_keys)
            row["verify"][name] = {
                "decision": v.decision,
                "d": v.statistic,
                "ncc": v.details["ncc"],
                **{k: v.details.get(k) for k in ("matched_by", "rank_p", "logo_ncc")},
            }
        results["sizes"].append(row)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
