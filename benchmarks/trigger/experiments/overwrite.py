"""Overwriting with 1-5 further triggers (paper Table VIII) on a host protected at ``cpu``.

    PYTHONPATH=src .venv/bin/python benchmarks/trigger/experiments/overwrite.py --awp 0.01 \
        --counts 1,3,5 --out runs/trigger-overwrite

The owner protects ``run.py``'s DnCNN host with the ``cpu`` profile (lr 1e-3, lambda 0.1,
``--awp``); the thief then embeds their own key of ``count`` triggers with the quick
profile at the same lr and lambda (``pixmark.attacks.overwrite_protected``), stopping
as soon as their trigger fits or, with ``--thief-steps N``, training N steps. Per count:
does the owner's key still verify, does the thief's, and the host's PSNR. Writes
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import psnr_on_test, train_host  # noqa: E402

from pixmark.attacks.model import overwrite_protected  # noqa: E402
from pixmark.schemes import trigger  # noqa: E402
from pixmark.schemes.base import as_query  # noqa: E402

SMALL_HOST = {"lr": 1e-3, "lam": 0.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--awp", type=float, default=0.01)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--counts", default="1,3,5")
    parser.add_argument("--host-steps", type=int, default=400)
    parser.add_argument(
        "--thief-steps", type=int, default=0, help="> 0: the thief trains this long, no early stop"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    host = train_host("dncnn", 0, args.host_steps)
    key = trigger.keygen("ACME Imaging", secret="5e" * 32)
    owner = trigger.protect(
        host,
        key,
        profile=args.profile,
        device="cpu",
        progress=False,
        overrides={**SMALL_HOST, "awp": args.awp},
    )
    results: dict = {
        "args": vars(args),
        "host_psnr": psnr_on_test(host, 1),
        "protected_psnr": psnr_on_test(owner.model, 1),
        "owner_match_ncc": owner.key.params["match_ncc"],
        "overwrites": [],
    }
    thief_budget = {"early_stop": False, "steps": args.thief_steps} if args.thief_steps else {}
    for count in (int(c) for c in args.counts.split(",")):
        thief = overwrite_protected(
            owner.model,
            "trigger",
            task="denoise",
            owner="Mallory",
            overrides={**SMALL_HOST, **thief_budget},
            seed=count,
            count=count,
        )
        mine = trigger.verify(as_query(thief.model), owner.key)
        theirs = trigger.verify(as_query(thief.model), thief.key)
        row = {
            "count": count,
            "thief_steps": thief.report["steps"],
            "psnr": psnr_on_test(thief.model, 1),
            "owner": {
                "decision": mine.decision,
                "d": mine.statistic,
                "ncc": mine.details["ncc"],
                **{k: mine.details.get(k) for k in ("matched_by", "rank_p", "rank_score")},
            },
            "thief": {"decision": theirs.decision, "d": theirs.statistic},
        }
        results["overwrites"].append(row)
        print(json.dumps(row), flush=True)
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
