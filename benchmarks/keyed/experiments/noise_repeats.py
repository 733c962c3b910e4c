"""Keyed scheme: does averaging repeated queries read the mark through Gaussian noise?

    PYTHONPATH=src:benchmarks/keyed .venv/bin/python \
        benchmarks/keyed/experiments/noise_repeats.py --out runs/keyed-noise-repeats

An attacker who adds fresh Gaussian noise to every answer hides the mark (docs/schemes/
keyed.md: sigma 0.05 removes it even after robust training). The verifier can ask the same
question R times and average the answers: fresh noise shrinks by sqrt(R), the mark does not.
Protects run.py's gray U-Net denoiser host with ``robust=True`` at ``--profile`` (saved
under ``--out`` and reused), then verifies the protected host and the original through
noise of each sigma, averaging R answers per query (``pixmark.schemes.base.repeated``, as
``pixmark verify --repeats R --dither D`` does). Writes ``results-ATTACKER-ditherD.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from run import NULL_ARCHS, score, train_host

from pixmark.attacks import served_through
from pixmark.checkpoint import load_model, save_model
from pixmark.keys import load_key, save_key
from pixmark.schemes import keyed
from pixmark.schemes.base import Query, as_query, repeated


def noisy(model: torch.nn.Module, sigma: float, attacker: str) -> Query:
    """The suspect as the attacker serves it: every answer plus Gaussian noise of ``sigma``,
    drawn fresh per call (``fresh``) or from a hash of the input bytes (``hashed``: the
    same question always gets the same noise, so plain repeats cannot average it away).
    Since session 22 through :func:`pixmark.attacks.served_through` (other draws than the
    session-21 results, same kind of noise)."""
    return served_through(as_query(model), "gaussian_noise", sigma, hashed=attacker == "hashed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--sigmas", default="0.005,0.01,0.02,0.05")
    parser.add_argument("--repeats", default="1,4,16,64")
    parser.add_argument("--attacker", choices=["fresh", "hashed"], default="fresh")
    parser.add_argument("--dither", type=float, default=0.0, help="verifier's input noise")
    parser.add_argument("--owner", default="ACME Imaging")
    parser.add_argument("--set", default="{}", help="protect profile overrides, JSON")
    parser.add_argument("--nulls", type=int, default=0, help="independent models also verified")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    host = train_host("denoise", "unet", 0, 1, 400)
    suspects = {"protected": None, "original": host}
    for i in range(args.nulls):
        suspects[f"null{i}"] = train_host(
            "denoise", NULL_ARCHS[i % len(NULL_ARCHS)], 100 + i, 1, 400
        )
    model_path, key_path = out / "protected.safetensors", out / "key.safetensors"
    results: dict = {"args": vars(args)}
    results_file = out / f"results-{args.attacker}-dither{args.dither:g}.json"
    if model_path.exists() and key_path.exists():
        model, key = load_model(model_path), load_key(key_path)
    else:
        secret = hashlib.sha256(b"pixmark keyed bench denoise 0").hexdigest()
        key = keyed.keygen(args.owner, watermark="binary", channels=1, secret=secret)
        t = time.perf_counter()
        result = keyed.protect(
            host,
            key,
            task="denoise",
            profile=args.profile,
            robust=True,
            overrides=json.loads(args.set) or None,
            progress=False,
        )
        results["protect_seconds"] = round(time.perf_counter() - t, 1)
        results["report"] = {
            k: v for k, v in result.report.items() if isinstance(v, int | float | str)
        }
        model, key = result.model, result.key
        save_model(model, model_path, task="denoise")
        save_key(key, key_path)
    suspects["protected"] = model
    rows = []
    for sigma in (float(s) for s in args.sigmas.split(",")):
        for repeats in (int(r) for r in args.repeats.split(",")):
            row = {"sigma": sigma, "repeats": repeats}
            for name, m in suspects.items():
                t = time.perf_counter()
                suspect = repeated(noisy(m, sigma, args.attacker), repeats, args.dither)
                row[name] = score(suspect, key)
                row[name]["seconds"] = round(time.perf_counter() - t, 2)
            rows.append(row)
            results["rows"] = rows
            results_file.write_text(json.dumps(results, indent=2) + "\n")
            p, o = row["protected"], row["original"]
            accused = sum(row[n]["decision"] == "match" for n in suspects if n.startswith("null"))
            print(
                f"sigma {sigma} R {repeats}: protected {p['decision']} ber {p['ber_mean']:.3f} "
                f"p {p['p_value']:.2g}; original {o['decision']} ber {o['ber_mean']:.3f}; "
                f"nulls matched {accused}",
                flush=True,
            )


if __name__ == "__main__":
    main()
