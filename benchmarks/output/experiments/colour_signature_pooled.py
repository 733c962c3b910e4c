# ruff: noqa
"""Prototype 2: a richer keyed colour signature, detected on block means (session 5).

B' = M'(A) + eps * g_k(M'(A)), g_k a sum of J keyed sines of the pixel colour (commutes
with rotate / flip / crop and nearly with resize). Detection: correlation of the 8x8 /
16x16 block means of (suspect - unmarked M) with those of g_k(M), as a z-score against
300 random keys. Needs `make demo` artefacts in runs/demo. Usage (2 CPU cores, one
thread each): `.venv/bin/python benchmarks/output/experiments/colour_signature_pooled.py
EPS STEPS J`, e.g. `0.02 300 32`; it trains augmented UNet L2 surrogates (width 16) of
the signed model (and at 300 steps of the demo's protected and unprotected models) and
prints {pool: (rho, z)} per model. Results in docs/schemes/output.md ("Limits").
"""

import json, math, sys, time
import torch

torch.set_num_threads(1)
import torch.nn.functional as F
from torch import nn
from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.checkpoint import load_model, save_model
from pixmark.keys import load_key
from pixmark.metrics import psnr
from pixmark.schemes.base import as_query

J = int(sys.argv[3]) if len(sys.argv) > 3 else 32


def params(seed, ch=3):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(J, ch, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    freq = 1.0 + 2.0 * torch.rand(J, 1, generator=g)
    phase = 2 * math.pi * torch.rand(J, generator=g)
    amp = torch.randn(ch, J, generator=g) * math.sqrt(2.0 / J)
    return d * freq, phase, amp


def g_k(x, p):
    w, phase, amp = p
    c = x.permute(0, 2, 3, 1)
    return (torch.sin(2 * math.pi * (c @ w.T) + phase) @ amp.T).permute(0, 3, 1, 2)


class Tone(nn.Module):
    def __init__(s, base, p, eps):
        super().__init__()
        s.base, s.p, s.eps = base, p, eps

    def forward(s, x):
        b = s.base(x).clamp(0, 1)
        return (b + s.eps * g_k(b, s.p)).clamp(0, 1)


D = "runs/demo"
import os

os.makedirs("/tmp/colour_signature", exist_ok=True)
key = load_key(f"{D}/acme.key", "output")
wm = load_model(f"{D}/protected.safetensors").eval()
target = load_model(f"{D}/target.safetensors").eval()
indep = load_model(f"{D}/independent.safetensors").eval()
q = key.tensor("queries")
EPS = float(sys.argv[1])
STEPS = int(sys.argv[2])
p = params(12345)
tone = Tone(wm, p, EPS).eval()
with torch.no_grad():
    ref = target(q).clamp(0, 1)
    print(
        "psnr tone vs wm",
        float(psnr(tone(q), wm(q))),
        "vs target",
        float(psnr(tone(q), ref)),
        flush=True,
    )
spec, ch, splits = api.task_splits("derain")
train_imgs = [im for _, im in splits["train"]]


def sur(teacher, seed, name):
    path = f"/tmp/colour_signature/{name}.safetensors"
    try:
        return load_model(path).eval()
    except Exception:
        pass
    s = data.PairSampler(train_imgs, spec, 64, ch, seed=1000 + seed)
    t0 = time.time()
    m = train_surrogate(
        as_query(teacher),
        s,
        arch="unet",
        loss="l2",
        augment=True,
        steps=STEPS,
        width=16,
        seed=seed,
        device="cpu",
        progress=False,
    )
    save_model(m, path, task="derain", force=True)
    print("trained", name, time.time() - t0, flush=True)
    return m.eval()


nulls = [params(100000 + i) for i in range(300)]


def pool(x, k):
    return F.avg_pool2d(x, k) if k > 1 else x


def zscore(model, k):
    with torch.no_grad():
        out = model(q).clamp(0, 1)
    r = pool(out - ref, k)
    r = r - r.mean(dim=(2, 3), keepdim=True)

    def rho(pp):
        t = pool(g_k(ref, pp), k)
        t = t - t.mean(dim=(2, 3), keepdim=True)
        return float((r * t).sum() / (r.norm() * t.norm() + 1e-12))

    mine = rho(p)
    o = torch.tensor([rho(pp) for pp in nulls])
    return round(mine, 4), round(float((mine - o.mean()) / o.std()), 2)


models = {
    "tone": tone,
    "wm": wm,
    "indep": indep,
    f"augsur_tone_e{EPS}_s{STEPS}": sur(tone, 2, f"tone_e{EPS}_s{STEPS}_J{J}"),
}
if STEPS == 300:
    models.update(
        {
            f"augsur_wm_s{STEPS}": sur(wm, 3, f"wm_s{STEPS}"),
            f"augsur_target_s{STEPS}": sur(target, 4, f"target_s{STEPS}"),
        }
    )
res = {}
for name, m in models.items():
    res[name] = {k: zscore(m, k) for k in (1, 4, 8, 16)}
    print(name, res[name], flush=True)
