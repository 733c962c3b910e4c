"""The averaging attack against a protected model with the content signature (session 8).

    .venv/bin/python benchmarks/output/experiments/averaging_vs_signature.py \
        --key runs/demo/acme.key --model runs/demo/protected.safetensors

Prints, per strength, the verdict, the signature's rho / p / fit cos (an angle before
session 13), the carrier cosine and the attacked answers' PSNR against the owner's unmarked outputs.
"""

from __future__ import annotations

import argparse

import torch

from pixmark import api
from pixmark.checkpoint import load_model
from pixmark.keys import load_key
from pixmark.metrics import psnr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--strengths", default="1,2")
    args = p.parse_args()
    torch.set_num_threads(1)
    key = load_key(args.key, "output")
    protected = load_model(args.model).eval()
    queries, unmarked = key.tensor("queries"), key.tensor("unmarked").float()
    for strength in (float(s) for s in args.strengths.split(",")):
        attacked = api.attack("estimate_and_subtract", protected, strength, task="derain")
        v = api.verify(attacked, key)
        with torch.no_grad():
            answers = attacked(queries).clamp(0, 1)
        d = v.details
        print(f"strength {strength:g}: {v.decision} (logo NC {v.statistic:.3f}); signature "
              f"rho {d['signature_rho']:.3f} p {d['signature_p_value']:.2g} fit cos "
              f"{d['signature_fit_cos']:.2f}; carrier_cos {d['carrier_cos']:.3f}; "
              f"{float(psnr(answers, unmarked)):.2f} dB vs unmarked", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
