"""pixmark: watermark image-to-image networks and verify ownership of suspect models.

Images are float tensors in [0, 1], NCHW, with 1 or 3 channels throughout.

    import pixmark
    key = pixmark.keygen("output", "ACME Imaging")
    protected = pixmark.protect(model, key, task="derain")      # .model, .key, .report
    verdict = pixmark.verify(suspect, protected.key)            # a Verdict
"""

from importlib.metadata import PackageNotFoundError, version

from pixmark.errors import PixmarkError

try:
    __version__ = version("pixmark")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from pixmark.api import attack, keygen, protect, train_model, train_nulls, verify  # noqa: E402
from pixmark.checkpoint import load_model, save_model  # noqa: E402
from pixmark.keys import Key, load_key, save_key  # noqa: E402
from pixmark.stats import Verdict  # noqa: E402

__all__ = [
    "Key",
    "PixmarkError",
    "Verdict",
    "__version__",
    "attack",
    "keygen",
    "load_key",
    "load_model",
    "protect",
    "save_key",
    "save_model",
    "train_model",
    "train_nulls",
    "verify",
]
