"""The keyed scheme (Wu et al., TCSVT 2020) on a small U-Net denoiser trained on real images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixmark import api
from pixmark import data as pdata
from pixmark.api import task_splits, train_model
from pixmark.errors import PixmarkError
from pixmark.keys import save_key
from pixmark.metrics import psnr
from pixmark.nets.keyed_extractor import KeyedExtractor
from pixmark.schemes import keyed, trigger
from pixmark.schemes.base import as_query
from pixmark.stats import Verdict
from pixmark.train import fit

# protect trains host, extractor and an unmarked shadow host together: ~5 minutes on one
# idle core, far longer beside other test workers, so the module gets the output tests' limit.
pytestmark = pytest.mark.timeout(2400)

SECRET = "6b" * 32
TASK = "denoise"


@pytest.fixture(scope="module")
def host():
    """A gray U-Net denoiser trained to convergence at this size (~28 dB): the owner's model."""
    return train_model(
        TASK,
        "unet",
        steps=400,
        size=64,
        width=16,
        channels=1,
        seed=0,
        arch_kwargs={"depth": 2},
        device="cpu",
        progress=False,
    ).model


@pytest.fixture(scope="module")
def protected(host, tmp_path_factory):
    """Protected through the public API, which saves the model and the updated key."""
    folder = tmp_path_factory.mktemp("keyed")
    key = api.keygen("keyed", "ACME Imaging", channels=1, secret=SECRET, out=folder / "acme.key")
    result = api.protect(
        host,
        folder / "acme.key",
        out=folder / "protected.safetensors",
        task=TASK,
        profile="quick",
        device="cpu",
        progress=False,
    )
    assert key.scheme == "keyed" and result.report["attempts"] >= 1
    return result


@pytest.fixture(scope="module")
def unmarked(host, protected):
    """The same host fine-tuned as long (main + polish steps) on the same data and loss,
    without the watermark."""
    prof = keyed.PROFILES["quick"]
    spec, channels, splits = task_splits(TASK, 1)
    sampler = pdata.PairSampler(
        [img for _, img in splits["train"]],
        spec,
        prof["size"],
        channels,
        seed=protected.key.seed("protect") % 2**31,
    )
    model = copy.deepcopy(host)
    fit(
        model,
        sampler,
        steps=prof["steps"] + prof["polish_steps"],
        batch_size=prof["batch_size"],
        lr=prof["lr_g"],
        loss="l1",
        progress=False,
    )
    return model


@pytest.fixture(scope="module")
def original_file(host, tmp_path_factory):
    """The unprotected host saved as a checkpoint (a suspect given by file or URL)."""
    from pixmark.checkpoint import save_model

    return save_model(host, tmp_path_factory.mktemp("original") / "original.safetensors", task=TASK)


# --------------------------------------------------------------------------- keygen


def test_key_bits_and_qr_come_from_the_secret():
    a = keyed.keygen("ACME Imaging", channels=1, secret=SECRET)
    b = keyed.keygen("ACME Imaging", channels=1, secret=SECRET)
    c = keyed.keygen("ACME Imaging", channels=1)
    bits = a.tensor("bits")
    assert bits.shape == (1024,) and set(bits.unique().tolist()) <= {0, 1}
    assert 400 < int(bits.sum()) < 624  # fair coin flips
    assert torch.equal(bits, b.tensor("bits"))
    assert (bits != c.tensor("bits")).float().mean() > 0.3
    w = a.tensor("watermark")
    assert w.shape == (1, 64, 64) and set(w.unique().tolist()) == {0.0, 1.0}
    # The QR code reads back as the owner's name and the key's id.
    text = keyed.decode_qr(keyed.target_of(a))
    assert text == a.params["qr_text"] == f"{keyed.key_id(a)[:8]}:ACME Imaging"
    # A faint echo of it (what E reads off some unmarked models) is not evidence.
    assert keyed.decode_qr(0.6 * keyed.target_of(a)) == text
    assert keyed.decode_qr(0.2 * keyed.target_of(a)) is None
    assert a.params["qr_text"] != c.params["qr_text"]
    assert keyed.check_key(a)["valid"]


def test_colour_logo_watermark(tmp_path):
    logo = torch.zeros(3, 80, 80)
    logo[0, :40] = 1.0
    logo[2, :, 40:] = 1.0
    path = tmp_path / "logo.png"
    Image.fromarray((logo.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(path)
    key = keyed.keygen("ACME Imaging", watermark=str(path), channels=3)
    w = key.tensor("watermark")
    assert key.params["watermark"] == "color" and w.shape == (3, 64, 64)
    assert float(w[0, :20].mean()) > 0.95 and float(w[0, 44:].mean()) < 0.05
    assert float(w[2, :, 44:].mean()) > 0.95 and float(w[1].max()) < 0.05


@pytest.mark.parametrize(
    "kwargs",
    [{"bits": 1000}, {"bits": 128}, {"channels": 2}, {"watermark": "/no/such/logo.png"}],
)
def test_keygen_rejects_bad_options(kwargs):
    with pytest.raises(PixmarkError):
        keyed.keygen("ACME Imaging", **kwargs)


def test_block_statistic_is_blind_to_bias_and_noise():
    key = keyed.keygen("ACME Imaging", channels=1, secret=SECRET)
    t = keyed.target_of(key)
    errors, n = keyed.block_errors(t, t)
    assert errors == 0 and n > 100
    # A constant output (any sign) and the inverted mark carry no evidence of the mark.
    assert keyed.block_errors(torch.full_like(t, 0.7), t)[0] == n
    assert keyed.block_errors(-t, t)[0] == n
    # A faint echo of the mark (E's gate nearly closed) is not evidence either.
    assert keyed.block_errors(0.2 * t, t)[0] == n
    assert keyed.block_errors(0.8 * t + 0.1, t)[0] == 0
    # Unrelated noise is right on fewer than half of the blocks (the binomial is conservative).
    g = torch.Generator().manual_seed(0)
    rates = [keyed.block_errors(torch.randn(t.shape, generator=g), t)[0] / n for _ in range(50)]
    assert sum(rates) / len(rates) > 0.5
    assert 0.3 < keyed.critical_ber(n) < 0.45


# --------------------------------------------------------------------------- extractor


def test_parity_layout_spreads_wrong_bits_over_the_whole_grid():
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (1, 1024), generator=g)
    parity = KeyedExtractor(channels=1)
    literal = KeyedExtractor(channels=1, layout="blocks")
    for layout, lo, hi in ((parity, 0.3, 0.5), (literal, 0.0, 8 / 256 + 1e-6)):
        flipped = keyed.flip_bits(bits, 8, g)
        changed = (layout.key_tensor(bits) != layout.key_tensor(flipped)).float().mean()
        assert lo <= float(changed) <= hi
    # One wrong bit already changes about parity_bits / key_bits = 1/8 of the blocks.
    one = (parity.key_tensor(bits) != parity.key_tensor(keyed.flip_bits(bits, 1, g))).float()
    assert 0.06 < float(one.mean()) < 0.2
    with torch.no_grad():
        out = parity(torch.rand(2, 1, 64, 64), bits)
    assert out.shape == (2, 1, 64, 64) and float(out.abs().max()) <= 1.0
    folded = KeyedExtractor(channels=3, wm_channels=3, fold=2)
    assert folded(torch.rand(1, 3, 128, 128), bits).shape == (1, 3, 64, 64)


# --------------------------------------------------------------------------- protect/verify


@pytest.mark.slow
def test_protected_host_carries_the_watermark(protected, tmp_path):
    report = protected.report
    verdict = keyed.verify(as_query(protected.model), protected.key, evidence_dir=tmp_path)
    assert verdict.decision == "match", verdict.summary()
    assert verdict.p_value < 1e-6
    # The paper's per-image BER; 0.001-0.10 measured over secrets at the quick budget.
    assert verdict.details["ber_mean"] <= 0.1
    assert report["ber"] <= 0.1
    assert verdict.statistic < verdict.threshold
    assert verdict.details["key_valid"]
    assert (tmp_path / "keyed_evidence.png").is_file()
    assert Verdict.from_json(verdict.to_json()).decision == "match"


@pytest.mark.slow
def test_qr_of_the_protected_outputs_names_the_owner(protected):
    verdict = keyed.verify(as_query(protected.model), protected.key)
    assert verdict.details["qr_text"] == protected.key.params["qr_text"]
    assert verdict.details["qr_matches_owner"]


@pytest.mark.slow
def test_clean_models_and_clean_images_do_not_match(host, unmarked, protected):
    key = protected.key
    for name, query in (
        ("the unprotected original", as_query(host)),
        ("the host fine-tuned without the mark", as_query(unmarked)),
        ("the queries themselves (images G never made)", lambda x: x.clone()),
    ):
        verdict = keyed.verify(query, key)
        assert verdict.decision == "no match", f"{name}: {verdict.summary()}"
        assert verdict.details["ber_mean"] > 0.2, name
        assert not verdict.details["qr_matches_owner"], f"{name}: the QR names the owner"
    report = protected.report
    assert min(report["ber_clean"], report["ber_unprotected"], report["ber_unmarked"]) > 0.2


@pytest.mark.slow
def test_nulls_give_an_empirical_p_value(host, unmarked, protected):
    verdict = keyed.verify(
        as_query(protected.model), protected.key, nulls=[as_query(host), as_query(unmarked)]
    )
    assert verdict.details["null_fpr"] == 0.0
    assert verdict.details["empirical_p"] == pytest.approx(1 / 3)
    assert min(verdict.details["null_block_ber"]) > verdict.statistic


@pytest.mark.slow
def test_keys_with_flipped_bits_extract_nothing(protected):
    query = as_query(protected.model)
    curve = dict(keyed.key_sensitivity(query, protected.key, flips=[0, 8, 32]))
    assert curve[0] <= 0.1
    assert curve[8] > 0.25 and curve[32] > 0.25
    g = torch.Generator().manual_seed(3)
    wrong = keyed.flip_bits(protected.key.tensor("bits"), 8, g)
    score = keyed.measure(query, protected.key, bits=wrong)
    assert score["p_value"] > keyed.ALPHA_DECISION
    # A key file whose bits were swapped for other ones does not verify either.
    forged = protected.key.with_updates(tensors={"bits": wrong})
    verdict = keyed.verify(query, forged)
    assert verdict.decision == "no match" and not verdict.details["key_valid"]


@pytest.mark.slow
def test_watermark_costs_at_most_0_5_db(protected, unmarked):
    """The issue's bound: at most 0.5 dB against the same host fine-tuned without the mark.
    Since session 16 the quick profile ends with a 40-step polish (E frozen, tighter tie to
    the shadow): 0.39 / 0.40 / 0.47 dB on three secrets, 0.45-0.57 dB without it
    (docs/schemes/keyed.md). Until then this asserted 0.6 dB."""
    spec, channels, splits = task_splits(TASK, 1)
    test = pdata.fixed_pairs([img for _, img in splits["test"]], spec, 64, 16, seed=2, channels=1)
    marked = float(psnr(as_query(protected.model)(test[0]), test[1]))
    clean = float(psnr(as_query(unmarked)(test[0]), test[1]))
    assert marked >= clean - 0.5, (marked, clean)
    assert type(protected.model) is type(unmarked)


@pytest.mark.slow
def test_key_file_round_trip_and_tampering(protected, tmp_path):
    path = save_key(protected.key, tmp_path / "acme.key")
    loaded = keyed.load(path)
    query = as_query(protected.model)
    assert keyed.verify(query, loaded).statistic == keyed.verify(query, protected.key).statistic
    # Change one extractor weight in the file, keep its metadata: the commitment catches it.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    name = next(k for k in tensors if k.startswith("extractor."))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PixmarkError, match="modified"):
        keyed.load(path)


def test_keys_of_other_schemes_are_refused(host, tmp_path):
    other = trigger.keygen("ACME Imaging", secret=SECRET)
    with pytest.raises(PixmarkError, match="keyed"):
        keyed.verify(as_query(host), other)
    with pytest.raises(PixmarkError, match="keyed"):
        keyed.protect(host, other, task=TASK, device="cpu", progress=False)
    path = save_key(other, tmp_path / "trigger.key")
    with pytest.raises(PixmarkError, match="not a 'keyed' key"):
        keyed.load(path)
    unprotected = keyed.keygen("ACME Imaging", channels=1, secret=SECRET)
    with pytest.raises(PixmarkError, match="protect"):
        keyed.verify(as_query(host), unprotected)
    with pytest.raises(PixmarkError, match="task"):
        keyed.protect(host, unprotected, device="cpu", progress=False)
    with pytest.raises(PixmarkError, match="3-channel"):
        keyed.protect(host, keyed.keygen("ACME Imaging", channels=3), task=TASK, progress=False)


def test_embedding_check_and_attempt_files():
    took = {"ber": 0.01, "ber_clean": 0.9, "ber_unprotected": 1.0, "ber_unmarked": 0.95}
    assert keyed.embedded(took)
    assert not keyed.embedded({**took, "ber": 0.6})  # the mark did not take
    assert not keyed.embedded({**took, "ber_unmarked": 0.1})  # E reads unmarked outputs too
    assert keyed._attempt_path(None, 1) is None
    assert keyed._attempt_path("run/p.state", 0).name == "p.state"
    assert keyed._attempt_path("run/p.state", 2).name == "p.state.try2"


def test_protect_rejects_bad_attempts_and_overrides(host):
    key = keyed.keygen("ACME Imaging", channels=1, secret=SECRET)
    with pytest.raises(PixmarkError, match="attempts"):
        keyed.protect(host, key, task=TASK, attempts=0, progress=False)
    with pytest.raises(PixmarkError, match="unknown profile entries"):
        keyed.protect(host, key, task=TASK, overrides={"stpes": 10}, progress=False)


@pytest.mark.slow
def test_cli_verifies_the_protected_file_and_refuses_the_original(
    original_file, protected, tmp_path
):
    from typer.testing import CliRunner

    from pixmark.cli import app

    folder = Path(protected.report["key_path"]).parent
    runner = CliRunner()
    args = ["verify", "--key", str(folder / "acme.key"), "--json", "--suspect"]
    hit = runner.invoke(app, [*args, protected.report["model_path"]])
    assert hit.exit_code == 0, hit.output
    assert Verdict.from_json(hit.output).scheme == "keyed"
    miss = runner.invoke(app, [*args, str(original_file)])
    assert miss.exit_code == 1, miss.output
    # keygen through the CLI: --watermark and --bits reach the scheme; no silent overwrite.
    made = runner.invoke(
        app,
        [
            "keygen",
            "--scheme",
            "keyed",
            "--owner",
            "ACME",
            "--channels",
            "1",
            "--bits",
            "512",
            "--out",
            str(tmp_path / "k.key"),
        ],
    )
    assert made.exit_code == 0, made.output
    assert keyed.load(tmp_path / "k.key").params["bits"] == 512
    again = runner.invoke(
        app, ["keygen", "--scheme", "keyed", "--owner", "ACME", "--out", str(tmp_path / "k.key")]
    )
    # (the console script turns this PixmarkError into one line and exit 2)
    assert isinstance(again.exception, PixmarkError) and "--force" in str(again.exception)
    assert keyed.load(tmp_path / "k.key").params["bits"] == 512  # untouched


@pytest.mark.slow
def test_served_protected_host_verifies_by_url_and_the_original_does_not(original_file, protected):
    """Black-box verification: the suspect is only reachable over HTTP (8-bit PNG answers)."""
    from pixmark.serve import running

    key = Path(protected.report["key_path"])
    with running(protected.report["model_path"]) as url:
        verdict = api.verify(f"{url}/v1/process", key)
        assert verdict.decision == "match", verdict.summary()
        assert verdict.details["qr_matches_owner"]
    with running(original_file) as url:
        assert api.verify(f"{url}/v1/process", key).decision == "no match"
