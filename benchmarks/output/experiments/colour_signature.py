# ruff: noqa
"""Prototype: a keyed pointwise colour signature that commutes with rotate/flip/crop/resize.

Exploratory script of session 2 (2026-11-23), kept so the negative result in
docs/schemes/output.md can be re-run: it needs `make demo` artefacts in runs/demo and an
augmented attacker surrogate of runs/demo/protected.safetensors saved as
/tmp/aug/sur_aug.safetensors (pixmark attack surrogate ... --augment --steps 300).
Ran with `nice -n 5 .venv/bin/python <script>` on 2 shared CPU cores.
"""

import json
import math
import sys
import time

import torch

torch.set_num_threads(1)
from torch import nn

from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.checkpoint import load_model, save_model
from pixmark.keys import load_key
from pixmark.metrics import psnr
from pixmark.schemes.base import as_query

J = 8


def params(seed, ch=3):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(J, ch, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    freq = 1.0 + 2.0 * torch.rand(J, 1, generator=g)
    w = d * freq
    phase = 2 * math.pi * torch.rand(J, generator=g)
    amp = torch.randn(ch, J, generator=g) / math.sqrt(J)
    return w, phase, amp


def g_k(x, p):  # x [N,C,H,W] -> [N,C,H,W]
    w, phase, amp = p
    c = x.permute(0, 2, 3, 1)  # N H W C
    s = torch.sin(2 * math.pi * (c @ w.T) + phase)  # N H W J
    out = s @ amp.T  # N H W C
    return out.permute(0, 3, 1, 2)


class Tone(nn.Module):
    def __init__(self, base, p, eps):
        super().__init__()
        self.base, self.p, self.eps = base, p, eps

    def forward(self, x):
        b = self.base(x).clamp(0, 1)
        return (b + self.eps * g_k(b, self.p)).clamp(0, 1)


D = "/work/main/runs/demo"
key = load_key(f"{D}/acme.key", "output")
wm = load_model(f"{D}/protected.safetensors").eval()
target = load_model(f"{D}/target.safetensors").eval()
indep = load_model(f"{D}/independent.safetensors").eval()
q = key.tensor("queries")
KEY_SEED = 12345
EPS = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
p = params(KEY_SEED)
w2 = Tone(wm, p, EPS).eval()
with torch.no_grad():
    ref = target(q).clamp(0, 1)
    print(
        "psnr tone vs wm",
        float(psnr(w2(q), wm(q))),
        "vs target",
        float(psnr(w2(q), ref)),
        flush=True,
    )

spec, ch, splits = api.task_splits("derain")
train_imgs = [im for _, im in splits["train"]]
path = f"/tmp/augexp/tone_sur_{EPS}.safetensors"
try:
    sur = load_model(path).eval()
except Exception:
    s = data.PairSampler(train_imgs, spec, 64, ch, seed=1002)
    t0 = time.time()
    sur = train_surrogate(
        as_query(w2),
        s,
        arch="unet",
        loss="l2",
        augment=True,
        steps=300,
        width=16,
        seed=2,
        device="cpu",
        progress=False,
    )
    save_model(sur, path, task="derain", force=True)
    print("trained", time.time() - t0, flush=True)

nulls = [params(100000 + i) for i in range(500)]


def zscore(model):
    with torch.no_grad():
        out = model(q).clamp(0, 1)
    r = out - ref
    r = r - r.mean(dim=(2, 3), keepdim=True)

    def rho(pp):
        t = g_k(ref, pp)
        t = t - t.mean(dim=(2, 3), keepdim=True)
        return float((r * t).sum() / (r.norm() * t.norm() + 1e-12))

    mine = rho(p)
    others = torch.tensor([rho(pp) for pp in nulls])
    z = (mine - others.mean()) / others.std()
    return {
        "rho": mine,
        "null_mean": float(others.mean()),
        "null_std": float(others.std()),
        "z": float(z),
        "rank": int((others >= mine).sum()),
    }


res = {}
models = {
    "tone_protected": w2,
    "wm_only": wm,
    "target": target,
    "independent": indep,
    "aug_sur_of_tone": sur,
}
for n in ["clean1", "clean2", "wm2"]:
    try:
        models["aug_sur_" + n] = load_model(f"/tmp/augexp/{n}.safetensors").eval()
    except Exception as e:
        print(n, e)
models["aug_sur_wm1"] = load_model("/tmp/aug/sur_aug.safetensors").eval()
for name, m in models.items():
    res[name] = zscore(m)
    print(name, res[name], flush=True)
json.dump(res, open(f"/tmp/augexp/tone_{EPS}.json", "w"), indent=1)
