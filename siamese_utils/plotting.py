"""Figures used across the series: small helpers, each with a title, labelled axes and a size.

Explained in ``notebooks/01_preprocessing.ipynb``.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize

__all__ = ["show_pairs", "plot_caption_lengths"]


def _as_display_array(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A PIL image, a normalised (3, H, W) tensor or an (H, W, 3) array -> (H, W, 3) floats in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        return denormalize(image.detach().cpu().float(), mean, std).permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr


def show_pairs(
    images: Sequence,
    captions: Sequence[str],
    ncols: int = 4,
    title: str | None = None,
    width: float = 3.0,
    wrap: int = 28,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """A grid of images, each with its caption underneath. Returns the figure.

    Images may be PIL images, normalised tensors (undone with ``mean``/``std``)
    or uint8 arrays.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    import matplotlib.pyplot as plt

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; pass one caption per image")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    lines = max((len(textwrap.wrap(c, wrap)) for c in captions), default=1)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, (width + 0.17 * lines + 0.1) * nrows + (0.4 if title else 0.0)),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(_as_display_array(img, mean, std), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(cap, wrap)), fontsize=9, loc="center")
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_caption_lengths(
    lengths: Sequence[int], max_length: int | Sequence[int] = (), title: str = "Caption lengths"
):
    """Histogram of caption lengths in tokens, with ``max_length`` cut-offs marked.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    import matplotlib.pyplot as plt

    lengths = np.asarray(lengths)
    cuts = [max_length] if isinstance(max_length, int) else list(max_length)
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    bins = np.arange(lengths.min(), max([lengths.max(), *cuts]) + 2) - 0.5
    ax.hist(lengths, bins=bins, color="#4c72b0", edgecolor="white")
    for cut, style in zip(cuts, ("--", ":", "-.", "-")):
        share = float((lengths > cut).mean() * 100)
        ax.axvline(cut + 0.5, color="#c44e52", linestyle=style, label=f"max_length={cut}: {share:.1f}% truncated")
    if cuts:
        ax.legend(loc="upper right")
    ax.set_xlabel("tokens per caption (with [CLS] and [SEP])")
    ax.set_ylabel("captions")
    ax.set_title(title)
    return fig
