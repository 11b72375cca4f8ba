"""Image preprocessing: the seed's pipeline as a configurable object, and augmentation
that keeps captions true.

Explained in ``notebooks/01_preprocessing.ipynb``.

The seed's ``ImagePreprocessor`` is ``Resize((224, 224))``, ``ToTensor()`` and
ImageNet ``Normalize``. Here the size, the statistics and the training
augmentations are settings of one :class:`ImageTransformConfig`, and training and
evaluation get separate pipelines: evaluation must be deterministic.

Augmentations must not make a caption false. A horizontal flip turns "a circle
left of a square" into a circle *right* of a square, so the flip here swaps
"left" and "right" in the caption too (or skips captions that mention them).
Hue jitter would turn a red circle orange, so it is not offered; brightness and
contrast jitter are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .text import mentions_left_right, swap_left_right

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransformConfig",
    "CaptionAwareHorizontalFlip",
    "ImageTextTransform",
    "build_image_transform",
    "denormalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FlipMode = Literal["swap", "skip", "off"]


@dataclass(frozen=True)
class ImageTransformConfig:
    """Settings of the image pipeline. The defaults are the seed's (224 px, ImageNet statistics).

    - ``flip``: the training-time horizontal flip, with probability ``flip_p``:
      ``"swap"`` flips and swaps left/right in the caption; ``"skip"`` flips
      only captions that mention neither; ``"off"`` never flips.
    - ``crop_scale``: random-resized-crop area range for training; ``(1.0, 1.0)``
      means no crop. Small crops can cut an object the caption mentions.
    - ``brightness``, ``contrast``: jitter strengths for training (0 = off).

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip: FlipMode = "swap"
    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if self.flip not in ("swap", "skip", "off"):
            raise ValueError(f"flip={self.flip!r}; use 'swap', 'skip' or 'off'")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p={self.flip_p} is a probability; use a value in [0, 1]")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")
        if self.brightness < 0 or self.contrast < 0:
            raise ValueError("brightness and contrast jitter strengths must be >= 0")


def build_image_transform(config: ImageTransformConfig, train: bool) -> T.Compose:
    """The image-only pipeline (PIL image -> normalised tensor); no flip, which needs the caption.

    With ``train=False`` and the default config this is exactly the seed's
    ``Resize((224, 224))``, ``ToTensor()``, ``Normalize(ImageNet)``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    size = (config.image_size, config.image_size)
    steps: list = []
    if train and config.crop_scale != (1.0, 1.0):
        steps.append(T.RandomResizedCrop(size, scale=config.crop_scale, antialias=True))
    else:
        steps.append(T.Resize(size, antialias=True))
    if train and (config.brightness or config.contrast):
        steps.append(T.ColorJitter(brightness=config.brightness, contrast=config.contrast))
    steps += [T.ToTensor(), T.Normalize(config.mean, config.std)]
    return T.Compose(steps)


class CaptionAwareHorizontalFlip:
    """Mirror an (image, caption) pair so that the caption stays true.

    ``mode="swap"``: flip with probability ``p`` and swap "left"/"right" in the
    caption. ``mode="skip"``: flip with probability ``p`` only captions that
    mention neither word. ``mode="off"``: identity. Draws from torch's random
    generator, so a seeded run (and seeded DataLoader workers) repeats it.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """

    def __init__(self, p: float = 0.5, mode: FlipMode = "swap"):
        if mode not in ("swap", "skip", "off"):
            raise ValueError(f"mode={mode!r}; use 'swap', 'skip' or 'off'")
        self.p = p
        self.mode = mode

    def __call__(self, image: Image.Image | torch.Tensor, caption: str) -> tuple[Image.Image | torch.Tensor, str]:
        if self.mode == "off":
            return image, caption
        # Draw first, whatever the caption says, so that the random stream
        # does not depend on caption contents.
        flip = bool(torch.rand(()) < self.p)
        if not flip:
            return image, caption
        if mentions_left_right(caption):
            if self.mode == "skip":
                return image, caption
            caption = swap_left_right(caption)
        return TF.hflip(image), caption

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, mode={self.mode!r})"


class ImageTextTransform:
    """The whole per-pair pipeline: caption-aware flip (training only), then the image pipeline.

    Call it as ``image_tensor, caption = transform(pil_image, caption)``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """

    def __init__(self, config: ImageTransformConfig, train: bool):
        self.config = config
        self.train = train
        self.flip = CaptionAwareHorizontalFlip(config.flip_p, config.flip if train else "off")
        self.image_transform = build_image_transform(config, train)

    def __call__(self, image: Image.Image, caption: str) -> tuple[torch.Tensor, str]:
        image, caption = self.flip(image, caption)
        return self.image_transform(image), caption

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train}, flip={self.flip!r}, image_transform={self.image_transform!r})"


def denormalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo ``Normalize`` for display: values back in [0, 1], same shape.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)
