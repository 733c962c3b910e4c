"""Black-box reality, end to end: serve over HTTP, verify by URL, steal through the API.

A real uvicorn server on 127.0.0.1 serves the protected model; verification only sees
its HTTP answers (8-bit PNGs). The CLI is exercised as a user would call it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pixmark import api
from pixmark.attacks import served_through
from pixmark.checkpoint import load_model, save_model
from pixmark.cli import main
from pixmark.errors import PixmarkError
from pixmark.remote import http_query, load_pairs
from pixmark.schemes.base import as_query
from pixmark.serve import running


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory, tiny_dncnn) -> dict[str, Path]:
    """An owner's trigger key and protected model, and an independent clean model."""
    folder = tmp_path_factory.mktemp("owner")
    key = folder / "acme.key"
    api.keygen("trigger", "ACME Imaging", out=key)
    protected = folder / "protected.safetensors"
    # A tiny, briefly trained host: embed with a larger step and weight than the quick profile.
    api.protect(
        tiny_dncnn(0),
        key,
        out=protected,
        profile="quick",
        device="cpu",
        progress=False,
        overrides={"lr": 1e-3, "lam": 0.1},
    )
    clean = save_model(tiny_dncnn(1), folder / "clean.safetensors", task="denoise")
    return {"key": key, "protected": protected, "clean": clean, "folder": folder}


def _cli(args: list[str]) -> int:
    old = sys.argv
    sys.argv = ["pixmark", *args]
    try:
        main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old


def test_verify_by_url_matches_the_served_protected_model(owner: dict[str, Path]) -> None:
    with running(owner["protected"]) as url:
        # the distance test alone here (rank_keys=0); the CLI call runs both tests
        verdict = api.verify(f"{url}/v1/process", owner["key"], rank_keys=0)
        assert verdict.decision == "match", verdict.summary()
        assert verdict.details["matched_by"] == ["distance"]
        args = ["verify", "--key", str(owner["key"]), "--suspect", f"{url}/v1/process"]
        assert _cli([*args, "--concurrency", "8"]) == 0  # both tests, 8 requests at a time


def test_verify_by_url_rejects_a_served_clean_model(owner: dict[str, Path]) -> None:
    with running(owner["clean"]) as url:
        verdict = api.verify(f"{url}/v1/process", owner["key"], rank_keys=0)
        assert verdict.decision == "no match", verdict.summary()
        args = ["verify", "--key", str(owner["key"]), "--suspect", f"{url}/v1/process"]
        assert _cli([*args, "--concurrency", "8"]) == 1  # both tests, 8 requests at a time


def test_cli_prints_the_decision_fpr_bound_with_null_models(
    owner: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --nulls the CLI says how often the distance test passed on them and bounds the
    decision's false-positive rate (that share plus the rank test's exact level)."""
    nulls = tmp_path / "nulls"
    nulls.mkdir()
    (nulls / "clean.safetensors").write_bytes(owner["clean"].read_bytes())
    args = ["verify", "--key", str(owner["key"]), "--suspect", str(owner["protected"])]
    assert _cli([*args, "--nulls", str(nulls)]) == 0
    printed = capsys.readouterr().out
    assert "null models: the distance test passed 0 of their scores" in printed
    assert "false-positive rate of the decision <= 0.001" in printed


def test_rank_test_over_http_finds_a_fine_tuned_copy(
    owner: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A thief fine-tunes the stolen model and serves it: the distance test loses the mark,
    the rank test (999 random triggers, sent as 8-bit PNGs) still finds it; a request
    budget too small for the rank test leaves the distance test alone, and says so."""
    tuned = api.attack(
        "fine_tune",
        owner["protected"],
        300,
        task="denoise",
        device="cpu",
        out=owner["folder"] / "tuned.safetensors",
    )
    del tuned
    with running(owner["folder"] / "tuned.safetensors") as url:
        args = ["verify", "--key", str(owner["key"]), "--suspect", f"{url}/v1/process"]
        assert _cli([*args, "--concurrency", "8"]) == 0
        printed = capsys.readouterr().out
        assert "distance test failed" in printed and "rank test passed: p = 0.001" in printed
        assert _cli([*args, "--max-requests", "100"]) == 1
        assert "rank test not run: the request budget has" in capsys.readouterr().out
        assert _cli([*args, "--rank-keys", "0"]) == 1
        assert "rank test not run: rank_keys = 0" in capsys.readouterr().out


def test_unreachable_url_is_a_clear_error(owner: dict[str, Path]) -> None:
    assert (
        _cli(["verify", "--key", str(owner["key"]), "--suspect", "http://127.0.0.1:9/v1/process"])
        == 2
    )


def test_steal_through_the_api_with_a_bounded_budget(owner: dict[str, Path]) -> None:
    """An attacker trains a surrogate from HTTP answers alone, within a request budget."""
    with running(owner["protected"]) as url:
        teacher = http_query(f"{url}/v1/process", channels=1, max_requests=2000)
        surrogate = api.attack(
            "surrogate",
            teacher,
            task="denoise",
            arch="dncnn",
            steps=60,
            size=32,
            width=16,
            batch_size=4,
            device="cpu",
            progress=False,
        )
        assert 0 < teacher.requests_made <= 2000
    x = torch.rand(1, 1, 40, 40)
    assert surrogate(x).shape == x.shape


def test_steal_offline_from_scraped_pairs_resumes_within_budgets(
    owner: dict[str, Path], tmp_path: Path
) -> None:
    """Collect answers under a per-call budget (resumable), then train on them offline."""
    pairs = tmp_path / "stolen.safetensors"
    options = {"task": "denoise", "pairs": pairs, "queries": 48, "collect_size": 48, "size": 32}
    train = {"arch": "dncnn", "steps": 40, "width": 16, "batch_size": 4, "progress": False}
    with running(owner["protected"]) as url:
        service = f"{url}/v1/process"
        budget = {"http_options": {"max_requests": 30}}
        with pytest.raises(PixmarkError, match="collected 30 of 48 pairs"):
            api.attack("surrogate", service, **options, **budget, **train)
        first = load_pairs(pairs)[1].clone()
        surrogate = api.attack("surrogate", service, **options, **budget, **train)
    inputs, answers = load_pairs(pairs)
    assert len(answers) == 48 and torch.equal(answers[:30], first)
    # The answers are the served model's own outputs (8-bit PNG), not re-requested ones.
    local = api.apply_model(load_model(owner["protected"]), inputs[:4])
    assert float((answers[:4] - local).abs().max()) <= 1 / 255 + 1e-6
    x = torch.rand(1, 1, 40, 40)
    assert surrogate(x).shape == x.shape
    with pytest.raises(PixmarkError, match="URL"):
        api.attack("surrogate", owner["clean"], task="denoise", pairs=tmp_path / "x.safetensors")
    cli = ["attack", "surrogate", "--teacher", str(owner["clean"]), "--task", "denoise"]
    assert _cli([*cli, "--pairs", str(pairs), "--out", str(tmp_path / "s.safetensors")]) == 2


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_exported_protected_model_still_verifies(owner: dict[str, Path], suffix: str) -> None:
    """The watermark survives export: ONNX (onnxruntime) and TorchScript copies match."""
    out = owner["folder"] / f"exported{suffix}"
    assert (
        _cli(["export", str(owner["protected"]), "--out", str(out), "--channels", "1", "--force"])
        == 0
    )
    verdict = api.verify(out, owner["key"])
    assert verdict.decision == "match", verdict.summary()


def _noisy(query, sigma: float, hashed: bool):  # noqa: ANN001, ANN202
    """A thief's service: every answer plus Gaussian noise, fresh per call or (``hashed``)
    drawn from a hash of the input bytes, so the same question gets the same noise."""
    return served_through(query, "gaussian_noise", sigma, hashed=hashed)


def test_repeats_and_dither_read_the_mark_through_noise(owner: dict[str, Path]) -> None:
    """Noise of sigma 0.2 on every answer hides the trigger's response; 64 repeats average
    fresh noise away, and input dither also defeats noise derived from the input."""
    key, protected = owner["key"], as_query(load_model(owner["protected"]))
    clean = as_query(load_model(owner["clean"]))

    def decide(query, hashed: bool, **options) -> str:  # noqa: ANN001
        return api.verify(_noisy(query, 0.2, hashed), key, rank_keys=0, **options).decision

    assert decide(protected, hashed=False) == "no match"
    verdict = api.verify(_noisy(protected, 0.2, False), key, rank_keys=0, repeats=64)
    assert verdict.decision == "match" and verdict.details["repeats"] == 64
    assert decide(protected, hashed=True, repeats=64) == "no match"  # same noise 64 times
    assert decide(protected, hashed=True, repeats=64, dither=1 / 255) == "match"
    assert decide(clean, hashed=True, repeats=64, dither=1 / 255) == "no match"


def test_repeats_count_against_a_services_request_budget(owner: dict[str, Path]) -> None:
    """Over HTTP with 500 requests, 8 repeats leave 61 questions after the trigger: too
    few for the rank test's 999, which is skipped and says so; the distance test runs."""
    with running(owner["protected"]) as url:
        http = {"max_requests": 500, "concurrency": 8}
        verdict = api.verify(f"{url}/v1/process", owner["key"], http_options=http, repeats=8)
    assert verdict.decision == "match" and verdict.details["matched_by"] == ["distance"]
    assert "has 61 left, the test needs 999" in verdict.details["rank_skipped"]


@pytest.mark.parametrize(
    ("flag", "value"), [("--repeats", "0"), ("--repeats", "5000"), ("--dither", "0.5")]
)
def test_bad_repeats_or_dither_is_a_clear_error(
    owner: dict[str, Path], flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", "--key", str(owner["key"]), "--suspect", str(owner["protected"])]
    assert _cli([*args, "--repeats", "2", flag, value]) == 2
    assert flag.removeprefix("--") in capsys.readouterr().err
