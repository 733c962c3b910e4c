# ruff: noqa
"""Sub-crop phase experiment on the demo's output-protected model (session 2, 2026-11-23).

Needs `make demo` artefacts in runs/demo. `python <script> random|even|c64`, nice -n 5, 2 shared
CPU cores. Printed: random no match 0.0 0 / even match 0.980 32 / c64 match 0.981 32.
Session 8: PIXMARK_DEMO=<folder with acme.key, protected.safetensors> also prints the
content signature's rho / p / fit cos (angle before session 13).
"""

import os, sys, torch

torch.set_num_threads(1)
from pixmark import api, data
from pixmark.checkpoint import load_model
from pixmark.keys import load_key
from pixmark.remote import PairsSource, quantize
from pixmark.schemes import output
from pixmark.schemes.base import as_query
from pixmark.attacks.surrogate import train_surrogate

D = os.environ.get("PIXMARK_DEMO", "/work/main/runs/demo")  # session 8: any key + model folder
key = load_key(f"{D}/acme.key", "output")
prot = load_model(f"{D}/protected.safetensors").eval()
spec, ch, splits = api.task_splits("derain")
train = [im for _, im in splits["train"]]
mode = sys.argv[1]
size = 96 if mode != "c64" else 64
x, _ = data.fixed_pairs(train, spec, size, 128, seed=7, channels=ch)
with torch.no_grad():
    y = quantize(api.apply_model(prot, x))
x = quantize(x)
if mode == "even":

    class Even(PairsSource):
        def batch(self, n):
            g = self.generator
            rows = torch.randint(len(self.inputs), (n,), generator=g)
            xs, ys = [], []
            for i in rows.tolist():
                t = int(torch.randint(0, 17, (1,), generator=g)) * 2
                l = int(torch.randint(0, 17, (1,), generator=g)) * 2
                xs.append(self.inputs[i, :, t : t + 64, l : l + 64])
                ys.append(self.outputs[i, :, t : t + 64, l : l + 64])
            return torch.stack(xs), torch.stack(ys)

    src = Even((x, y), size=64, seed=11)
else:
    src = PairsSource((x, y), size=64, seed=11)
sur = train_surrogate(
    None, src, arch="unet", loss="l2", steps=200, width=16, seed=11, device="cpu", progress=False
)
v = output.verify(as_query(sur), key)
sig = {
    k: v.details[k]
    for k in ("signature_rho", "signature_p_value", "signature_fit_cos")
    if k in v.details
}
print(mode, v.decision, v.statistic, v.details.get("successes"), sig, flush=True)
