# ruff: noqa
"""Session-3 probe: can the keyed extractor E learn to read a fixed mark from scratch?

E alone (no host training) on outputs of a fixed small U-Net denoiser (or clean targets),
positives = the same images plus a mark, negatives = unmarked ones and noisy inputs.
Usage: python gate_probe.py MODE SECRET [LR] with MODE checker | noise | tile_P_S[_fixed].
Needs /tmp/keyed_exp/cache/host.pt (train_model("denoise", "unet", steps=100, size=64,
width=16, channels=1, seed=0, arch_kwargs={"depth": 2}) saved with torch.save).
Results: docs/schemes/keyed.md, "Session 3: warm starts that did not help".
"""

import sys, torch, time

torch.set_num_threads(1)
from pixmark import data as pdata
from pixmark.api import task_splits
from pixmark.schemes import keyed as K
from pixmark.nets.keyed_extractor import KeyedExtractor

mode = sys.argv[1]
secret = sys.argv[2]
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 2e-3
host = torch.load("/tmp/keyed_exp/cache/host.pt", weights_only=False).eval()
key = K.keygen("ACME Imaging", channels=1, secret=secret)
spec, ch, splits = task_splits("denoise", 1)
sampler = pdata.PairSampler([i for _, i in splits["train"]], spec, 64, ch, seed=1)
torch.manual_seed(0)
E = KeyedExtractor(**K.extractor_config(key, "quick"))
opt = torch.optim.Adam(E.parameters(), lr=lr)
bits = K._bits(key)
target = K.target_of(key)
g = torch.Generator().manual_seed(0)
checker = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 2 - 1.0


def mark(z):
    if mode.startswith("tile"):
        _, p, st = mode.split("_")[:3]
        tile = K.carrier(key, 1, int(p))
        shifts = None if "fixed" in mode else torch.randint(int(p), (len(z), 2), generator=g)
        return K.add_carrier(z, tile, float(st), shifts)
    if mode == "checker":
        return (z + 0.03 * checker).clamp(0, 1)
    if mode == "noise":
        return (z + 0.03 * torch.randn(z.shape, generator=g)).clamp(0, 1)


t0 = time.time()
for step in range(201):
    x, y = sampler.batch(8)
    with torch.no_grad():
        base = host(x)
    plain = torch.cat([base[:4], y[4:]]).clamp(0, 1)
    marked = mark(plain)
    feats = E.features(torch.cat([marked, plain, x[:4]]))
    wk = E.decode(feats, bits)
    wrong = K._wrong_keys(bits, 4, g)
    nk = E.decode(feats[:4], wrong)
    l1 = (wk[:8] - target).abs().mean()
    l2 = wk[8:].pow(2).mean()
    l3 = nk.pow(2).mean()
    logit = E.gate(feats).mean(dim=(2, 3)).flatten()
    lab = torch.cat([torch.ones(8), torch.zeros(len(logit) - 8)])
    lg = torch.nn.functional.binary_cross_entropy_with_logits(logit, lab)
    loss = l1 + 2 * l2 + 0.5 * l3 + lg
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 25 == 0:
        gate = torch.sigmoid(E.gate(feats).mean(dim=(2, 3))).flatten()
        print(
            step,
            round(float(l1), 3),
            round(float(l2), 3),
            round(float(l3), 3),
            "gate+",
            round(float(gate[:8].mean()), 2),
            "gate-",
            round(float(gate[8:].mean()), 2),
            round(time.time() - t0),
            flush=True,
        )
