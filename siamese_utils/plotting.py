"""Figures used across the series: small helpers, each with a title, labelled axes and a size.

Explained in ``notebooks/01_preprocessing.ipynb``, ``notebooks/02_model_construction.ipynb`` and
``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize

__all__ = ["show_pairs", "plot_caption_lengths", "plot_similarity", "plot_matrices", "plot_curves", "plot_history"]


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


def plot_similarity(
    sim,
    images: Sequence | None = None,
    captions: Sequence[str] | None = None,
    txt_to_img: Sequence[int] | None = None,
    title: str = "Similarity of every image with every caption",
    annotate: bool = True,
    cell: float = 1.0,
    wrap: int = 16,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """Heatmap of an (images x captions) similarity matrix, with thumbnails and captions on the axes.

    ``txt_to_img[j]`` is the image caption ``j`` belongs to; those cells are
    outlined, so a trained model should light them up. Values are written in
    the cells when ``annotate``. Returns the figure.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    sim = sim.detach().cpu().float().numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim, dtype=float)
    if sim.ndim != 2:
        raise ValueError(f"sim must be a 2-D (images x captions) matrix, got shape {sim.shape}")
    n, m = sim.shape
    if images is not None and len(images) != n:
        raise ValueError(f"sim has {n} rows (images) but {len(images)} images were given")
    if captions is not None and len(captions) != m:
        raise ValueError(f"sim has {m} columns (captions) but {len(captions)} captions were given")
    if txt_to_img is not None and len(txt_to_img) != m:
        raise ValueError(f"sim has {m} columns (captions) but txt_to_img has {len(txt_to_img)} entries")
    lines = max((len(textwrap.wrap(c, wrap)) for c in captions), default=1) if captions is not None else 1
    left = 1.1 if images is not None else 0.0  # a column of thumbnails, in units of cells
    fig, ax = plt.subplots(figsize=(cell * (m + left) + 1.8, cell * n + 0.15 * lines + 0.9), layout="constrained")
    limit = max(float(np.abs(sim).max()), 1e-6)
    shown = ax.imshow(sim, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="cosine similarity")
    if annotate:
        for i in range(n):
            for j in range(m):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(sim[i, j]) > 0.6 * limit else "black")
    if txt_to_img is not None:
        for j, i in enumerate(txt_to_img):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.0))
    if images is not None:  # thumbnails in data coordinates, left of their rows: they scale with the axes
        for i, image in enumerate(images):
            ax.imshow(_as_display_array(image, mean, std), extent=(-0.55 - left + 0.1, -0.55, i + 0.45, i - 0.45),
                      interpolation="nearest")
    ax.set_xlim(-0.5 - left, m - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    labels = ["\n".join(textwrap.wrap(c, wrap)) for c in captions] if captions is not None else range(m)
    ax.set_xticks(range(m), labels, fontsize=7.5)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("captions")
    ax.set_yticks(range(n), [""] * n if images is not None else range(n))
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("images")
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    return fig


def plot_matrices(
    matrices: dict[str, object],
    title: str = "",
    xlabel: str = "caption j",
    ylabel: str = "image i",
    cmap: str = "Reds",
    symmetric: bool = False,
    width: float = 3.2,
):
    """A row of heatmaps with one colour bar each, e.g. how strongly each loss pushes each (image, caption) pair.

    ``matrices`` maps a panel title to a 2-D array or tensor. ``symmetric``
    centres the colour scale on zero (use with a diverging ``cmap``).

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(width * len(matrices), width * 0.95),
                             layout="constrained", squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        m = matrix.detach().cpu().float().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
        limit = float(np.abs(m).max()) or 1.0
        vmin, vmax = (-limit, limit) if symmetric else (min(0.0, float(m.min())), max(float(m.max()), 1e-12))
        im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(
    curves: dict[str, Sequence[float]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
    hlines: dict[str, float] | None = None,
):
    """Several curves on one axis (e.g. the training loss of two runs step by step), with optional reference lines.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    for name, y in (hlines or {}).items():
        ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_history(history, title: str = "Training"):
    """Three panels from a training history (one row per epoch): loss, temperature, validation recall.

    ``history`` is the DataFrame returned by :func:`siamese_utils.train.fit`
    (or read from a run's ``history.csv``).

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    import matplotlib.pyplot as plt

    epochs = np.asarray(history["epoch"])
    fig, (ax_loss, ax_temp, ax_rec) = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    ax_loss.plot(epochs, history["loss"], marker="o", color="#4c72b0")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="mean loss per pair")
    ax_temp.plot(epochs, history["temperature"], marker="o", color="#dd8452")
    ax_temp.set(title="temperature", xlabel="epoch", ylabel="1 / logit scale")
    for direction, style in (("i2t", "-"), ("t2i", "--")):
        for k, color in ((1, "#4c72b0"), (5, "#55a868"), (10, "#c44e52")):
            ax_rec.plot(epochs, history[f"val_{direction}_r{k}"], style, marker="o", color=color, markersize=3,
                        label=f"{direction} R@{k}")
    ax_rec.set(title="validation recall", xlabel="epoch", ylabel="R@K (%)", ylim=(0, 101))
    ax_rec.legend(fontsize=7, ncol=2, loc="lower right")
    for ax in (ax_loss, ax_temp, ax_rec):
        ax.set_xticks(epochs)
    fig.suptitle(title)
    return fig
