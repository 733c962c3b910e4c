"""The ``pixmark`` command line: parses arguments, calls :mod:`pixmark.api`, prints.

Expected failures (:class:`~pixmark.errors.PixmarkError`) print one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pixmark import __version__
from pixmark.errors import PixmarkError

app = typer.Typer(
    name="pixmark",
    help="Watermark image-to-image networks and verify ownership of suspect models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
_debug = {"on": False}


def _version(value: bool) -> None:
    if value:
        print(f"pixmark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _debug["on"] = debug


Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]


@app.command()
def train(
    task: Annotated[str, typer.Option(help="Task: denoise, derain, sr2, sr4, deblur, jpeg, xray.")],
    arch: Annotated[str, typer.Option(help="Zoo architecture, e.g. dncnn, unet, resnet9.")],
    out: Annotated[Path, typer.Option(help="Output checkpoint (.safetensors).")],
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 300,
    size: Annotated[int, typer.Option(help="Training crop size in pixels.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    width: Annotated[int | None, typer.Option(help="Network width (channels).")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (gray) or 3 (colour).")] = None,
    data: Annotated[
        str | None, typer.Option(help="builtin, builtin:xray, builtin:texture or a folder.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and crops.")] = 0,
    data_seed: Annotated[int, typer.Option(help="Seed of the train/val/test split.")] = 0,
    device: Device = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from <out>.state.pt.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    force: Force = False,
) -> None:
    """Train a task model on bundled real images (or --data DIR) and save it."""
    from pixmark.api import train_model

    result = train_model(
        task,
        arch,
        steps=steps,
        size=size,
        batch_size=batch_size,
        lr=lr,
        width=width,
        channels=channels,
        source=data,
        seed=seed,
        data_seed=data_seed,
        device=device,
        out=out,
        resume=resume,
        force=force,
        checkpoint_every=checkpoint_every,
    )
    m = result.metrics
    console.print(
        f"[bold]{arch}[/] on [bold]{task}[/]: test PSNR {m['psnr']:.2f} dB "
        f"(input {m['psnr_input']:.2f} dB, gain {m['psnr'] - m['psnr_input']:+.2f} dB), "
        f"SSIM {m['ssim']:.4f} -> {out}"
    )


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Checkpoint or TorchScript file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a model's architecture, parameter count, task and metrics."""
    from pixmark.checkpoint import model_info

    details = model_info(model)
    if as_json:
        print(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if value not in (None, {}, ""):
            print(f"{key:>16}: {value}")


def _options(**values: object) -> dict[str, object]:
    """The options the user actually gave (None means 'not given')."""
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def keygen(
    scheme: Annotated[str, typer.Option(help="output, trigger or keyed.")],
    owner: Annotated[str, typer.Option(help="The owner's name, bound into the key.")],
    out: Annotated[Path, typer.Option(help="Key file to write.")],
    logo: Annotated[Path | None, typer.Option(help="output: logo image (PNG).")] = None,
    size: Annotated[int | None, typer.Option(help="Logo or trigger size in px.")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (gray) or 3 (colour).")] = None,
    task: Annotated[str | None, typer.Option(help="trigger: the host's task.")] = None,
    design: Annotated[str | None, typer.Option(help="trigger: sobel or gradient.")] = None,
    count: Annotated[int | None, typer.Option(help="trigger: triggers per key.")] = None,
    watermark: Annotated[
        str | None, typer.Option(help="keyed: 'binary' (QR code) or a colour logo image.")
    ] = None,
    bits: Annotated[int | None, typer.Option(help="keyed: key bits (paper 1024).")] = None,
    force: Force = False,
) -> None:
    """Make a new secret key (never overwrites an existing key without --force)."""
    from pixmark import api

    key = api.keygen(
        scheme,
        owner,
        out=out,
        force=force,
        **_options(
            logo=logo,
            size=size,
            channels=channels,
            task=task,
            design=design,
            count=count,
            watermark=watermark,
            bits=bits,
        ),
    )
    console.print(f"{scheme} key for {key.owner!r} -> {out} (commitment {key.commitment[:16]}…)")


@app.command()
def protect(
    key: Annotated[Path, typer.Option(help="Key file (updated in place unless --key-out).")],
    model: Annotated[str, typer.Option(help="Model to protect: checkpoint or TorchScript.")],
    out: Annotated[Path, typer.Option(help="Protected model (.safetensors or .pt).")],
    task: Annotated[str | None, typer.Option(help="The model's task.")] = None,
    data: Annotated[str | None, typer.Option(help="builtin or a folder of images.")] = None,
    profile: Annotated[str, typer.Option(help="quick, cpu or paper.")] = "quick",
    device: Device = "auto",
    key_out: Annotated[Path | None, typer.Option(help="Write the updated key here.")] = None,
    vgg16_weights: Annotated[Path | None, typer.Option(help="output: VGG-16 weights.")] = None,
    robust: Annotated[
        bool, typer.Option(help="keyed: also train on cropped, noisy and JPEG outputs.")
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    force: Force = False,
) -> None:
    """Watermark a model with a key; write the protected model and the updated key."""
    from pixmark import api

    checkpoint = out.with_name(out.name + ".state")
    result = api.protect(
        model,
        key,
        out=out,
        key_out=key_out,
        force=force,
        **_options(
            task=task,
            data=data,
            profile=profile,
            device=device,
            vgg16_weights=vgg16_weights,
            robust=robust or None,
            checkpoint=checkpoint,
            resume=resume or None,
        ),
    )
    shown = {k: v for k, v in result.report.items() if isinstance(v, int | float | str)}
    console.print_json(json.dumps(shown))
    console.print(f"protected model -> {out}; key -> {key_out or key}")


@app.command()
def verify(
    key: Annotated[Path, typer.Option(help="The owner's key file.")],
    suspect: Annotated[
        str,
        typer.Option(
            help="Suspect: checkpoint, TorchScript, .onnx, "
            "package.module:factory, or an http(s) URL."
        ),
    ],
    weights: Annotated[Path | None, typer.Option(help="Weights for a factory spec.")] = None,
    nulls: Annotated[Path | None, typer.Option(help="Folder of null models.")] = None,
    evidence: Annotated[Path | None, typer.Option(help="Folder for evidence images.")] = None,
    header: Annotated[list[str] | None, typer.Option(help="URL: 'Name: value' header.")] = None,
    request_format: Annotated[
        str | None, typer.Option(help="URL: raw-png, raw-jpeg, multipart or json-base64.")
    ] = None,
    response_format: Annotated[
        str | None, typer.Option(help="URL: png, image or json-base64.")
    ] = None,
    rate_per_s: Annotated[float | None, typer.Option(help="URL: max requests/s.")] = None,
    max_requests: Annotated[int | None, typer.Option(help="URL: request budget.")] = None,
    timeout: Annotated[float | None, typer.Option(help="URL: seconds per request.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="URL: requests in flight at once (1-64).")
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="Owner's signed certificate.")] = None,
    pubkey: Annotated[Path | None, typer.Option(help="Owner's Ed25519 public key.")] = None,
    suspect_released_at: Annotated[
        str | None,
        typer.Option(help="ISO time the suspect appeared; the certificate must be older."),
    ] = None,
    rank_keys: Annotated[
        int | None,
        typer.Option(help="trigger: random triggers for the rank test (default 999; 0: off)."),
    ] = None,
    repeats: Annotated[
        int, typer.Option(help="Ask each query this many times and average (noisy suspects).")
    ] = 1,
    dither: Annotated[
        float, typer.Option(help="With --repeats: input noise per repeat, e.g. 0.004.")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Decide whether a suspect was derived from the protected model. Exit 0 match, 1 no match."""
    from pixmark import api

    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            raise PixmarkError(f"header {item!r} must look like 'Name: value'")
        headers[name.strip()] = value.strip()
    http_options = _options(
        headers=headers or None,
        request_format=request_format,
        response_format=response_format,
        rate_per_s=rate_per_s,
        max_requests=max_requests,
        timeout=timeout,
        concurrency=concurrency,
    )
    verdict = api.verify(
        suspect,
        key,
        weights=weights,
        nulls=nulls,
        evidence_dir=evidence,
        http_options=http_options,
        cert=cert,
        pubkey=pubkey,
        suspect_released_at=suspect_released_at,
        repeats=repeats,
        dither=dither,
        **({"rank_keys": rank_keys} if rank_keys is not None else {}),
    )
    if as_json:
        print(verdict.to_json())
    else:
        print(verdict.summary())
        d = verdict.details
        if "signature_p_value" in d:  # output scheme: its two tests, each at alpha / 2
            for name, what in (("logo", "logo"), ("signature", "content signature")):
                found = "found" if d[f"{name}_match"] else "not found"
                print(f"  {what} {found}: p = {d[f'{name}_p_value']:.3g}", end="")
                print("" if name == "logo" else
                      f" (key among random keys {d['signature_key_p']:.3g}, against null "
                      f"models {d['signature_null_p']:.3g}; rho {d['signature_rho']:.3f}, fit "
                      f"cos {d['signature_fit_cos']:.2f})")  # fmt: skip
        if "rank_alpha" in d:  # trigger scheme: the distance test or the rank test
            _print_trigger_tests(d)
    raise typer.Exit(0 if verdict.decision == "match" else 1)


def _print_trigger_tests(d: dict) -> None:
    """The trigger verdict's two tests, one line each."""
    found = "passed" if "distance" in d["matched_by"] else "failed"
    print(f"  distance test {found}: d = {d['d']:.3g} (eta {d['eta']:.3g}), NCC {d['ncc']:.3f} "
          f"(threshold {d['ncc_threshold']:.3f})")  # fmt: skip
    if d["rank_p"] is None:
        print(f"  rank test not run: {d.get('rank_skipped', 'rank_keys = 0')}")
        return
    found = "passed" if "rank" in d["matched_by"] else "failed"
    print(f"  rank test {found}: p = {d['rank_p']:.3g} (K scores {d['rank_score']:.3f}, the best "
          f"of {d['rank_keys']} random triggers {d['rank_max']:.3f})")  # fmt: skip
    if "decision_fpr_bound" in d:
        print(f"  null models: the distance test passed {d['null_fpr']:.3g} of their scores; "
              f"false-positive rate of the decision <= {d['decision_fpr_bound']:.3g}")  # fmt: skip


@app.command()
def attack(
    kind: Annotated[
        str,
        typer.Argument(
            help="prune, prune_channels, quantize, fine_tune, surrogate, overwrite, "
            "estimate_and_subtract or removal_network."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Attacked model (.safetensors).")],
    model: Annotated[str | None, typer.Option(help="Model to attack.")] = None,
    teacher: Annotated[str | None, typer.Option(help="surrogate: the model to steal.")] = None,
    teacher_url: Annotated[str | None, typer.Option(help="surrogate: steal a service.")] = None,
    channels: Annotated[int | None, typer.Option(help="surrogate: channels (URL).")] = None,
    rate_per_s: Annotated[float | None, typer.Option(help="URL: max requests/s.")] = None,
    max_requests: Annotated[int | None, typer.Option(help="URL: request budget.")] = None,
    strength: Annotated[str | None, typer.Option(help="Attack strength (see docs).")] = None,
    task: Annotated[str | None, typer.Option(help="The model's task (most attacks).")] = None,
    data: Annotated[
        str | None, typer.Option(help="The attacker's images: builtin[:xray|:texture], a folder.")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="surrogate: architecture.")] = None,
    loss: Annotated[str | None, typer.Option(help="surrogate: l1, l2, perceptual, ssim.")] = None,
    adv: Annotated[bool, typer.Option(help="surrogate: add an adversarial loss.")] = False,
    augment: Annotated[bool, typer.Option(help="surrogate: rotate/crop/resize/flip.")] = False,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    size: Annotated[int | None, typer.Option(help="Training crop size.")] = None,
    width: Annotated[int | None, typer.Option(help="surrogate: network width.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="surrogate from URL: scrape into this file first.")
    ] = None,
    queries: Annotated[int | None, typer.Option(help="--pairs: how many to scrape.")] = None,
    collect_size: Annotated[
        int | None, typer.Option(help="--pairs: side of the scraped crops (default 96).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="surrogate: continue from <out>.state.")] = False,
    scheme: Annotated[str | None, typer.Option(help="overwrite: output or trigger.")] = None,
    owner: Annotated[str | None, typer.Option(help="overwrite: the attacker's name.")] = None,
    key_out: Annotated[Path | None, typer.Option(help="overwrite: attacker's key.")] = None,
    fidelity: Annotated[
        float | None, typer.Option(help="removal_network: batch share kept as is.")
    ] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Attack a model: pruning, quantization, fine-tuning, a surrogate trained on its outputs,
    overwriting with the attacker's own watermark, or cleaning its outputs (removal)."""
    from pixmark import api

    victim = teacher or model or teacher_url
    if teacher_url is not None:
        if task is None:
            raise PixmarkError("stealing a service needs --task (what the service does)")
        http = _options(rate_per_s=rate_per_s, max_requests=max_requests)
        if pairs is None:
            victim = api.suspect_query(teacher_url, channels=channels or 3, http_options=http)
    elif pairs is not None:
        raise PixmarkError("--pairs (scrape, then train offline) needs --teacher-url")
    if victim is None:
        raise PixmarkError("give the model to attack with --model (or --teacher for surrogate)")
    if kind == "surrogate":
        options = _options(
            pairs=pairs,
            queries=queries,
            collect_size=collect_size,
            channels=channels if pairs is not None else None,
            http_options=http if pairs is not None else None,
            checkpoint=out.with_name(out.name + ".state"),
            resume=resume or None,
            arch=arch,
            loss=loss,
            adv=adv or None,
            augment=augment or None,
            steps=steps,
            size=size,
            width=width,
            seed=seed,
            device=device,
        )
    elif kind == "overwrite":
        options = _options(scheme=scheme, owner=owner, seed=seed, device=device, key_out=key_out)
    elif kind == "estimate_and_subtract":
        options = _options(size=size)
    elif kind == "removal_network":
        options = _options(
            arch=arch,
            steps=steps,
            size=size,
            width=width,
            seed=seed,
            device=device,
            fidelity=fidelity,
        )
    else:
        options = {}
    api.attack(kind, victim, strength, task=task, data_source=data, out=out, force=force, **options)
    console.print(f"{kind} attack on {victim} -> {out}")
    if key_out is not None:
        console.print(f"attacker's key -> {key_out}")


@app.command()
def nulls(
    task: Annotated[str, typer.Option(help="Task of the null models.")],
    count: Annotated[int, typer.Option(help="How many models.")],
    out: Annotated[Path, typer.Option(help="Folder to write them to.")],
    steps: Annotated[int, typer.Option(help="Training steps each.")] = 300,
    size: Annotated[int, typer.Option(help="Crop size.")] = 64,
    width: Annotated[int, typer.Option(help="Network width.")] = 16,
    channels: Annotated[int | None, typer.Option(help="1 or 3.")] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Train independent clean models (different seeds, architectures, image subsets)."""
    from pixmark import api

    paths = api.train_nulls(
        task,
        count,
        out,
        steps=steps,
        size=size,
        width=width,
        channels=channels,
        device=device,
        force=force,
    )
    console.print(f"{len(paths)} null models in {out}")


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="Benchmark grid (YAML).")],
    out: Annotated[Path, typer.Option(help="Folder for results.jsonl and the report.")],
    workers: Annotated[int, typer.Option(help="Cells run in parallel processes.")] = 1,
    profile: Annotated[
        str | None, typer.Option(help="One of the config's profiles (quick, cpu, paper).")
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rebuild the report from results.")
    ] = False,
    rebuild: Annotated[
        str,
        typer.Option(
            help="Comma-separated: targets, nulls, protected, cells. Train those again and "
            "re-run the cells that use them (the cache is keyed by settings, not by code)."
        ),
    ] = "",
) -> None:
    """Run a scheme x task x attack x strength x seed grid; resumable; writes report.html."""
    from pixmark.bench import run_bench, write_bench_report

    if report_only:
        report = write_bench_report(out)
    else:
        report = run_bench(
            config,
            out,
            workers=workers,
            progress=not no_progress,
            profile=profile,
            rebuild=[k.strip() for k in rebuild.split(",") if k.strip()],
        )
    console.print(f"report -> {report}")


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="Model: checkpoint, TorchScript or factory.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    weights: Annotated[Path | None, typer.Option(help="Weights for a factory spec.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload in MiB.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image in pixels.")] = 4_000_000,
    max_concurrency: Annotated[int, typer.Option(help="Requests processed at once.")] = 4,
    max_batch: Annotated[int, typer.Option(help="Same-size requests batched together.")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="Wait to fill a batch (ms).")] = 5.0,
) -> None:
    """Serve a (protected) model over HTTP: POST /v1/process, GET /v1/health, GET /v1/info."""
    from pixmark.serve import serve as run_server

    run_server(
        model,
        host=host,
        port=port,
        weights=weights,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_concurrency=max_concurrency,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
    )


@app.command("owner-keygen")
def owner_keygen(
    private: Annotated[Path, typer.Option(help="Ed25519 private key (PEM) to write.")],
    public: Annotated[Path, typer.Option(help="Public key (PEM) to write.")],
    force: Force = False,
) -> None:
    """Make the owner's Ed25519 signing key pair (for certificates)."""
    from pixmark.certify import generate_owner_key

    generate_owner_key(private, public, force=force)
    console.print(f"private key -> {private} (keep it secret); public key -> {public}")


@app.command()
def certify(
    key: Annotated[Path, typer.Option(help="The watermark key file.")],
    model: Annotated[Path, typer.Option(help="The protected model file.")],
    owner_key: Annotated[Path, typer.Option(help="Owner's Ed25519 private key (PEM).")],
    out: Annotated[Path, typer.Option(help="Certificate (JSON) to write.")],
    released_at: Annotated[str | None, typer.Option(help="ISO release time.")] = None,
    force: Force = False,
) -> None:
    """Sign a certificate binding key commitment, model hash, scheme and time."""
    from pixmark.certify import certify as make_certificate

    cert = make_certificate(key, model, owner_key, out, released_at=released_at, force=force)
    print(json.dumps(cert, indent=2))


@app.command("check-cert")
def check_cert(
    cert: Annotated[Path, typer.Argument(help="Certificate (JSON).")],
    pubkey: Annotated[Path, typer.Option(help="Owner's public key (PEM).")],
    key: Annotated[Path | None, typer.Option(help="Key file it must commit to.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model file it must hash to.")] = None,
    suspect_released_at: Annotated[
        str | None,
        typer.Option(help="ISO time the suspect appeared; the certificate must be older."),
    ] = None,
) -> None:
    """Check a certificate's signature, commitment, model hash and time. Exit 2 if invalid."""
    from pixmark.certify import check_certificate
    from pixmark.keys import load_key

    checked = check_certificate(
        cert,
        pubkey,
        key=load_key(key) if key else None,
        model_path=model,
        suspect_released_at=suspect_released_at,
    )
    print(json.dumps(checked, indent=2))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model: checkpoint or factory spec.")],
    out: Annotated[Path, typer.Option(help="Output: .onnx or .pt (TorchScript).")],
    channels: Annotated[int, typer.Option(help="1 or 3.")] = 3,
    force: Force = False,
) -> None:
    """Export a (protected) model to ONNX or TorchScript, checked against the original."""
    from pixmark.checkpoint import load_model
    from pixmark.export import export_onnx, export_torchscript

    net = load_model(model)
    if out.suffix == ".onnx":
        export_onnx(net, out, channels=channels, force=force)
    elif out.suffix == ".pt":
        export_torchscript(net, out, channels=channels, force=force)
    else:
        raise PixmarkError(f"export path {out} must end in .onnx or .pt")
    console.print(f"{model} -> {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's files and report.")] = Path(
        "runs/demo"
    ),
    device: Device = "auto",
) -> None:
    """Run pixmark end to end on bundled real images and write a report."""
    from pixmark.demo import run_demo

    report = run_demo(out, device=device)
    console.print(f"report -> {report}")


def main() -> None:
    """Entry point of the ``pixmark`` console script."""
    try:
        app()
    except PixmarkError as exc:
        if _debug["on"]:
            raise
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
