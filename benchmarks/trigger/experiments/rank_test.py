"""Does the key's trigger stand out among random triggers on the suspect itself? (session 19)

    .venv/bin/python benchmarks/trigger/experiments/rank_test.py --variant base \
        --random-keys 999 --out runs/trigger-rank/base.json

The shipped decision asks the suspect's response S' to the key's trigger K for d <= eta and
a residual NCC above the key's threshold (0.95 on the benchmark hosts, whose backdoor
generalises to other noise images at NCC ~0.75). Clean fine-tuning pulls the NCC under it
within 100-1000 steps. This experiment measures a relative test instead: send the suspect
``--random-keys`` random triggers K_i drawn like K, score each answer against its design
G(K_i) exactly as K's answer is scored against G(K), and take the rank of K's score among
them. For a model made without K, K is one more draw of the same distribution, so the rank
is uniform and (1 + #{i: score_i >= score_K}) / (1 + n) is an exact p-value.

Per suspect (protected, clean fine-tuning, pruning, the unprotected host, null models):
K's residual NCC against S and against G(K), the random keys' NCC quantiles and the rank
p-value, beside the shipped decision. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import drift, finetune, prune, psnr_on_test, train_host  # noqa: E402

from pixmark.schemes import trigger  # noqa: E402
from pixmark.schemes.base import as_query  # noqa: E402

VARIANTS = {
    "base": {"lr": 1e-3, "lam": 0.1},
    "awp01-long1200": {"lr": 1e-3, "lam": 0.1, "awp": 0.01, "early_stop": False, "steps": 1200},
}


def scores(model: torch.nn.Module, key: trigger.Key, n: int, seed: int) -> dict:
    """K's residual NCC (vs S and vs G(K)) and n random triggers' NCC vs their designs."""
    p = key.params
    trig, s = key.tensors["trigger"], key.tensors["response"]
    g = torch.Generator().manual_seed(seed)
    randoms = torch.rand(n, *trig.shape[1:], generator=g)
    query = as_query(model)
    with torch.no_grad():
        answer_k = query(trig).clamp(0, 1)
        answers = torch.cat([query(b).clamp(0, 1) for b in randoms.split(200)])
    design_k = trigger.designed(trig, p["task"], p["design"])
    designs = trigger.designed(randoms, p["task"], p["design"])
    ncc_k = trigger.residual_ncc(answer_k, design_k, trig)
    nccs = torch.tensor(
        [
            trigger.residual_ncc(a[None], g_[None], k[None])
            for a, g_, k in zip(answers, designs, randoms, strict=True)
        ]
    )
    return {
        "ncc_vs_s": trigger.residual_ncc(answer_k, s, trig),
        "ncc_vs_design": ncc_k,
        "random_ncc_max": float(nccs.max()),
        "random_ncc_q99": float(nccs.quantile(0.99)),
        "random_ncc_median": float(nccs.median()),
        "rank_p": float((1 + (nccs >= ncc_k).sum()) / (1 + n)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="base")
    parser.add_argument("--host-steps", type=int, default=400)
    parser.add_argument("--random-keys", type=int, default=999)
    parser.add_argument("--finetune", default="100,300,1000,3000")
    parser.add_argument("--prune", default="0.3,0.4,0.5,0.6")
    parser.add_argument("--nulls", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict = {"args": vars(args), "suspects": {}}

    def record(name: str, model: torch.nn.Module, **extra: float) -> None:
        v = trigger.verify(as_query(model), pkey)
        row = {
            "decision": v.decision,
            "d": v.statistic,
            "ncc": v.details["ncc"],
            "ncc_threshold": v.details["ncc_threshold"],
            "psnr": psnr_on_test(model, 1),
            **extra,
            **scores(model, pkey, args.random_keys, seed=2024),
        }
        results["suspects"][name] = row
        results["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(row), flush=True)

    host = train_host("dncnn", 0, args.host_steps)
    key = trigger.keygen("ACME Imaging", secret="5e" * 32)
    protected = trigger.protect(
        host, key, profile="quick", progress=False, overrides=VARIANTS[args.variant]
    )
    model, pkey = protected.model, protected.key
    results["protect_steps"] = protected.report.get("steps")
    record("protected", model)
    record("unprotected", host)
    for i in range(args.nulls):
        record(f"null{i}", train_host("dncnn", 100 + i, args.host_steps))
    for rate in [float(r) for r in args.prune.split(",") if r]:
        record(f"prune{int(rate * 100)}", prune(model, rate))
    for steps in [int(s) for s in args.finetune.split(",") if s]:
        tuned = finetune(model, steps, seed=7)
        record(f"finetune{steps}", tuned, weight_drift=drift(model, tuned))


if __name__ == "__main__":
    main()
