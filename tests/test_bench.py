"""The benchmark runner and its report, on a tiny real grid (trigger scheme, real images)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pixmark.bench import load_config, read_rows, run_bench
from pixmark.bench.report import detection_at_fpr, exact_tests
from pixmark.bench.runner import attacked_query, discard, plan
from pixmark.errors import PixmarkError

#: A grid that runs in about a minute on 2 CPU cores: one small DnCNN protected with the
#: trigger scheme, one attack of each level, two null models.
TINY = {
    "name": "tiny",
    "profile": "quick",
    "device": "cpu",
    "threads": 1,
    "seeds": [0],
    "tasks": {
        "denoise": {
            "arch": "dncnn",
            "steps": 60,
            "size": 40,
            "width": 16,
            "arch_kwargs": {"depth": 6},
        }
    },
    "schemes": {
        "trigger": {
            "keygen": {"size": 40},
            "profile_overrides": {
                "vis_steps": 60,
                "eval_size": 32,
                "eval_count": 4,
                # a tiny, briefly trained host needs a larger step and weight to embed
                "lr": 1e-3,
                "lam": 0.1,
            },
        }
    },
    "nulls": {
        "count": 2,
        "archs": ["dncnn", "unet"],
        "steps": 30,
        "size": 32,
        "width": 8,
        "random_keys": 5,
    },
    "fidelity": {"size": 32, "count": 4},
    "attacks": {
        "none": [None],
        "jpeg": [50],
        "prune": [0.2],
        "surrogate": {"strengths": [20], "options": {"arch": "dncnn", "size": 32, "width": 8}},
    },
}
N_CELLS = 4 + 2  # four attack cells + one row per null model


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    report = run_bench(TINY, out, progress=False)
    assert report == out / "report.html"
    return out


def _artefacts(out: Path) -> dict[str, int]:
    """mtime (ns) of every cached model and key."""
    cache = out / "cache"
    files = list(cache.rglob("*.safetensors")) + list(cache.rglob("build.json"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_grid_runs_end_to_end(bench_dir):
    rows = read_rows(bench_dir / "results.jsonl")
    assert len(rows) == N_CELLS
    ids = [r["cell_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert not [r for r in rows if r["decision"] == "error"]
    by_attack = {r["attack"]: r for r in rows}
    assert set(by_attack) == {"none", "jpeg", "prune", "surrogate", "null"}
    assert {r["level"] for r in rows} == {"clean", "image", "model", "surrogate", "null"}
    # What a user cares about: the protected model itself is recognised, with a tiny
    # p-value; independent null models are not accused.
    assert by_attack["none"]["decision"] == "match"
    assert by_attack["none"]["p_value"] < 1e-6
    nulls = [r for r in rows if r["level"] == "null"]
    assert len(nulls) == 2 and all(r["decision"] == "no match" for r in nulls)
    # Each null model also answered 5 random keys; none of them comes near its design.
    for r in nulls:
        assert len(r["random_key_statistics"]) == 5
        assert min(r["random_key_statistics"]) > by_attack["none"]["threshold"]
    assert "random_key_statistics" not in by_attack["none"]
    for r in rows:
        for field in ("statistic", "p_value", "fidelity_psnr", "fidelity_ssim", "seconds"):
            assert r[field] is not None, (r["cell_id"], field)
        assert r["scheme"] == "trigger" and r["task"] == "denoise" and r["seed"] == 0
        assert r["pixmark_version"] and r["device"].startswith("cpu")
        for path in r["evidence"].values():
            assert (bench_dir / path).is_file()
    # JPEG distorts the answers the verifier sees; the clean cell sees them untouched.
    assert by_attack["none"]["suspect_psnr_vs_protected"] > 60
    assert by_attack["jpeg"]["suspect_psnr_vs_protected"] < 45


@pytest.mark.slow
def test_reports_hold_tables_plots_and_honest_fpr(bench_dir):
    html = (bench_dir / "report.html").read_text(encoding="utf-8")
    md = (bench_dir / "report.md").read_text(encoding="utf-8")
    assert 'src="http' not in html and "src='http" not in html  # nothing fetched
    assert html.count('src="data:image/png;base64,') >= 5  # plot, fidelity grid, evidence
    for text in (html, md):
        assert "Detection at a fixed false-positive rate" in text
        assert (
            "not certifiable: 12 null scores &lt; 99" in text  # 2 models x (1 + 5 keys)
            or "not certifiable: 12 null scores < 99" in text
        )
        assert "trigger distance d" in text
        assert "Exact tests (no calibration needed)" in text  # the trigger rank test
    for rel in [
        line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")
    ]:
        assert (bench_dir / rel).is_file(), rel


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing(bench_dir, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(bench_dir, out)
    results = out / "results.jsonl"
    lines = results.read_text(encoding="utf-8").splitlines(keepends=True)
    all_ids = [json.loads(line)["cell_id"] for line in lines]
    artefacts = _artefacts(out)
    assert any(k.endswith("protected.safetensors") for k in artefacts)
    assert any("nulls" in k for k in artefacts) and any("targets" in k for k in artefacts)
    # Forget the last three cells, then start a real run and kill it (SIGKILL) as soon as it
    # has finished one more cell, leaving a torn line behind.
    kept = lines[:3]
    results.write_text("".join(kept), encoding="utf-8")
    script = (
        "import sys, torch; torch.set_num_threads(1); from pixmark.bench import run_bench; "
        "import json; run_bench(json.loads(sys.argv[1]), sys.argv[2], progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(TINY), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while len(read_rows(results)) < 4:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the resumed run made no progress"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(results, "a", encoding="utf-8") as fh:
        fh.write('{"cell_id": "torn')  # a kill in the middle of writing a row
    assert len(read_rows(results)) >= 4

    run_bench(TINY, out, workers=2, progress=False)  # finishes the rest in 2 processes
    rows = read_rows(results)
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == N_CELLS and len(set(ids)) == N_CELLS
    assert sorted(ids) == sorted(all_ids)
    assert results.read_text(encoding="utf-8").startswith("".join(kept))  # old rows untouched
    assert _artefacts(out) == artefacts  # targets, nulls, keys, protected models reused

    # A finished grid does nothing but rewrite the report.
    start = time.perf_counter()
    run_bench(TINY, out, progress=False)
    assert time.perf_counter() - start < 30
    assert [r["cell_id"] for r in read_rows(results)] == ids
    assert _artefacts(out) == artefacts


def test_changed_settings_make_new_cells(bench_dir):
    """A cell id carries a hash of its settings: a changed grid never reuses stale rows."""
    changed = json.loads(json.dumps(TINY))
    changed["schemes"]["trigger"]["profile_overrides"]["vis_steps"] = 61
    old = {j.name for j in plan(load_config(TINY))[1]}
    new = {j.name for j in plan(load_config(changed))[1]}
    assert len(old) == len(new) == N_CELLS and not old & new
    same = {j.name for j in plan(load_config(json.loads(json.dumps(TINY))))[1]}
    assert same == old


@pytest.mark.slow
def test_an_attack_line_can_verify_with_repeats(bench_dir, tmp_path):
    """A line's own verify options reach pixmark.verify: 64 dithered repeats read the
    trigger's answer through noise of sigma 0.2 that a single query does not."""
    out = tmp_path / "out"
    shutil.copytree(bench_dir, out)  # builds are reused; only the new cells run
    config = json.loads(json.dumps(TINY))
    once = {"kind": "gaussian_noise", "strengths": [0.2], "verify": {"rank_keys": 0}}
    config["attacks"] = {
        "noise-once": once,
        "noise-repeats": {**once, "verify": {"rank_keys": 0, "repeats": 64, "dither": 0.004}},
    }
    run_bench(config, out, progress=False, report=False)
    rows = {r["attack"]: r for r in read_rows(out / "results.jsonl") if "noise" in r["attack"]}
    assert rows["noise-repeats"]["verify_options"] == {
        "rank_keys": 0,
        "repeats": 64,
        "dither": 0.004,
    }
    assert rows["noise-repeats"]["decision"] == "match"
    assert rows["noise-repeats"]["statistic"] < rows["noise-once"]["statistic"] / 2
    with pytest.raises(PixmarkError, match="verify must be a mapping"):
        load_config({**config, "attacks": {"x": {"kind": "jpeg", "strengths": [50], "verify": 3}}})


@pytest.mark.slow
def test_rebuild_forgets_builds_and_reruns_their_cells(bench_dir, tmp_path):
    """After a scheme's code changes, --rebuild retrains what it names, keeps the rest."""
    out = tmp_path / "rebuild"
    shutil.copytree(bench_dir, out)
    ids = sorted(r["cell_id"] for r in read_rows(out / "results.jsonl"))
    builds, cells = plan(load_config(TINY))
    before = _artefacts(out)
    kept = discard(out, builds, cells, read_rows(out / "results.jsonl"), ["protected"])
    assert kept == [] and read_rows(out / "results.jsonl") == []  # every cell uses it
    after = _artefacts(out)
    assert not [k for k in after if "protected" in k]  # deleted, not just its manifest
    assert {k: v for k, v in before.items() if "protected" not in k} == after
    with pytest.raises(PixmarkError, match="cannot rebuild models: choose from targets"):
        discard(out, builds, cells, [], ["models"])

    # "cells" re-runs every cell on the cached builds (here: after the protection is redone).
    run_bench(TINY, out, progress=False, report=False)
    rebuilt = _artefacts(out)
    first = {r["cell_id"]: r["seconds"] for r in read_rows(out / "results.jsonl")}
    run_bench(TINY, out, progress=False, report=False, rebuild=["cells"])
    rows = read_rows(out / "results.jsonl")
    assert sorted(r["cell_id"] for r in rows) == ids  # each cell once, none stale
    assert _artefacts(out) == rebuilt  # no build trained again
    assert any(r["seconds"] != first[r["cell_id"]] for r in rows)  # the cells really ran


def _workers(pid: int) -> list[int]:
    """Pids of the multiprocessing spawn workers whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_bench_stops_its_workers(tmp_path, sig):
    """A kill of the main process alone (SIGTERM or SIGKILL) leaves no worker training."""
    long = json.loads(json.dumps(TINY))
    long["tasks"]["denoise"]["steps"] = 10**6  # the target trains until it is killed
    script = (
        "import sys, json; from pixmark.bench import run_bench; "
        "run_bench(json.loads(sys.argv[1]), sys.argv[2], workers=2, progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(long), str(tmp_path / "b")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers := _workers(proc.pid)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the bench started no workers"
            time.sleep(0.1)
        time.sleep(3)  # let them import torch and take their jobs
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived the bench"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in [w for w in workers if _alive(w)]:
            os.kill(w, signal.SIGKILL)


# --------------------------------------------------------------------------- chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHECK = (
    "<script>window.addEventListener('load', function () {"
    "var r = []; for (var i of document.images) r.push(i.complete && i.naturalWidth > 0 ? 1 : 0);"
    "var p = document.createElement('pre'); p.id = 'img-check';"
    "p.textContent = 'IMAGES:' + r.join('') + ':END'; document.body.appendChild(p);});</script>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); the report's images "
    "are only checked in a real browser",
)
def test_report_renders_in_headless_chromium(bench_dir, tmp_path):
    page = (bench_dir / "report.html").read_text(encoding="utf-8")
    n_images = page.count("<img")
    assert n_images >= 5
    # Copy the page alone (inlined images need no other file) and add a probe script.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"IMAGES:([01]*):END", done.stdout)
    assert found, "the probe script did not run: " + done.stdout[-500:]
    marks = found.group(1)
    assert len(marks) == n_images
    assert set(marks) == {"1"}, f"images that did not load: {marks}"
    # And a screenshot of the real report is not blank.
    shot = tmp_path / "report.png"
    done = _chromium(
        "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={shot}", probe.as_uri()
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert float(pixels.std()) > 20  # text, tables and plots, not a white page


# --------------------------------------------------------------------------- pieces


def test_image_attacks_reach_what_the_verifier_sees():
    images = torch.rand(3, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    identity = lambda x: x.clone()  # noqa: E731
    jpeg = attacked_query(identity, "jpeg", 30)
    assert (jpeg(images) - images).abs().mean() > 0.02
    cropped = attacked_query(identity, "crop", 0.5)(images)
    assert cropped.shape == images.shape  # resized back to the size the scheme asked for
    assert torch.equal(attacked_query(identity, "jpeg", 30)(images), jpeg(images))
    # a noisy service draws new noise for every answer, reproducibly from the cell's seed
    noisy = attacked_query(identity, "gaussian_noise", 0.1, seed=3)
    first, second = noisy(images), noisy(images)
    assert not torch.equal(first, second)
    assert torch.equal(attacked_query(identity, "gaussian_noise", 0.1, seed=3)(images), first)
    assert 0.08 < float((first - images)[images.gt(0.3) & images.lt(0.7)].std()) < 0.12


def _report_row(scheme: str, task: str, level: str, i: int, **fields) -> dict:
    """A results row as the report reads it (attack named after its level)."""
    return {"scheme": scheme, "task": task, "level": level, "attack": level,
            "cell_id": str(i), **fields}  # fmt: skip


def test_detection_at_fpr_needs_enough_nulls():
    def row(level, evidence, decision="no match", i=0):
        # trigger: a distance, smaller statistics are evidence
        return _report_row("trigger", "denoise", level, i, statistic=1.0 - evidence,
                           p_value=0.5, decision=decision)  # fmt: skip

    nulls = [row("null", i / 200, i=i) for i in range(120)]  # evidence in [0, 0.6)
    derived = [row("model", s, "match") for s in (0.9, 0.8, 0.59, 0.1)]
    (entry,) = detection_at_fpr(nulls + derived)
    assert entry["null scores"] == 120
    assert entry["calibrated on"] == "statistic (smaller = evidence)"
    assert entry["TPR @ FPR 0.01"] == "2/4 (50%)"  # threshold = 2nd-most extreme null
    assert entry["TPR @ FPR 0.001"].startswith("not certifiable: 120 null scores < 999")
    assert entry["TPR (scheme decision)"] == "4/4 (100%)"
    few = detection_at_fpr(nulls[:5] + derived)[0]
    assert few["TPR @ FPR 0.01"].startswith("not certifiable: 5 null scores < 99")
    # Random-key statistics of a null row count as null scores, oriented like its own.
    pooled = (
        [dict(r, random_key_statistics=[0.3 + k / 1000 for k in range(9)]) for r in nulls[:100]]
        + nulls[120:]
        + derived
    )
    (entry,) = detection_at_fpr(pooled)
    assert entry["null models"] == 100 and entry["null scores"] == 1000
    # threshold = the most extreme of the 1000 (a random key's d = 0.3): 0.59 fails
    assert entry["TPR @ FPR 0.001"] == "2/4 (50%)"


def test_exact_tests_report_the_rank_test_without_calibration():
    """The rank test's exact p needs no null models; only rows that ran it count."""

    def row(level, rank_p, matched_by, i):
        decision = "match" if matched_by else "no match"
        return _report_row("trigger", "denoise", level, i, statistic=0.5, p_value=0.5,
                           decision=decision, matched_by=matched_by, rank_p=rank_p)  # fmt: skip

    nulls = [row("null", p, [], i) for i, p in enumerate((0.004, 0.2, 0.9))]
    derived = [
        row("model", 0.001, ["distance", "rank"], 10),
        row("model", 0.001, ["rank"], 11),
        row("model", 0.006, [], 12),
        row("image", None, ["distance"], 13),  # budget too small: no rank test
    ]
    other = [dict(row("model", 0.5, [], 20), scheme="keyed")]
    other[0].pop("rank_p")
    other.append(dict(row("model", None, [], 21), scheme="output"))  # bench rows: rank_p None
    (entry,) = exact_tests(nulls + derived + other)
    assert entry["TPR @ p <= 0.01"] == "3/4 (75%)"
    assert entry["TPR @ p <= 0.001"] == "2/4 (50%)"
    assert entry["nulls @ p <= 0.01"] == "1/3 (33%)"
    assert entry["nulls @ p <= 0.001"] == "0/3 (0%)"
    assert entry["cells without the test"] == 1
    assert entry["TPR by this test alone"] == "1/4 (25%)"
    assert exact_tests(other) == []


def test_output_detection_at_fpr_is_calibrated_on_the_decision_p_value():
    """The output scheme's decision combines logo NC and signature: calibrate on its p.

    Null models of the target's architecture can score a high logo NC (0.94 in the
    999-null run) while their combined p stays large; derived models whose logo NC is
    gated to 0 can still carry a small combined p through the signature.
    """

    def row(level, nc, p, i):
        decision = "match" if p <= 1e-3 else "no match"
        return _report_row("output", "derain", level, i, statistic=nc, p_value=p,
                           decision=decision)  # fmt: skip

    nulls = [row("null", 0.94 if i < 3 else 0.0, 0.01 + i / 200, i) for i in range(120)]
    derived = [
        row("model", nc, p, 200 + i)
        for i, (nc, p) in enumerate([(0.94, 1e-40), (0.0, 2e-5), (0.0, 0.005), (0.0, 0.2)])
    ]
    (entry,) = detection_at_fpr(nulls + derived)
    assert entry["calibrated on"] == "decision p-value"
    # threshold: the 2nd-smallest null p (0.015). On the logo NC no model would pass:
    # the best one's 0.94 only ties the three UNet-like nulls.
    assert entry["TPR @ FPR 0.01"] == "3/4 (75%)"
    assert entry["TPR (scheme decision)"] == "2/4 (50%)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schemes": {"nope": {}}}, "unknown scheme 'nope'"),
        ({"attacks": {"melt": [1]}}, "unknown attack 'melt'"),
        ({"tasks": {"cooking": {}}}, "cooking"),
        ({"colour": "red"}, "unknown setting(s) colour"),
        ({"seeds": ["a"]}, "seeds must be a list of integers"),
    ],
)
def test_config_errors_name_the_problem(change, message):
    config = {**json.loads(json.dumps(TINY)), **change}
    with pytest.raises(PixmarkError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(config)


def test_yaml_config_and_profile_overrides_are_checked(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        textwrap.dedent(
            """
            tasks: [denoise]
            schemes: {trigger: {profile_overrides: {no_such_field: 1}}}
            attacks: {none: [null]}
            """
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    assert config["name"] == "grid" and config["seeds"] == [0]
    from pixmark.bench.runner import profile_override

    with (
        pytest.raises(PixmarkError, match="no_such_field"),
        profile_override("trigger", "quick", {"no_such_field": 1}),
    ):
        pass
    from pixmark.schemes import trigger

    before = dict(trigger.PROFILES["quick"])
    with profile_override("trigger", "quick", {"vis_steps": 7}):
        assert trigger.PROFILES["quick"]["vis_steps"] == 7
    assert trigger.PROFILES["quick"] == before
    with pytest.raises(PixmarkError, match="does not exist"):
        run_bench(tmp_path / "missing.yaml", tmp_path / "out", progress=False)
    with pytest.raises(PixmarkError, match="workers"):
        run_bench(path, tmp_path / "out", workers=0, progress=False)


def test_config_profiles_and_named_attacks(tmp_path):
    """A config's profiles overlay its settings; one attack kind can appear under several names."""
    path = tmp_path / "paper_table.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: table
            tasks: {denoise: {steps: 50, width: 8}}
            schemes:
              trigger: {}
              trigger-small: {scheme: trigger, keygen: {size: 20}}
            attacks:
              none: [null]
              sur-unet: {kind: surrogate, strengths: [20], options: {arch: unet}}
              sur-dncnn: {kind: surrogate, strengths: [20], options: {arch: dncnn}}
            profiles:
              quick: {seeds: [0]}
              paper: {seeds: [0, 1, 2], tasks: {denoise: {steps: 5000}}, device: cuda}
            """
        ),
        encoding="utf-8",
    )
    plain = load_config(path)
    paper = load_config(path, "paper")
    assert plain["name"] == "table" and plain["seeds"] == [0]
    assert paper["name"] == "table-paper" and paper["seeds"] == [0, 1, 2]
    assert paper["device"] == "cuda"
    # mappings merge key by key: the profile's steps replace, the base's width stays
    assert paper["tasks"]["denoise"]["steps"] == 5000 and paper["tasks"]["denoise"]["width"] == 8
    builds, cells = plan(plain)
    labels = sorted(job.spec["attack"] for job in cells if job.spec["scheme"] == "trigger")
    assert labels == ["none", "sur-dncnn", "sur-unet"]
    assert {job.spec["kind"] for job in cells} == {"none", "surrogate"}
    assert len({job.name for job in cells}) == 6  # distinct cell ids, 3 per scheme line
    # a named scheme line protects with its own settings, into its own folder
    protects = {j.name: j.spec for j in builds if j.kind == "protect"}
    small = protects["protect trigger-small denoise seed 0"]
    assert small["settings"]["scheme"] == "trigger" and small["settings"]["keygen"] == {"size": 20}
    assert small["dir"] != protects["protect trigger denoise seed 0"]["dir"]
    # the long chain (target -> protections) comes before the null models, which only
    # cells wait on, so a free worker starts a protection as soon as its target is done
    kinds = [job.kind for job in plan(load_config(TINY))[0]]
    assert kinds[0] == "target" and "null" in kinds
    assert max(i for i, k in enumerate(kinds) if k != "null") < kinds.index("null")
    with pytest.raises(PixmarkError, match="no profile 'gpu'; it defines: quick, paper"):
        load_config(path, "gpu")
    with pytest.raises(PixmarkError, match="no profile 'quick'; it defines: none"):
        load_config(TINY, "quick")
    bad = json.loads(json.dumps(TINY))
    bad["attacks"] = {"x": {"kind": "surrogate", "strenghts": [1]}}
    with pytest.raises(PixmarkError, match="attack x has unknown setting"):
        load_config(bad)


def test_named_scheme_line_runs_its_null_rows(tmp_path):
    """A scheme line with a name of its own (``trigger-named: {scheme: trigger}``) runs end
    to end, its null rows' random-key statistics included: those once looked the scheme up
    by the line's name and failed on every null row (session 13)."""
    config = json.loads(json.dumps(TINY))
    config["schemes"] = {"trigger-named": {"scheme": "trigger", **TINY["schemes"]["trigger"]}}
    config["attacks"] = {"none": [None]}
    config["nulls"]["count"] = 1
    run_bench(config, tmp_path / "out", progress=False, report=False)
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {r["scheme"] for r in rows} == {"trigger-named"}
    assert not [r for r in rows if r["decision"] == "error"], rows
    null = [r for r in rows if r["attack"] == "null"]
    assert len(null) == 1 and len(null[0]["random_key_statistics"]) == 5
