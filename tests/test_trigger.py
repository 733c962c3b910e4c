"""The trigger scheme (Quan et al., TNNLS 2020) on a small DnCNN trained on real images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pixmark.errors import PixmarkError
from pixmark.keys import load_key, new_key, save_key
from pixmark.metrics import ncc
from pixmark.schemes import trigger
from pixmark.schemes.base import as_query

SECRET = "5e" * 32
#: The test host has ~4k weights; it needs bigger steps than the quick profile's lr 1e-4.
TINY_HOST = {"lr": 1e-3, "lam": 0.1}


@pytest.fixture(scope="module")
def host(tiny_dncnn):
    return tiny_dncnn(0)


@pytest.fixture(scope="module")
def null_host(tiny_dncnn):
    return tiny_dncnn(1)


@pytest.fixture(scope="module")
def protected(host):
    key = trigger.keygen("ACME Imaging", secret=SECRET)
    return trigger.protect(
        host, key, profile="quick", device="cpu", progress=False, overrides=TINY_HOST
    )


# --------------------------------------------------------------------------- keygen


def test_trigger_is_derived_from_secret_and_owner():
    a = trigger.keygen("ACME Imaging", secret=SECRET)
    b = trigger.keygen("ACME Imaging", secret=SECRET)
    c = trigger.keygen("Globex", secret=SECRET)
    d = trigger.keygen("ACME Imaging")
    k = a.tensor("trigger")
    assert k.shape == (1, 1, 40, 40)
    assert torch.equal(k, b.tensor("trigger"))
    assert not torch.allclose(k, c.tensor("trigger"))
    assert not torch.allclose(k, d.tensor("trigger"))
    assert float(k.min()) >= 0.0 and float(k.max()) <= 1.0
    assert abs(float(k.mean()) - 0.5) < 0.05  # uniform noise
    assert a.params["eta"] == pytest.approx(6.07e-3, abs=5e-6)  # the paper's 40 x 40 threshold
    several = trigger.keygen("ACME Imaging", size=24, count=3, channels=3, design="gradient")
    assert several.tensor("trigger").shape == (3, 3, 24, 24)


def test_sr_trigger_is_an_upsampled_noise_image():
    key = trigger.keygen("ACME Imaging", size=20, task="sr2", secret=SECRET)
    k = key.tensor("trigger")
    assert k.shape == (1, 1, 20, 20)
    low = F.avg_pool2d(k, 2)
    # Bilinear upsampling of 10 x 10 noise: neighbours agree far more than in raw noise.
    assert float((k[..., 1:] - k[..., :-1]).abs().mean()) < 0.2
    assert float(low.std()) > 0.15
    s0 = trigger.designed(k, "sr2", "sobel")
    assert float((s0 - k).min()) >= 0.0  # SR design adds the enhancement
    with pytest.raises(PixmarkError, match="divisible"):
        trigger.keygen("ACME Imaging", size=21, task="sr2")


@pytest.mark.parametrize("design", trigger.DESIGNS)
def test_designs_are_far_from_simple_responses(design):
    """The identity and a 3 x 3 box blur are far from either design (no match)."""
    k = trigger.keygen("ACME Imaging", secret=SECRET, count=4).tensor("trigger")
    s0 = trigger.designed(k, "denoise", design)
    eta = trigger.trigger_threshold(4 * 40, 40)
    blur = F.avg_pool2d(F.pad(k, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    for response in (k, blur):
        assert trigger.distance(response, s0) > eta
        assert trigger.residual_ncc(response, s0, k) < 0.85
    if design == "bernoulli":  # Base-1: a fair-coin label image, unrelated to K's values
        assert set(s0.unique().tolist()) == {0.0, 1.0}
        assert 0.45 < float(s0.mean()) < 0.55
        assert abs(float(ncc(k.reshape(1, -1), s0.reshape(1, -1)))) < 0.1
        return
    # Plain output-space correlation would be fooled by the shared trigger: explain why
    # pixmark correlates residuals.
    assert float(ncc(k.reshape(1, -1), s0.reshape(1, -1))) > 0.5


# --------------------------------------------------------------------------- protect + verify


@pytest.mark.slow
def test_protected_model_matches_with_distance_below_eta(protected, tmp_path):
    report = protected.report
    assert report["d"] <= report["eta"] / 4
    assert report["ncc"] >= 0.99
    verdict = trigger.verify(as_query(protected.model), protected.key, evidence_dir=tmp_path)
    assert verdict.decision == "match"
    assert verdict.statistic <= verdict.threshold == pytest.approx(6.07e-3, abs=5e-6)
    assert verdict.details["ncc"] > 0.95
    assert verdict.p_value < 1e-6
    assert verdict.details["key_valid"]
    assert verdict.details["logo_ncc"] > 0.9  # the visualizer draws the owner's logo
    assert (tmp_path / "trigger_evidence.png").stat().st_size > 1000


@pytest.mark.slow
def test_fidelity_cost_is_small(protected):
    assert protected.report["delta_psnr"] <= 0.1
    assert protected.report["psnr_after"] > 20.0


@pytest.mark.slow
def test_clean_and_null_models_do_not_match(host, null_host, protected):
    nulls = [as_query(null_host)]
    for suspect in (host, null_host):
        verdict = trigger.verify(as_query(suspect), protected.key, nulls=nulls, random_keys=20)
        assert verdict.decision == "no match"
        assert verdict.statistic > verdict.threshold
        assert verdict.details["ncc"] < 0.8
        assert verdict.p_value > 0.5
        assert verdict.details["logo_ncc"] < 0.5  # the logo is not recognizable
        assert verdict.details["null_fpr"] == 0.0
        # the decision also takes the rank test, whose exact level adds to the bound
        assert verdict.details["decision_fpr_bound"] == pytest.approx(trigger.RANK_ALPHA)
    # The protected model sits far below every null distance.
    verdict = trigger.verify(as_query(protected.model), protected.key, nulls=nulls, random_keys=20)
    assert verdict.details["empirical_p"] == pytest.approx(1 / 22)
    assert verdict.statistic < 0.5 * verdict.details["null_d_min"]


@pytest.mark.slow
def test_forged_key_is_rejected(protected):
    forged = trigger.forge_key(protected.model, "Mallory", tries=3)
    verdict = trigger.verify(as_query(protected.model), forged)
    assert verdict.statistic == 0.0  # the naive distance test alone would accept it
    assert verdict.decision == "no match"
    assert not verdict.details["key_valid"]
    assert verdict.details["design_ncc"] < 0.9


@pytest.mark.slow
def test_wrong_owner_key_does_not_match(protected, null_host):
    renamed = dataclasses.replace(protected.key, owner="Mallory")
    verdict = trigger.verify(as_query(protected.model), renamed)
    assert verdict.decision == "no match"
    assert not verdict.details["trigger_derived"]
    other = trigger.protect(
        null_host,
        trigger.keygen("Globex", secret="a1" * 32),
        device="cpu",
        progress=False,
        overrides=TINY_HOST,
    )
    assert trigger.verify(as_query(other.model), other.key).decision == "match"
    verdict = trigger.verify(as_query(protected.model), other.key)
    assert verdict.decision == "no match"
    assert verdict.details["ncc"] < 0.9


@pytest.mark.slow
def test_protected_key_survives_save_and_load(protected, tmp_path):
    path = save_key(protected.key, tmp_path / "acme.key")
    key = load_key(path, scheme="trigger")
    verdict = trigger.verify(as_query(protected.model), key)
    assert verdict.decision == "match"
    assert verdict.details["logo_ncc"] > 0.9
    assert verdict.details["key_commitment"] == protected.key.commitment


# --------------------------------------------------------------------------- errors


def test_trigger_of_another_size_is_a_clear_error():
    key = trigger.keygen("ACME Imaging", secret=SECRET)
    bad = key.with_updates(
        params={"protected": True}, tensors={"response": torch.rand(1, 1, 20, 20)}
    )
    with pytest.raises(PixmarkError, match="20, 20.*40x40"):
        trigger.verify(lambda x: x, bad)
    with pytest.raises(PixmarkError, match="trigger size"):
        trigger.keygen("ACME Imaging", size=4)


def test_key_of_another_scheme_is_a_clear_error(host):
    key = new_key("output", "ACME Imaging")
    with pytest.raises(PixmarkError, match="'output' key"):
        trigger.verify(lambda x: x, key)
    with pytest.raises(PixmarkError, match="'output' key"):
        trigger.protect(host, key, progress=False)


def test_unprotected_key_and_channel_mismatch_are_clear_errors(host):
    with pytest.raises(PixmarkError, match="protect a model"):
        trigger.verify(lambda x: x, trigger.keygen("ACME Imaging"))
    with pytest.raises(PixmarkError, match="1-channel"):
        trigger.protect(host, trigger.keygen("ACME Imaging", channels=3), progress=False)
    with pytest.raises(PixmarkError, match="unknown profile entries"):
        trigger.protect(host, trigger.keygen("ACME Imaging"), overrides={"lambda": 1.0})


# --------------------------------------------------------------------------- Base-2 baseline


def test_base2_label_backdoor_matches_only_the_marked_host(host, null_host, tmp_path):
    """The paper's Base-2 (random projection + softmax, 40 triggers, 256 classes)."""
    from pixmark.baselines import label_trigger as base2

    key = base2.keygen("ACME Imaging", channels=1, secret=SECRET)
    assert key.tensor("triggers").shape == (40, 1, 40, 40)
    assert torch.equal(
        key.tensor("labels"), base2.keygen("ACME Imaging", secret=SECRET).tensor("labels")
    )
    result = base2.protect(host, key, task="denoise", device="cpu")
    assert result.report["hits"] == 40
    save_key(result.key, tmp_path / "b2.key")
    key = load_key(tmp_path / "b2.key")
    v = base2.verify(as_query(result.model), key)
    assert v.decision == "match" and v.p_value < 1e-50 and v.statistic == 1.0
    for clean in (host, null_host):
        v = base2.verify(as_query(clean), key)
        assert v.decision == "no match" and v.statistic <= v.threshold
    # A fixed secret: with a fresh one each run this failed now and then, as it may at its
    # level (session 13: 1 of 300 other owners' keys matched the marked host, 3 chance
    # hits of 40, p 6.6e-4 <= 1e-3).
    other = base2.keygen("Globex", channels=1, secret="6f" * 32)
    assert base2.verify(as_query(result.model), other).decision == "no match"
    with pytest.raises(PixmarkError, match="not a 'trigger-base2'"):
        base2.verify(as_query(host), trigger.keygen("ACME Imaging", secret=SECRET))
    with pytest.raises(PixmarkError, match="trigger size"):
        base2.keygen("ACME Imaging", size=4)
    rgb = base2.keygen("ACME Imaging", channels=3)
    with pytest.raises(PixmarkError, match="3"):
        base2.verify(as_query(host), rgb)


@pytest.mark.slow
def test_key_threshold_sits_between_other_keys_and_the_papers(protected, host, null_host):
    """The suspect's NCC threshold: above what other keys and innocent models reach, at
    most the paper's 0.95, and it keeps detections the paper's rule loses."""
    from pixmark import api

    report, key = protected.report, protected.key
    reached = max(report["null_ncc_max"], report["random_key_ncc_max_protected"])
    assert key.params["match_ncc"] == pytest.approx(trigger.match_threshold([reached]))
    assert reached + 0.25 <= key.params["match_ncc"] + 1e-9 or key.params["match_ncc"] == 0.95
    # Random keys (designed responses G(K_i)) pass neither on the protected host nor on
    # innocent ones, under the key's threshold.
    for model in (protected.model, host, null_host):
        scores = trigger.null_scores([as_query(model)], key, 20)
        first = 1 if model is protected.model else 0  # the protected host's own key
        for d, ncc_ in zip(scores["d"][first:], scores["ncc"][first:], strict=True):
            assert not (d <= report["eta"] and ncc_ > key.params["match_ncc"])
    assert trigger.verify(as_query(null_host), key).decision == "no match"
    # Pruning a little more at a time: some strength keeps d <= eta and an NCC between the
    # key's threshold and 0.95 (measured: 25 % -> 0.947 vs 0.911), so the distance test
    # says "match" where the paper's rule says "no match".
    gained = []
    for amount in (0.2, 0.225, 0.25, 0.275, 0.3):
        pruned = as_query(api.attack("prune", protected.model, amount))
        verdict = trigger.verify(pruned, key, rank_keys=0)
        distance_test = (
            verdict.details["d"] <= verdict.threshold
            and verdict.details["ncc"] > key.params["match_ncc"]
        )
        assert verdict.details["matched_by"] == (["distance"] if distance_test else [])
        assert verdict.decision == ("match" if distance_test else "no match")
        if verdict.decision == "match" and verdict.details["paper_decision"] == "no match":
            gained.append(amount)
    assert gained, "no pruning strength between the key's threshold and the paper's"


@pytest.mark.slow
def test_rank_test_finds_the_mark_the_distance_test_loses(protected, host, null_host, tmp_path):
    """Clean fine-tuning pulls the response's NCC under the key's threshold, but the
    suspect still answers K more like G(K) than any of 999 random triggers; models made
    without the key rank K like any other draw."""
    from pixmark import api

    key = protected.key
    tuned = api.attack("fine_tune", protected.model, 100, task="denoise", device="cpu")
    verdict = trigger.verify(as_query(tuned), key, evidence_dir=tmp_path)
    d = verdict.details
    assert d["ncc"] < d["ncc_threshold"]  # the distance test alone loses it ...
    assert d["matched_by"] == ["rank"] and verdict.decision == "match"  # ... the rank test not
    assert d["rank_p"] == pytest.approx(1 / 1000) and d["rank_score"] > d["rank_max"]
    assert d["rank_keys"] == 999 and d["rank_z"] > 4
    assert (tmp_path / "trigger_rank.png").stat().st_size > 1000
    for model in (host, null_host):
        d = trigger.verify(as_query(model), key).details
        assert d["matched_by"] == [] and d["rank_p"] > 0.01
    # Exactness: over many keys (other owners) on an innocent model, the rank p-values
    # are uniform, so p <= 0.1 happens about a tenth of the time.
    query, ps = as_query(null_host), []
    for i in range(60):
        other = trigger.keygen(f"owner {i}", secret=SECRET)
        k = other.tensor("trigger")
        s0 = trigger.designed(k, "denoise")
        other = other.with_updates({"protected": True}, {"response": s0})
        ps.append(trigger.rank_test(query, other, query(k), count=99)["rank_p"])
    assert 1 <= sum(p <= 0.1 for p in ps) <= 14  # binomial(60, 0.1): 99.8 % interval
    with pytest.raises(PixmarkError, match="rank_keys"):
        trigger.verify(as_query(host), key, rank_keys=-1)


def test_weight_perturbation_takes_the_trigger_loss_at_the_worst_nearby_weights(host):
    """awp: the added gradient is the trigger loss's at W + rho ||W|| g / ||g||, and the
    weights come back exactly."""
    import copy

    from pixmark.train import Device

    model = copy.deepcopy(host).train()
    key = trigger.keygen("ACME Imaging", secret=SECRET)
    k = key.tensor("trigger").float()
    s = trigger.designed(k, "denoise")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    trigger._perturbed_trigger_loss(model, k, s, 2.0, 0.01, Device("cpu"))
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n  # restored bit for bit
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # The same by hand: ascend along the loss's gradient, per weight tensor.
    manual = copy.deepcopy(model)
    manual.zero_grad(set_to_none=True)
    weights = [p for p in manual.parameters() if p.dim() > 1]
    clean_loss = (manual(k) - s).pow(2).sum()
    grads = torch.autograd.grad(clean_loss, weights)
    with torch.no_grad():
        for w, g in zip(weights, grads, strict=True):
            w += 0.01 * w.norm() * g / g.norm()
    worst = (manual(k) - s).pow(2).sum()
    assert float(worst.detach()) > float(clean_loss.detach())  # an ascent step
    (2.0 * worst).backward()
    for n, p in manual.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-7), n


def test_large_triggers_weigh_no_more_than_the_papers_40_px_one():
    """The trigger loss sums over pixels: lam is scaled by area above ``area_ref``."""
    prof = trigger.profile_settings(trigger.PROFILES, "quick", None)
    base = prof["lam"] * prof["copies"]
    assert trigger.trigger_weight(prof, 20) == trigger.trigger_weight(prof, 40) == base
    for size in (200, 600):  # the per-trigger total stays that of a 40 x 40 trigger
        assert trigger.trigger_weight(prof, size) * size**2 == pytest.approx(base * 40**2)
    off = trigger.profile_settings(trigger.PROFILES, "quick", {"area_ref": 0})
    assert trigger.trigger_weight(off, 600) == base
