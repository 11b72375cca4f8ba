"""Image preprocessing: the seed's pipeline as a configurable object, and augmentation that keeps captions true.

Explained in ``notebooks/01_preprocessing.ipynb``.

Augmentations must not make a caption false. A horizontal flip turns "a circle left of a square" into a circle *right*
of a square, so the flip swaps "left" and "right" in the caption too (or skips captions that mention them); hue jitter
would turn a red circle orange, so only brightness and contrast jitter are offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .text import mentions_left_right, swap_left_right

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTransformConfig", "CaptionAwareHorizontalFlip",
           "ImageTextTransform", "build_image_transform", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FlipMode = Literal["swap", "skip", "off"]


@dataclass(frozen=True)
class ImageTransformConfig:
    """Settings of the image pipeline. The defaults are the seed's (``Resize((224, 224))``, ImageNet statistics).

    - ``flip``, ``flip_p``: the training-time flip (:class:`CaptionAwareHorizontalFlip`) and its probability;
    - ``crop_scale``: training's random-resized-crop area range (``(1.0, 1.0)``: none; small crops can cut objects);
    - ``brightness``, ``contrast``: jitter strengths for training (0 = off).
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

    Evaluation (``train=False``) is deterministic; with the default config it is exactly the seed's pipeline.
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
    """Mirror an (image, caption) pair so that the caption stays true; draws from ``generator`` or torch's global one.

    With probability ``p``, ``mode="swap"`` flips and swaps "left"/"right" in the caption; ``"skip"`` flips only
    captions that mention neither; ``"off"`` never flips.
    """

    def __init__(self, p: float = 0.5, mode: FlipMode = "swap"):
        if mode not in ("swap", "skip", "off"):
            raise ValueError(f"mode={mode!r}; use 'swap', 'skip' or 'off'")
        self.p, self.mode = p, mode

    def __call__(self, image: Image.Image | torch.Tensor, caption: str,
                 generator: torch.Generator | None = None) -> tuple[Image.Image | torch.Tensor, str]:
        if self.mode == "off":
            return image, caption
        # Draw first, whatever the caption says, so that the random stream does not depend on caption contents.
        flip = bool(torch.rand((), generator=generator) < self.p)
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
    """Caption-aware flip (training only), then the image pipeline: ``tensor, caption = transform(image, caption)``."""

    def __init__(self, config: ImageTransformConfig, train: bool):
        self.config, self.train = config, train
        self.flip = CaptionAwareHorizontalFlip(config.flip_p, config.flip if train else "off")
        self.image_transform = build_image_transform(config, train)

    def __call__(self, image: Image.Image, caption: str) -> tuple[torch.Tensor, str]:
        image, caption = self.flip(image, caption)
        return self.image_transform(image), caption

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train}, flip={self.flip!r}, "
                f"image_transform={self.image_transform!r})")


def denormalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo ``Normalize`` for display: values back in [0, 1], same shape."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)
