"""How often does an augmented surrogate learn the content signature? (session 8)

Trains attacker surrogates with ``--augment`` (rot90 / flip / crop-and-resize of every
stolen pair) on their own data streams and reports the signature's rho / p and the logo
test for each, plus augmented surrogates of the unprotected model as nulls.

    .venv/bin/python benchmarks/output/experiments/augmented_seeds.py --key K --model M \
        --target T --out runs/augmented-seeds.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.checkpoint import load_model
from pixmark.keys import load_key
from pixmark.schemes import output
from pixmark.schemes.base import as_query


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True, help="the protected model")
    p.add_argument("--target", required=True, help="the unprotected model")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    key = load_key(args.key, "output")
    protected, target = load_model(args.model).eval(), load_model(args.target).eval()
    spec, ch, splits = api.task_splits("derain")
    train = [im for _, im in splits["train"]]
    plan = [("protected", "unet", 600, s) for s in range(801, 807)]
    plan += [("protected", "resnet9", 1200, s) for s in (811, 812)]
    plan += [("unprotected", "unet", 600, s) for s in (821, 822)]
    rows, t0 = [], time.time()
    for teacher_name, arch, steps, seed in plan:
        teacher = protected if teacher_name == "protected" else target
        inputs = data.PairSampler(train, spec, 64, ch, seed=seed)
        sur = train_surrogate(as_query(teacher), inputs, arch=arch, loss="l2", augment=True,
                              steps=steps, width=16, seed=seed, progress=False)  # fmt: skip
        v = output.verify(as_query(sur), key)
        d = v.details
        rows.append({"teacher": teacher_name, "arch": arch, "steps": steps, "seed": seed,
                     "logo_decision": v.decision, "logo_mean_nc": round(v.statistic, 4),
                     "signature_rho": d["signature_rho"], "signature_p": d["signature_p_value"],
                     "signature_match": d["signature_match"],
                     "fit_cos": d["signature_fit_cos"],  # angle_deg before session 13
                     "seconds": round(time.time() - t0)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"key": args.key, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
