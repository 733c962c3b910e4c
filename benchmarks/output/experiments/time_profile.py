"""Seconds per step of each phase of output.protect, for sizing a profile (2 threads).

    .venv/bin/python benchmarks/output/experiments/time_profile.py \\
        '{"steps": 20, "surrogate_steps": 20, "finetune_steps": 20, "independent_steps": 20,
          "n_queries": 8, "pool": 256}'

The JSON argument overrides fields of the ``cpu`` profile (add e.g. ``"h_width": 24``).
Prints seconds per step of stage 1, of each stage-2 surrogate and of the R fine-tune, and
the total (which includes the fixed costs: data, independent models, checks). Session 20
sized the ``cpu`` profile with it (docs/schemes/output.md, "Profiles").
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import torch

from pixmark import api, nets
from pixmark.attacks import surrogate
from pixmark.schemes import output


def main(overrides: dict[str, Any]) -> dict[str, Any]:
    times: dict[str, Any] = {}
    # protect imports train_surrogate from its module when it runs: patch it there
    run, train_surrogate = output.run, surrogate.train_surrogate

    def timed_run(step_fn, state, steps, **kw):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        history = run(step_fn, state, steps, **kw)
        times[kw.get("description", "run")] = (time.perf_counter() - start) / max(steps, 1)
        return history

    def timed_surrogate(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        model = train_surrogate(*args, **kw)
        times.setdefault("surrogate", []).append((time.perf_counter() - start) / kw["steps"])
        return model

    output.run, surrogate.train_surrogate = timed_run, timed_surrogate
    try:
        prof = dataclasses.replace(output.PROFILES["cpu"], **overrides)
        torch.manual_seed(0)
        model = nets.create("unet", channels=3, width=16, depth=3)
        key = api.keygen("output", owner="ACME")
        start = time.perf_counter()
        output.protect(model, key, task="derain", profile=prof, progress=False, device="cpu")
        times["total"] = time.perf_counter() - start
    finally:
        output.run, surrogate.train_surrogate = run, train_surrogate
    return times


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(json.dumps(main(json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))))
