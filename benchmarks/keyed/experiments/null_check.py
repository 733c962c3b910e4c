"""Protect a host with the keyed scheme, then verify many independent null models.

Session 5's check of the keyed false-positive fix (docs/schemes/keyed.md): it needs a
finished `pixmark bench benchmarks/fpr.yaml --out runs/fpr` (its denoise target and its 99
null models). Usage, one CPU thread:

    .venv/bin/python benchmarks/keyed/experiments/null_check.py [STEPS] [ATTEMPTS]
"""

import glob
import sys
import time

import torch

from pixmark import api
from pixmark.checkpoint import load_model
from pixmark.schemes import keyed
from pixmark.schemes.base import as_query

torch.set_num_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
attempts = int(sys.argv[2]) if len(sys.argv) > 2 else 1
start = time.time()
target = load_model(glob.glob("runs/fpr/cache/targets/denoise-*/model.safetensors")[0])
key = api.keygen("keyed", owner="pixmark bench", channels=1)
protected = keyed.protect(
    target, key, task="denoise", progress=False, attempts=attempts, overrides={"steps": steps}
)
report = protected.report
print({k: v for k, v in report.items() if k.startswith("ber") or "psnr" in k or "cost" in k})
print(f"protect: {time.time() - start:.0f} s")
decisions = []
for path in sorted(glob.glob("runs/fpr/cache/nulls/denoise/*/model.safetensors")):
    verdict = keyed.verify(as_query(load_model(path)), protected.key)
    decisions.append((path.split("/")[-2].split("-")[0], verdict.decision, verdict.statistic))
false = [d for d in decisions if d[1] == "match"]
print(f"null models verified as match: {len(false)} of {len(decisions)}", false[:10])
print("protected host:", keyed.verify(as_query(protected.model), protected.key).decision)
