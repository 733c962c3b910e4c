"""How often does the demo's plain surrogate match, over fresh keys? (session 11)

``make demo`` draws a new secret every run (``keygen`` uses ``secrets.token_hex``), so its
protected model and surrogate differ from run to run. This script trains the demo's
target once, then for each of ``--keys`` fixed secrets makes the demo's key, protects
at ``--profile`` and trains the demo's U-Net L2 surrogate (``--surrogate-steps``,
default the demo's 300), and prints the logo test and the content signature per key.
``--rescore`` re-reads the saved keys and models of a run and adds the decision under
the session-11 threshold rule (``output.success_threshold``: median of the protected
model's scores − 0.1, from the protected model's scores on the key's queries; the key's
null scores are not stored, so the null floor is left out, harmless while they are ≈ 0).

    .venv/bin/python benchmarks/output/experiments/demo_keys.py --keys 4 \
        --out runs/demo-keys.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from pixmark import api
from pixmark.demo import OWNER, TASK


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--first", type=int, default=0, help="index of the first secret")
    p.add_argument("--surrogate-steps", type=int, default=300)
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", required=True, help="JSON lines, one per key")
    p.add_argument("--work", default="runs/demo-keys")
    p.add_argument("--rescore", action="store_true")
    args = p.parse_args()
    work = Path(args.work)
    if args.rescore:
        return rescore(work, args)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    target = api.train_model(TASK, "unet", steps=300, size=64, width=16, seed=0,
                             out=work / "target.safetensors", force=True)  # fmt: skip
    for i in range(args.first, args.first + args.keys):
        t0 = time.time()
        key_path = work / f"key{i}.key"
        api.keygen("output", OWNER, out=key_path, force=True, channels=3,
                   secret=hashlib.sha256(f"demo-keys-{i}".encode()).hexdigest())  # fmt: skip
        protected = api.protect(target.model, key_path, out=work / f"protected{i}.safetensors",
                                force=True, task=TASK, profile=args.profile)  # fmt: skip
        t_protect = time.time() - t0
        sur = api.attack("surrogate", protected.model, task=TASK, arch="unet", loss="l2",
                         steps=args.surrogate_steps, seed=1, force=True,
                         out=work / f"surrogate{i}.safetensors")  # fmt: skip
        v = api.verify(sur, key_path)
        own = api.verify(protected.model, key_path)
        d = v.details
        row = {
            "key": i, "profile": args.profile, "surrogate_steps": args.surrogate_steps,
            "threshold": v.threshold, "protected_mean_nc": round(own.statistic, 4),
            "protected_psnr": protected.report.get("psnr_protected_vs_unprotected"),
            "surrogate_mean_nc": round(v.statistic, 4), "successes": d["successes"],
            "queries": v.n_queries, "decision": v.decision, "p": v.p_value,
            "carrier_cos": d["carrier_cos"], "signature_p": d.get("signature_p_value"),
            "protect_s": round(t_protect), "total_s": round(time.time() - t0),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def rescore(work: Path, args: argparse.Namespace) -> None:
    from pixmark.checkpoint import load_model
    from pixmark.keys import load_key
    from pixmark.schemes import output
    from pixmark.schemes.base import as_query
    from pixmark.stats import pooled_success_test

    for i in range(args.first, args.first + args.keys):
        key = load_key(work / f"key{i}.key", "output")
        prot = load_model(work / f"protected{i}.safetensors").eval()
        sur = load_model(work / f"surrogate{i}.safetensors").eval()
        _, own = output.query_scores(as_query(prot), key)
        _, scores = output.query_scores(as_query(sur), key)
        thr = output.success_threshold(own, [torch.zeros(1)])
        k = int((scores > thr).sum())
        rate, n_null = float(key.params["null_rate"]), int(key.params["n_null_queries"])
        p = pooled_success_test(k, len(scores), rate, n_null)
        row = {"key": i, "old_threshold": key.params["success_nc"], "new_threshold": thr,
               "protected_median": round(float(own.median()), 4),
               "surrogate_min": round(float(scores.min()), 4),
               "successes_new": k, "p_new": p}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
