"""Real images and task degradations: where every training and test pair comes from.

from pixmark.data import images, split_images, PairSampler, task
splits = split_images(images("builtin", channels=1), seed=0)
sampler = PairSampler(splits["train"], "denoise", size=64, channels=1, seed=0)
x, y = sampler.batch(16)   # degraded input, target: [16, 1, 64, 64] in [0, 1]
"""

from pixmark.data.degrade import (
    add_rain,
    bicubic_down_up,
    clahe,
    gaussian_noise,
    jpeg,
    low_dose_xray,
    rain_streaks,
    random_blur,
    random_jpeg,
)
from pixmark.data.pairs import PairSampler, fixed_pairs
from pixmark.data.sources import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    builtin_images,
    folder_images,
    images,
    load_dicom,
    load_image,
    save_image,
    split_images,
    tile_images,
    to_channels,
)
from pixmark.data.tasks import TASKS, TaskSpec, task

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "TASKS",
    "PairSampler",
    "TaskSpec",
    "add_rain",
    "bicubic_down_up",
    "builtin_images",
    "clahe",
    "fixed_pairs",
    "folder_images",
    "gaussian_noise",
    "images",
    "jpeg",
    "load_dicom",
    "load_image",
    "low_dose_xray",
    "rain_streaks",
    "random_blur",
    "random_jpeg",
    "save_image",
    "split_images",
    "task",
    "tile_images",
    "to_channels",
]
