"""pixmark: watermark image-to-image networks and verify ownership of suspect models.

Images are float tensors in [0, 1], NCHW, with 1 or 3 channels throughout.
"""

from importlib.metadata import PackageNotFoundError, version

from pixmark.errors import PixmarkError

try:
    __version__ = version("pixmark")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["PixmarkError", "__version__"]
