"""Keyed scheme benchmark (Wu et al., TCSVT 2020) at CPU scale: one row of Wu's tables per task.

    .venv/bin/python benchmarks/keyed/run.py --tasks denoise,sr2,deblur --robust \
        --nulls 3 --jobs 2 --out runs/bench-keyed
    ... --channels 3 --watermark color     # a colour logo instead of the QR code
    ... --steps 600 --robust --robust-only # a longer protect, only the robust training

For each task, from one run: a host (gray or colour U-Net, width 16, depth 2, trained here on
the bundled images, 400 steps at 64 px: ~28 dB on denoise), ``--nulls`` independent null
models of the task (U-Net / DnCNN / RED, other seeds), then ``keyed.protect`` at
``--profile`` (and again with ``robust=True`` with ``--robust``). Measured per protected host:
the protect report (fidelity: PSNR of the original, the protected host and the unmarked
shadow on held-out crops; BER on protected, clean, original and shadow outputs), the verdict
on the protected host, the original and each null model (block BER, p-value, mean per-image
BER as in the paper, QR decoded or colour watermark PSNR), the key-sensitivity curve (paper
Fig. 11: mean per-image BER vs flipped key bits 0-32) and the verdict after image attacks on
the protected host's outputs: the paper's crop (keep a centred square, the rest set to 0),
Gaussian noise and JPEG.

Writes ``results.json`` (atomically) and one evidence grid per task under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixmark.bench.runner import device_name

NULL_ARCHS = ("unet", "dncnn", "red")
FLIPS = list(range(0, 33, 4))


def crop_zero(images: Tensor, keep: float) -> Tensor:
    """The paper's crop: keep a centred square of side ``keep`` x the image, zero the rest."""
    h, w = images.shape[-2:]
    side_h, side_w = round(h * keep), round(w * keep)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    out = torch.zeros_like(images)
    out[..., top : top + side_h, left : left + side_w] = images[
        ..., top : top + side_h, left : left + side_w
    ]
    return out


def attacks() -> dict[str, Any]:
    from pixmark.attacks.image import gaussian_noise, jpeg

    return {
        "crop keep 0.75": lambda x: crop_zero(x, 0.75),
        "crop keep 0.5": lambda x: crop_zero(x, 0.5),
        "noise 0.05": lambda x: gaussian_noise(x, 0.05, seed=0),
        "noise 0.1": lambda x: gaussian_noise(x, 0.1, seed=0),
        "jpeg 90": lambda x: jpeg(x, 90),
        "jpeg 50": lambda x: jpeg(x, 50),
    }


def train_host(
    task: str,
    arch: str,
    seed: int,
    channels: int,
    steps: int,
    *,
    width: int = 16,
    size: int = 64,
    device: str = "cpu",
) -> nn.Module:
    """A host or null model of ``task``: ``arch`` trained here on the bundled images."""
    from pixmark.api import train_model

    kwargs = {"depth": 2} if arch == "unet" else {"depth": 6} if arch == "dncnn" else {}
    return train_model(
        task,
        arch,
        steps=steps,
        size=size,
        width=width,
        channels=channels,
        seed=seed,
        arch_kwargs=kwargs,
        device=device,
        progress=False,
    ).model


def colour_logo(path: Path, owner: str) -> Path:
    """The owner's rendered logo in colour (initials in deep blue on orange), as a PNG."""
    from pixmark.data import save_image
    from pixmark.schemes.output import render_logo

    ink = 1 - render_logo(owner, size=64, channels=1)[0, 0]  # 1 where the letters are
    paper, letters = torch.tensor([1.0, 0.6, 0.1]), torch.tensor([0.1, 0.2, 0.7])
    image = paper[:, None, None] * (1 - ink) + letters[:, None, None] * ink
    return save_image(image, path)


def score(query: Any, key: Any) -> dict[str, Any]:
    from pixmark.schemes import keyed

    v = keyed.verify(query, key)
    return {
        "decision": v.decision,
        "p_value": v.p_value,
        "block_ber": v.statistic,
        "ber_mean": v.details["ber_mean"],
        "qr_matches_owner": v.details.get("qr_matches_owner"),
        "wm_psnr": v.details.get("wm_psnr"),
    }


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    from pixmark.errors import PixmarkError
    from pixmark.schemes import keyed
    from pixmark.schemes.base import as_query

    out = Path(args.out)
    start = time.perf_counter()
    sizes = {"width": args.host_width, "size": args.host_size, "device": args.device}
    host = train_host(task, "unet", args.seed, args.channels, args.host_steps, **sizes)
    nulls = [
        train_host(
            task, NULL_ARCHS[i % len(NULL_ARCHS)], 100 + i, args.channels, args.host_steps, **sizes
        )
        for i in range(args.nulls)
    ]
    watermark = "binary"
    if args.watermark == "color":
        watermark = str(colour_logo(out / f"logo-{task}.png", args.owner))
    # profile entries replaced from the command line (0: keep the profile's)
    overrides = {k: v for k, v in (("steps", args.steps), ("fidelity_end", args.fidelity_end)) if v}
    overrides.update(json.loads(args.set))
    rows = []
    for robust in [True] if args.robust_only else [False, True] if args.robust else [False]:
        secret = hashlib.sha256(f"pixmark keyed bench {task} {args.seed}".encode()).hexdigest()
        key = keyed.keygen(args.owner, watermark=watermark, channels=args.channels, secret=secret)
        t0 = time.perf_counter()
        try:
            result = keyed.protect(
                host,
                key,
                task=task,
                profile=args.profile,
                robust=robust,
                attempts=args.attempts,
                overrides=overrides or None,
                device=args.device,
                progress=False,
            )
        except PixmarkError as exc:  # the mark did not take: a result worth recording
            rows.append({"task": task, "robust": robust, "failed": str(exc)})
            continue
        protect_s = time.perf_counter() - t0
        key, model = result.key, result.model
        query = as_query(model)
        tag = f"{task}-{'robust' if robust else 'plain'}"
        keyed.verify(query, key, evidence_dir=out / "evidence" / tag)
        null_scores = [score(as_query(n), key) for n in nulls]
        rows.append(
            {
                "task": task,
                "robust": robust,
                "protect_seconds": round(protect_s, 1),
                "report": {k: v for k, v in result.report.items() if not isinstance(v, Tensor)},
                "protected": score(query, key),
                "original": score(as_query(host), key),
                "nulls": null_scores,
                "null_fpr": sum(s["decision"] == "match" for s in null_scores)
                / max(len(null_scores), 1),
                "key_sensitivity": keyed.key_sensitivity(query, key, flips=FLIPS),
                "attacks": {
                    name: score(lambda x, f=fn, q=query: f(q(x)).clamp(0, 1), key)
                    for name, fn in attacks().items()
                },
                "evidence": str(Path("evidence") / tag / "keyed_evidence.png"),
            }
        )
    return {"task": task, "rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="denoise,sr2,deblur")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--watermark", choices=["binary", "color"], default="binary")
    parser.add_argument("--robust", action="store_true", help="also protect with robust=True")
    parser.add_argument("--nulls", type=int, default=3)
    parser.add_argument("--attempts", type=int, default=2, help="keyed.protect attempts")
    parser.add_argument(
        "--fidelity-end", type=float, default=0, help="end of the fidelity ramp (0: the profile's)"
    )
    parser.add_argument("--steps", type=int, default=0, help="protect steps (0: the profile's)")
    parser.add_argument("--robust-only", action="store_true", help="only robust=True runs")
    parser.add_argument("--host-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--owner", default="ACME Imaging")
    parser.add_argument("--jobs", type=int, default=1, help="tasks run in parallel processes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--host-width", type=int, default=16, help="hosts' and nulls' width")
    parser.add_argument("--host-size", type=int, default=64, help="their training crop, px")
    parser.add_argument(
        "--set", default="{}", help="more profile entries as JSON, e.g. '{\"size\": 128}'"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_task, task, args) for task in tasks]
        for future in as_completed(futures):  # results.json grows as tasks finish
            results.append(future.result())
            summary = {
                "command": "benchmarks/keyed/run.py " + " ".join(sys.argv[1:]),
                "machine": f"{os.uname().machine}, {os.cpu_count()} cores, 1 torch thread/job"
                + (f", {device_name(args.device)}" if args.device != "cpu" else ""),
                "seconds": round(time.perf_counter() - start, 1),
                "args": vars(args),
                "tasks": sorted(results, key=lambda r: tasks.index(r["task"])),
            }
            tmp = out / "results.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1, default=str))
            tmp.replace(out / "results.json")
    for task in results:
        for row in task["rows"]:
            if "failed" in row:
                print(f"{row['task']:>8} robust={row['robust']!s:5} FAILED: {row['failed']}")
                continue
            p, r = row["protected"], row["report"]
            print(
                f"{row['task']:>8} robust={row['robust']!s:5} protected {p['decision']} "
                f"(p {p['p_value']:.1e}, BER {p['ber_mean']:.3f}) original "
                f"{row['original']['decision']} null FPR {row['null_fpr']:.2f} cost "
                f"{r['fidelity_cost']:.2f} dB attempts {r['attempts']}"
            )


if __name__ == "__main__":
    main()
