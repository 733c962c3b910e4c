"""The benchmark grid: scheme x task x attack x strength x seed, resumable, in parallel.

A config (YAML file or dict, see ``benchmarks/README.md``) names the schemes, the tasks and
their target models, the attacks with their strengths, the seeds and how many null
models to train. :func:`run_bench` then

1. trains (or reuses) one target model per (task, seed) and ``nulls`` null models per task;
2. makes a key and protects the target once per (scheme, task, seed);
3. runs every *cell*: attacks the protected model (model level), trains a surrogate of it
   (surrogate), or distorts its outputs (image level: every answer of the suspect passes
   through the attack before the scheme sees it), verifies the suspect with the key, and
   appends one JSON row to ``results.jsonl``. Every null model also gets a row per key
   (attack ``null``): how often an innocent model is accused;
4. writes ``report.html`` and ``report.md`` (:mod:`pixmark.bench.report`).

Everything expensive is cached under ``out_dir/cache`` in folders named by a hash of the
settings that made it, and written atomically (a folder counts only once its
``build.json`` exists). A cell id also carries the hash of its settings, so a killed run
continues with the cells it had not finished, and a changed config never reuses stale rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write_json, atomic_write_text

#: Pseudo-attacks: ``none`` verifies the protected model itself, ``null`` a null model.
CLEAN = "none"
NULL = "null"
RESULTS = "results.jsonl"
#: What ``run_bench(rebuild=...)`` can redo, and the build job kind each names.
REBUILD = {"targets": "target", "nulls": "null", "protected": "protect", "cells": None}
#: Settings every cell row carries (in this order first).
ROW_KEYS = (
    "cell_id",
    "scheme",
    "task",
    "seed",
    "attack",
    "level",
    "strength",
    "decision",
    "statistic",
    "threshold",
    "p_value",
)
_CONFIG_KEYS = {
    "name",
    "profile",
    "device",
    "threads",
    "seeds",
    "tasks",
    "schemes",
    "attacks",
    "nulls",
    "fidelity",
    "verify_with_nulls",
    "owner",
    "profiles",
}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Attack:
    """One attack line of the grid: a kind, its strengths and fixed options.

    ``name`` labels the line in results and reports (default: the kind), so one kind can
    appear several times with different options (e.g. surrogates of several architectures).
    ``verify``: options for ``pixmark.verify`` on this line's cells, over the scheme's own
    (e.g. ``{repeats: 256, dither: 0.004}`` against a noisy service).
    """

    kind: str
    strengths: tuple[Any, ...]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    verify: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def level(self) -> str:
        return attack_level(self.kind)


def attack_level(kind: str) -> str:
    """``clean``, ``image``, ``model``, ``surrogate`` or ``null`` for an attack name."""
    from pixmark.attacks import IMAGE_ATTACKS, MODEL_ATTACKS

    if kind == CLEAN:
        return "clean"
    if kind == NULL:
        return "null"
    if kind == "surrogate":
        return "surrogate"
    if kind in MODEL_ATTACKS:
        return "model"
    if kind in IMAGE_ATTACKS:
        return "image"
    kinds = [CLEAN, *IMAGE_ATTACKS, *MODEL_ATTACKS, "surrogate"]
    raise PixmarkError(
        f"unknown attack {kind!r} in the bench config; choose from {', '.join(kinds)}"
    )


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` on top: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    config: dict[str, Any] | str | os.PathLike[str], profile: str | None = None
) -> dict[str, Any]:
    """Read and normalise a bench config (a dict, or a YAML file).

    A config may define ``profiles``: named overlays (e.g. ``quick``, ``cpu``, ``paper``)
    merged over its top-level settings; ``profile`` picks one, and the run's name gets the
    profile as a suffix. Without ``profile`` the top-level settings run as written.
    """
    if isinstance(config, dict):
        raw = copy.deepcopy(config)
        where = "the bench config"
    else:
        path = Path(config)
        if not path.is_file():
            raise PixmarkError(f"bench config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise PixmarkError(f"bench config {path} is not valid YAML ({exc})") from None
        where = str(path)
        if not isinstance(raw, dict):
            raise PixmarkError(f"bench config {path} must be a YAML mapping")
        raw.setdefault("name", path.stem)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise PixmarkError(f"{where}: profiles must map a name to a mapping of settings")
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(profiles) or "none"
            raise PixmarkError(f"{where} has no profile {profile!r}; it defines: {known}")
        if "profiles" in profiles[profile]:
            raise PixmarkError(f"{where}: profile {profile!r} cannot define profiles")
        raw = _merge(raw, profiles[profile])
        raw["name"] = f"{raw.get('name', 'bench')}-{profile}"
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise PixmarkError(
            f"{where} has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_CONFIG_KEYS))}"
        )
    from pixmark.api import SCHEMES

    cfg: dict[str, Any] = {
        "name": str(raw.get("name", "bench")),
        "profile": str(raw.get("profile", "quick")),
        "device": str(raw.get("device", "auto")),
        "threads": raw.get("threads"),
        "owner": str(raw.get("owner", "pixmark bench")),
        "verify_with_nulls": bool(raw.get("verify_with_nulls", True)),
    }
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise PixmarkError(f"{where}: seeds must be a list of integers, got {seeds!r}")
    cfg["seeds"] = list(seeds)

    tasks = raw.get("tasks")
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, dict) or not tasks:
        raise PixmarkError(f"{where}: tasks must name at least one task (e.g. denoise)")
    from pixmark import data

    cfg["tasks"] = {}
    for name, spec in tasks.items():
        data.task(name)  # raises for an unknown task
        spec = dict(spec or {})
        spec.setdefault("arch", "dncnn")
        spec.setdefault("steps", 300)
        spec.setdefault("size", 64)
        cfg["tasks"][name] = spec

    schemes = raw.get("schemes")
    if isinstance(schemes, list):
        schemes = {s: {} for s in schemes}
    if not isinstance(schemes, dict) or not schemes:
        raise PixmarkError(f"{where}: schemes must name at least one of {', '.join(SCHEMES)}")
    cfg["schemes"] = {}
    for name, spec in schemes.items():
        # A scheme line may carry its own name: {output-no-stage2: {scheme: output, ...}}
        spec = dict(spec or {})
        spec["scheme"] = str(spec.get("scheme", name))
        if spec["scheme"] not in SCHEMES:
            raise PixmarkError(
                f"{where}: unknown scheme {spec['scheme']!r}; choose from {', '.join(SCHEMES)}"
            )
        bad = sorted(
            set(spec)
            - {"scheme", "keygen", "protect", "profile", "profile_overrides", "tasks", "verify"}
        )
        if bad:
            raise PixmarkError(f"{where}: scheme {name} has unknown setting(s) {', '.join(bad)}")
        spec.setdefault("tasks", list(cfg["tasks"]))
        missing = [t for t in spec["tasks"] if t not in cfg["tasks"]]
        if missing:
            raise PixmarkError(f"{where}: scheme {name} names task(s) {missing} not under tasks")
        cfg["schemes"][name] = spec

    attacks = raw.get("attacks", {CLEAN: [None]})
    cfg["attacks"] = []
    for name, spec in (attacks or {}).items():
        kind = name
        if isinstance(spec, dict):
            bad = sorted(set(spec) - {"kind", "strengths", "options", "verify"})
            if bad:
                raise PixmarkError(f"{where}: attack {name} has unknown setting(s) {bad}")
            kind = str(spec.get("kind", name))
            strengths, options = spec.get("strengths", [None]), dict(spec.get("options") or {})
            verify = spec.get("verify") or {}
            if not isinstance(verify, dict):
                raise PixmarkError(f"{where}: attack {name}: verify must be a mapping of options")
        else:
            strengths, options, verify = spec, {}, {}
        if not isinstance(strengths, list):
            strengths = [strengths]
        attack_level(kind)
        label = name if name != kind else ""
        cfg["attacks"].append(Attack(kind, tuple(strengths), options, label, dict(verify)))

    nulls = raw.get("nulls", 0)
    if isinstance(nulls, int):
        nulls = {"count": nulls}
    nulls = dict(nulls or {})
    nulls.setdefault("count", 0)
    nulls.setdefault("archs", ["unet", "dncnn", "resnet9", "red"])
    nulls.setdefault("first_seed", 1000)
    nulls.setdefault("random_keys", 0)
    if not isinstance(nulls["random_keys"], int) or nulls["random_keys"] < 0:
        raise PixmarkError(
            f"{where}: nulls.random_keys must be a whole number >= 0, got {nulls['random_keys']!r}"
        )
    cfg["nulls"] = nulls
    fidelity = dict(raw.get("fidelity") or {})
    fidelity.setdefault("size", 64)
    fidelity.setdefault("count", 8)
    cfg["fidelity"] = fidelity
    return cfg


def _fingerprint(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Attack):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _strength_text(strength: Any) -> str:
    if strength is None:
        return "-"
    if isinstance(strength, float) and strength.is_integer():
        return repr(strength)
    return str(strength)


# --------------------------------------------------------------------------- the plan


@dataclass
class Job:
    """One unit of work for a worker process (a plain, picklable description)."""

    kind: str  # target, null, protect, cell
    name: str
    spec: dict[str, Any]
    after: tuple[str, ...] = ()  # names of jobs that must finish first


def _target_spec(cfg: dict[str, Any], task: str, seed: int) -> dict[str, Any]:
    t = cfg["tasks"][task]
    settings = {
        "task": task,
        "arch": t["arch"],
        "steps": t["steps"],
        "size": t["size"],
        "width": t.get("width"),
        "channels": t.get("channels"),
        "arch_kwargs": t.get("arch_kwargs") or {},
        "batch_size": t.get("batch_size", 8),
        "source": t.get("source"),
        "seed": seed,
        "data_seed": t.get("data_seed", 0),
    }
    return {
        "settings": settings,
        "dir": f"cache/targets/{task}-seed{seed}-{_fingerprint(settings)}",
    }


def _null_spec(cfg: dict[str, Any], task: str, index: int) -> dict[str, Any]:
    n, t = cfg["nulls"], cfg["tasks"][task]
    arch = n["archs"][index % len(n["archs"])]
    seed = n["first_seed"] + index
    settings = {
        "task": task,
        "arch": arch,
        "steps": n.get("steps", t["steps"]),
        "size": n.get("size", t["size"]),
        "width": n.get("width", t.get("width")),
        "channels": t.get("channels"),
        "arch_kwargs": (n.get("arch_kwargs") or {}).get(arch, {}),
        "batch_size": n.get("batch_size", t.get("batch_size", 8)),
        "source": t.get("source"),
        "seed": seed,
        "data_seed": seed,
    }
    name = f"null{index:03d}_{arch}"
    return {
        "settings": settings,
        "name": name,
        "dir": f"cache/nulls/{task}/{name}-{_fingerprint(settings)}",
    }


def _protect_spec(cfg: dict[str, Any], name: str, task: str, seed: int) -> dict[str, Any]:
    s = cfg["schemes"][name]
    target = _target_spec(cfg, task, seed)
    settings = {
        "scheme": s["scheme"],
        "task": task,
        "seed": seed,
        "owner": cfg["owner"],
        "keygen": s.get("keygen") or {},
        "protect": s.get("protect") or {},
        "profile": s.get("profile", cfg["profile"]),
        "profile_overrides": s.get("profile_overrides") or {},
        "target": target["settings"],
        "fidelity": cfg["fidelity"],
    }
    return {
        "settings": settings,
        "target_dir": target["dir"],
        "dir": f"cache/protected/{name}-{task}-seed{seed}-{_fingerprint(settings)}",
    }


def plan(cfg: dict[str, Any]) -> tuple[list[Job], list[Job]]:
    """The build jobs (targets, nulls, protected models) and the cells of a config."""
    common = {"device": cfg["device"], "threads": cfg["threads"]}
    builds: list[Job] = []
    cells: list[Job] = []
    used_tasks = {t for s in cfg["schemes"].values() for t in s["tasks"]}
    targets_done: set[str] = set()
    null_specs: dict[str, list[dict[str, Any]]] = {}
    for task in cfg["tasks"]:
        if task in used_tasks:
            null_specs[task] = [_null_spec(cfg, task, i) for i in range(cfg["nulls"]["count"])]
    for scheme, s in cfg["schemes"].items():
        for task in s["tasks"]:
            for seed in cfg["seeds"]:
                target = _target_spec(cfg, task, seed)
                target_job = f"target {task} seed {seed}"
                if target["dir"] not in targets_done:
                    targets_done.add(target["dir"])
                    builds.append(Job("target", target_job, {**common, **target}))
                prot = _protect_spec(cfg, scheme, task, seed)
                prot_job = f"protect {scheme} {task} seed {seed}"
                builds.append(Job("protect", prot_job, {**common, **prot}, after=(target_job,)))
                nulls = [ns["dir"] for ns in null_specs[task]]
                base = {
                    **common,
                    "scheme": scheme,
                    "task": task,
                    "seed": seed,
                    "protected_dir": prot["dir"],
                    "target_dir": target["dir"],
                    "null_dirs": nulls if cfg["verify_with_nulls"] else [],
                    "fidelity": cfg["fidelity"],
                    "verify": s.get("verify") or {},
                }
                needs = (prot_job, *(f"null {task} {ns['name']}" for ns in null_specs[task]))
                random_keys = int(cfg["nulls"]["random_keys"])
                for attack in cfg["attacks"]:
                    for strength in attack.strengths:
                        cells.append(_cell(base, attack, strength, needs))
                for ns in null_specs[task]:
                    cell = _cell(base, Attack(NULL, ()), ns["name"], needs, random_keys)
                    cell.spec["null_dir"] = ns["dir"]
                    # A null model is not checked against itself.
                    cell.spec["null_dirs"] = [d for d in base["null_dirs"] if d != ns["dir"]]
                    cells.append(cell)
    # Null models last: a worker takes the first job that is ready, and targets and
    # protections are the long chain every cell waits on (nulls fill the idle workers).
    for task, specs in null_specs.items():
        for ns in specs:
            builds.append(Job("null", f"null {task} {ns['name']}", {**common, **ns}))
    return builds, cells


def _cell(
    base: dict[str, Any],
    attack: Attack,
    strength: Any,
    needs: tuple[str, ...],
    random_keys: int = 0,
) -> Job:
    verify = {**base["verify"], **attack.verify}
    identity = {
        "protected": base["protected_dir"],
        "attack": attack.kind,
        "strength": strength,
        "options": attack.options,
        "nulls": base["null_dirs"],
        "verify": verify,
    }
    if random_keys:
        identity["random_keys"] = random_keys
    if attack.name:
        identity["name"] = attack.name
    label = attack.label
    readable = (
        f"{base['scheme']}/{base['task']}/seed{base['seed']}/{label}@{_strength_text(strength)}"
    )
    cell_id = f"{readable}#{_fingerprint(identity)}"
    spec = {
        **base,
        "attack": label,
        "kind": attack.kind,
        "strength": strength,
        "options": attack.options,
        "verify": verify,
        "cell_id": cell_id,
        "random_keys": random_keys,
    }
    return Job("cell", cell_id, spec, after=needs)


# --------------------------------------------------------------------------- results file


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl``; a torn last line (a kill mid-write) is dropped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _repair(path: Path) -> list[dict[str, Any]]:
    """Read the rows, and rewrite the file atomically if it held a torn line."""
    rows = read_rows(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        good = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
        if text != good and sum(1 for line in text.splitlines() if line.strip()) != len(rows):
            atomic_write_text(path, good)
        elif text and not text.endswith("\n"):
            atomic_write_text(path, text + "\n")
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    line = json.dumps(row, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- environment


def git_commit() -> str | None:
    """The commit of the pixmark source tree (``+dirty`` if it has changes), if in git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str) -> str:
    """A readable name of the device work runs on (GPU model, or CPU and thread count)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if device.startswith("cuda:") else 0
        return f"cuda: {torch.cuda.get_device_name(index or 0)}"
    cpu = platform.processor() or platform.machine()
    return f"cpu: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _setup_worker(spec: dict[str, Any]) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))


# --------------------------------------------------------------------------- build jobs


def _done(folder: Path) -> dict[str, Any] | None:
    manifest = folder / "build.json"
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
    return None


def _train(out_dir: Path, spec: dict[str, Any], what: str) -> dict[str, Any]:
    from pixmark import api

    folder = out_dir / spec["dir"]
    manifest = _done(folder)
    if manifest is not None:
        return {"cached": True, **manifest}
    folder.mkdir(parents=True, exist_ok=True)
    s = spec["settings"]
    model_path = folder / "model.safetensors"
    start = time.perf_counter()
    if not model_path.exists():
        trained = api.train_model(
            s["task"],
            s["arch"],
            steps=s["steps"],
            size=s["size"],
            batch_size=s["batch_size"],
            width=s["width"],
            channels=s["channels"],
            source=s["source"],
            seed=s["seed"],
            data_seed=s["data_seed"],
            arch_kwargs=s["arch_kwargs"],
            device=spec["device"],
            out=model_path,
            resume=True,
            force=True,
            progress=False,
        )
        metrics = trained.metrics
    else:  # killed after the model was saved, before the manifest
        from pixmark.checkpoint import read_config

        metrics = read_config(model_path).get("metrics", {})
    manifest = {
        "what": what,
        "settings": s,
        "model": "model.safetensors",
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 2),
        "device": device_name(spec["device"]),
    }
    atomic_write_json(folder / "build.json", manifest)
    return {"cached": False, **manifest}


@contextlib.contextmanager
def profile_override(scheme: str, profile: str, overrides: dict[str, Any]) -> Iterator[None]:
    """Temporarily change fields of a scheme's named training profile (in this process).

    The schemes take a profile *name*; a small benchmark needs smaller budgets than the
    ``quick`` profile, so the named entry of the scheme's ``PROFILES`` table is replaced
    by a copy with ``overrides`` for the duration of the block.
    """
    if not overrides:
        yield
        return
    from pixmark.api import scheme_module

    module = scheme_module(scheme)
    table = getattr(module, "PROFILES", None)
    if not isinstance(table, dict) or profile not in table:
        raise PixmarkError(f"the {scheme} scheme has no profile {profile!r} to override")
    original = table[profile]
    if dataclasses.is_dataclass(original):
        names = {f.name for f in dataclasses.fields(original)}
        changed: Any = None
    else:
        names = set(original)
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise PixmarkError(
            f"profile_overrides for {scheme} name unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    if dataclasses.is_dataclass(original):
        changed = dataclasses.replace(original, **overrides)  # type: ignore[type-var]
    else:
        changed = {**original, **overrides}
    table[profile] = changed
    try:
        yield
    finally:
        table[profile] = original


def _secret(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, ("pixmark-bench", *parts))).encode()).hexdigest()


def _eval_pairs(task: str, channels: int, fidelity: dict[str, Any], source: str | None = None):
    from pixmark import api, data

    spec, channels, splits = api.task_splits(task, channels, source)
    return data.fixed_pairs(
        [img for _, img in splits["test"]],
        spec,
        int(fidelity["size"]),
        int(fidelity["count"]),
        seed=int(fidelity.get("seed", 3)),
        channels=channels,
    )


def _protect(out_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    import inspect

    from pixmark import api
    from pixmark.checkpoint import load_model
    from pixmark.metrics import psnr, ssim
    from pixmark.viz import amplify, save_grid

    folder = out_dir / spec["dir"]
    manifest = _done(folder)
    if manifest is not None:
        return {"cached": True, **manifest}
    folder.mkdir(parents=True, exist_ok=True)
    s = spec["settings"]
    scheme, task = s["scheme"], s["task"]
    target = load_model(out_dir / spec["target_dir"] / "model.safetensors")
    channels = api.model_channels(target)
    module = api.scheme_module(scheme)
    keygen_opts = dict(s["keygen"])
    accepted = inspect.signature(module.keygen).parameters
    if "channels" in accepted:
        keygen_opts.setdefault("channels", channels)
    if "task" in accepted:
        keygen_opts.setdefault("task", task)
    if "secret" in accepted:
        keygen_opts.setdefault("secret", _secret(scheme, task, s["seed"]))
    key = api.keygen(scheme, s["owner"], **keygen_opts)
    protect_opts = {"task": task, "profile": s["profile"], **s["protect"]}
    protect_opts.setdefault("device", spec["device"])
    protect_opts.setdefault("progress", False)
    accepted = inspect.signature(module.protect).parameters
    if "checkpoint" in accepted:
        protect_opts.setdefault("checkpoint", str(folder / "protect.state.pt"))
        protect_opts.setdefault("resume", True)
    start = time.perf_counter()
    with profile_override(scheme, s["profile"], s["profile_overrides"]):
        result = api.protect(
            target,
            key,
            out=folder / "protected.safetensors",
            key_out=folder / "key.safetensors",
            force=True,
            **protect_opts,
        )
    seconds = time.perf_counter() - start
    for leftover in folder.glob("protect.state.pt*"):
        leftover.unlink(missing_ok=True)

    # Fidelity: protected vs unprotected outputs on held-out crops.
    inputs, targets = _eval_pairs(task, channels, s["fidelity"], s["target"].get("source"))
    plain = api.apply_model(target, inputs)
    marked = api.apply_model(result.model, inputs)
    fidelity = {
        "fidelity_psnr": float(psnr(marked, plain)),
        "fidelity_ssim": float(ssim(marked, plain)),
        "task_psnr_unprotected": float(psnr(plain, targets)),
        "task_psnr_protected": float(psnr(marked, targets)),
    }
    shown = min(3, len(inputs))
    # Amplify the difference so that its largest value reaches a quarter of the range.
    peak = float((marked[:shown] - plain[:shown]).abs().max())
    gain = float(min(1000.0, max(1.0, 0.25 / peak))) if peak > 0 else 1.0
    rows = [
        [inputs[i], targets[i], plain[i], marked[i], amplify(marked[i] - plain[i], gain)]
        for i in range(shown)
    ]
    save_grid(
        rows,
        folder / "fidelity.png",
        row_labels=[f"crop {i}" for i in range(len(rows))],
        col_labels=["input", "ground truth", "output", "protected", f"diff x{gain:.3g}"],
        cell=112,
    )
    report = {k: v for k, v in result.report.items() if isinstance(v, int | float | str | bool)}
    manifest = {
        "what": "protected",
        "settings": s,
        "model": "protected.safetensors",
        "key": "key.safetensors",
        "fidelity_grid": "fidelity.png",
        "fidelity_gain": gain,
        "protect_seconds": round(seconds, 2),
        "device": device_name(spec["device"]),
        "report": report,
        **fidelity,
    }
    atomic_write_json(folder / "build.json", manifest)
    return {"cached": False, **manifest}


# --------------------------------------------------------------------------- cells


def attacked_query(
    query: Callable[[Any], Any], kind: str, strength: Any, seed: int = 0, **options: Any
) -> Callable[[Any], Any]:
    """A query whose answers pass through the image attack ``kind`` at ``strength``
    (:func:`pixmark.attacks.image.served_through`: size-changing attacks resized back,
    random ones drawn anew on every call from one generator seeded with ``seed``, as a
    service that adds noise draws it anew for every answer; since session 21)."""
    from pixmark.attacks.image import served_through

    return served_through(query, kind, strength, seed=seed, **options)


def _run_cell(out_dir: Path, spec: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    import torch

    from pixmark import api
    from pixmark.checkpoint import load_model
    from pixmark.keys import load_key
    from pixmark.metrics import psnr, ssim
    from pixmark.schemes.base import as_query

    start = time.perf_counter()
    prot_dir = out_dir / spec["protected_dir"]
    build = _done(prot_dir)
    if build is None:
        raise PixmarkError(f"{prot_dir} is not built; the protect job must run first")
    key = load_key(prot_dir / "key.safetensors")
    protected = load_model(prot_dir / "protected.safetensors")
    kind, strength, options = spec["kind"], spec["strength"], dict(spec["options"])
    level = attack_level(kind)
    seed = int(spec["seed"])
    torch.manual_seed(seed)
    attack_start = time.perf_counter()
    suspect_model = protected
    query = None
    if level == "null":
        suspect_model = load_model(out_dir / spec["null_dir"] / "model.safetensors")
    elif level == "model":
        if kind == "fine_tune":
            options.setdefault("progress", False)
            options.setdefault("seed", seed)
        if kind in ("fine_tune", "overwrite", "removal_network"):  # the ones that train
            options.setdefault("device", spec["device"])
        suspect_model = api.attack(kind, protected, strength, task=spec["task"], **options)
    elif level == "surrogate":
        options.setdefault("steps", int(strength) if strength is not None else 600)
        options.setdefault("seed", seed)
        options.setdefault("progress", False)
        options.setdefault("device", spec["device"])
        cell_dir = out_dir / "cache" / "cells" / _fingerprint(spec["cell_id"])
        cell_dir.mkdir(parents=True, exist_ok=True)
        options.setdefault("checkpoint", str(cell_dir / "surrogate.state.pt"))
        options.setdefault("resume", True)
        suspect_model = api.attack("surrogate", protected, task=spec["task"], **options)
    attack_seconds = time.perf_counter() - attack_start
    query = as_query(suspect_model, name=f"{kind} suspect")
    if level == "image":
        query = attacked_query(query, kind, strength, seed=seed, **options)

    nulls = [load_model(out_dir / d / "model.safetensors") for d in spec["null_dirs"]]
    evidence_dir = (
        out_dir / "evidence" / spec["cell_id"].split("#")[0].replace("/", "__").replace("@", "_")
    )
    verify_start = time.perf_counter()
    verdict = api.verify(
        query, key, nulls=nulls or None, evidence_dir=evidence_dir, **spec["verify"]
    )
    verify_seconds = time.perf_counter() - verify_start
    # More null scores from the same innocent model: random keys, where the scheme can
    # draw them without training anything (trigger).
    random_key_stats = None
    if level == "null" and spec.get("random_keys"):
        scheme = api.scheme_module(key.scheme)  # the line's kind; spec["scheme"] is its name
        if hasattr(scheme, "random_key_statistics"):
            values = scheme.random_key_statistics(query, key, spec["random_keys"])
            random_key_stats = [_finite(v) for v in values]

    # How much the attack cost the suspect: its outputs vs the protected model's.
    channels = api.model_channels(protected)
    inputs, targets = _eval_pairs(spec["task"], channels, spec["fidelity"])
    reference = api.apply_model(protected, inputs)
    answers = query(inputs).float().clamp(0, 1)
    row: dict[str, Any] = {
        "cell_id": spec["cell_id"],
        "scheme": spec["scheme"],
        "task": spec["task"],
        "seed": seed,
        "attack": spec["attack"],
        "kind": kind,
        "level": level,
        "strength": strength,
        "decision": verdict.decision,
        "statistic": _finite(verdict.statistic),
        "threshold": _finite(verdict.threshold),
        "p_value": _finite(verdict.p_value),
        "statistic_name": verdict.details.get("statistic_name", "statistic"),
        "n_queries": verdict.n_queries,
        "alpha": verdict.details.get("alpha"),
        "empirical_p": verdict.details.get("empirical_p"),
        "null_fpr": verdict.details.get("null_fpr"),
        "n_null_models": verdict.details.get("n_null_models", 0),
        # output scheme, colour keys: the content signature's test (half of the decision)
        "signature_p": verdict.details.get("signature_p_value"),
        "signature_match": verdict.details.get("signature_match"),
        # trigger scheme: which test matched (distance, rank) and the rank test's exact p
        "matched_by": verdict.details.get("matched_by"),
        "rank_p": verdict.details.get("rank_p"),
        **({"verify_options": spec["verify"]} if spec["verify"] else {}),
        "fidelity_psnr": build["fidelity_psnr"],
        "fidelity_ssim": build["fidelity_ssim"],
        "task_psnr_unprotected": build["task_psnr_unprotected"],
        "task_psnr_protected": build["task_psnr_protected"],
        "suspect_psnr_vs_protected": _finite(float(psnr(answers, reference))),
        "suspect_ssim_vs_protected": _finite(float(ssim(answers, reference))),
        "suspect_task_psnr": _finite(float(psnr(answers, targets))),
        "evidence": {k: os.path.relpath(v, out_dir) for k, v in verdict.evidence.items()},
        "fidelity_grid": os.path.relpath(prot_dir / build["fidelity_grid"], out_dir),
        "protect_seconds": build["protect_seconds"],
        "attack_seconds": round(attack_seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        "seconds": round(time.perf_counter() - start, 3),
        "device": device_name(spec["device"]),
        **env,
    }
    if random_key_stats is not None:
        row["random_key_statistics"] = random_key_stats
    if level == "surrogate":
        scratch = out_dir / "cache" / "cells" / _fingerprint(spec["cell_id"])
        for leftover in scratch.glob("*"):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return row


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def execute(
    job_kind: str, out_dir: str, spec: dict[str, Any], env: dict[str, Any]
) -> dict[str, Any]:
    """Run one job (in a worker process or inline); returns its manifest or result row."""
    _setup_worker(spec)
    out = Path(out_dir)
    if job_kind == "target":
        return _train(out, spec, "target")
    if job_kind == "null":
        return _train(out, spec, "null model")
    if job_kind == "protect":
        return _protect(out, spec)
    if job_kind == "cell":
        try:
            return _run_cell(out, spec, env)
        except Exception as exc:  # one broken cell must not stop a long grid
            first = (str(exc).strip().splitlines() or [""])[0]
            return {
                "cell_id": spec["cell_id"],
                "scheme": spec["scheme"],
                "task": spec["task"],
                "seed": spec["seed"],
                "attack": spec["attack"],
                "kind": spec["kind"],
                "level": attack_level(spec["kind"]),
                "strength": spec["strength"],
                "decision": "error",
                "error": f"{type(exc).__name__}: {first}",
                **env,
            }
    raise PixmarkError(f"unknown bench job {job_kind!r}")


# --------------------------------------------------------------------------- driver


def run_bench(
    config: dict[str, Any] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 1,
    progress: bool = True,
    report: bool = True,
    profile: str | None = None,
    rebuild: Iterable[str] = (),
) -> Path:
    """Run the benchmark grid of ``config`` into ``out_dir``; return the report path.

    Resumable: cells whose id is already in ``out_dir/results.jsonl`` are skipped, and
    targets, null models, keys and protected models are reused from ``out_dir/cache``.
    The cache is keyed by settings, not by pixmark's code: after a scheme changes, pass
    ``rebuild`` (any of ``targets``, ``nulls``, ``protected``, ``cells``; see
    :func:`discard`) to train those again and re-run every cell that uses them.
    ``workers > 1`` runs independent jobs in that many spawned processes. Writes
    ``results.jsonl``, ``config.json`` (the normalised config), ``report.html`` and
    ``report.md``; returns the path of ``report.html``. ``profile`` picks one of the
    config's ``profiles`` (see :func:`load_config`).
    """
    from pixmark import __version__

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PixmarkError(f"workers must be a positive integer, got {workers!r}")
    cfg = load_config(config, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builds, cells = plan(cfg)
    results = out / RESULTS
    rows = _repair(results)
    if rebuild:
        rows = discard(out, builds, cells, rows, rebuild)
    # Rows of cells that failed are retried.
    finished = {r["cell_id"] for r in rows if r.get("decision") != "error"}
    todo_cells = [c for c in cells if c.name not in finished]
    # Only the builds that a remaining cell needs (a finished grid needs none).
    needed: set[str] = set()
    for c in todo_cells:
        needed.update(c.after)
    by_name = {b.name: b for b in builds}
    for name in list(needed):
        needed.update(by_name[name].after)
    todo_builds = [b for b in builds if b.name in needed]
    env = {"pixmark_version": __version__, "git_commit": git_commit(), "config_name": cfg["name"]}
    atomic_write_json(out / "config.json", _jsonable_config(cfg))
    atomic_write_json(out / "grid.json", {"cells": [c.name for c in cells]})

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not progress,
    )
    with bar:
        grid = bar.add_task(
            f"bench {cfg['name']}",
            total=len(cells) + len(todo_builds),
            completed=len(cells) - len(todo_cells),
            info=f"{len(cells) - len(todo_cells)} cells already done",
        )

        def finished_job(job: Job, result: dict[str, Any]) -> None:
            if job.kind == "cell":
                _append(results, result)
                info = f"{result['cell_id'].split('#')[0]}: {result['decision']}"
            else:
                info = f"{job.name}{' (cached)' if result.get('cached') else ''}"
            bar.update(grid, advance=1, info=info)

        _schedule(todo_builds + todo_cells, str(out), env, workers, finished_job)
    if report:
        from pixmark.bench.report import write_bench_report

        html_path, _ = write_bench_report(out)
        return html_path
    return results


def discard(
    out: Path,
    builds: list[Job],
    cells: list[Job],
    rows: list[dict[str, Any]],
    kinds: Iterable[str],
) -> list[dict[str, Any]]:
    """Forget cached builds of ``kinds`` and the rows of every cell that depends on them.

    ``targets`` implies ``protected`` (a protection is made from its target); ``cells``
    re-runs every cell and keeps all builds. The builds' cache folders are deleted (a
    half-trained model must not be mistaken for a finished one after a kill) and
    ``results.jsonl`` is rewritten without the dropped rows. Returns the rows kept.
    """
    wanted = set(kinds)
    unknown = sorted(wanted - set(REBUILD))
    if unknown:
        raise PixmarkError(f"cannot rebuild {', '.join(unknown)}: choose from {', '.join(REBUILD)}")
    if "targets" in wanted:
        wanted.add("protected")
    redo = {b.name for b in builds if b.kind in {REBUILD[k] for k in wanted}}
    for build in builds:
        if build.name in redo:
            shutil.rmtree(out / build.spec["dir"], ignore_errors=True)
    rerun = {c.name for c in cells if "cells" in wanted or redo & set(c.after)}
    kept = [r for r in rows if r.get("cell_id") not in rerun]
    if len(kept) != len(rows):
        atomic_write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _jsonable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, default=_json_default))


def _guarded(
    job: Job, call: Callable[..., dict[str, Any]], out_dir: str, env: dict[str, Any]
) -> dict[str, Any]:
    """Run a job; a failed build names the job (cells record their own errors)."""
    try:
        return call(job.kind, out_dir, job.spec, env)
    except PixmarkError as exc:
        raise PixmarkError(f"bench job '{job.name}' failed: {exc}") from None


def _result_of(future: Future[dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    return lambda *_: future.result()


def _schedule(
    jobs: list[Job],
    out_dir: str,
    env: dict[str, Any],
    workers: int,
    finished: Callable[[Job, dict[str, Any]], None],
) -> None:
    """Run ``jobs`` respecting their ``after`` dependencies, inline or in a process pool."""
    names = {j.name for j in jobs}
    pending = list(jobs)
    done: set[str] = set()

    def ready(job: Job) -> bool:
        return all(a in done or a not in names for a in job.after)

    if workers == 1:
        while pending:
            job = next((j for j in pending if ready(j)), None)
            if job is None:  # pragma: no cover - plan() never makes cycles
                raise PixmarkError("bench jobs wait on each other in a cycle")
            pending.remove(job)
            finished(job, _guarded(job, execute, out_dir, env))
            done.add(job.name)
        return
    running: dict[Future[dict[str, Any]], Job] = {}
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        with _sigterm_as_interrupt():
            while pending or running:
                for job in [j for j in pending if ready(j)]:
                    if len(running) >= workers:
                        break
                    pending.remove(job)
                    running[pool.submit(execute, job.kind, out_dir, job.spec, env)] = job
                if not running:  # pragma: no cover
                    raise PixmarkError("bench jobs wait on each other in a cycle")
                complete, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in complete:
                    job = running.pop(future)
                    finished(job, _guarded(job, _result_of(future), out_dir, env))
                    done.add(job.name)
    except BaseException:
        # Ctrl-C, SIGTERM or a failed build: stop the workers now instead of waiting for
        # their jobs (minutes of training) to finish; the cache and rows stay resumable.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _die_with_parent(parent: int) -> None:
    """Worker initializer: exit when the bench's main process dies, however it dies.

    On Linux the kernel sends the worker SIGTERM when its parent exits (prctl
    PR_SET_PDEATHSIG), so even a SIGKILL of the main process leaves no worker training.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (so the
    workers are stopped as for Ctrl-C); elsewhere the handler is left as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
