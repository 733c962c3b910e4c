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
    data: Annotated[str | None, typer.Option(help="builtin, builtin:xray or a folder.")] = None,
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
    force: Force = False,
) -> None:
    """Make a new secret key (never overwrites an existing key without --force)."""
    from pixmark import api

    key = api.keygen(
        scheme,
        owner,
        out=out,
        force=force,
        **_options(logo=logo, size=size, channels=channels, task=task, design=design, count=count),
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
        str, typer.Option(help="Suspect model: checkpoint, TorchScript or package.module:factory.")
    ],
    weights: Annotated[Path | None, typer.Option(help="Weights for a factory spec.")] = None,
    nulls: Annotated[Path | None, typer.Option(help="Folder of null models.")] = None,
    evidence: Annotated[Path | None, typer.Option(help="Folder for evidence images.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Decide whether a suspect was derived from the protected model. Exit 0 match, 1 no match."""
    from pixmark import api

    verdict = api.verify(suspect, key, weights=weights, nulls=nulls, evidence_dir=evidence)
    if as_json:
        print(verdict.to_json())
    else:
        print(verdict.summary())
    raise typer.Exit(0 if verdict.decision == "match" else 1)


@app.command()
def attack(
    kind: Annotated[
        str, typer.Argument(help="prune, prune_channels, quantize, fine_tune or surrogate.")
    ],
    out: Annotated[Path, typer.Option(help="Attacked model (.safetensors).")],
    model: Annotated[str | None, typer.Option(help="Model to attack.")] = None,
    teacher: Annotated[str | None, typer.Option(help="surrogate: the model to steal.")] = None,
    strength: Annotated[str | None, typer.Option(help="Attack strength (see docs).")] = None,
    task: Annotated[str | None, typer.Option(help="Task (for fine_tune/surrogate).")] = None,
    data: Annotated[str | None, typer.Option(help="builtin or a folder of images.")] = None,
    arch: Annotated[str | None, typer.Option(help="surrogate: architecture.")] = None,
    loss: Annotated[str | None, typer.Option(help="surrogate: l1, l2, perceptual, ssim.")] = None,
    adv: Annotated[bool, typer.Option(help="surrogate: add an adversarial loss.")] = False,
    augment: Annotated[bool, typer.Option(help="surrogate: rotate/crop/resize/flip.")] = False,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    size: Annotated[int | None, typer.Option(help="Training crop size.")] = None,
    width: Annotated[int | None, typer.Option(help="surrogate: network width.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Attack a model: pruning, quantization, fine-tuning, or a surrogate trained on its outputs."""
    from pixmark import api

    victim = teacher or model
    if victim is None:
        raise PixmarkError("give the model to attack with --model (or --teacher for surrogate)")
    if kind == "surrogate":
        options = _options(
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
    else:
        options = {}
    api.attack(kind, victim, strength, task=task, data_source=data, out=out, force=force, **options)
    console.print(f"{kind} attack on {victim} -> {out}")


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
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rebuild the report from results.")
    ] = False,
) -> None:
    """Run a scheme x task x attack x strength x seed grid; resumable; writes report.html."""
    from pixmark.bench import run_bench, write_bench_report

    if report_only:
        report = write_bench_report(out)
    else:
        report = run_bench(config, out, workers=workers, progress=not no_progress)
    console.print(f"report -> {report}")


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
