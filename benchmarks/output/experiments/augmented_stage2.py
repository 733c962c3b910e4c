# ruff: noqa
"""Does R, fine-tuned on augmented surrogates, recover the logo from unseen augmented surrogates?

Exploratory script of session 2 (2026-11-23), kept so the negative result in
docs/schemes/output.md can be re-run: it needs `make demo` artefacts in runs/demo and an
augmented attacker surrogate of runs/demo/protected.safetensors saved as
/tmp/aug/sur_aug.safetensors (pixmark attack surrogate ... --augment --steps 300).
Ran with `nice -n 5 .venv/bin/python <script>` on 2 shared CPU cores.
"""

import json
import sys
import time

import torch

torch.set_num_threads(1)
from pixmark import api, data
from pixmark.attacks.surrogate import train_surrogate
from pixmark.checkpoint import load_model, save_model
from pixmark.keys import load_key
from pixmark.schemes import output
from pixmark.schemes.base import as_query

D = "/work/main/runs/demo"
key = load_key(f"{D}/acme.key", "output")
wm = load_model(f"{D}/protected.safetensors").eval()
target = load_model(f"{D}/target.safetensors").eval()
spec, ch, splits = api.task_splits("derain")
train_imgs = [im for _, im in splits["train"]]
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300


def sur(teacher, seed, name):
    path = f"/tmp/augexp/{name}.safetensors"
    try:
        return load_model(path).eval()
    except Exception:
        pass
    s = data.PairSampler(train_imgs, spec, 64, ch, seed=1000 + seed)
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
    return m


t0 = time.time()
sw1 = load_model("/tmp/aug/sur_aug.safetensors").eval()
sc1 = sur(target, 1, "clean1")
sw2 = sur(wm, 2, "wm2")
sc2 = sur(target, 3, "clean2")
print("surrogates", time.time() - t0, flush=True)

r = output.load_extractor(key)
logo, blank = key.tensor("logo"), key.tensor("blank")
queries = key.tensor("queries")


def score(q):
    return float(output.logo_nc(output.extract(key.with_updates(), q), logo).mean())


pool_a, pool_b = data.fixed_pairs(train_imgs, spec, 64, 128, seed=5, channels=ch)
with torch.no_grad():
    pos = torch.cat([sw1(pool_a).clamp(0, 1), wm(pool_a).clamp(0, 1)])
    neg = torch.cat([sc1(pool_a).clamp(0, 1), target(pool_a).clamp(0, 1), pool_a, pool_b])
r.train()
opt = torch.optim.Adam(r.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
for step in range(300):
    ip = torch.randint(len(pos), (8,), generator=g)
    ineg = torch.randint(len(neg), (8,), generator=g)
    loss, parts = output._extract_loss(r, pos[ip], neg[ineg], logo, blank, g)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(step, parts, flush=True)
r.eval()


def nc(model):
    with torch.no_grad():
        out = model(queries).clamp(0, 1)
        rec = r(out)
    return output.logo_nc(rec, logo)


res = {}
for name, m in [
    ("wm", wm),
    ("target", target),
    ("sur_wm1_train", sw1),
    ("sur_clean1_train", sc1),
    ("sur_wm2_heldout", sw2),
    ("sur_clean2_heldout", sc2),
]:
    s = nc(m)
    res[name] = {"mean": float(s.mean()), "succ": int((s > 0.95).sum()), "n": len(s)}
    print(name, res[name], flush=True)
json.dump(res, open("/tmp/augexp/result.json", "w"), indent=1)
