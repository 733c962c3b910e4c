"""The ``keyed`` scheme (Wu et al., TCSVT 2020): every output carries a keyed watermark.

The host G and a secret extractor E(image, key) are trained together (paper eq. 1-5):

    L = L_t + theta * L_w,   theta = 1,
    L_w = alpha * |E(G(x), k) - w|_1 + beta * |E(x, k) - 0|_1 + gamma * |E(G(x), k') - 0|_1

with alpha = 1, beta = gamma = 0.5, L_t the L1 pixel loss of the task, k the owner's
1024-bit key, k' = k with 1 to T_d = 8 random bits flipped (a fresh k' per sample), x
images the host did not make and w the 64 x 64 watermark. Only G is released; E and k
stay with the owner, inside the key file. Verification is black-box: send the key's query
images (held-out real inputs of the task) to the suspect and run E on its answers.

What pixmark trains (documented deviations, docs/schemes/keyed.md "Why hard negatives"):

    L_G = L_t(G) + THETA_HOST * L_w + FIDELITY * mean((G(x) - S(x))^2)
    L_w = alpha * |E(G(x), k) - w|_1 + beta' * mean(E(n, k)^2) + gamma * mean(E(G(x), k')^2)
    L_S = L_t(S)

* Negatives n ("images the host did not make") are the outputs of the frozen original
  host M0 and of a *shadow* S, a copy of the host fine-tuned alongside G on L_t alone
  (the unmarked twin), besides the task's clean targets and degraded inputs. These hard
  negatives differ from G's outputs only by the mark, so E has to learn the mark, not
  "looks like a denoised image" (with easy negatives only, E read the watermark from
  every image: clean models verified as "match"). The outputs of small independent
  models of the task, trained at protect time (``INDEPENDENT``: several architectures,
  seeds and lengths), are negatives too, and two more are held out: :func:`embedded`
  fails a run whose E reads them (with the host's own family as the only negatives, E
  learned "not the original host" and read 95 of 99 independent null models).
* The negative terms use the squared error (the paper allows L2) with
  beta' = ``NEG_WEIGHT`` * beta = 2. Under L1 an input E cannot yet place gets the weighted
  median of the targets (the mark everywhere, or exactly 0 with a closed, saturated gate);
  under L2 it gets a faint echo (< ``AGREE``) that keeps the host's gradient alive.
* The host weighs L_w ``THETA_HOST`` = 4 times (E's Adam steps are blind to that
  scale), and a quadratic fidelity term ties G to S: small marks are cheap, the large
  global changes a strong theta otherwise causes are not.
* E_A sees the image's high-pass residual as well (``highpass`` in E's config), and E's
  gate has its own loss, ``GATE_WEIGHT`` * BCE(gate logit, 1 for G's outputs, 0 for the
  negatives), inside L_w; the fidelity weight ramps from ``FIDELITY`` to ``FIDELITY_END``
  over the second half of training. Without these the mark did not start on most keys at
  the ``quick`` budget (docs/schemes/keyed.md, "Session 4").
* :func:`protect` checks that the mark took (:func:`embedded`) and trains again with
  fresh seeds when it did not (``attempts``).

Watermarks. ``binary`` (default): a QR code (``segno``) that encodes the owner's name and
the key's id (an HMAC of the key's secret and owner, see :func:`key_id`), drawn on a
64 x 64 white square; verification decodes the recovered QR back to that text when it
can (``zxing-cpp``). Or any colour logo (PNG path), resized to 64 x 64.
E outputs tanh values in [-1, 1]; the target is 2w - 1 (so a binary watermark is ±1) and
"nothing" is 0. Extracted bits are the signs.

Statistic and p-value (documented choice). The paper reports the mean BER of single
images. Pixels of one extracted watermark are not independent (E is convolutional), so a
binomial over 4096 pixel bits would overstate the evidence by orders of magnitude.
pixmark therefore:

1. averages E's output over the N queries (a soft per-pixel majority vote: the
   consensus watermark);
2. cuts the 64 x 64 grid into ``VERIFY_BLOCK`` x ``VERIFY_BLOCK`` blocks (4 x 4 px, the
   key's own block size, all channels together) and keeps the blocks where the target
   is not flat;
3. counts one bit per block: right when the least-squares slope of the consensus block
   on the target block, both centred on their block means, is >= ``AGREE`` (0.5): the
   mark is there with at least half its strength. Centring makes the bit blind to any
   constant offset (an extractor biased towards one sign gains nothing), and the slope
   threshold makes a faint echo of the mark (E's gate almost closed) count as wrong.
   Under the null a block is right with probability at most 1/2 (the slope of an
   unrelated block is symmetric about 0), so the fair-coin binomial is conservative.

Under the null (a model that never learned the mark) each block bit is a fair coin, and
the p-value is ``stats.ber_p_value(errors, blocks)``. ``statistic`` is that block BER;
``threshold`` is the block BER below which p <= ``ALPHA`` (1e-3). The paper's mean per-image
pixel BER is reported beside it (``details["ber_mean"]``), and so are, when ``nulls`` are
given, the empirical p-value and false-positive rate over the null models, which check
the coin assumption on real models. Colour watermarks use the same test on the signs of
2w - 1 and also report PSNR of the consensus watermark (paper target: > 31 dB).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixmark.errors import PixmarkError
from pixmark.keys import Key, load_key, new_key
from pixmark.nets.keyed_extractor import KeyedExtractor
from pixmark.schemes.base import (
    Protected,
    Query,
    as_query,
    check_profile,
    independent_models,
    profile_settings,
)
from pixmark.stats import Verdict, ber_p_value, decide, empirical_p_value
from pixmark.train import Device, run

SCHEME = "keyed"
#: Side of the watermark, pixels (paper 64).
WM_SIZE = 64
#: Loss weights of eq. 4-5 (paper defaults) and the largest number of flipped key bits
#: in the wrong keys k' of eq. 3 (paper T_d = 8).
ALPHA, BETA, GAMMA, THETA = 1.0, 0.5, 0.5, 1.0
MAX_FLIPS = 8
#: pixmark's training weights (module docstring): the squared-error negative terms weigh
#: ``NEG_WEIGHT * BETA``; the host weighs L_w ``THETA_HOST`` times (paper theta = 1); the
#: fidelity term ``FIDELITY * mean((G(x) - S(x))^2)`` ([0, 1] pixel units) ties the host
#: to its unmarked shadow S.
NEG_WEIGHT, THETA_HOST, FIDELITY = 4.0, 4.0, 200.0
#: The fidelity weight grows geometrically from ``FIDELITY`` to ``FIDELITY_END`` between
#: 50 % and 90 % of the steps: a loose tie lets the mark start, the tight one then
#: squeezes it to what E still reads (at 1000 from the start the mark never started).
#: Measured on the tests' U-Net denoiser, three secrets (docs/schemes/keyed.md, session 6):
#: ending at 3000 cost 0.72 dB, at 10000 0.48-0.57 dB; at 30000 the mark did not hold.
FIDELITY_END = 10000.0
#: Fidelity weight of the polish phase (``polish_steps`` after the joint training, E
#: frozen, host rate ``polish_lr`` x ``lr_g``; off while ``polish_steps`` is 0). Measured
#: (docs/schemes/keyed.md, session 16): quick + 40 steps at 12000, rate 0.1 costs
#: 0.39-0.47 dB on three secrets (0.45-0.57 without); 100 steps at 30000 lost the mark.
POLISH_FIDELITY, POLISH_LR = 12000.0, 0.1
#: Weight of the gate's own loss: binary cross-entropy of E's gate logit, 1 for the host's
#: outputs and 0 for the negatives. It gives the gate (and through it the host) a direct
#: signal from the first step instead of only through E's watermark output.
GATE_WEIGHT = 1.0
#: Block side (px) of the verification bits.
VERIFY_BLOCK = 4
#: Least agreement (E's output x sign of the target, or a block's slope) that counts as
#: a right bit: E says "nothing" with 0, and a faint echo is not a bit.
AGREE = 0.5
#: Pixels of a colour watermark with |2w - 1| below this are mid-grey and carry no bit.
INFORMATIVE = 0.5
#: Significance level of the decision ("match" iff p <= ALPHA_DECISION).
ALPHA_DECISION = 1e-3
MIN_BITS, MAX_BITS = 256, 4096
#: Margin (modules) of quiet zone drawn around the QR code inside the 64 x 64 square.
QR_BORDER = 2

#: Training budgets. ``size``: working crop side (a multiple of 64; E folds it onto the
#: 64 x 64 grid with r = size / 64). ``lr_g``/``lr_e``: Adam rates of host and extractor
#: (cosine decay to 5 %). ``queries``: verification images stored in the key.
#: ``fidelity_end``: where the fidelity ramp ends (``FIDELITY_END``). ``polish_steps``:
#: steps after ``steps`` with E frozen, fidelity ``polish_fidelity`` and the host at
#: ``polish_lr`` x ``lr_g`` (0 = none; measured only for ``quick``, so the others keep 0).
#: ``noisy_others``: whether the "other models" negatives include the shadow's outputs with
#: noise added (:func:`_other_models`); off, only the outputs moved towards the input stay
#: (session 21: E then reads through twice the noise, but the null check is small).
#: ``paper``: 256 x 256, Adam (beta1 0.5, beta2 0.999) as in the paper (its printed rate
#: 1e-8 cannot train anything; we use pix2pix's 2e-4), E_B with 48 channels.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "steps": 300,
        "batch_size": 8,
        "size": 64,
        "lr_g": 5e-4,
        "lr_e": 2e-3,
        "betas": (0.9, 0.999),
        "width_a": 8,
        "c2": 8,
        "width_c": 16,
        "depth_c": 2,
        "queries": 16,
        "eval_count": 16,
        "independent": {"steps": 100, "width": 8, "size": 40},
        "fidelity_end": FIDELITY_END,
        "polish_steps": 40,
        "polish_fidelity": POLISH_FIDELITY,
        "noisy_others": True,
        "polish_lr": POLISH_LR,
    },
    # The quick recipe three times as long (~5 min per attempt on one CPU core): what SR and
    # deblurring hosts need (docs/schemes/keyed.md). The 128 px, wider setting it replaced
    # (3000 steps) never finished on 2 cores in the time this profile is meant for.
    "cpu": {
        "steps": 900,
        "batch_size": 8,
        "size": 64,
        "lr_g": 5e-4,
        "lr_e": 2e-3,
        "betas": (0.9, 0.999),
        "width_a": 8,
        "c2": 8,
        "width_c": 16,
        "depth_c": 2,
        "queries": 32,
        "eval_count": 32,
        "independent": {"steps": 300, "width": 8, "size": 48},
        "fidelity_end": FIDELITY_END,
        "polish_steps": 0,
        "polish_fidelity": POLISH_FIDELITY,
        "noisy_others": True,
        "polish_lr": POLISH_LR,
    },
    "paper": {
        "steps": 100_000,
        "batch_size": 16,
        "size": 256,
        "lr_g": 2e-4,
        "lr_e": 2e-4,
        "betas": (0.5, 0.999),
        "width_a": 32,
        "c2": 48,
        "width_c": 64,
        "depth_c": 4,
        "queries": 64,
        "eval_count": 64,
        "independent": {"steps": 3000, "width": 32, "size": 96},
        "fidelity_end": FIDELITY_END,
        "polish_steps": 0,
        "polish_fidelity": POLISH_FIDELITY,
        "noisy_others": True,
        "polish_lr": POLISH_LR,
    },
}


# --------------------------------------------------------------------------- keygen


def key_id(key: Key) -> str:
    """A short public id of the key: 12 hex digits of HMAC(secret, scheme|owner|id)."""
    return f"{key.seed('id'):016x}"[:12]


def qr_text(owner: str, ident: str) -> str:
    """The text the binary watermark encodes: the key id's first 8 digits and the owner."""
    return f"{ident[:8]}:{owner}"


def qr_watermark(text: str, size: int = WM_SIZE) -> Tensor:
    """``text`` as a QR code on a white ``size`` x ``size`` square: [1, size, size], {0, 1}.

    1 is white, 0 black. Modules are drawn ``s`` px wide, the largest ``s`` that fits the
    code and a quiet zone of ``QR_BORDER`` modules.
    """
    try:
        import segno
    except ImportError:  # pragma: no cover - declared dependency
        raise PixmarkError(
            "binary watermarks need the 'segno' package (pip install segno)"
        ) from None
    code = segno.make_qr(text, error="m")
    matrix = torch.tensor([list(row) for row in code.matrix], dtype=torch.float32)
    modules = matrix.shape[0] + 2 * QR_BORDER
    scale = size // modules
    if scale < 1:
        raise PixmarkError(
            f"the QR code of {text!r} needs {modules} modules, more than fit in {size} px; "
            "use a shorter owner name or a colour logo"
        )
    drawn = (1 - matrix).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    out = torch.ones(1, size, size)
    top = (size - drawn.shape[0]) // 2 // (2 * scale) * (2 * scale)  # modules on the block grid
    out[0, top : top + drawn.shape[0], top : top + drawn.shape[1]] = drawn
    return out


def logo_watermark(path: str | os.PathLike[str], size: int = WM_SIZE) -> Tensor:
    """A colour logo (any image file) as [3, size, size] in [0, 1] (bilinear resize)."""
    from pixmark.data import load_image

    image = load_image(path, channels=3)
    image = image if image.dim() == 4 else image[None]
    resized = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
    return resized[0].clamp(0, 1)


def key_bits(key: Key, bits: int) -> Tensor:
    """The key's ``bits`` secret bits (uint8 0/1) from its secret (``generator("bits")``)."""
    return torch.randint(0, 2, (bits,), generator=key.generator("bits")).to(torch.uint8)


def keygen(
    owner: str,
    *,
    watermark: str = "binary",
    channels: int = 3,
    bits: int = 1024,
    secret: str | None = None,
) -> Key:
    """A keyed-scheme key: ``bits`` secret key bits and the 64 x 64 watermark w.

    Args:
        owner: the owner's name (encoded in the binary watermark's QR code).
        watermark: ``"binary"`` (a QR code of the owner and :func:`key_id`) or the path
            of a colour logo image (PNG, JPEG, ...).
        channels: the host's image channels, 1 or 3.
        bits: key length, a multiple of 256 from 256 to 4096 (paper 1024).
        secret: 64 hex digits for a reproducible key (default: fresh random).

    Returns:
        An unprotected key with tensors ``bits`` (uint8) and ``watermark`` ([c, 64, 64]
        in [0, 1]); :func:`protect` adds the extractor and the query images.
    """
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int)
        or not MIN_BITS <= bits <= MAX_BITS
        or bits % 256
    ):
        raise PixmarkError(
            f"bits must be a multiple of 256 from {MIN_BITS} to {MAX_BITS}, got {bits!r}"
        )
    if not isinstance(watermark, str) or not watermark:
        raise PixmarkError("watermark must be 'binary' or the path of a logo image")
    kind = "binary" if watermark == "binary" else "color"
    if kind == "color" and not Path(watermark).is_file():
        raise PixmarkError(f"logo file {watermark} does not exist; pass 'binary' or an image path")
    params: dict[str, Any] = {
        "channels": channels,
        "bits": bits,
        "watermark": kind,
        "wm_size": WM_SIZE,
        "protected": False,
    }
    key = new_key(SCHEME, owner, params=params, secret=secret)
    if kind == "binary":
        text = qr_text(key.owner, key_id(key))
        mark = qr_watermark(text)
        extra: dict[str, Any] = {"qr_text": text, "key_id": key_id(key)}
    else:
        mark = logo_watermark(watermark)
        extra = {"key_id": key_id(key), "logo": Path(watermark).name}
    return key.with_updates(params=extra, tensors={"bits": key_bits(key, bits), "watermark": mark})


def load(path: str | os.PathLike[str]) -> Key:
    """Read a keyed key file: commitment checked (tampering -> error), scheme checked."""
    key = load_key(path, SCHEME)
    _params(key)
    return key


# --------------------------------------------------------------------------- key checks


def _params(key: Key) -> dict[str, Any]:
    if key.scheme != SCHEME:
        raise PixmarkError(
            f"this is a {key.scheme!r} key; the keyed scheme needs a key made by "
            "keygen --scheme keyed"
        )
    needed = ("channels", "bits", "watermark")
    missing = [name for name in needed if name not in key.params]
    if missing:
        raise PixmarkError(f"the keyed key of {key.owner!r} lacks {', '.join(missing)}")
    return key.params


def _bits(key: Key) -> Tensor:
    """The key's bits as float 0/1 [1, L], checked against the key's declared length."""
    bits = key.tensor("bits")
    if bits.dim() != 1 or bits.numel() != key.params["bits"]:
        raise PixmarkError(
            f"the key's bit string has shape {tuple(bits.shape)} but the key says "
            f"{key.params['bits']} bits; the key was altered"
        )
    return bits.float()[None]


def target_of(key: Key) -> Tensor:
    """The extractor's target 2w - 1 in [-1, 1], [1, c, 64, 64]."""
    return key.tensor("watermark").float()[None] * 2 - 1


def flip_bits(bits: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """A copy of 0/1 ``bits`` [L] or [1, L] with ``count`` distinct random positions flipped."""
    flat = bits.reshape(-1).clone()
    if count > 0:
        idx = torch.randperm(flat.numel(), generator=generator)[:count]
        flat[idx] = 1 - flat[idx]
    return flat.view_as(bits)


def _wrong_keys(bits: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n keys [n, L], each = bits with 1..MAX_FLIPS random bits flipped (paper eq. 3)."""
    counts = torch.randint(1, MAX_FLIPS + 1, (n,), generator=generator).tolist()
    return torch.cat([flip_bits(bits, c, generator) for c in counts])


def load_extractor(key: Key) -> KeyedExtractor:
    """The key's trained extractor E (eval mode, CPU)."""
    config = key.params.get("extractor")
    if not key.params.get("protected") or not config:
        raise PixmarkError(
            f"the keyed key of {key.owner!r} has no extractor yet; protect a model with it "
            "first (pixmark protect)"
        )
    extractor = KeyedExtractor(**config)
    state = {
        k.removeprefix("extractor."): v
        for k, v in key.tensors.items()
        if k.startswith("extractor.")
    }
    try:
        extractor.load_state_dict(state)
    except RuntimeError as exc:
        raise PixmarkError(
            f"the key's extractor weights are damaged ({str(exc).splitlines()[0]})"
        ) from None
    return extractor.eval()


# --------------------------------------------------------------------------- robustness


def distort(images: Tensor, generator: torch.Generator) -> Tensor:
    """One random attack per image, as in the paper's robustness training (sec. III-E).

    Each image gets one of: nothing; a crop that keeps a random square of side
    {128, 144, ..., 240}/256 of the image and sets the rest to 0 (the paper's crop);
    Gaussian noise with sigma ~ U(0, 0.25] in [0, 1] units (the paper's (0, 0.5] on its
    [-1, 1] scale); JPEG at quality ~ U{30..90} with a straight-through gradient.
    """
    from pixmark.attacks.image import jpeg

    out = []
    size = images.shape[-1]
    for image in images:
        kind = int(torch.randint(4, (1,), generator=generator))
        x = image[None]
        if kind == 1:
            keep = int(torch.randint(128 // 16, 240 // 16 + 1, (1,), generator=generator)) * 16
            side = max(1, round(size * keep / 256))
            top = int(torch.randint(size - side + 1, (1,), generator=generator))
            left = int(torch.randint(size - side + 1, (1,), generator=generator))
            mask = torch.zeros_like(x)
            mask[..., top : top + side, left : left + side] = 1
            x = x * mask
        elif kind == 2:
            sigma = float(1 - torch.rand(1, generator=generator)) * 0.25
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = (x + sigma * noise).clamp(0, 1)
        elif kind == 3:
            quality = int(torch.randint(30, 91, (1,), generator=generator))
            coded = jpeg(x.detach().clamp(0, 1).cpu(), quality).to(x.device)
            x = x + (coded - x).detach()
        out.append(x)
    return torch.cat(out)


# --------------------------------------------------------------------------- protect


def _model_channels(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("channels") in (1, 3):
        return int(config["channels"])
    return None


def extractor_config(key: Key, profile: str | dict[str, Any]) -> dict[str, Any]:
    """E's constructor arguments for ``key`` at ``profile`` (a name or its settings)."""
    p = _params(key)
    prof = profile if isinstance(profile, dict) else PROFILES[check_profile(profile)]
    return {
        "channels": p["channels"],
        "wm_channels": int(key.tensor("watermark").shape[0]),
        "wm_size": WM_SIZE,
        "key_bits": p["bits"],
        "block": 4,
        "width_a": prof["width_a"],
        "c2": prof["c2"],
        "width_c": prof["width_c"],
        "depth_c": prof["depth_c"],
        "layout": "parity",
        "parity_bits": 128,
        "layout_seed": 0,
        "fold": prof["size"] // WM_SIZE,
        "highpass": True,
    }


#: An embedding "took" when E reads the mark from the protected outputs (mean per-image
#: BER at most ``EMBED_BER``) and from none of the clean images, the original host's or the
#: shadow's outputs (each above ``CLEAN_BER``).
EMBED_BER, CLEAN_BER = 0.15, 0.5


#: Report entries E must not read (BER above ``CLEAN_BER``), and what they are.
CLEAN_CHECKS = {
    "ber_clean": "clean images",
    "ber_unprotected": "the original host",
    "ber_unmarked": "the unmarked shadow",
    "ber_independent": "held-out independent models",
}


def _clean_bers(report: dict[str, Any]) -> dict[str, float]:
    """The report's :data:`CLEAN_CHECKS` BERs (reports made before ``ber_independent``
    existed count it as 1: nothing read)."""
    return {k: report[k] if k != "ber_independent" else report.get(k, 1.0) for k in CLEAN_CHECKS}


def embedded(report: dict[str, Any]) -> bool:
    """Did a protect run's mark take? (``EMBED_BER`` / ``CLEAN_BER`` on its report)."""
    return report["ber"] <= EMBED_BER and min(_clean_bers(report).values()) > CLEAN_BER


#: Independent models trained at protect time (architecture, fraction of the profile's
#: ``independent.steps``): the first ones are E's negatives, the last ``CHECK_MODELS`` are
#: held out to check that E does not read innocent models. Without them E learned "not
#: the original host" and read 95 of 99 independent null models (benchmarks/fpr.yaml).
INDEPENDENT = (
    ("dncnn", 0.4),
    ("unet", 1.0),
    ("red", 0.6),
    ("resnet9", 1.0),
    ("vdsr", 0.5),
    ("dncnn", 1.0),
    ("unet", 0.3),
    ("red", 1.0),
)
CHECK_MODELS = 2


def _failure(report: dict[str, Any]) -> str:
    """What :func:`embedded` found wrong with a run, in words (per-image BERs)."""
    if report["ber"] > EMBED_BER:
        return f"BER {report['ber']:.2f} on the protected outputs"
    read = [
        f"{CLEAN_CHECKS[k]} (BER {ber:.2f})"
        for k, ber in _clean_bers(report).items()
        if ber <= CLEAN_BER
    ]
    return "the extractor also reads " + ", ".join(read)


def _attempt_path(checkpoint: str | Path | None, attempt: int) -> Path | None:
    """The training-state file of attempt ``attempt`` (the first uses ``checkpoint``)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if attempt == 0 else path.with_name(f"{path.name}.try{attempt}")


def _other_models(outputs: Tensor, inputs: Tensor, generator: torch.Generator) -> Tensor:
    """Stand-ins for other models' answers, [N, C, H, W] in [0, 1]: half of the unmarked
    ``outputs`` moved a fraction U(0.1, 0.9) of the way to the degraded ``inputs``, half
    with Gaussian noise of sigma U(0.005, 0.05) added."""
    n = len(outputs)
    t = (0.1 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)).to(outputs.device)
    sigma = (0.005 + 0.045 * torch.rand(n, 1, 1, 1, generator=generator)).to(outputs.device)
    noise = torch.randn(outputs.shape, generator=generator).to(outputs.device)
    toward = outputs + t * (inputs - outputs)
    noisy = outputs + sigma * noise
    pick = (torch.arange(n, device=outputs.device) % 2 == 0).view(n, 1, 1, 1)
    return torch.where(pick, toward, noisy)


def _seed(key: Key, name: str, attempt: int) -> int:
    """The key's seed for ``name`` in training attempt ``attempt`` (0: the plain stream)."""
    return key.seed(name if attempt == 0 else f"{name}-{attempt}") % 2**31


class _Counter:
    """A generator whose position survives a resume (wrong keys and distortions)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def protect(
    model: nn.Module,
    key: Key,
    *,
    task: str | None = None,
    data: str | None = None,
    profile: str = "quick",
    device: str = "auto",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    robust: bool = False,
    attempts: int = 2,
    overrides: dict[str, Any] | None = None,
) -> Protected:
    """Train a copy of ``model`` jointly with the extractor E so its outputs carry the mark.

    Fine-tunes the given host (a trained model, or a fresh one to train from scratch) on
    ``L_G`` (module docstring: task loss, watermark loss with hard negatives, fidelity to
    an unmarked shadow copy trained alongside) with random crops of the task's training images, and
    stores E, its config and ``queries`` held-out real inputs of the task in the key.

    Args:
        model: the host, an image-to-image network with the key's channel count.
        key: a keyed key (``keygen``).
        task: the host's task (``pixmark.data.TASKS``), required.
        data: an image source (``builtin``, a folder); default the task's own.
        profile: ``quick``, ``cpu`` or ``paper`` (see ``PROFILES``).
        device: ``auto``, ``cpu`` or ``cuda``.
        checkpoint, resume: training state file and whether to continue from it.
        robust: train E on cropped, noisy and JPEG-coded outputs too (paper sec. III-E).
        attempts: training runs at most, each from the original host with fresh seeds,
            until :func:`embedded` says the mark took; PixmarkError when none did.
        overrides: replacements for profile entries, e.g. ``{"steps": 600}``.

    Returns:
        ``Protected(model, key, report)``: the fine-tuned host (same class as ``model``);
        the report holds ``psnr_before``/``psnr_after``/``psnr_unmarked`` (dB on held-out
        crops: the original host, the protected host, and the shadow S fine-tuned as long
        without the mark), ``delta_psnr`` (before - after) and ``fidelity_cost``
        (unmarked - after, dB: the price of the mark),
        ``ber``/``ber_clean``/``ber_unprotected``/``ber_unmarked``/``ber_independent``/
        ``ber_flipped8`` (mean per-image BER in [0, 1] of the protected outputs, the clean
        targets, the original model's outputs, the shadow's outputs, the held-out
        independent models' outputs (the lowest of them) and the protected outputs under
        keys with 8 flipped bits), ``steps`` and ``seconds``.
    """
    from pixmark import data as pdata
    from pixmark.api import task_splits

    p = _params(key)
    prof = profile_settings(PROFILES, profile, overrides)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise PixmarkError(f"attempts must be a positive integer, got {attempts!r}")
    if task is None:
        raise PixmarkError("the keyed scheme needs the host's task (--task, e.g. denoise)")
    channels = p["channels"]
    found = _model_channels(model)
    if found is not None and found != channels:
        raise PixmarkError(
            f"the model takes {found}-channel images but the key is for {channels}-channel "
            f"images; make the key with --channels {found}"
        )
    spec, channels, splits = task_splits(task, channels, data)
    size = prof["size"]
    train_imgs = [img for _, img in splits["train"]]
    test_imgs = [img for _, img in splits["test"]]
    queries, _ = pdata.fixed_pairs(
        test_imgs, spec, size, prof["queries"], seed=key.seed("queries") % 2**31, channels=channels
    )
    test = pdata.fixed_pairs(test_imgs, spec, size, prof["eval_count"], seed=2, channels=channels)

    dev = Device(device)
    original = model
    others = independent_models(
        key, task, INDEPENDENT, channels=channels, data=data, device=device, **prof["independent"]
    )
    negatives = [m.to(dev.torch) for m in others[:-CHECK_MODELS]]

    bits = _bits(key).to(dev.torch)
    target = target_of(key).to(dev.torch)
    cpu_bits, cpu_target = bits.cpu(), target.cpu()

    def train_once(attempt: int) -> tuple[nn.Module, KeyedExtractor, dict[str, Any]]:
        host = copy.deepcopy(model).to(dev.torch).train()
        # Hard negatives: the frozen original host M0 and its unmarked shadow S (docstring).
        frozen = copy.deepcopy(model).to(dev.torch).eval().requires_grad_(False)
        shadow = copy.deepcopy(model).to(dev.torch).train()
        config = extractor_config(key, prof)
        torch.manual_seed(_seed(key, "extractor", attempt))
        extractor = KeyedExtractor(**config).to(dev.torch).train()
        optimizer = torch.optim.Adam(
            [
                {"params": host.parameters(), "lr": prof["lr_g"]},
                {"params": extractor.parameters(), "lr": prof["lr_e"]},
                {"params": shadow.parameters(), "lr": prof["lr_g"]},
            ],
            betas=prof["betas"],
        )
        main, polish = prof["steps"], prof["polish_steps"]

        def cosine(s: int) -> float:
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / max(main, 1), 1.0)))

        def polish_rate(s: int) -> float:  # host and shadow: a fixed rate while polishing
            return cosine(s) if s < main else prof["polish_lr"]

        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            [polish_rate, lambda s: cosine(s) if s < main else 0.0, polish_rate],
        )
        sampler = pdata.PairSampler(
            train_imgs, spec, size, channels, seed=_seed(key, "protect", attempt)
        )
        rng = _Counter(_seed(key, "wrong-keys", attempt))
        bs = prof["batch_size"]
        half = max(bs // 2, 1)

        def hard_negatives(step: int, x: Tensor, y: Tensor, twin: Tensor) -> Tensor:
            # 2 bs + bs // 2 negatives: half clean targets / degraded inputs, M0's outputs
            # on the first half of the batch and S's on the second half, then:
            with torch.no_grad(), dev.autocast():
                before = frozen(x[:half]).float()
            clean = torch.cat([torch.cat([y[::2], x[1::2]])[:half], before, twin[half:]])
            # + "other models": S's outputs moved a random way towards the degraded input
            # (what a weaker or differently trained model of the task answers) or with
            # noise of a random level added, so that E keys on the mark, not on how much
            # detail or noise an output has (without them, weak independent models verified).
            others = _other_models(twin, x, rng.generator)
            if not prof["noisy_others"]:  # experiment: only the moved-towards-input half
                others = others[::2]
            clean = torch.cat([clean, others])
            # + the answers of one independent model of the task (cycled per step)
            with torch.no_grad(), dev.autocast():
                clean = torch.cat([clean, negatives[step % len(negatives)](x).float()])
            return clean.clamp(0, 1)

        def step_fn(step: int) -> dict[str, float]:
            # The last ``polish`` steps freeze E (its rate is 0) and tie the host to the
            # shadow with ``polish_fidelity``: the host keeps only as much mark as E still
            # reads with the key. Negatives carry no host gradient, so they are skipped there.
            polishing = step >= main
            x, y = sampler.batch(bs)
            x, y = x.to(dev.torch), y.to(dev.torch)
            with dev.autocast():
                out = host(x).float()
                twin = shadow(x).float()
            l_t = (out - y).abs().mean()
            l_s = (twin - y).abs().mean()
            l_f = (out - twin.detach()).pow(2).mean()
            marked = out.clamp(0, 1)
            # bs positives, then the hard negatives
            clean = marked[:0] if polishing else hard_negatives(step, x, y, twin.detach())
            if robust:
                marked = distort(marked, rng.generator)
                clean = distort(clean, rng.generator) if len(clean) else clean
            with dev.autocast():
                feats = extractor.features(torch.cat([marked, clean]))
                with_key = extractor.decode(feats, bits).float()
                wrong = _wrong_keys(bits.cpu(), half, rng.generator).to(dev.torch)
                neg_key = extractor.decode(feats[:half], wrong).float()
                # inside autocast: feats are bf16 on CUDA, the gate's weights float32
                logits = extractor.gate_logit(feats).float()
            l1 = (with_key[:bs] - target).abs().mean()
            l2 = with_key[bs:].pow(2).mean() if len(clean) else with_key.new_zeros(())
            l3 = neg_key.pow(2).mean()
            l_w = ALPHA * l1 + NEG_WEIGHT * BETA * l2 + GAMMA * l3
            labels = torch.cat([torch.ones(bs), torch.zeros(len(clean))]).to(logits.device)
            l_w = l_w + GATE_WEIGHT * F.binary_cross_entropy_with_logits(logits, labels)
            if polishing:
                fid = prof["polish_fidelity"]
            else:
                ramp = min(max((step / max(main, 1) - 0.5) / 0.4, 0.0), 1.0)
                fid = FIDELITY * (prof["fidelity_end"] / FIDELITY) ** ramp
            loss = l_t + THETA_HOST * l_w + fid * l_f + l_s
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            return {
                "l_t": float(l_t.detach()),
                "l_wm": float(l1.detach()),
                "l_w": float(l_w.detach()),
                "l_f": float(l_f.detach()),
            }

        history = run(
            step_fn,
            {
                "host": host,
                "extractor": extractor,
                "optimizer": optimizer,
                "schedule": schedule,
                "source": sampler,
                "rng": rng,
                "shadow": shadow,
            },
            main + polish,
            checkpoint=_attempt_path(checkpoint, attempt),
            resume=resume,
            checkpoint_every=50,
            description="protect (keyed)",
            progress=progress,
        )
        host = host.cpu().eval()
        extractor = extractor.cpu().eval()

        protected_q, original_q = as_query(host), as_query(original)
        shadow_q = as_query(shadow.cpu().eval())
        outputs = protected_q(queries)
        g = torch.Generator().manual_seed(key.seed("report") % 2**31)
        report = {
            "task": task,
            "profile": profile,
            "robust": robust,
            "psnr_before": _psnr(original_q(test[0]), test[1]),
            "psnr_after": _psnr(protected_q(test[0]), test[1]),
            "ber": _mean_ber(extractor, outputs, cpu_bits, cpu_target),
            "ber_clean": _mean_ber(extractor, test[1], cpu_bits, cpu_target),
            "ber_unprotected": _mean_ber(extractor, original_q(queries), cpu_bits, cpu_target),
            "ber_unmarked": _mean_ber(extractor, shadow_q(queries), cpu_bits, cpu_target),
            # held-out independent models (never E's negatives): the smallest BER among them
            "ber_independent": min(
                _mean_ber(extractor, as_query(m.cpu())(queries), cpu_bits, cpu_target)
                for m in others[-CHECK_MODELS:]
            ),
            "ber_flipped8": _mean_ber(extractor, outputs, flip_bits(cpu_bits, 8, g), cpu_target),
            "psnr_unmarked": _psnr(shadow_q(test[0]), test[1]),
            "steps": main + polish,
            "seconds": history.seconds,
        }
        return host, extractor, report

    tries: list[float] = []
    failures: list[str] = []
    seconds = 0.0
    for attempt in range(attempts):
        host, extractor, report = train_once(attempt)
        tries.append(report["ber"])
        seconds += report["seconds"]
        if embedded(report):
            break
        failures.append(_failure(report))
    else:
        raise PixmarkError(
            f"the keyed watermark did not take in {attempts} attempt(s) ({'; '.join(failures)}); "
            "train longer: a larger profile (--profile cpu) or overrides={'steps': N}"
        )
    report["attempts"] = len(tries)
    report["ber_attempts"] = tries
    report["seconds"] = seconds  # training time of all attempts
    config = extractor.config
    report["delta_psnr"] = report["psnr_before"] - report["psnr_after"]
    report["fidelity_cost"] = report["psnr_unmarked"] - report["psnr_after"]
    params = {
        "protected": True,
        "task": task,
        "size": size,
        "extractor": config,
        "host": {"class": type(original).__name__, "config": getattr(original, "config", None)},
        "embedding": {
            k: report[k]
            for k in (
                "ber",
                "ber_clean",
                "ber_unmarked",
                "ber_independent",
                "ber_flipped8",
                "delta_psnr",
                "fidelity_cost",
                "robust",
            )
        }
        | {"profile": profile},
    }
    tensors = {
        "queries": queries.contiguous(),
        **{f"extractor.{k}": v.detach().cpu().clone() for k, v in extractor.state_dict().items()},
    }
    return Protected(
        model=host, key=key.with_updates(params=params, tensors=tensors), report=report
    )


def _psnr(outputs: Tensor, targets: Tensor) -> float:
    from pixmark.metrics import psnr

    return float(psnr(outputs, targets))


# --------------------------------------------------------------------------- statistics


@torch.no_grad()
def extract(extractor: KeyedExtractor, images: Tensor, bits: Tensor, batch: int = 8) -> Tensor:
    """E(images, bits) in [-1, 1], [N, c, 64, 64], batched on the CPU."""
    outs = [extractor(images[i : i + batch].float(), bits) for i in range(0, len(images), batch)]
    return torch.cat(outs)


def pixel_ber(extracted: Tensor, target: Tensor) -> Tensor:
    """The paper's BER per image [N] of E's output against the target 2w - 1.

    A pixel is right when E's output has the target's sign and magnitude >= ``AGREE``
    (0.5): E says "nothing" with 0, and "nothing" is not a bit. Only pixels where the
    target is not mid-grey (|2w - 1| >= 0.5) count, which for a binary watermark is
    every pixel. So a clean image scores BER ~ 1, a marked one ~ 0.
    """
    mask = (target.abs() >= INFORMATIVE).expand_as(extracted)
    right = (extracted * target.sign() >= AGREE) & mask
    return 1 - right.flatten(1).sum(1).float() / mask.flatten(1).sum(1).clamp(min=1).float()


def _mean_ber(extractor: KeyedExtractor, images: Tensor, bits: Tensor, target: Tensor) -> float:
    return float(pixel_ber(extract(extractor, images, bits), target).mean())


def _blocks(images: Tensor, block: int = VERIFY_BLOCK) -> Tensor:
    """[1, c, h, w] -> [blocks, c * block * block]: all channels of a block together."""
    c = images.shape[1]
    patches = F.unfold(images.float(), block, stride=block)  # [1, c*b*b, blocks]
    return patches[0].T.reshape(-1, c * block * block)


def verification_blocks(target: Tensor, block: int = VERIFY_BLOCK) -> Tensor:
    """Indices of the blocks of ``target`` [1, c, h, w] that are not flat (module docstring)."""
    parts = _blocks(target, block)
    keep = torch.nonzero(parts.std(dim=1) > 0.1).flatten()
    if len(keep) == 0:
        raise PixmarkError(
            "the watermark is flat (no 4x4 area with both light and dark pixels), so nothing "
            "can be verified; use a logo with edges and contrast"
        )
    return keep


def block_errors(consensus: Tensor, target: Tensor) -> tuple[int, int]:
    """(errors, bits) of the consensus watermark [1, c, h, w] on the verification blocks.

    A block's bit is right when the least-squares slope of the consensus block on the
    target block (both centred on their block means) is at least ``AGREE``: the mark is
    there with at least half its strength. A weak echo of the mark is not a bit.
    """
    keep = verification_blocks(target)
    a = _blocks(consensus)[keep]
    b = _blocks(target)[keep]
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    slope = (a * b).sum(dim=1) / (b * b).sum(dim=1)
    return int((slope < AGREE).sum()), len(keep)


def critical_ber(n_bits: int, alpha: float = ALPHA_DECISION) -> float:
    """The block BER threshold: a BER strictly below it has p <= ``alpha``."""
    errors = -1
    while errors + 1 <= n_bits and ber_p_value(errors + 1, n_bits) <= alpha:
        errors += 1
    return (errors + 1) / n_bits


def _score(extracted: Tensor, target: Tensor) -> dict[str, Any]:
    consensus = extracted.mean(0, keepdim=True)
    errors, n = block_errors(consensus, target)
    per_image = pixel_ber(extracted, target)
    from pixmark.metrics import psnr

    return {
        "block_ber": errors / n,
        "block_errors": errors,
        "n_blocks": n,
        "p_value": ber_p_value(errors, n),
        "ber_mean": float(per_image.mean()),
        "ber_consensus": float(pixel_ber(consensus, target)[0]),
        "ber_per_query": [float(b) for b in per_image],
        "wm_psnr": float(psnr((consensus + 1) / 2, (target + 1) / 2)),
        "consensus": consensus,
    }


def _query(query: Query, inputs: Tensor, what: str) -> Tensor:
    outputs = query(inputs)
    if not isinstance(outputs, Tensor) or outputs.shape != inputs.shape:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise PixmarkError(
            f"{what} answered {tuple(inputs.shape)} queries with {shape}; the keyed scheme "
            "needs outputs of the input's size"
        )
    return outputs.detach().float().cpu().clamp(0, 1)


def decode_qr(consensus: Tensor) -> str | None:
    """The text of the QR code in a recovered binary watermark [1, 1, h, w], or None.

    A module reads dark only where the watermark says so with at least ``AGREE`` (half)
    strength, as for the block bits: E's faint echo of its watermark on an unmarked
    model's outputs has the right signs but is not evidence, and must not decode to the
    owner. Needs ``zxing-cpp``; returns None when it is not installed or nothing decodes.
    """
    try:
        import zxingcpp
    except ImportError:
        return None
    from PIL import Image

    bits = (consensus[0, 0] > -AGREE).to(torch.uint8).numpy() * 255
    image = Image.fromarray(bits).resize((bits.shape[1] * 4, bits.shape[0] * 4), Image.NEAREST)
    canvas = Image.new("L", (image.width + 32, image.height + 32), 255)
    canvas.paste(image, (16, 16))
    found = zxingcpp.read_barcodes(canvas)
    return found[0].text if found else None


def check_key(key: Key) -> dict[str, Any]:
    """Ownership checks: the key's bits and QR text must be the ones its secret derives."""
    p = _params(key)
    derived = bool(torch.equal(key_bits(key, p["bits"]), key.tensor("bits").to(torch.uint8)))
    text_ok = True
    if p["watermark"] == "binary":
        text_ok = p.get("qr_text") == qr_text(key.owner, key_id(key))
    reason = ""
    if not derived:
        reason = "the key bits are not the ones derived from the key's secret and owner"
    elif not text_ok:
        reason = "the QR text does not name the key's owner and id"
    return {"valid": not reason, "reason": reason, "bits_derived": derived}


def measure(query: Query, key: Key, bits: Tensor | None = None) -> dict[str, Any]:
    """Query the suspect with the key's queries and score what E extracts with ``bits``.

    ``bits`` (0/1, [L] or [1, L]) defaults to the key's own; pass altered bits to see
    what a wrong key extracts. Returns the statistics of :func:`verify` (``block_ber``,
    ``block_errors``, ``n_blocks``, ``p_value``, ``ber_mean``, ``ber_consensus``,
    ``wm_psnr``) and the tensors behind them (``outputs``, ``extracted``, ``consensus``).
    """
    _params(key)
    extractor = load_extractor(key)
    key_bits_ = _bits(key) if bits is None else bits.float().reshape(1, -1)
    target = target_of(key)
    inputs = key.tensor("queries").float()
    outputs = _query(query, inputs, "the suspect")
    extracted = extract(extractor, outputs, key_bits_)
    return {
        **_score(extracted, target),
        "inputs": inputs,
        "outputs": outputs,
        "extracted": extracted,
        "target": target,
        "extractor": extractor,
    }


def verify(
    query: Query,
    key: Key,
    *,
    nulls: list[Query] | None = None,
    evidence_dir: Path | None = None,
) -> Verdict:
    """Does ``query`` (a suspect, black box) output images that carry the key's watermark?

    Sends the key's query images, runs E with the key on the answers and tests the
    consensus watermark's block bits against the binomial null (module docstring).
    "match" iff the key passes :func:`check_key` and p <= ``ALPHA_DECISION``.

    Args:
        query: the suspect (``as_query(model)`` for a local model).
        key: a protected keyed key.
        nulls: optional null models; adds ``details["empirical_p"]`` (block BER against
            theirs), ``null_fpr`` (the fraction of them the analytic test calls a match),
            ``null_block_ber`` and ``null_ber_mean``.
        evidence_dir: where to write ``keyed_evidence.png`` (queries, answers, extracted
            watermarks, the consensus and the target).

    Raises:
        PixmarkError: a key of another scheme, an unprotected key, or a suspect whose
            outputs do not have the queries' shape.
    """
    p = _params(key)
    ownership = check_key(key)
    score = measure(query, key)
    inputs, outputs, extracted, target = (
        score["inputs"],
        score["outputs"],
        score["extracted"],
        score["target"],
    )
    extractor, bits = score["extractor"], _bits(key)
    n_blocks = score["n_blocks"]
    threshold = critical_ber(n_blocks)
    p_value = score["p_value"]
    decision = decide(p_value, ALPHA_DECISION) if ownership["valid"] else "no match"
    details: dict[str, Any] = {
        "statistic_name": "block BER of the consensus watermark",
        "block_errors": score["block_errors"],
        "n_blocks": n_blocks,
        "block": VERIFY_BLOCK,
        "alpha": ALPHA_DECISION,
        "ber_mean": score["ber_mean"],
        "ber_consensus": score["ber_consensus"],
        "ber_per_query": score["ber_per_query"],
        "watermark": p["watermark"],
        "key_valid": ownership["valid"],
        "key_check": ownership["reason"] or "ok",
        "key_id": p.get("key_id"),
        "key_commitment": key.commitment,
        "key_created": key.created,
        "owner": key.owner,
    }
    if p["watermark"] == "binary":
        text = decode_qr(score["consensus"])
        details["qr_text"] = text
        details["qr_matches_owner"] = text is not None and text == p.get("qr_text")
    else:
        details["wm_psnr"] = score["wm_psnr"]
    if nulls:
        null_scores = [
            _score(extract(extractor, _query(nq, inputs, f"null model {i}"), bits), target)
            for i, nq in enumerate(nulls)
        ]
        null_ber = [s["block_ber"] for s in null_scores]
        details["empirical_p"] = empirical_p_value(
            score["block_ber"], null_ber, greater_is_evidence=False
        )
        details["null_fpr"] = sum(s["p_value"] <= ALPHA_DECISION for s in null_scores) / len(
            null_scores
        )
        details["n_null_models"] = len(nulls)
        details["null_block_ber"] = null_ber
        details["null_ber_mean"] = [s["ber_mean"] for s in null_scores]
    evidence: dict[str, str] = {}
    if evidence_dir is not None:
        evidence["keyed"] = str(
            _write_evidence(Path(evidence_dir), inputs, outputs, extracted, score, target)
        )
    return Verdict(
        scheme=SCHEME,
        statistic=score["block_ber"],
        threshold=threshold,
        p_value=p_value,
        decision=decision,
        n_queries=len(inputs),
        evidence=evidence,
        details=details,
    )


def _write_evidence(
    folder: Path,
    inputs: Tensor,
    outputs: Tensor,
    extracted: Tensor,
    score: dict[str, Any],
    target: Tensor,
    rows_shown: int = 4,
) -> Path:
    from pixmark.viz import save_grid

    rows, labels = [], []
    for i in range(min(rows_shown, len(inputs))):
        rows.append([inputs[i], outputs[i], (extracted[i] + 1) / 2])
        labels.append(f"query {i}")
    consensus = (score["consensus"][0] + 1) / 2
    rows.append([consensus, (target[0] + 1) / 2, (consensus - (target[0] + 1) / 2).abs()])
    labels.append(f"all {len(inputs)}")
    cols = ["query / consensus", "suspect output / target w", "extracted w' / |diff|"]
    return save_grid(rows, folder / "keyed_evidence.png", row_labels=labels, col_labels=cols)


# --------------------------------------------------------------------------- key sensitivity


def key_sensitivity(
    query: Query, key: Key, flips: range | list[int] = range(0, 33, 4)
) -> list[tuple[int, float]]:
    """The paper's Fig. 11 curve: mean per-image BER on the key's queries vs flipped key bits.

    For each count in ``flips``, that many random bits of the key (drawn from the key's
    ``sensitivity`` PRNG stream) are flipped and E extracts with the altered key. A
    well-trained extractor gives BER ~ 0 at 0 flips and ~ 0.5 from a few flips on.
    """
    _params(key)
    extractor = load_extractor(key)
    bits, target = _bits(key), target_of(key)
    outputs = _query(query, key.tensor("queries").float(), "the suspect")
    features = torch.cat(
        [extractor.features(outputs[i : i + 8]) for i in range(0, len(outputs), 8)]
    ).detach()
    g = key.generator("sensitivity")
    curve = []
    with torch.no_grad():
        for count in flips:
            if not 0 <= count <= bits.numel():
                raise PixmarkError(f"cannot flip {count} of the key's {bits.numel()} bits")
            wrong = flip_bits(bits, int(count), g)
            extracted = extractor.decode(features, wrong)
            curve.append((int(count), float(pixel_ber(extracted, target).mean())))
    return curve
