"""Protect the fpr bench's derain U-Net with the output scheme, then verify 99 null models.

Session 5's check of the output false-positive fix (docs/schemes/output.md): it needs a
finished `pixmark bench benchmarks/fpr.yaml --out runs/fpr` (its derain target and its 99
derain null models). Usage, one CPU thread:

    .venv/bin/python benchmarks/output/experiments/null_check.py [CARRIER_HOLD]
"""

import dataclasses
import glob
import sys
import time

import torch

from pixmark import api
from pixmark.checkpoint import load_model
from pixmark.schemes import output
from pixmark.schemes.base import as_query

torch.set_num_threads(1)
start = time.time()
target = load_model(glob.glob("runs/fpr/cache/targets/derain-*/model.safetensors")[0])
key = api.keygen("output", owner="pixmark bench")
hold = float(sys.argv[1]) if len(sys.argv) > 1 else output.PROFILES["quick"].carrier_hold
profile = dataclasses.replace(output.PROFILES["quick"], carrier_hold=hold)
protected = output.protect(
    target, key, task="derain", profile=profile, device="cpu", progress=False
)
params = protected.key.params
print("threshold", params["success_nc"], "null rate", params["null_rate"])
print({k: round(v["mean"], 3) for k, v in protected.report["logo_nc"].items()})
print(f"protect: {time.time() - start:.0f} s", flush=True)
for arch, seed in (("unet", 11), ("resnet9", 12)):
    stolen = api.attack("surrogate", protected.model, task="derain", steps=300, arch=arch,
                        width=16, progress=False, seed=seed)  # fmt: skip
    verdict = output.verify(as_query(stolen), protected.key)
    print(f"{arch} L2 surrogate (300 steps):", verdict.summary())
decisions = []
for path in sorted(glob.glob("runs/fpr/cache/nulls/derain/*/model.safetensors")):
    verdict = output.verify(as_query(load_model(path)), protected.key)
    decisions.append((path.split("/")[-2].split("-")[0], verdict.decision, verdict.statistic))
false = [d for d in decisions if d[1] == "match"]
print(f"null models verified as match: {len(false)} of {len(decisions)}", false[:10])
print("highest null mean score:", max(d[2] for d in decisions))
