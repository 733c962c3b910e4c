"""Trigger scheme benchmark: fidelity, uniqueness, forged keys, pruning and fine-tuning.

    PYTHONPATH=src .venv/bin/python benchmarks/trigger/run.py --host dncnn --profile quick \
        --out runs/bench-trigger
    ... --design bernoulli     # the paper's Base-1 baseline through the same pipeline
    ... --host red | vdsr      # the paper's other denoising hosts, trained here
    ... --host vdsr --task sr2 # super-resolution (x2, VDSR convention); --host dncnn: SR-DnCNN

Writes ``results.json`` and ``evidence/`` under ``--out``. Every figure comes from this one
run: the host (a small DnCNN, RED or VDSR trained here on the bundled images, or the
pretrained FFDNet), null models (the same recipe with other seeds), and attacks applied to
the protected model.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from pixmark import data as pdata
from pixmark.api import train_model
from pixmark.bench.runner import device_name
from pixmark.nets import pretrained_ffdnet
from pixmark.schemes import trigger
from pixmark.schemes.base import as_query


def prune(model: nn.Module, rate: float) -> nn.Module:
    """Han et al.: per layer, zero the ``rate`` fraction of weights smallest in magnitude."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for module in pruned.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                w = module.weight
                k = int(rate * w.numel())
                if k > 0:
                    cut = w.abs().flatten().kthvalue(k).values
                    w.mul_((w.abs() > cut).to(w.dtype))
    return pruned.eval()


def drift(before: nn.Module, after: nn.Module) -> float:
    """How far an attack moved the weights: ||W' - W|| / ||W|| over conv/linear weights."""
    num = den = 0.0
    for a, b in zip(before.parameters(), after.parameters(), strict=True):
        if a.dim() > 1:
            num += float((b.detach() - a.detach()).pow(2).sum())
            den += float(a.detach().pow(2).sum())
    return (num / den) ** 0.5


def finetune(
    model: nn.Module, steps: int, seed: int, task: str = "denoise", device: str = "cpu"
) -> nn.Module:
    """The attacker fine-tunes on clean task data only (l_d, Adam 1e-4, batch 8, 40 px)."""
    tuned = copy.deepcopy(model)
    channels = tuned.config["channels"]
    splits = pdata.split_images(pdata.images("builtin", channels=channels), seed=0)
    sampler = pdata.PairSampler([i for _, i in splits["train"]], task, 40, channels, seed=seed)
    prof = dict(trigger.PROFILES["quick"], lr=1e-4)
    k = torch.zeros(1, channels, 8, 8)
    dev = trigger.Device(device)
    tuned.to(dev.torch)
    trigger._finetune(tuned, sampler, prof, dev, k, k, weight=0.0, steps=steps)
    return tuned.cpu().eval()


#: Hosts trained here (gray, 40 px crops): the paper's DnCNN, RED and VDSR, all with
#: ``--task denoise``; with ``--task sr2`` a VDSR or DnCNN ("SR-DnCNN") on upsampled inputs.
HOSTS = {
    "dncnn": {"width": 32, "arch_kwargs": {"depth": 8}},
    "red": {"width": 32, "arch_kwargs": {}},
    "vdsr": {"width": 32, "arch_kwargs": {"depth": 8}},
}


def train_host(
    arch: str, seed: int, steps: int, task: str = "denoise", device: str = "cpu"
) -> nn.Module:
    """A benchmark host or null model: ``HOSTS[arch]``, gray, 40 px crops of the bundled photos."""
    return train_model(
        task,
        arch,
        steps=steps,
        size=40,
        channels=1,
        seed=seed,
        device=device,
        progress=False,
        **HOSTS[arch],
    ).model


def dncnn(seed: int, steps: int) -> nn.Module:
    """The benchmark's default host and null models: gray DnCNN, depth 8, width 32, 40 px."""
    return train_host("dncnn", seed, steps)


def psnr_on_test(model: nn.Module, channels: int, task: str = "denoise") -> float:
    from pixmark.metrics import psnr

    splits = pdata.split_images(pdata.images("builtin", channels=channels), seed=0)
    x, y = pdata.fixed_pairs([i for _, i in splits["test"]], task, 64, 16, 2, channels)
    return float(psnr(as_query(model)(x), y))


def verify_latency(
    model: nn.Module, key: trigger.Key, device: str, runs: int = 20, rank_keys: int = 0
) -> dict:
    """Wall time of one ``trigger.verify`` of a model held on ``device`` (the paper's 2.8 s).

    With ``rank_keys=0`` the paper's verdict alone: one query with the key's trigger(s),
    the distance, the NCC and the Gamma null's p-value; no null models, no random keys, no
    evidence files. With ``rank_keys`` > 0 also the rank test (that many more trigger
    queries, batched 8 at a time by ``as_query``). Median and spread of ``runs`` calls
    after two warm-ups, synchronising CUDA around each.
    """
    dev = trigger.Device(device).torch
    query = as_query(copy.deepcopy(model).to(dev))
    times = []
    for i in range(runs + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        trigger.verify(query, key, rank_keys=rank_keys)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    return {
        "runs": runs,
        "median_ms": 1000 * times[len(times) // 2],
        "min_ms": 1000 * times[0],
        "max_ms": 1000 * times[-1],
    }


def _tests(v: trigger.Verdict) -> dict:
    """Which of verify's two tests matched, and the rank test's figures."""
    keys = ("matched_by", "rank_p", "rank_score", "rank_max", "rank_median", "rank_z")
    return {k: v.details.get(k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=(*HOSTS, "ffdnet"), default="dncnn")
    parser.add_argument("--task", default="denoise", help="denoise, or sr2 (VDSR/DnCNN hosts)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--host-steps", type=int, default=400)
    parser.add_argument("--nulls", type=int, default=2)
    parser.add_argument("--random-keys", type=int, default=200)
    parser.add_argument("--forge-tries", type=int, default=50)
    parser.add_argument("--out", default="runs/bench-trigger")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="override the profile's lr")
    parser.add_argument("--lam", type=float, default=None, help="override the profile's lambda")
    parser.add_argument("--awp", type=float, default=None, help="override the profile's awp")
    parser.add_argument(
        "--design", default="sobel", help="sobel, gradient, or bernoulli (the paper's Base-1)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training and timing)")
    parser.add_argument("--steps", type=int, default=None, help="override the profile's steps")
    parser.add_argument(
        "--early-stop",
        action="store_true",
        help="stop embedding once the response matches (time to embed, not the full budget)",
    )
    parser.add_argument(
        "--finetune-steps", default="100,300,1000", help="comma-separated attack budgets"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "args": vars(args),
        "device": device_name(args.device),
        "torch_threads": args.threads,
    }
    t0 = time.perf_counter()

    def save() -> None:  # after each part, so a run stopped early keeps what it measured
        results["seconds"] = time.perf_counter() - t0
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out / "results.json")

    task = args.task
    if args.host == "ffdnet":
        if task != "denoise":
            parser.error("the pretrained FFDNet is a denoiser (--task denoise)")
        host, null_arch = pretrained_ffdnet(channels=1), "dncnn"
    else:
        host, null_arch = train_host(args.host, 0, args.host_steps, task, args.device), args.host
    nulls = [
        train_host(null_arch, 100 + i, args.host_steps, task, args.device)
        for i in range(args.nulls)
    ]
    results["host_psnr"] = psnr_on_test(host, 1, task)
    results["null_psnr"] = [psnr_on_test(m, 1, task) for m in nulls]

    key = trigger.keygen("ACME Imaging", secret="5e" * 32, design=args.design, task=task)
    t = time.perf_counter()
    protected = trigger.protect(
        host,
        key,
        profile=args.profile,
        device=args.device,
        progress=False,
        control_run=True,
        overrides={
            k: v
            for k, v in (
                ("lr", args.lr),
                ("lam", args.lam),
                ("awp", args.awp),
                ("steps", args.steps),
                ("early_stop", True if args.early_stop else None),
            )
            if v is not None
        },
    )
    results["protect_seconds"] = time.perf_counter() - t
    results["protect_report"] = protected.report
    model, pkey = protected.model, protected.key
    results["verify_latency"] = verify_latency(model, pkey, args.device)
    results["verify_latency_with_rank_test"] = verify_latency(
        model, pkey, args.device, runs=5, rank_keys=trigger.RANK_KEYS
    )
    save()

    null_queries = [as_query(m) for m in nulls]
    suspects = {
        "protected": model,
        "unprotected": host,
        **{f"null{i}": m for i, m in enumerate(nulls)},
    }
    results["verify"] = {}
    for name, suspect in suspects.items():
        v = trigger.verify(
            as_query(suspect),
            pkey,
            nulls=null_queries,
            random_keys=args.random_keys,
            evidence_dir=out / "evidence" / name,
        )
        results["verify"][name] = {
            "decision": v.decision,
            "d": v.statistic,
            "eta": v.threshold,
            "p": v.p_value,
            **{
                k: v.details.get(k)
                for k in (
                    "ncc",
                    "matched_by",
                    "rank_p",
                    "rank_score",
                    "rank_max",
                    "logo_ncc",
                    "empirical_p",
                    "null_fpr",
                    "null_d_min",
                    "null_ncc_max",
                    "n_null_scores",
                )
            },
        }

    save()

    # Uniqueness (paper Table IV/V): min over P random keys of d(M(K_i), G(K_i)).
    uniq = {}
    for name, suspect in suspects.items():
        s = trigger.null_scores([as_query(suspect)], pkey, args.random_keys)
        uniq[name] = {
            "min_d_random_keys": min(s["d"][1:]),
            "max_ncc_random_keys": max(s["ncc"][1:]),
        }
    results["uniqueness"] = uniq
    save()

    # Ambiguity attack: best of N forged keys on the stolen (protected) model.
    forged = trigger.forge_key(model, "Mallory", tries=args.forge_tries, task=task)
    v = trigger.verify(as_query(model), forged)
    results["forged"] = {
        "tries": args.forge_tries,
        "decision": v.decision,
        "d_on_stolen_model": v.statistic,
        "design_d": v.details["design_d"],
        "design_ncc": v.details["design_ncc"],
    }

    save()

    results["pruning"] = []
    for rate in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        pruned = prune(model, rate)
        v = trigger.verify(as_query(pruned), pkey)
        results["pruning"].append(
            {
                "rate": rate,
                "psnr": psnr_on_test(pruned, 1, task),
                "d": v.statistic,
                "ncc": v.details["ncc"],
                "logo_ncc": v.details.get("logo_ncc"),
                "decision": v.decision,
                **_tests(v),
            }
        )

    save()

    results["finetuning"] = []
    for steps in [int(n) for n in args.finetune_steps.split(",") if n]:
        tuned = finetune(model, steps, seed=7, task=task, device=args.device)
        v = trigger.verify(as_query(tuned), pkey)
        results["finetuning"].append(
            {
                "steps": steps,
                "weight_drift": drift(model, tuned),
                "psnr": psnr_on_test(tuned, 1, task),
                "d": v.statistic,
                "ncc": v.details["ncc"],
                "decision": v.decision,
                **_tests(v),
            }
        )
        save()

    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
