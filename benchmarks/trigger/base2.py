"""Quan et al.'s Base-2 baseline (label backdoor): fidelity, nulls, pruning, fine-tuning.

    .venv/bin/python benchmarks/trigger/base2.py --host ffdnet --out runs/bench-base2

The same hosts, test crops, pruning and attacker fine-tuning as ``benchmarks/trigger/run.py``
(imported from it), so the numbers sit beside the trigger scheme's and Base-1's. Writes
``results.json`` under ``--out``. Fidelity is reported against the original host and against
an unmarked control fine-tuned the same number of steps with the watermark weight at 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from run import dncnn, finetune, prune, psnr_on_test  # noqa: E402

from pixmark.baselines import label_trigger as base2  # noqa: E402
from pixmark.nets import pretrained_ffdnet  # noqa: E402
from pixmark.schemes.base import as_query  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=("dncnn", "ffdnet"), default="ffdnet")
    parser.add_argument("--host-steps", type=int, default=300)
    parser.add_argument("--nulls", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None, help="override the profile's lr")
    parser.add_argument("--lam", type=float, default=None, help="override the profile's lam")
    parser.add_argument("--out", default="runs/bench-base2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args), "device": "cpu", "torch_threads": args.threads}
    t0 = time.perf_counter()

    host = pretrained_ffdnet(channels=1) if args.host == "ffdnet" else dncnn(0, args.host_steps)
    nulls = [dncnn(100 + i, args.host_steps) for i in range(args.nulls)]
    overrides = {k: v for k, v in (("lr", args.lr), ("lam", args.lam)) if v is not None}
    key = base2.keygen("ACME Imaging", channels=1, secret="5e" * 32)
    t = time.perf_counter()
    protected = base2.protect(host, key, task="denoise", device="cpu", overrides=overrides)
    results["protect_seconds"] = time.perf_counter() - t
    results["protect_report"] = protected.report
    steps = protected.report["steps"]
    control = base2.protect(host, key, task="denoise", device="cpu",
                            overrides={**overrides, "lam": 0.0, "steps": steps,
                                       "check_every": 10**9})  # fmt: skip
    model = protected.model
    results["fidelity"] = {
        "psnr_original": psnr_on_test(host, 1),
        "psnr_protected": psnr_on_test(model, 1),
        "psnr_unmarked_control": psnr_on_test(control.model, 1),
    }
    f = results["fidelity"]
    f["delta_vs_original"] = f["psnr_original"] - f["psnr_protected"]
    f["delta_vs_control"] = f["psnr_unmarked_control"] - f["psnr_protected"]

    def verdict(m: nn.Module) -> dict:
        v = base2.verify(as_query(m), key)
        return {"decision": v.decision, "accuracy": v.statistic, "p": v.p_value,
                "psnr": psnr_on_test(m, 1)}  # fmt: skip

    suspects = {"protected": model, "unprotected": host, "unmarked_control": control.model,
                **{f"null{i}": m for i, m in enumerate(nulls)}}  # fmt: skip
    results["verify"] = {name: verdict(m) for name, m in suspects.items()}
    results["pruning"] = [
        {"rate": r, **verdict(prune(model, r))} for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    ]
    results["finetuning"] = [
        {"steps": s, **verdict(finetune(model, s, seed=7))} for s in (100, 300)
    ]
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
