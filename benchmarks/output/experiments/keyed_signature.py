"""A richer, owner-specific content signature, tested against random keys (session 13).

The shipped signature (session 8) is one chroma direction: another owner's key reads cos θ
of our correlation, so it cannot enter the decision. This probe gives the signature many
keyed dimensions while keeping it a function of the content with isotropic kernels
(rotation-, flip- and shift-covariant): per band-pass scale σ, the output's band-pass luma
DoG_σ(L) is multiplied by a keyed gain that depends on the local mean luma (a short
Fourier series in G_σ(L)) and carried on a keyed chroma direction. The key is a unit
vector of coefficients over that basis.

The test needs no null models: under "the suspect is not derived from this key's model"
the owner's coefficients are one more draw from the distribution random keys come from,
so the rank of the owner's correlation among R random keys' is an exact p-value.

Measures on a derain target signed with the probe signature (no H, no logo): the p-value
of the signed model, of augmented and plain U-Net L2 surrogates of it, and of clean and
independent models (which must be uniform).

    .venv/bin/python benchmarks/output/experiments/keyed_signature.py --out runs/ksig
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.schemes import output
from pixmark.schemes.base import as_query, independent_models
from pixmark.schemes.output import _gaussian_blur

E = output.CHROMA  # two orthonormal chroma axes, orthogonal to grey


#: Session 14: split each band's DoG into its positive and negative parts (two maps per band
#: instead of luma-dependent gains; harmonics must be 0): twice the keyed dimensions from
#: the same scales, still pointwise in the band-pass, so still isotropic and learnable.
SPLIT = False


def basis(b: Tensor, sigmas: tuple[float, ...], harmonics: int) -> Tensor:
    """Basis maps [N, S, 2M+1, 2, 3, H, W] of images b [N, 3, H, W] ([N, S, 2, 2, 3, H, W]
    with ``SPLIT``)."""
    luma = b.mean(dim=1, keepdim=True)
    maps = []
    for s in sigmas:
        small, big = _gaussian_blur(luma, s / 2), _gaussian_blur(luma, s)
        dog = small - big
        if SPLIT:
            per_part = torch.stack([dog.clamp_min(0), dog.clamp_max(0)], dim=1)
            maps.append(per_part[:, :, None] * E.view(1, 1, 2, 3, 1, 1))
            continue
        gains = [torch.ones_like(big)]
        for i in range(1, harmonics + 1):
            gains += [math.sqrt(2) * torch.cos(2 * math.pi * i * big),
                      math.sqrt(2) * torch.sin(2 * math.pi * i * big)]  # fmt: skip
        per_gain = torch.stack([g * dog for g in gains], dim=1)  # [N, J, 1, H, W]
        maps.append(per_gain[:, :, None] * E.view(1, 1, 2, 3, 1, 1))
    return torch.stack(maps, dim=1)


class Signed(nn.Module):
    def __init__(self, model: nn.Module, coef: Tensor, sigmas, harmonics, amp) -> None:  # noqa: ANN001
        super().__init__()
        self.model, self.coef, self.sigmas, self.harmonics, self.amp = (
            model, coef, sigmas, harmonics, amp)  # fmt: skip

    def template(self, b: Tensor) -> Tensor:
        k = basis(b, self.sigmas, self.harmonics)
        return torch.einsum("nsjcxhw,sjc->nxhw", k, self.coef)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        b = self.model(x).clamp(0, 1)
        return (b + self.amp * self.template(b)).clamp(0, 1)


def random_key_p(outputs: Tensor, unmarked: Tensor, coef: Tensor, sigmas, harmonics,  # noqa: ANN001
                 n_random: int = 9999, amp: float | None = None) -> dict:  # fmt: skip
    k = basis(unmarked, sigmas, harmonics).flatten(1, 3)  # [N, K, 3, H, W]
    k = k.transpose(0, 1).flatten(1)  # [K, pixels]
    d = (outputs - unmarked).flatten()
    g = k @ d
    gram = k @ k.T
    gen = torch.Generator().manual_seed(12345)
    rand = torch.randn(n_random, k.shape[0], generator=gen)
    rand = rand / rand.norm(dim=1, keepdim=True)
    c = coef.flatten()

    def score(v: Tensor) -> Tensor:
        return (v @ g) / ((v @ gram) * v).sum(-1).clamp_min(1e-20).sqrt() / d.norm()

    rho = float(score(c[None])[0])
    r = score(rand)
    p = (1 + int((r >= rho).sum())) / (n_random + 1)
    # Least-squares fit of d on the basis: how much of each (scale, harmonic) group of
    # the key's template the suspect carries (1 = all of it at the signed amplitude).
    beta = torch.linalg.solve(gram + 1e-9 * torch.eye(len(gram)), g).view_as(coef)
    amp = amp or 1.0
    transfer = ((beta * coef).sum(-1) / (amp * coef.pow(2).sum(-1))).tolist()
    eig = torch.linalg.eigvalsh(gram)
    eff = float(eig.sum() ** 2 / (eig**2).sum())  # participation ratio
    return {"rho": round(rho, 4), "p": p, "random_mean": round(float(r.mean()), 4),
            "random_std": round(float(r.std()), 4),
            "z": round((rho - float(r.mean())) / float(r.std()), 2),
            "effective_dims": round(eff, 1), "dims": int(k.shape[0]),
            "transfer": [[round(v, 2) for v in row] for row in transfer]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ksig")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--psnr", type=float, default=38.0)
    p.add_argument("--sigmas", default="2,4")
    p.add_argument("--harmonics", type=int, default=4)
    p.add_argument("--steps", default="300,600")
    p.add_argument("--skip-nulls", action="store_true")
    p.add_argument("--split", action="store_true", help="DoG+ and DoG- per band (harmonics 0)")
    args = p.parse_args()
    global SPLIT
    SPLIT = args.split
    if args.split and args.harmonics != 0:
        p.error("--split needs --harmonics 0")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sigmas = tuple(float(s) for s in args.sigmas.split(","))
    t0 = time.time()
    target = api.train_model("derain", "unet", steps=300, size=64, width=16, seed=0,
                             progress=False).model.eval()  # fmt: skip
    spec, ch, splits = api.task_splits("derain")
    train_imgs = [im for _, im in splits["train"]]
    queries = data.fixed_pairs([im for _, im in splits["val"]], spec, 64, 32, seed=7)[0]
    key = output.keygen("ACME Imaging", secret="5" * 64)
    gen = key.generator("signature-coef")
    parts = 2 if args.split else 2 * args.harmonics + 1
    coef = torch.randn(len(sigmas), parts, 2, generator=gen)
    coef = coef / coef.norm()
    signed = Signed(target, coef, sigmas, args.harmonics, 1.0)
    with torch.no_grad():
        b = target(queries).clamp(0, 1)
        unit = float(signed.template(b).pow(2).mean().sqrt())
    signed.amp = 10 ** (-args.psnr / 20) / unit
    with torch.no_grad():
        mse = float((signed(queries) - b).pow(2).mean())
    print("signed psnr", round(-10 * math.log10(mse), 2), flush=True)

    def surrogate(teacher, arch, steps, augment, seed):  # noqa: ANN001, ANN202
        sampler = data.PairSampler(train_imgs, spec, 64, ch, seed=5000 + seed)
        return train_surrogate(as_query(teacher), sampler, arch=arch, loss="l2",
                               augment=augment, steps=steps, size=64, width=16, seed=seed,
                               device="cpu", progress=False).eval()  # fmt: skip

    suspects: dict[str, nn.Module] = {"signed": signed, "unprotected": target}
    other = output.keygen("Someone Else", secret="6" * 64)
    nulls = independent_models(other, "derain", output.INDEPENDENT, steps=100, width=8,
                               size=40, channels=ch, device="cpu")  # fmt: skip
    suspects.update({f"independent_{i}": m for i, m in enumerate(nulls)})
    print("nulls", round(time.time() - t0), flush=True)
    rows = []

    def report(name: str, model: nn.Module) -> None:
        with torch.no_grad():
            o = model(queries).clamp(0, 1)
        row = {"suspect": name, **random_key_p(o, b, coef, sigmas, args.harmonics, amp=signed.amp)}
        rows.append(row)
        print(json.dumps(row), round(time.time() - t0), flush=True)

    for name, m in suspects.items():
        if name in ("signed", "unprotected") or not args.skip_nulls:
            report(name, m)
    for i, steps in enumerate(int(s) for s in args.steps.split(",")):
        report(f"aug_unet_{steps}", surrogate(signed, "unet", steps, True, 1 + i))
    report("plain_unet_300", surrogate(signed, "unet", 300, False, 9))
    report("clean_aug_unet_600", surrogate(target, "unet", 600, True, 6))
    tag = f"psnr{args.psnr:g}-s{args.sigmas.replace(',', '_')}-m{args.harmonics}"
    tag += "-split" if args.split else ""
    result = {"args": vars(args), "rows": rows, "seconds": round(time.time() - t0)}
    (out / f"keyed-signature-{tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
