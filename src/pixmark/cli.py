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
