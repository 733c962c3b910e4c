"""Quan et al.'s *Base-2* baseline for the ``trigger`` scheme: a label backdoor.

The paper (TNNLS 2020, sec. V-A) compares its image-to-image trigger with the way
classifiers are watermarked (Adi et al., USENIX Security 2018): a fixed layer that
"combines random projection with softmax" is put after the host, turning the image
model into a classifier, and the host is fine-tuned so that 40 secret trigger images fall
into secret classes out of 256. The projection is drawn from N(0, 1) and never trained;
it is used only to embed and verify, never by the deployed model.

pixmark's version:

* key (scheme ``trigger-base2``): ``n_triggers`` uniform-noise images of ``size`` px and
  one label each in ``[0, classes)``, all from the key's secret (HMAC seeds); the
  projection P [classes, C·size²] is derived from the secret too, not stored;
* logits of a model M on trigger K: ``TEMPERATURE · P · (2·M(K) − 1) / sqrt(C·size²)``
  (the scaling keeps the softmax out of saturation at the start; the paper gives none);
* protect: fine-tune on the task loss l_d (as the trigger scheme: half the summed squared
  error per image) + ``lam`` · the summed cross-entropy of the triggers, until every
  trigger is in its class (checked every ``check_every`` steps) or ``steps`` run out;
* verify (the rule of Adi et al. with a calibrated p-value): ``hits`` = triggers whose
  arg-max class is their label; under the null (a model that never saw the key) each hit
  has probability 1/classes, so p = P(Binomial(n, 1/classes) >= hits); match iff
  p <= 1e-3. ``statistic`` is the fraction of hits.

Usage::

    from pixmark.baselines import label_trigger as base2
    key = base2.keygen("ACME Imaging", channels=1)
    result = base2.protect(model, key, task="denoise")    # Protected(model, key, report)
    verdict = base2.verify(as_query(suspect), key)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark import data as pdata
from pixmark.errors import PixmarkError
from pixmark.keys import Key, new_key
from pixmark.schemes.base import Protected, Query, as_query
from pixmark.schemes.trigger import freeze_norm_statistics
from pixmark.stats import Verdict, binomial_tail, decide
from pixmark.train import Device, run

SCHEME = "trigger-base2"
#: The paper's setting: 40 trigger images, 256 classes.
N_TRIGGERS, CLASSES = 40, 256
#: Logit scale of the fixed projection (module docstring).
TEMPERATURE = 8.0
ALPHA = 1e-3
#: Fine-tuning budget. Small hosts trained briefly need the large rate (as Base-1 and the
#: trigger scheme do at the quick budget, docs/schemes/trigger.md).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"steps": 400, "lr": 1e-3, "lam": 0.01, "batch_size": 8, "patch": 40,
              "check_every": 25, "eval_size": 64, "eval_count": 16},
    "paper": {"steps": 15000, "lr": 1e-4, "lam": 0.01, "batch_size": 128, "patch": 40,
              "check_every": 500, "eval_size": 256, "eval_count": 68},
}  # fmt: skip


def keygen(
    owner: str,
    *,
    channels: int = 1,
    size: int = 40,
    n_triggers: int = N_TRIGGERS,
    classes: int = CLASSES,
    task: str = "denoise",
    secret: str | None = None,
) -> Key:
    """A Base-2 key: ``n_triggers`` noise images [n, channels, size, size] in [0, 1] and labels."""
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels}")
    if not 8 <= size <= 256:
        raise PixmarkError(f"trigger size must be 8 to 256 px, got {size}")
    if not 1 <= n_triggers <= 1000:
        raise PixmarkError(f"n_triggers must be 1 to 1000, got {n_triggers}")
    if not 2 <= classes <= 4096:
        raise PixmarkError(f"classes must be 2 to 4096, got {classes}")
    pdata.task(task)  # raises for an unknown task
    params = {"channels": channels, "size": size, "n_triggers": n_triggers,
              "classes": classes, "task": task}  # fmt: skip
    key = new_key(SCHEME, owner, params=params, secret=secret)
    g = key.generator("base2/triggers")
    triggers = torch.rand(n_triggers, channels, size, size, generator=g)
    labels = torch.randint(classes, (n_triggers,), generator=key.generator("base2/labels"))
    return key.with_updates(tensors={"triggers": triggers, "labels": labels})


def _check_key(key: Any) -> dict[str, Any]:
    if not isinstance(key, Key):
        raise PixmarkError(f"expected a pixmark Key, got {type(key).__name__}")
    if key.scheme != SCHEME:
        raise PixmarkError(f"this is a {key.scheme!r} key, not a {SCHEME!r} (Base-2) key")
    p = key.params
    triggers, labels = key.tensors.get("triggers"), key.tensors.get("labels")
    shape = (p["n_triggers"], p["channels"], p["size"], p["size"])
    if triggers is None or tuple(triggers.shape) != shape:
        raise PixmarkError(f"the key's triggers are missing or not {list(shape)}")
    if labels is None or labels.shape != (p["n_triggers"],) or int(labels.max()) >= p["classes"]:
        raise PixmarkError("the key's labels are missing or out of range")
    return p


def projection(key: Key) -> Tensor:
    """The fixed random projection P [classes, C·size²] of N(0, 1) entries (from the secret)."""
    p = _check_key(key)
    dim = p["channels"] * p["size"] ** 2
    return torch.randn(p["classes"], dim, generator=key.generator("base2/projection"))


def logits(outputs: Tensor, proj: Tensor) -> Tensor:
    """Class logits [n, classes] of trigger outputs [n, C, s, s] in [0, 1]."""
    flat = outputs.flatten(1) * 2 - 1
    return TEMPERATURE * flat @ proj.T / math.sqrt(flat.shape[1])


def hits_p_value(hits: int, n: int, classes: int) -> float:
    """P(at least ``hits`` of ``n`` triggers in their class by chance, 1/classes each)."""
    return binomial_tail(hits, n, 1.0 / classes)


def _critical_hits(n: int, classes: int, alpha: float = ALPHA) -> int:
    return next(k for k in range(n + 1) if hits_p_value(k, n, classes) <= alpha)


def measure(query: Query, key: Key) -> dict[str, Any]:
    """Answers of ``query`` to the key's triggers: hits, accuracy and the null p-value."""
    p = _check_key(key)
    triggers = key.tensor("triggers").float()
    outputs = query(triggers)
    if not isinstance(outputs, Tensor) or outputs.shape != triggers.shape:
        raise PixmarkError(
            f"the suspect answered the {list(triggers.shape)} triggers with "
            f"{list(getattr(outputs, 'shape', []))}"
        )
    if not bool(torch.isfinite(outputs).all()):
        raise PixmarkError("the suspect's answers to the triggers are not finite (NaN weights?)")
    predicted = logits(outputs.float().clamp(0, 1), projection(key)).argmax(1)
    hits = int((predicted == key.tensor("labels")).sum())
    n = p["n_triggers"]
    return {"hits": hits, "n": n, "accuracy": hits / n,
            "p_value": hits_p_value(hits, n, p["classes"])}  # fmt: skip


def verify(query: Query, key: Key, alpha: float = ALPHA) -> Verdict:
    """Match iff the suspect puts significantly many triggers in their secret classes."""
    m = measure(query, key)
    p = key.params
    critical = _critical_hits(m["n"], p["classes"], alpha)
    return Verdict(
        scheme=SCHEME,
        statistic=m["accuracy"],
        threshold=critical / m["n"],
        p_value=m["p_value"],
        decision=decide(m["p_value"], alpha),
        n_queries=m["n"],
        details={
            "statistic_name": "trigger accuracy",
            "hits": m["hits"],
            "alpha": alpha,
            "chance": 1.0 / p["classes"],
        },  # fmt: skip
    )


def protect(
    model: nn.Module,
    key: Key,
    *,
    task: str | None = None,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Protected:
    """Fine-tune a copy of ``model`` on l_d + lam · CE(triggers); report fidelity (dB)."""
    p = _check_key(key)
    if profile not in PROFILES:
        raise PixmarkError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    prof = {**PROFILES[profile], **(overrides or {})}
    from pixmark.api import task_splits

    task = task or p["task"]
    config = getattr(model, "config", {}) or {}
    if config.get("channels", p["channels"]) != p["channels"]:
        raise PixmarkError(
            f"the model takes {config['channels']}-channel images but the key's triggers "
            f"have {p['channels']}"
        )
    spec, _, splits = task_splits(task, p["channels"])
    train = [img for _, img in splits["train"]]
    test = pdata.fixed_pairs([img for _, img in splits["test"]], spec, prof["eval_size"],
                             prof["eval_count"], seed=2, channels=p["channels"])  # fmt: skip
    dev = Device(device)
    host = copy.deepcopy(model).to(dev.torch).train()
    triggers = key.tensor("triggers").float().to(dev.torch)
    labels = key.tensor("labels").long().to(dev.torch)
    proj = projection(key).to(dev.torch)
    sampler = pdata.PairSampler(train, spec, prof["patch"], p["channels"],
                                seed=key.seed("base2/protect") % 2**31)  # fmt: skip
    optimizer = torch.optim.Adam(host.parameters(), lr=prof["lr"])
    done: dict[str, int] = {}

    def step_fn(step: int) -> dict[str, float]:
        if "at" in done:
            return {"done": 1.0}
        freeze_norm_statistics(host)  # as the trigger scheme: BN keeps the host's statistics
        x, y = sampler.batch(prof["batch_size"])
        x, y = x.to(dev.torch), y.to(dev.torch)
        with dev.autocast():
            out = host(x).float()
            out_k = host(triggers).float()
        l_d = 0.5 * (out - y).pow(2).flatten(1).sum(1).mean()
        scores = logits(out_k.clamp(0, 1), proj)
        l_w = F.cross_entropy(scores, labels, reduction="sum")
        loss = l_d + prof["lam"] * l_w
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % prof["check_every"] == 0 and bool((scores.argmax(1) == labels).all()):
            done["at"] = step + 1
        return {"l_d": float(l_d.detach()), "l_w": float(l_w.detach())}

    history = run(step_fn, {"host": host, "opt": optimizer, "source": sampler}, prof["steps"],
                  description="protect (Base-2)", progress=progress)  # fmt: skip
    host = host.cpu().eval()
    from pixmark.metrics import psnr

    before = float(psnr(as_query(model)(test[0]), test[1]))
    after = float(psnr(as_query(host)(test[0]), test[1]))
    m = measure(as_query(host), key)
    report = {"psnr_before": before, "psnr_after": after, "delta_psnr": before - after,
              "hits": m["hits"], "n_triggers": m["n"], "steps": done.get("at", prof["steps"]),
              "seconds": history.seconds}  # fmt: skip
    return Protected(model=host, key=key, report=report)
