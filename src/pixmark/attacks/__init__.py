"""Attacks on watermarked models and their outputs, each a function with a strength.

Image-level attacks (``pixmark.attacks.image``) distort a protected model's outputs;
model-level attacks (``pixmark.attacks.model``) return a modified copy of a stolen model
(``overwrite`` embeds the thief's own watermark on top); removal attacks
(``pixmark.attacks.removal``) clean a black box's answers and return a query. All come
with a name -> function table for the benchmark grid.

from pixmark.attacks import apply_image_attack, prune
attacked = apply_image_attack("jpeg", outputs, 50)
suspect = prune(model, 0.3)
"""

from pixmark.attacks.image import (
    IMAGE_ATTACKS,
    apply_image_attack,
    color_jitter,
    crop,
    flip,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    resize,
    rotate,
    served_through,
)
from pixmark.attacks.model import (
    MODEL_ATTACKS,
    QUANTIZE_MODES,
    apply_model_attack,
    fine_tune,
    overwrite,
    overwrite_protected,
    prune,
    prune_channels,
    quantize,
    sparsity,
)
from pixmark.attacks.removal import (
    REMOVAL_ATTACKS,
    PostProcessed,
    estimate_and_subtract,
    estimate_pattern,
    removal_network,
)

# Surrogate training (pixmark.attacks.surrogate, written separately) goes here: import
# its public functions and add them to MODEL_ATTACKS / __all__ below.

__all__ = [
    "IMAGE_ATTACKS",
    "MODEL_ATTACKS",
    "QUANTIZE_MODES",
    "REMOVAL_ATTACKS",
    "PostProcessed",
    "apply_image_attack",
    "apply_model_attack",
    "color_jitter",
    "crop",
    "estimate_and_subtract",
    "estimate_pattern",
    "fine_tune",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "overwrite",
    "overwrite_protected",
    "prune",
    "prune_channels",
    "quantize",
    "removal_network",
    "resize",
    "rotate",
    "served_through",
    "sparsity",
]
