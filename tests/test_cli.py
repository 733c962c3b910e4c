"""The CLI: real commands, exit codes, and one clear line per bad input (no traceback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pixmark import __version__
from pixmark.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``pixmark ARGS`` in-process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["pixmark", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"pixmark {__version__}"


def test_train_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(
        [
            "train",
            "--task",
            "denoise",
            "--arch",
            "dncnn",
            "--width",
            "8",
            "--channels",
            "1",
            "--size",
            "32",
            "--steps",
            "30",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "test PSNR" in err
    code, stdout, _ = run_cli(["info", str(out), "--json"], capsys)
    info = json.loads(stdout)
    assert code == 0 and info["arch"] == "dncnn" and info["task"] == "denoise"
    assert info["parameters"] > 0 and "psnr" in info["metrics"]
    # The output exists now: refuse without --force, and leave it untouched.
    before = out.read_bytes()
    code, _, err = run_cli(
        ["train", "--task", "denoise", "--arch", "dncnn", "--steps", "1", "--out", str(out)], capsys
    )
    assert_one_line_error(code, err, "already exists", "--force")
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["train", "--task", "painting", "--arch", "dncnn", "--out", "x.safetensors"],
            ["unknown task 'painting'", "denoise", "derain"],
        ),
        (
            ["train", "--task", "denoise", "--arch", "vgg", "--out", "x.safetensors"],
            ["unknown architecture 'vgg'", "unet", "dncnn"],
        ),
        (
            [
                "train",
                "--task",
                "denoise",
                "--arch",
                "dncnn",
                "--channels",
                "2",
                "--out",
                "x.safetensors",
            ],
            ["channels"],
        ),
        (
            [
                "train",
                "--task",
                "denoise",
                "--arch",
                "dncnn",
                "--size",
                "5000",
                "--out",
                "x.safetensors",
            ],
            ["5000"],
        ),
        (
            [
                "train",
                "--task",
                "denoise",
                "--arch",
                "dncnn",
                "--data",
                "/no/such/folder",
                "--out",
                "x.safetensors",
            ],
            ["/no/such/folder"],
        ),
        (
            [
                "train",
                "--task",
                "denoise",
                "--arch",
                "dncnn",
                "--device",
                "tpu",
                "--out",
                "x.safetensors",
            ],
            ["unknown device 'tpu'"],
        ),
        (["info", "/no/such/model.safetensors"], ["does not exist"]),
        (
            ["keygen", "--scheme", "magic", "--owner", "A", "--out", "k.key"],
            ["unknown scheme 'magic'", "output", "trigger"],
        ),
        (
            ["verify", "--key", "/no/such.key", "--suspect", "m.safetensors"],
            ["key file /no/such.key does not exist"],
        ),
        (
            ["attack", "melt", "--model", "m.safetensors", "--out", "a.safetensors"],
            ["does not exist"],
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    args: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *needles)


def test_corrupt_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x89PNG not a model")
    code, _, err = run_cli(["info", str(bad)], capsys)
    assert_one_line_error(code, err, str(bad))


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pixmark.errors import PixmarkError

    with pytest.raises(PixmarkError):
        run_cli(["--debug", "info", str(tmp_path / "nope.safetensors")], capsys)


def test_attack_prune_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real model pruned through the CLI: half its conv weights are zero."""
    from pixmark import nets
    from pixmark.attacks import sparsity
    from pixmark.checkpoint import load_model, save_model

    model_path = save_model(
        nets.create("dncnn", channels=1, depth=4, width=8),
        tmp_path / "m.safetensors",
        task="denoise",
    )
    out = tmp_path / "pruned.safetensors"
    code, _, err = run_cli(
        ["attack", "prune", "--model", str(model_path), "--strength", "0.5", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert sparsity(load_model(out)) == pytest.approx(0.5, abs=0.01)
    code, _, err = run_cli(
        [
            "attack",
            "prune",
            "--model",
            str(model_path),
            "--strength",
            "1.5",
            "--out",
            str(tmp_path / "p2.safetensors"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, "amount")
