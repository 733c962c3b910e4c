"""Verdicts, p-values and null calibration: how pixmark turns a score into a decision.

Every scheme reports a ``Verdict``. Its p-value is the probability that a model which was
*not* derived from the owner's (a "null model": trained independently on the same task,
never shown the key) produces at least as much evidence. Two kinds of null are used:

- analytic nulls where the paper gives one: ``binomial_tail`` / ``ber_p_value`` for
  extracted bits (Wu et al.) and the Gamma null of ``trigger_p_value`` for trigger
  distances (Quan et al.);
- empirical nulls measured on null models: ``empirical_p_value``, ``calibrate_threshold``,
  ``false_positive_rate`` and, to pool many per-query successes into one claim about a
  model, ``pooled_success_test``.

Threshold convention (used by ``calibrate_threshold``, ``false_positive_rate`` and
``passes``): a score passes when it lies *strictly* beyond the threshold, i.e.
``score > threshold`` when larger scores are evidence (NC, NCC) and ``score < threshold``
when smaller scores are evidence (distances, BER).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats as scipy_stats

from pixmark.errors import PixmarkError

__all__ = [
    "DECISIONS",
    "Decision",
    "Verdict",
    "ber_p_value",
    "binomial_tail",
    "calibrate_threshold",
    "decide",
    "empirical_p_value",
    "false_positive_rate",
    "nulls_needed",
    "predictive_p_value",
    "passes",
    "pooled_success_test",
    "trigger_p_value",
    "trigger_threshold",
]

Decision = Literal["match", "no match", "inconclusive"]
DECISIONS: tuple[str, ...] = ("match", "no match", "inconclusive")

# Non-finite floats are not valid JSON (RFC 8259). Verdicts write them as these strings,
# the same words JavaScript and Python use, and read them back as floats.
_NONFINITE_TO_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}
_TEXT_TO_NONFINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


# --------------------------------------------------------------------------- Verdict


def _float_to_json(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return _NONFINITE_TO_TEXT[value]
    return value


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (dict/list/str/int/float/bool/None), floats kept as floats.

    Tuples become lists; numpy scalars, arrays and tensors become Python numbers/lists.
    """
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, np.ndarray | torch.Tensor):
        return _jsonable(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PixmarkError(
                    f"Verdict {where} has a non-string key {key!r}; JSON needs string keys."
                )
            out[key] = _jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise PixmarkError(
        f"Verdict {where} holds a {type(value).__name__}, which JSON cannot store; "
        "convert it to a number, string, list or dict first."
    )


def _encode_nonfinite(value: Any) -> Any:
    if isinstance(value, float):
        return _float_to_json(value)
    if isinstance(value, dict):
        return {key: _encode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode_nonfinite(item) for item in value]
    return value


def _decode_nonfinite(value: Any) -> Any:
    if isinstance(value, str) and value in _TEXT_TO_NONFINITE:
        return _TEXT_TO_NONFINITE[value]
    if isinstance(value, dict):
        return {key: _decode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_nonfinite(item) for item in value]
    return value


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, str) and value in _TEXT_TO_NONFINITE:
        return _TEXT_TO_NONFINITE[value]
    if isinstance(value, bool | str) or value is None:
        raise PixmarkError(f"Verdict {name} must be a number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PixmarkError(f"Verdict {name} must be a number, got {value!r}.") from exc


@dataclass(frozen=True)
class Verdict:
    """The answer to "was this suspect model derived from mine?", for every scheme.

    Attributes:
        scheme: scheme name ("output", "trigger", "keyed", ...).
        statistic: the pooled score the decision is based on (e.g. mean centred NC, trigger
            distance, BER); its name goes in ``details["statistic_name"]``.
        threshold: the value the statistic is compared with.
        p_value: probability, under the null (an independent model), of at least this
            much evidence; in [0, 1], or NaN when it could not be computed.
        decision: "match", "no match" or "inconclusive".
        n_queries: how many queries (images, triggers) the statistic pools.
        evidence: name -> file path of evidence images (e.g. the recovered logo).
        details: JSON-able extras. Keys the summary understands: "statistic_name",
            "alpha", "null_fpr" (false-positive rate measured on null models),
            "n_null_models". Per-query statistics etc. may be added freely.

    ``to_dict``/``to_json`` and ``from_dict``/``from_json`` round-trip exactly: floats are
    written with ``repr`` precision (1e-300 stays 1e-300) and non-finite floats, which
    JSON cannot hold, as the strings "NaN", "Infinity", "-Infinity" (also inside
    ``details``, where such strings are read back as floats). Details are normalised on
    construction (tuples -> lists, numpy numbers -> Python numbers), so what you read back
    equals what is stored. A Verdict holds dicts and is therefore not hashable.
    """

    scheme: str
    statistic: float
    threshold: float
    p_value: float
    decision: Decision
    n_queries: int
    evidence: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or not self.scheme:
            raise PixmarkError(f"Verdict scheme must be a non-empty string, got {self.scheme!r}.")
        if self.decision not in DECISIONS:
            raise PixmarkError(
                f"Verdict decision must be one of {', '.join(map(repr, DECISIONS))}, "
                f"got {self.decision!r}."
            )
        for name in ("statistic", "threshold", "p_value"):
            object.__setattr__(self, name, _to_float(name, getattr(self, name)))
        if not math.isnan(self.p_value) and not 0.0 <= self.p_value <= 1.0:
            raise PixmarkError(f"Verdict p_value must lie in [0, 1], got {self.p_value!r}.")
        try:
            n_queries = operator.index(self.n_queries)
        except TypeError as exc:
            raise PixmarkError(
                f"Verdict n_queries must be an integer, got {self.n_queries!r}."
            ) from exc
        if n_queries < 0:
            raise PixmarkError(f"Verdict n_queries must be >= 0, got {n_queries}.")
        object.__setattr__(self, "n_queries", n_queries)
        if not isinstance(self.evidence, Mapping):
            raise PixmarkError("Verdict evidence must be a dict of name -> file path.")
        evidence = {}
        for name, path in self.evidence.items():
            if not isinstance(name, str) or not isinstance(path, str | PathLike):
                raise PixmarkError(
                    f"Verdict evidence must map names to file paths, got {name!r}: {path!r}."
                )
            evidence[name] = str(path)
        object.__setattr__(self, "evidence", evidence)
        if not isinstance(self.details, Mapping):
            raise PixmarkError("Verdict details must be a dict with string keys.")
        object.__setattr__(self, "details", _jsonable(self.details, "details"))

    @property
    def matched(self) -> bool:
        """True when the decision is "match"."""
        return self.decision == "match"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (non-finite floats written as strings)."""
        return {
            "scheme": self.scheme,
            "decision": self.decision,
            "statistic": _float_to_json(self.statistic),
            "threshold": _float_to_json(self.threshold),
            "p_value": _float_to_json(self.p_value),
            "n_queries": self.n_queries,
            "evidence": dict(self.evidence),
            "details": _encode_nonfinite(self.details),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON text (no NaN/Infinity literals)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of ``to_dict``; raises PixmarkError on missing or unknown keys."""
        if not isinstance(data, Mapping):
            raise PixmarkError(f"a verdict must be a JSON object, got {type(data).__name__}.")
        required = ("scheme", "decision", "statistic", "threshold", "p_value", "n_queries")
        missing = [key for key in required if key not in data]
        if missing:
            raise PixmarkError(f"verdict is missing {', '.join(missing)}; is it a pixmark verdict?")
        unknown = sorted(set(data) - set(required) - {"evidence", "details"})
        if unknown:
            raise PixmarkError(f"verdict has unknown keys {', '.join(unknown)}.")
        return cls(
            scheme=data["scheme"],
            statistic=_to_float("statistic", data["statistic"]),
            threshold=_to_float("threshold", data["threshold"]),
            p_value=_to_float("p_value", data["p_value"]),
            decision=data["decision"],
            n_queries=data["n_queries"],
            evidence=dict(data.get("evidence", {})),
            details=_decode_nonfinite(dict(data.get("details", {}))),
        )

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        """Inverse of ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PixmarkError(f"verdict is not valid JSON ({exc}).") from exc
        return cls.from_dict(data)

    def summary(self) -> str:
        """One readable line, e.g. for the CLI."""
        name = self.details.get("statistic_name", "statistic")
        queries = "query" if self.n_queries == 1 else "queries"
        line = (
            f"{self.scheme}: {self.decision} ({name} {self.statistic:.4g}, threshold "
            f"{self.threshold:.4g}, p = {_format_p(self.p_value)}, "
            f"{self.n_queries} {queries})"
        )
        if "null_fpr" in self.details:
            null_fpr = self.details["null_fpr"]
            n_null = self.details.get("n_null_models")
            on = f" on {n_null} null models" if n_null is not None else " on null models"
            text = f"{null_fpr:.3g}" if isinstance(null_fpr, int | float) else str(null_fpr)
            line += f"; measured false-positive rate {text}{on}"
        return line


def _format_p(p: float) -> str:
    if p == 0.0:
        return "< 1e-308"
    return f"{p:.3g}"


# --------------------------------------------------------------------------- input checks


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    try:
        result = operator.index(value)
    except TypeError as exc:
        raise PixmarkError(f"{name} must be an integer, got {value!r}.") from exc
    if minimum is not None and result < minimum:
        raise PixmarkError(f"{name} must be >= {minimum}, got {result}.")
    return result


def _probability(name: str, value: Any, open_interval: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise PixmarkError(f"{name} must be a number, got {value!r}.") from exc
    if open_interval:
        if not 0.0 < value < 1.0:
            raise PixmarkError(f"{name} must lie strictly between 0 and 1, got {value!r}.")
    elif not 0.0 <= value <= 1.0:
        raise PixmarkError(f"{name} must lie in [0, 1], got {value!r}.")
    return value


def _scores(name: str, values: Any) -> np.ndarray:
    """A 1-D float64 array of finite scores from a list, numpy array or tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise PixmarkError(f"{name} must be a sequence of numbers.") from exc
    if array.size == 0:
        raise PixmarkError(f"{name} is empty; measure scores on at least one null model.")
    if not np.all(np.isfinite(array)):
        raise PixmarkError(f"{name} contains NaN or infinite values; drop the failed runs.")
    return array


# --------------------------------------------------------------------------- analytic nulls


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), accurate far into the tail (down to ~1e-308).

    ``k <= 0`` gives 1.0; ``k > n`` gives 0.0; ``p = 0`` with ``k > 0`` gives 0.0.
    """
    k = _int("k", k)
    n = _int("n", n, minimum=0)
    p = _probability("p", p)
    if k <= 0:
        return 1.0
    if k > n or p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    return float(scipy_stats.binom.sf(k - 1, n, p))


def ber_p_value(n_errors: int, n_bits: int) -> float:
    """P[a random guess of ``n_bits`` fair bits has at most ``n_errors`` errors].

    The null for an extracted binary watermark (Wu et al.): a model that does not carry the
    mark produces bits that agree with the watermark by chance, each with probability 1/2.
    Equal to ``binomial_tail(n_bits - n_errors, n_bits, 0.5)``.
    """
    n_bits = _int("n_bits", n_bits, minimum=1)
    n_errors = _int("n_errors", n_errors, minimum=0)
    if n_errors > n_bits:
        raise PixmarkError(f"n_errors ({n_errors}) cannot exceed n_bits ({n_bits}).")
    return binomial_tail(n_bits - n_errors, n_bits, 0.5)


def _trigger_null(m: int, n: int, sigma: float) -> tuple[int, Any]:
    m = _int("m", m, minimum=1)
    n = _int("n", n, minimum=1)
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise PixmarkError(f"sigma must be a positive number, got {sigma!r}.")
    count = m * n
    return count, scipy_stats.gamma(a=count / 2.0, scale=2.0 * sigma**2)


def trigger_threshold(m: int, n: int, p: float = 0.05, sigma: float = 0.25) -> float:
    """Verification threshold eta on the trigger distance d (Quan et al., TNNLS 2020, eq. 8).

    The distance between the stored verification image S and a suspect's response S' to
    the trigger is ``d = ||S' - S||_2 / (M N)`` (Frobenius norm divided by the number of
    elements, images in [0, 1]). The paper's null: an unrelated response differs by
    i.i.d. errors E(i, j) ~ N(0, sigma^2) with sigma = 1/4 ("very noisy but still
    recognizable"). Each E^2 is Gamma with shape 1/2 and scale 2 sigma^2 = 1/8 (the
    paper's "Gamma(1/16, 1/128)" lists its mean sigma^2 and variance 2 sigma^4), so
    ``Z = sum E^2 ~ Gamma(shape = MN/2, scale = 2 sigma^2)`` (i.e. Z / sigma^2 is
    chi-squared with MN degrees of freedom). eta is the p-quantile of d = sqrt(Z) / (MN):

        beta = Gamma(MN/2, scale=2 sigma^2).ppf(p),    eta = sqrt(beta) / (M N)

    For 40 x 40, p = 0.05, sigma = 1/4: beta = 94.256, eta = 9.709 / 1600 = 6.068e-3,
    the paper's 6.07e-3 (and the authors' code's 0.00607).

    Args:
        m, n: size of the verification image. For C channels pass ``n = W * C``: d divides
            by the number of elements, #(S) in the paper.
        p: null probability of a distance at or below eta, in (0, 1).
        sigma: per-pixel standard deviation of the null errors, in [0, 1] image units.

    Returns:
        eta, in the units of d.
    """
    p = _probability("p", p, open_interval=True)
    count, null = _trigger_null(m, n, sigma)
    beta = float(null.ppf(p))
    return math.sqrt(beta) / count


def trigger_p_value(d: float, m: int, n: int, sigma: float = 0.25) -> float:
    """Probability that an independent model's trigger response lies within distance ``d``.

    Under the Gamma null of ``trigger_threshold``: ``P[Z <= (d M N)^2]`` with
    ``Z ~ Gamma(MN/2, scale=2 sigma^2)``. ``trigger_p_value(trigger_threshold(m, n, p), m,
    n) == p``. Values below ~1e-308 underflow to 0.0.

    Args:
        d: the observed distance ``||S' - S||_2 / (M N)``, >= 0.
        m, n: size of the verification image (``n = W * C`` for C channels).
        sigma: per-pixel standard deviation of the null errors.
    """
    d = float(d)
    if not math.isfinite(d) or d < 0:
        raise PixmarkError(f"trigger distance d must be a finite number >= 0, got {d!r}.")
    count, null = _trigger_null(m, n, sigma)
    return float(null.cdf((d * count) ** 2))


# --------------------------------------------------------------------------- empirical nulls


def empirical_p_value(score: float, null_scores: Any, greater_is_evidence: bool = True) -> float:
    """Permutation-style p-value of ``score`` against scores measured on null models.

    ``p = (1 + #{null scores at least as extreme as score}) / (1 + n)``. The +1 counts the
    observed score itself as a possible null draw, so p is never 0: with n nulls the
    smallest p-value is 1 / (n + 1) (0 of 99 nulls as extreme gives 0.01). Ties count as
    "at least as extreme" (conservative).

    Args:
        score: the suspect's score.
        null_scores: scores of null models (list, numpy array or tensor), finite.
        greater_is_evidence: True when larger scores mean "derived" (NC); False when
            smaller scores do (distances, BER).
    """
    nulls = _scores("null_scores", null_scores)
    score = float(score)
    if not math.isfinite(score):
        raise PixmarkError(f"score must be a finite number, got {score!r}.")
    extreme = nulls >= score if greater_is_evidence else nulls <= score
    return (1.0 + float(np.count_nonzero(extreme))) / (1.0 + nulls.size)


def predictive_p_value(score: float, null_scores: Any) -> float:
    """One-sided p-value of ``score`` as a new draw from a Gaussian fitted to null scores.

    The null scores' mean m and standard deviation s (n - 1 in the denominator) are only
    estimates, so the score is compared with the *predictive* distribution of one more
    null draw, a Student t with n - 1 degrees of freedom:

        p = P(T_{n-1} > (score - m) / (s * sqrt(1 + 1/n)))

    Unlike :func:`empirical_p_value` it can go below 1 / (n + 1), which is what a dozen
    null models need to support p ≤ 1e-3; it assumes the null scores are roughly
    Gaussian (check the tail with more nulls). Larger scores are evidence. Needs at least
    3 null scores that are not all equal.
    """
    nulls = _scores("null_scores", null_scores)
    score = float(score)
    if not math.isfinite(score):
        raise PixmarkError(f"score must be a finite number, got {score!r}.")
    if nulls.size < 3:
        raise PixmarkError(f"a Gaussian null needs at least 3 null scores, got {nulls.size}.")
    sd = float(nulls.std(ddof=1))
    if not sd > 1e-12 * max(1.0, float(np.abs(nulls).max())):  # equal up to rounding
        raise PixmarkError("the null scores are all equal; a Gaussian null cannot be fitted.")
    n = nulls.size
    t = (score - float(nulls.mean())) / (sd * math.sqrt(1.0 + 1.0 / n))
    return float(scipy_stats.t.sf(t, df=n - 1))


def nulls_needed(fpr: float) -> int:
    """Smallest number of null scores that can certify a false-positive rate of ``fpr``."""
    fpr = _probability("fpr", fpr, open_interval=True)
    return max(1, math.ceil(1.0 / fpr - 1.0 - 1e-9))


def calibrate_threshold(null_scores: Any, fpr: float, greater_is_evidence: bool = True) -> float:
    """Threshold whose false-positive rate on a fresh null model is at most ``fpr``.

    With n null scores and ``k = floor(fpr (n + 1)) - 1``, the threshold is the (k+1)-th
    most extreme null score, and a score passes when strictly beyond it (see module
    docstring). Then at most k of the n nulls pass (in-sample rate k/n < fpr) and, since a
    fresh null score is exchangeable with the measured ones, it passes with probability at
    most (k + 1)/(n + 1) <= fpr. Equivalently, every passing score has
    ``empirical_p_value <= fpr``.

    This needs ``n >= 1/fpr - 1`` null scores (99 for fpr = 0.01); with fewer, no
    threshold certifies the target and PixmarkError says how many are needed.

    Args:
        null_scores: scores of null models (list, numpy array or tensor), finite.
        fpr: target false-positive rate, in (0, 1).
        greater_is_evidence: True when larger scores mean "derived".
    """
    nulls = _scores("null_scores", null_scores)
    fpr = _probability("fpr", fpr, open_interval=True)
    k = math.floor(fpr * (nulls.size + 1) + 1e-9) - 1
    if k < 0:
        raise PixmarkError(
            f"{nulls.size} null scores cannot certify a false-positive rate of {fpr:g}; "
            f"measure at least {nulls_needed(fpr)} null scores or raise fpr."
        )
    ordered = np.sort(nulls)
    if greater_is_evidence:
        ordered = ordered[::-1]
    return float(ordered[k])


def false_positive_rate(
    null_scores: Any, threshold: float, greater_is_evidence: bool = True
) -> float:
    """Fraction of null scores that pass ``threshold`` (strictly beyond it), in [0, 1]."""
    nulls = _scores("null_scores", null_scores)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise PixmarkError("threshold is NaN; calibrate it from finite null scores.")
    passed = nulls > threshold if greater_is_evidence else nulls < threshold
    return float(np.count_nonzero(passed)) / nulls.size


def passes(score: float, threshold: float, greater_is_evidence: bool = True) -> bool:
    """Whether ``score`` lies strictly beyond ``threshold`` (the pixmark convention)."""
    return score > threshold if greater_is_evidence else score < threshold


def decide(p_value: float, alpha: float = 1e-3) -> Decision:
    """ "match" if ``p_value <= alpha`` else "no match"; "inconclusive" for a NaN p-value.

    The default alpha = 1e-3 asks for stronger evidence than the papers' p < 0.05: an
    ownership claim should rarely accuse an independent model.
    """
    alpha = _probability("alpha", alpha, open_interval=True)
    p_value = float(p_value)
    if math.isnan(p_value):
        return "inconclusive"
    _probability("p_value", p_value)
    return "match" if p_value <= alpha else "no match"


def pooled_success_test(successes: int, n: int, null_rate: float, n_null_queries: int) -> float:
    """P-value of at least ``successes`` successful queries out of ``n`` under the null.

    A "success" is one query passing its per-query test (e.g. NC > 0.95 on one image).
    Under the null each of the n queries succeeds independently with the rate measured on
    null models, ``null_rate`` over ``n_null_queries`` queries. That measurement is
    uncertain, and 0 successes in a few null queries does not mean the rate is 0, so the
    rate used is floored by Laplace's rule of succession:

        rate = max(null_rate, (k_null + 1) / (n_null_queries + 2)),
        k_null = round(null_rate * n_null_queries)

    and the p-value is ``binomial_tail(successes, n, rate)``. Queries on one suspect may
    be correlated; measure the null rate over several null models so that it reflects
    model-to-model variation, not only image-to-image.
    """
    n = _int("n", n, minimum=1)
    successes = _int("successes", successes, minimum=0)
    if successes > n:
        raise PixmarkError(f"successes ({successes}) cannot exceed the number of queries ({n}).")
    null_rate = _probability("null_rate", null_rate)
    n_null_queries = _int("n_null_queries", n_null_queries)
    if n_null_queries < 1:
        raise PixmarkError(
            "n_null_queries must be >= 1; measure the per-query success rate on null models first."
        )
    k_null = round(null_rate * n_null_queries)
    rate = max(null_rate, (k_null + 1) / (n_null_queries + 2))
    return binomial_tail(successes, n, rate)
