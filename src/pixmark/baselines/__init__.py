"""Baselines of the ``output`` scheme (Zhang et al., AAAI 2020): why a learned mark is needed.

(``label_trigger`` is another kind: the ``trigger`` scheme's Base-2 of Quan et al., a label
backdoor through a fixed random projection; see its module docstring.)

The paper compares its learned H/R watermark with classical image watermarks put in the
same place (every output of the protected model is marked before it is shown):

* ``ss``: additive spatial spread spectrum, ``I' = I + α·C_w`` (the paper's Eq. 3),
  64 bits ("T-Derain" in Table 2);
* ``dct``, ``dft``, ``dwt``: transform-domain marks (block-DCT, DFT-magnitude ring and
  DWT-subband spread spectrum), which the paper reports "do not work" (0 % success);
* the *task-specific* variant, where one network does the task and hides the logo
  (:func:`train_task_specific`).

Usage::

    from pixmark import baselines
    key = baselines.keygen("ACME Imaging")
    marked = baselines.embed(images, key, "ss")          # [N, C, H, W] in [0, 1]
    verdict = baselines.detect(suspect_outputs, key, "ss")
    deploy = baselines.BaselineMarked(model, key, "dct")  # M, then the fixed embedding

See docs/schemes/baselines.md for the design and the measured surrogate results.
"""

from pixmark.baselines._common import MIN_SIDE, N_BITS
from pixmark.baselines.core import (
    ALPHA,
    DEFAULT_STRENGTH,
    MAX_STRENGTH,
    METHODS,
    SUCCESS_NC,
    BaselineMarked,
    Mark,
    ber_threshold,
    bit_scores,
    detect,
    embed,
    keygen,
    mark_of,
    message_bits,
)
from pixmark.baselines.task_specific import TaskSpecific, logo_scores, train_task_specific

__all__ = [
    "ALPHA",
    "DEFAULT_STRENGTH",
    "MAX_STRENGTH",
    "METHODS",
    "MIN_SIDE",
    "N_BITS",
    "SUCCESS_NC",
    "BaselineMarked",
    "Mark",
    "TaskSpecific",
    "ber_threshold",
    "bit_scores",
    "detect",
    "embed",
    "keygen",
    "logo_scores",
    "mark_of",
    "message_bits",
    "train_task_specific",
]
