"""pixmark's public functions. The CLI is a thin layer over these.

* :func:`train_model` trains a task model (a target to protect, or a null model).
* :func:`keygen`, :func:`protect`, :func:`verify`: the three steps of every scheme.
* :func:`train_nulls`: independently trained clean models that calibrate verdicts.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pixmark import data, nets
from pixmark.checkpoint import load_model, model_channels, save_model
from pixmark.errors import PixmarkError
from pixmark.fileio import check_output_path
from pixmark.keys import Key, load_key, save_key
from pixmark.schemes.base import Protected, Query, as_query, model_device
from pixmark.stats import Verdict
from pixmark.train import Device, History, evaluate, fit

#: Validation/test crops drawn per split when training a task model.
EVAL_CROPS = 16


@dataclass
class TrainedModel:
    """A trained task model with its held-out metrics (PSNR in dB, SSIM in [0, 1])."""

    model: nn.Module
    task: str
    metrics: dict[str, float]
    history: History
    path: Path | None


def task_splits(
    task: str, channels: int | None = None, source: str | None = None, data_seed: int = 0
) -> tuple[data.TaskSpec, int, dict[str, list[Any]]]:
    """The task spec, the channel count and the by-image train/val/test split of its images."""
    spec = data.task(task)
    channels = channels or spec.default_channels
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels}")
    items = data.images(source or spec.source, channels=channels)
    if (source or spec.source) in ("builtin:xray", "builtin:texture"):
        # Only two real radiographs (three textures) ship offline: split 3x3 tiles of them
        # (tiles share no pixels) so that validation and test crops still come from unseen
        # regions.
        items = data.tile_images(items, grid=3)
    if len(items) < 3:
        raise PixmarkError(
            f"{source or spec.source} has {len(items)} image(s); at least 3 are needed to "
            "split into train, validation and test"
        )
    return spec, channels, data.split_images(items, seed=data_seed)


def train_model(
    task: str,
    arch: str,
    *,
    steps: int = 300,
    size: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    width: int | None = None,
    channels: int | None = None,
    source: str | None = None,
    seed: int = 0,
    data_seed: int = 0,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    force: bool = False,
    checkpoint_every: int = 50,
    arch_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train ``arch`` on ``task`` from the task's real images and report held-out quality.

    Crops of ``size`` px are drawn from the training split; validation and test crops
    come from images never seen in training. With ``out`` the model is saved as a pixmark
    checkpoint; its training state goes to ``<out>.state.pt`` every ``checkpoint_every``
    steps so ``resume=True`` continues after a kill. Returned metrics: ``psnr``/``ssim``
    of the model on the test crops and ``psnr_input`` of the degraded input (the gain is
    their difference).
    """
    out_path = check_output_path(out, force) if out is not None else None
    spec, channels, splits = task_splits(task, channels, source, data_seed)
    kwargs = dict(arch_kwargs or {})
    kwargs["channels"] = channels
    if width is not None:
        kwargs["width"] = width
    torch.manual_seed(seed)  # the initial weights too: one seed, one model
    model = nets.create(arch, **kwargs)
    train_imgs = [img for _, img in splits["train"]]
    sampler = data.PairSampler(train_imgs, spec, size=size, channels=channels, seed=seed)
    val = data.fixed_pairs(
        [img for _, img in splits["val"]], spec, size, EVAL_CROPS, seed=1, channels=channels
    )
    test = data.fixed_pairs(
        [img for _, img in splits["test"]], spec, size, EVAL_CROPS, seed=2, channels=channels
    )
    dev = Device(device)
    state_path = out_path.with_name(out_path.name + ".state.pt") if out_path else None
    history = fit(
        model,
        sampler,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        device=dev,
        seed=seed,
        checkpoint=state_path,
        resume=resume,
        checkpoint_every=checkpoint_every,
        val_pairs=val,
        val_every=max(steps // 5, 1),
        description=f"train {arch} on {task}",
        progress=progress,
    )
    model = model.cpu().eval()
    metrics = evaluate(model, *test)
    from pixmark.metrics import psnr

    metrics["psnr_input"] = float(psnr(test[0], test[1]))
    metrics["val_psnr"] = history.validation[-1]["psnr"]
    if out_path is not None:
        save_model(
            model,
            out_path,
            task=task,
            data_seed=data_seed,
            metrics=metrics,
            extra={
                "train": {
                    "steps": steps,
                    "size": size,
                    "batch_size": batch_size,
                    "lr": lr,
                    "seed": seed,
                    "source": source or spec.source,
                }
            },
            force=force,
        )
        if state_path is not None:
            state_path.unlink(missing_ok=True)
    return TrainedModel(model=model, task=task, metrics=metrics, history=history, path=out_path)


@torch.no_grad()
def apply_model(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Run ``model`` on [N, C, H, W] images in [0, 1] in batches; outputs clamped to [0, 1]."""
    device = model_device(model)
    outs = [
        model(images[i : i + batch_size].to(device)).float().clamp(0, 1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outs)


# --------------------------------------------------------------------------- schemes

#: Scheme name -> module implementing keygen / protect / verify.
SCHEMES: dict[str, str] = {
    "output": "pixmark.schemes.output",
    "trigger": "pixmark.schemes.trigger",
    "keyed": "pixmark.schemes.keyed",
}


def scheme_module(name: str) -> ModuleType:
    """The module implementing scheme ``name``."""
    if name not in SCHEMES:
        raise PixmarkError(f"unknown scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return importlib.import_module(SCHEMES[name])


def _call(scheme: str, fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """Call a scheme function, naming any option that does not apply to the scheme."""
    accepted = inspect.signature(fn).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        names = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise PixmarkError(f"option {names} does not apply to the {scheme} scheme")
    return fn(*args, **options)


def as_key(key: Key | str | os.PathLike[str], scheme: str | None = None) -> Key:
    """A :class:`Key`, loading (and checking) it if a path is given."""
    return key if isinstance(key, Key) else load_key(key, scheme)


def keygen(
    scheme: str,
    owner: str,
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    **options: Any,
) -> Key:
    """Make a new secret key of ``scheme`` for ``owner``; save it to ``out`` if given.

    Options are the scheme's (``logo``, ``size``, ``channels`` for ``output``; ``size``,
    ``task``, ``channels``, ``design``, ``count`` for ``trigger``; ``watermark``,
    ``channels``, ``bits`` for ``keyed``). A key file is never overwritten unless ``force``.
    """
    module = scheme_module(scheme)
    if out is not None:
        check_output_path(out, force)
    key = _call(scheme, module.keygen, owner, **options)
    if out is not None:
        save_key(key, out, force=force)
    return key


def protect(
    model: nn.Module | str | os.PathLike[str],
    key: Key | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    key_out: str | os.PathLike[str] | None = None,
    force: bool = False,
    **options: Any,
) -> Protected:
    """Watermark ``model`` with ``key``; return the model to deploy and the updated key.

    ``options`` go to the scheme's ``protect`` (``task``, ``data``, ``profile``, ``device``,
    ``checkpoint``, ``resume``, ...). With ``out`` the protected model is saved as a
    pixmark checkpoint (``.safetensors``) or, for a model that is not from the zoo, as
    TorchScript (``.pt``). The updated key (it now holds what verification needs) is
    written to ``key_out``, by default over the key file given, atomically. A key that
    already protects a model is not replaced unless ``force``: the first model would no
    longer verify.
    """
    loaded_key = as_key(key)
    module = scheme_module(loaded_key.scheme)
    key_path = key_out or (key if not isinstance(key, Key) else None)
    if loaded_key.params.get("protected") and not force:
        raise PixmarkError(
            f"this {loaded_key.scheme} key already protects a model "
            f"({loaded_key.params['protected']}); make a new key with keygen, or pass --force"
        )
    if out is not None:
        check_output_path(out, force)
    host = load_model(model) if not isinstance(model, nn.Module) else model
    result: Protected = _call(loaded_key.scheme, module.protect, host, loaded_key, **options)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    result.key = result.key.with_updates(params={"protected": stamp})
    if out is not None:
        _save_protected(result.model, Path(out), loaded_key, result.report, force)
        result.report["model_path"] = str(out)
    if key_path is not None:
        save_key(result.key, key_path, force=True)
        result.report["key_path"] = str(key_path)
    return result


def _save_protected(
    model: nn.Module, out: Path, key: Key, report: dict[str, Any], force: bool
) -> None:
    extra = {"protected": {"scheme": key.scheme, "owner": key.owner}}
    if out.suffix == ".safetensors":
        metrics = {k: v for k, v in report.items() if isinstance(v, int | float)}
        save_model(model, out, task=report.get("task"), metrics=metrics, extra=extra, force=force)
        return
    from pixmark.export import export_torchscript

    export_torchscript(model, out, channels=key.params.get("channels", 3), force=True)


def suspect_query(
    suspect: nn.Module | str | os.PathLike[str] | Query,
    *,
    weights: str | os.PathLike[str] | None = None,
    name: str = "suspect",
    channels: int = 3,
    http_options: dict[str, Any] | None = None,
) -> Query:
    """A :data:`Query` for a model, a model file or spec, a URL, or a query function.

    A URL (``http://`` or ``https://``) is queried as a black box with
    :func:`pixmark.remote.http_query` (``http_options``: headers, rate_per_s,
    max_requests, timeout, request_format, response_format); a ``.onnx`` file runs with
    onnxruntime.
    """
    if isinstance(suspect, nn.Module):
        return as_query(suspect, name=name)
    if callable(suspect):
        return suspect
    text = str(suspect)
    if text.startswith(("http://", "https://")):
        from pixmark.remote import http_query

        return http_query(text, channels=channels, **(http_options or {}))
    if text.endswith(".onnx"):
        from pixmark.export import onnx_query

        return onnx_query(text)
    return as_query(load_model(suspect, weights=weights), name=f"{name} {suspect}")


def null_queries(nulls: str | os.PathLike[str] | list[Any] | None) -> list[Query] | None:
    """Queries for null models: a folder of checkpoints, or a list of models/paths."""
    if nulls is None:
        return None
    if isinstance(nulls, str | os.PathLike):
        folder = Path(nulls)
        if not folder.is_dir():
            raise PixmarkError(f"null-model folder {folder} does not exist")
        paths = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt"))
        if not paths:
            raise PixmarkError(f"null-model folder {folder} holds no .safetensors or .pt models")
        nulls = list(paths)
    return [suspect_query(n, name=f"null model {i}") for i, n in enumerate(nulls)]


def verify(
    suspect: nn.Module | str | os.PathLike[str] | Query,
    key: Key | str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    nulls: str | os.PathLike[str] | list[Any] | None = None,
    evidence_dir: str | os.PathLike[str] | None = None,
    http_options: dict[str, Any] | None = None,
    cert: str | os.PathLike[str] | None = None,
    pubkey: str | os.PathLike[str] | None = None,
    suspect_released_at: str | None = None,
    repeats: int = 1,
    dither: float = 0.0,
    **options: Any,
) -> Verdict:
    """Was ``suspect`` derived from the model protected with ``key``?

    ``suspect`` is a model, a model file (checkpoint, TorchScript), a
    ``package.module:factory`` spec with ``weights``, or a query function (black box).
    ``nulls`` (a folder of independently trained models, or a list) calibrates the
    decision empirically. A URL suspect is queried over HTTP (``http_options``). With
    ``cert`` and ``pubkey`` the owner's signed certificate is checked first (commitment of
    this key, signature, and a timestamp before ``suspect_released_at``). Returns the
    scheme's :class:`~pixmark.stats.Verdict`; evidence images go to ``evidence_dir``.

    ``repeats`` > 1 asks every question that many times and averages the answers, and
    ``dither`` > 0 adds fresh noise of that level to each repeat's input
    (:func:`pixmark.schemes.base.repeated`): against a suspect that adds random noise to its
    answers to hide a mark. The null models are asked the same way.
    """
    from pixmark.schemes.base import repeated

    loaded_key = as_key(key)
    module = scheme_module(loaded_key.scheme)
    checked = None
    if cert is not None:
        from pixmark.certify import check_certificate

        if pubkey is None:
            raise PixmarkError("a certificate is checked against the owner's public key: give it")
        checked = check_certificate(
            cert, pubkey, key=loaded_key, suspect_released_at=suspect_released_at
        )
    query = suspect_query(
        suspect,
        weights=weights,
        channels=loaded_key.params.get("channels", 3),
        http_options=http_options,
    )
    null_list = null_queries(nulls)
    averaged = repeats != 1 or dither != 0
    if averaged:
        query = repeated(query, repeats, dither)
        if null_list is not None:
            null_list = [repeated(n, repeats, dither, seed=i + 1) for i, n in enumerate(null_list)]
    evidence = Path(evidence_dir) if evidence_dir is not None else None
    verdict = _call(
        loaded_key.scheme,
        module.verify,
        query,
        loaded_key,
        nulls=null_list,
        evidence_dir=evidence,
        **options,
    )
    if checked is not None:
        verdict = replace(verdict, details={**verdict.details, "certificate": checked})
    if averaged:
        verdict = replace(
            verdict, details={**verdict.details, "repeats": repeats, "dither": dither}
        )
    return verdict


#: Architectures cycled through by :func:`train_nulls`, so nulls differ in design too.
NULL_ARCHS = ("unet", "dncnn", "resnet9", "red")


def train_nulls(
    task: str,
    count: int,
    out_dir: str | os.PathLike[str],
    *,
    archs: tuple[str, ...] = NULL_ARCHS,
    steps: int = 300,
    size: int = 64,
    width: int = 16,
    channels: int | None = None,
    source: str | None = None,
    first_seed: int = 1000,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Train ``count`` independent clean models of ``task`` into ``out_dir``.

    Model i uses architecture ``archs[i % len(archs)]``, seed ``first_seed + i`` and a
    different by-image data split (``data_seed = first_seed + i``), so no two nulls share
    initialisation, design and training images. They never see any key: they measure how
    often a scheme accuses an innocent model. Finished models are kept, so a killed run
    continues where it stopped.
    """
    if count < 1:
        raise PixmarkError(f"count must be >= 1, got {count}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        arch = archs[i % len(archs)]
        path = folder / f"null{i:03d}_{arch}.safetensors"
        paths.append(path)
        if path.exists() and not force:
            continue
        train_model(
            task,
            arch,
            steps=steps,
            size=size,
            width=width,
            channels=channels,
            source=source,
            seed=first_seed + i,
            data_seed=first_seed + i,
            device=device,
            out=path,
            resume=True,
            force=force,
            progress=progress,
        )
    return paths


def attacker_inputs(
    task: str,
    channels: int | None = None,
    source: str | None = None,
    seed: int = 7,
    size: int = 32,
) -> data.PairSampler:
    """Real degraded inputs of ``task`` an attacker would own (their targets are unused).

    Crops of ``size`` px come from the training split, so they never include the
    verification queries, which the schemes draw from held-out images.
    """
    spec, channels, splits = task_splits(task, channels, source)
    imgs = [img for _, img in splits["train"]]
    return data.PairSampler(imgs, spec, size=size, channels=channels, seed=seed)


#: Attacks that clean a suspect's answers (:mod:`pixmark.attacks.removal`).
REMOVAL_KINDS = ("estimate_and_subtract", "removal_network")


def _removal_attack(
    kind: str,
    model: nn.Module | str | os.PathLike[str] | Query,
    strength: float | str | None,
    task: str | None,
    data_source: str | None,
    options: dict[str, Any],
) -> nn.Module | Query:
    """Run a removal attack with ``task``'s real images as the attacker's own images.

    ``estimate_and_subtract`` queries the suspect on ``n_images`` degraded inputs of the
    task; ``removal_network`` trains its purifier on clean crops of the task's images
    (and, with ``fidelity``, queries the suspect on their degraded versions). A local
    model gives ``Chain(model, stage)``; a black box gives the cleaned Query.
    """
    from pixmark.attacks import removal

    if task is None:
        raise PixmarkError(f"the {kind} attack needs --task (what the suspect does)")
    n_images = int(options.pop("n_images", 64))
    size = int(options.pop("size", 64))
    if n_images < 1 or size < 8:
        raise PixmarkError(f"the {kind} attack needs n_images >= 1 and size >= 8 px")
    if callable(model) and not isinstance(model, nn.Module):
        channels = options.pop("channels", None) or getattr(model, "channels", None) or 3
        victim, query = None, model
    else:
        victim = load_model(model) if not isinstance(model, nn.Module) else model
        options.pop("channels", None)
        channels = model_channels(victim)
        query = victim
    sampler = attacker_inputs(task, channels, data_source, seed=int(options.get("seed", 0)) + 7,
                              size=size)  # fmt: skip
    degraded, clean = sampler.batch(n_images)
    if strength is not None:
        options["strength"] = float(strength)
    if kind == "estimate_and_subtract":
        options.pop("seed", None)
        attacked = _call(kind, removal.estimate_and_subtract, query, degraded, **options)
    else:
        options.setdefault("size", size)
        attacked = _call(kind, removal.removal_network, query, clean, inputs=degraded, **options)
    if victim is None:
        return attacked
    return attacked.behind(victim)


def steal_pairs(
    url: str,
    task: str,
    pairs: str | os.PathLike[str],
    *,
    count: int = 256,
    size: int = 96,
    channels: int | None = None,
    data_source: str | None = None,
    rate_per_s: float | None = None,
    max_requests: int | None = None,
    force: bool = False,
    progress: bool = True,
    seed: int = 7,
    **query_options: Any,
) -> Path:
    """Scrape ``count`` (input, answer) pairs from the image service at ``url``; resumable.

    The inputs are ``count`` fixed ``size`` x ``size`` crops of ``task``'s real degraded
    training images (the attacker's own; never the verification queries). Answers are
    saved to ``pairs`` (``.safetensors``) as they arrive; calling again with the same
    arguments continues where the last call stopped (a kill, an error, or the request
    budget ``max_requests`` of one call). Returns ``pairs`` once every answer is in;
    raises a :class:`PixmarkError` saying how many are in otherwise.
    """
    from pixmark.remote import collect_pairs

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PixmarkError(f"count (pairs to collect) must be a positive integer, got {count!r}")
    spec, channels, splits = task_splits(task, channels, data_source)
    inputs, _ = data.fixed_pairs(
        [img for _, img in splits["train"]], spec, size, count, seed=seed, channels=channels
    )
    got, _ = collect_pairs(
        url,
        inputs,
        pairs,
        rate_per_s=rate_per_s if rate_per_s is not None else 50.0,
        max_requests=max_requests,
        channels=channels,
        resume=not force,
        force=force,
        progress=progress,
        **query_options,
    )
    if len(got) < count:
        raise PixmarkError(
            f"collected {len(got)} of {count} pairs into {pairs} (request budget reached); "
            "run the same command again to continue"
        )
    return Path(pairs)


def attack(
    kind: str,
    model: nn.Module | str | os.PathLike[str] | Query,
    strength: float | str | None = None,
    *,
    task: str | None = None,
    data_source: str | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    **options: Any,
) -> nn.Module | Query:
    """Attack a (stolen) model; return the attacked copy and save it to ``out`` if given.

    ``kind`` is a model-level attack of :data:`pixmark.attacks.MODEL_ATTACKS` (``prune``,
    ``prune_channels``, ``quantize``, ``fine_tune``) with its ``strength``, or
    ``surrogate``: train a new model on ``model``'s outputs only (black box; options
    ``arch``, ``loss``, ``adv``, ``augment``, ``steps``, ``size``, ``width``, ``seed``,
    ``device``). ``fine_tune`` and ``surrogate`` draw inputs from ``task``'s real images.

    ``overwrite``: embed the attacker's own watermark of ``scheme=`` (``output`` or
    ``trigger``) with a fresh key; ``strength`` is the protect profile (default
    ``quick``); options ``owner``, ``seed``, ``overrides``, ``device`` and ``key_out``
    (where to save the attacker's key, which verifies the result).

    ``estimate_and_subtract`` (strength in [0, 2]) and ``removal_network`` (strength =
    noise sigma in (0, 0.2]): clean every answer of ``model``
    (:mod:`pixmark.attacks.removal`) using ``n_images`` (default 64) crops of ``size``
    px (default 64) of ``task``'s real images; a local model gives a
    ``pixmark.checkpoint.Chain`` (saved as one checkpoint), a black box (a Query or URL
    query) a cleaned Query, which cannot be saved.
    """
    from pixmark import attacks
    from pixmark.attacks.surrogate import train_surrogate

    if out is not None:
        check_output_path(out, force)
    meta_task = task or _model_task(model)
    key_out = options.pop("key_out", None)
    if key_out is not None and kind != "overwrite":
        raise PixmarkError("--key-out applies to the overwrite attack only")
    if kind == "overwrite":
        from pixmark.attacks.model import overwrite_protected

        if meta_task is None:
            raise PixmarkError("the overwrite attack needs --task (the model's task)")
        if "scheme" not in options:
            raise PixmarkError(
                f"the overwrite attack needs --scheme ({', '.join(SCHEMES)}): the kind of "
                "watermark the attacker embeds"
            )
        if key_out is not None:
            check_output_path(key_out, force)
        victim = load_model(model) if not isinstance(model, nn.Module) else model
        strength = strength if strength is not None else "quick"
        options.setdefault("progress", False)
        scheme = options.pop("scheme")
        protected = _call(
            "overwrite", overwrite_protected, victim, scheme, task=meta_task, profile=strength,
            data=data_source, **options,
        )  # fmt: skip
        if key_out is not None:
            save_key(protected.key, key_out, force=force)
        options["scheme"] = scheme
        result = protected.model.cpu().eval()
    elif kind in REMOVAL_KINDS:
        if out is not None and callable(model) and not isinstance(model, nn.Module):
            raise PixmarkError(
                f"the {kind} attack on a black box gives a query, not a model to save; "
                "attack a local model file to get one"
            )
        attacked = _removal_attack(kind, model, strength, meta_task, data_source, options)
        if not isinstance(attacked, nn.Module):
            return attacked
        result = attacked
    elif kind == "surrogate":
        if meta_task is None:
            raise PixmarkError("the surrogate attack needs --task (the teacher's task)")
        pairs = options.pop("pairs", None)
        if pairs is not None:
            # Steal offline: scrape the service once (resumable), then train on the pairs.
            from pixmark.remote import PairsSource

            if not (isinstance(model, str) and model.startswith(("http://", "https://"))):
                raise PixmarkError("pairs= (collect, then train) needs the teacher's URL")
            http = options.pop("http_options", None) or {}
            channels = options.pop("channels", None)
            path = steal_pairs(
                model,
                meta_task,
                pairs,
                count=options.pop("queries", 256),
                size=options.pop("collect_size", 96),
                channels=channels,
                data_source=data_source,
                progress=options.get("progress", True),
                **http,
            )
            teacher = None  # the pairs already hold its answers
            inputs = PairsSource(path, size=options.get("size", 64), seed=options.get("seed", 0))
            channels = inputs.channels
        elif callable(model) and not isinstance(model, nn.Module):
            # A black box (e.g. an HTTP service): it knows its channel count, or we are told.
            channels = options.pop("channels", None) or getattr(model, "channels", None) or 3
            teacher = model
            inputs = attacker_inputs(meta_task, channels, data_source)
        else:
            victim = load_model(model) if not isinstance(model, nn.Module) else model
            options.pop("channels", None)
            teacher, channels = as_query(victim, name="teacher"), model_channels(victim)
            inputs = attacker_inputs(meta_task, channels, data_source)
        result = _call("surrogate", train_surrogate, teacher, inputs, channels=channels, **options)
    elif kind in attacks.MODEL_ATTACKS:
        victim = load_model(model) if not isinstance(model, nn.Module) else model
        if strength is None:
            raise PixmarkError(f"the {kind} attack needs --strength")
        if kind == "fine_tune":
            if meta_task is None:
                raise PixmarkError("the fine_tune attack needs --task")
            options["source"] = attacker_inputs(meta_task, model_channels(victim), data_source)
            strength = int(float(strength))
        elif kind != "quantize":
            strength = float(strength)
        result = attacks.apply_model_attack(kind, victim, strength, **options)
    else:
        kinds = ", ".join([*attacks.MODEL_ATTACKS, "surrogate"])
        raise PixmarkError(f"unknown attack {kind!r}; choose from {kinds}")
    if out is not None:
        save_model(
            result,
            out,
            task=meta_task,
            force=force,
            extra={
                "attack": {
                    "kind": kind,
                    "strength": strength,
                    **{k: v for k, v in options.items() if isinstance(v, int | float | str | bool)},
                }
            },
        )
    return result


def _model_task(model: Any) -> str | None:
    if isinstance(model, str | os.PathLike) and str(model).endswith(".safetensors"):
        from pixmark.checkpoint import read_config

        return read_config(model).get("task")
    return None
