"""Augmented surrogates against the shipped output scheme (logo test + content signature).

Session 8 (2026-12-02). Trains the demo's derain target (UNet, 300 steps), protects it
at the given profile, then verifies attacker surrogates trained with and without
``--augment`` (rot90 / flip / crop-and-resize of every stolen pair), an augmented
surrogate of the unprotected model, and independent models of another key (fresh nulls
never seen at protect). Writes one JSON row per suspect.

    .venv/bin/python benchmarks/output/experiments/augmented_surrogates.py \
        --out runs/augmented --profile quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.keys import save_key
from pixmark.schemes import output
from pixmark.schemes.base import as_query, independent_models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/augmented")
    p.add_argument("--profile", default="quick")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--signature-psnr", type=float, default=None, help="0 = no signature")
    p.add_argument("--only-nulls", action="store_true", help="skip the surrogates")
    p.add_argument("--more", action="store_true",
                   help="also plain surrogates of other architectures and losses, and a "
                        "second set of 12 fresh nulls")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    target = api.train_model("derain", "unet", steps=300, size=64, width=16, seed=0,
                             progress=False).model  # fmt: skip
    key = output.keygen("ACME Imaging", secret="5" * 64)
    profile = output.PROFILES[args.profile]
    if args.signature_psnr is not None:
        profile = dataclasses.replace(profile, signature_psnr=args.signature_psnr)
    prot = output.protect(target, key, task="derain", profile=profile, progress=False,
                          device="cpu")  # fmt: skip
    key, wm = prot.key, prot.model
    print("protected", round(time.time() - t0), json.dumps(prot.report["signature"]), flush=True)
    print("logo_nc at protect", json.dumps(prot.report["logo_nc"]), flush=True)
    spec, ch, splits = api.task_splits("derain")
    train_imgs = [im for _, im in splits["train"]]

    save_key(key, out / "key.key", force=True)

    def surrogate(teacher, arch, steps, augment, seed, loss="l2"):  # noqa: ANN001, ANN202
        sampler = data.PairSampler(train_imgs, spec, 64, ch, seed=5000 + seed)
        return train_surrogate(as_query(teacher), sampler, arch=arch, loss=loss,
                               augment=augment, steps=steps, size=64, width=16, seed=seed,
                               device="cpu", progress=False)  # fmt: skip

    suspects = {"protected": wm, "unprotected": target}
    plan = [
        ("aug_unet_300_s1", wm, "unet", 300, True, 1),
        ("aug_unet_300_s2", wm, "unet", 300, True, 2),
        ("aug_unet_600_s3", wm, "unet", 600, True, 3),
        ("aug_resnet9_600_s4", wm, "resnet9", 600, True, 4),
        ("plain_unet_300_s5", wm, "unet", 300, False, 5),
        ("clean_aug_unet_600_s6", target, "unet", 600, True, 6),
    ]
    other_key = output.keygen("Someone Else", secret="6" * 64)
    nulls = independent_models(other_key, "derain", output.INDEPENDENT, steps=100, width=8,
                               size=40, channels=ch)  # fmt: skip
    suspects.update({f"independent_{i}": m for i, m in enumerate(nulls)})
    if args.more:
        plan += [
            ("plain_resnet9_300_s7", wm, "resnet9", 300, False, 7),
            ("plain_unet_perceptual_300_s8", wm, "unet", 300, False, 8, "perceptual"),
            ("plain_ceilnet_300_s9", wm, "ceilnet", 300, False, 9),
            ("plain_resnet16_l1_300_s10", wm, "resnet16", 300, False, 10, "l1"),
        ]
        third = output.keygen("Third Party", secret="7" * 64)
        more = independent_models(third, "derain", output.INDEPENDENT, steps=100, width=8,
                                  size=40, channels=ch)  # fmt: skip
        suspects.update({f"independent_b{i}": m for i, m in enumerate(more)})
    if args.only_nulls:
        plan = []
    rows = []
    for name, teacher, *spec_ in plan:
        suspects[name] = surrogate(teacher, *spec_)
        print("trained", name, round(time.time() - t0), flush=True)
    for name, model in suspects.items():
        v = output.verify(as_query(model), key)
        d = v.details
        row = {
            "suspect": name,
            "decision": v.decision,
            "p_value": v.p_value,
            "logo_mean_nc": round(v.statistic, 4),
            "logo_p_value": d.get("logo_p_value"),
            "signature_rho": d.get("signature_rho"),
            "signature_p_value": d.get("signature_p_value"),
            "matched_by": d.get("matched_by"),
            "carrier_cos": d.get("carrier_cos"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"profile": args.profile, "protect_report": prot.report, "rows": rows,
              "seconds": round(time.time() - t0)}  # fmt: skip
    tag = "" if args.signature_psnr is None else f"-sig{args.signature_psnr:g}"
    tag += "-nulls" if args.only_nulls else ""
    tag += "-more" if args.more else ""
    (out / f"augmented-{args.profile}{tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
