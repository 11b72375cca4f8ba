"""Figures used across the series: small helpers, each with a title, labelled axes and a size.

Explained in ``notebooks/01_preprocessing.ipynb``, ``notebooks/02_model_construction.ipynb``,
``notebooks/03_contrastive_training.ipynb``, ``notebooks/04_evaluation.ipynb`` and
``notebooks/05_composition.ipynb`` and ``notebooks/06_losses_and_encoders.ipynb``.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..core.metrics import check_txt_to_img
from ..core.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize

__all__ = [
    "show_pairs",
    "plot_caption_lengths",
    "plot_similarity",
    "plot_matrices",
    "plot_curves",
    "plot_history",
    "plot_retrieval",
    "plot_score_distributions",
    "plot_rank_histogram",
    "pca_2d",
    "plot_embedding_map",
    "plot_word_importance",
    "plot_grid",
    "plot_cell_maps",
]

# Colourblind-safe choices shared by the evaluation figures: a thick green frame and a tick mark for the right
# answer (thickness and the mark carry the meaning, not the hue alone), a thin grey frame for the others.
_CORRECT = "#1a9850"
_OTHER = "#9e9e9e"


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
    if txt_to_img is not None:
        check_txt_to_img(txt_to_img, n, m, every_image=False, captions="columns of sim", images="rows of sim")
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

    ``history`` is the DataFrame returned by :func:`siamese_utils.core.train.fit`
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
        if len(epochs) <= 15:
            ax.set_xticks(epochs)
        else:  # a tick per epoch would overlap
            from matplotlib.ticker import MaxNLocator
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return fig


def _as_numpy(x, name: str, dtype=float) -> np.ndarray:
    """A tensor or array-like as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if np.dtype(dtype).kind == "f" else x
        return x.numpy().astype(dtype, copy=False)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric (an array or a tensor): {err}") from None


def _check_like_results(values, results, name: str) -> None:
    """``values`` must hold one row per query and one entry per result in that row."""
    if len(values) != len(results):
        raise ValueError(f"results has {len(results)} rows but {name} has {len(values)}; pass one row per query")
    for r, (row, res) in enumerate(zip(values, results)):
        if len(row) != len(res):
            raise ValueError(
                f"{name}[{r}] has {len(row)} entries but results[{r}] has {len(res)}; pass one per result"
            )


def plot_retrieval(
    queries: Sequence,
    results: Sequence[Sequence],
    scores: Sequence[Sequence[float]] | None = None,
    correct: Sequence[Sequence[bool]] | None = None,
    title: str | None = None,
    wrap: int = 24,
    width: float = 1.6,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """A gallery of retrieval results, one row per query: the query, then its top-k results, best first.

    The direction follows the queries: if every query is a caption (``str``),
    each ``results[r]`` is a list of images (text -> image); otherwise every
    query is an image and each ``results[r]`` a list of captions (image ->
    text). ``scores[r][c]`` is printed above result ``c`` of row ``r`` (``#1 ·
    0.62``); ``correct[r][c]`` marks the ground truth with a thick green frame
    and a tick, the other results get a thin grey frame. Rows may hold
    different numbers of results. Images may be PIL images, normalised tensors
    (undone with ``mean``/``std``) or uint8 arrays; image cells are ``width``
    inches wide, caption cells wide enough for lines of ``wrap`` characters.
    ``title`` defaults to the direction. Returns the figure.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    import matplotlib.pyplot as plt

    if len(queries) == 0:
        raise ValueError("queries is empty; pass at least one query (a caption or an image)")
    if len(results) != len(queries):
        raise ValueError(f"{len(queries)} queries but results has {len(results)} rows; pass one row per query")
    is_text = [isinstance(q, str) for q in queries]
    text_queries = all(is_text)
    if any(is_text) and not text_queries:
        raise ValueError("queries mixes captions and images; pass only captions (text -> image) or only images")
    for r, row in enumerate(results):
        if isinstance(row, str):
            raise ValueError(f"results[{r}] is a string; pass a list of results per query, best first")
        for c, item in enumerate(row):
            if text_queries == isinstance(item, str):
                want = "an image" if text_queries else "a caption (str)"
                raise ValueError(f"results[{r}][{c}] should be {want}: caption queries retrieve images, "
                                 "image queries retrieve captions")
    if scores is not None:
        _check_like_results(scores, results, "scores")
    if correct is not None:
        _check_like_results(correct, results, "correct")

    n = len(queries)
    k = max(1, max(len(row) for row in results))
    captions = list(queries) if text_queries else [c for row in results for c in row]
    lines = max((len(textwrap.wrap(c, wrap)) for c in captions), default=1)
    text_w = max(width, 0.068 * wrap + 0.35)  # about 0.065 in per character at 8 pt, plus the box's padding
    text_h = 0.135 * lines + 0.3
    query_w, result_w = (text_w, width) if text_queries else (width, text_w)
    row_h = max(width, text_h) + 0.3  # + the "#1 · 0.62" line above each cell
    fig, axes = plt.subplots(
        n,
        1 + k,
        figsize=(query_w + k * result_w + 0.3, n * row_h + (0.45 if title != "" else 0.0)),
        gridspec_kw={"width_ratios": [query_w] + [result_w] * k},
        squeeze=False,
        layout="constrained",
    )

    def caption_cell(ax, text, edge, linewidth, face):
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, wrap)) or " ", transform=ax.transAxes, ha="center",
                va="center", fontsize=8, wrap=False,
                bbox={"boxstyle": "round,pad=0.45", "facecolor": face, "edgecolor": edge, "linewidth": linewidth})

    def image_cell(ax, image, edge, linewidth):
        ax.imshow(_as_display_array(image, mean, std), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(edge)
            spine.set_linewidth(linewidth)

    for r, (query, row) in enumerate(zip(queries, results)):
        q_ax = axes[r, 0]
        if text_queries:
            caption_cell(q_ax, query, "tab:blue", 1.2, "#deebf7")
        else:
            image_cell(q_ax, query, "tab:blue", 1.2)
        q_ax.set_title("query caption" if text_queries else "query image", fontsize=8.5, color="tab:blue")
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(row):
                ax.axis("off")
                continue
            hit = bool(correct[r][c]) if correct is not None else False
            edge, linewidth = (_CORRECT, 3.0) if hit else (_OTHER, 0.8)
            if text_queries:
                image_cell(ax, row[c], edge, linewidth)
            else:
                caption_cell(ax, row[c], edge, linewidth, "#eaf5ea" if hit else "white")
            label = f"#{c + 1}" + (f" · {float(scores[r][c]):.2f}" if scores is not None else "")
            ax.set_title(label + (" ✓" if hit else ""), fontsize=8.5, color=_CORRECT if hit else "black",
                         fontweight="bold" if hit else "normal")
    if title is None:
        title = "Text → image retrieval: top results per caption" if text_queries else \
            "Image → text retrieval: top results per image"
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_score_distributions(sim, txt_to_img: Sequence[int], bins: int = 50,
                             title: str = "Similarities of matching and non-matching pairs"):
    """Overlaid histograms of the similarities of matching pairs, of all non-matching pairs and of hardest negatives.

    ``sim`` is the ``(N images x M captions)`` similarity matrix and
    ``txt_to_img[j]`` the image of caption ``j``. Matching pairs are
    ``sim[txt_to_img[j], j]``; non-matching pairs every other entry; a
    caption's hardest negative is its best-scoring wrong image, the one its
    text -> image R@1 depends on. Densities share bin edges; dashed lines mark
    the medians. The share of captions whose hardest negative scores at least as
    high as their own image is 100 - text -> image R@1. Returns the figure.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    import matplotlib.pyplot as plt

    sim = _as_numpy(sim, "sim")
    if sim.ndim != 2:
        raise ValueError(f"sim must be a 2-D (images x captions) matrix, got shape {sim.shape}")
    n, m = sim.shape
    if n < 2 or m < 1:
        raise ValueError(f"sim has shape {sim.shape}; it needs at least 2 images (rows) and 1 caption (column)")
    owner = check_txt_to_img(txt_to_img, n, m, every_image=False, captions="columns of sim",
                             images="rows of sim").numpy()

    cols = np.arange(m)
    positives = sim[owner, cols]
    negative = np.ones_like(sim, dtype=bool)
    negative[owner, cols] = False
    negatives = sim[negative]
    hardest = np.where(negative, sim, -np.inf).max(axis=0)
    edges = np.histogram_bin_edges(np.concatenate([positives, negatives]), bins=bins)

    fig, ax = plt.subplots(figsize=(9.5, 3.8), layout="constrained")
    series = (
        (positives, f"matching pairs ({positives.size})", "tab:blue", "stepfilled", 0.45),
        (negatives, f"non-matching pairs ({negatives.size})", "tab:orange", "stepfilled", 0.45),
        (hardest, f"hardest negative per caption ({hardest.size})", "black", "step", 1.0),
    )
    for values, label, color, histtype, alpha in series:
        median = float(np.median(values))
        ax.hist(values, bins=edges, density=True, histtype=histtype, color=color, alpha=alpha,
                label=f"{label}, median {median:.2f}", linewidth=1.6 if histtype == "step" else 0.0)
        ax.axvline(median, color=color, linestyle="--", linewidth=1.2)
    # Beside the plot, not over it: the legend, then how often the hardest negative wins.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="dashed lines: medians",
              title_fontsize=8)
    beaten = float((hardest >= positives).mean() * 100)
    ax.text(1.03, 0.45, f"hardest negative ≥ match\nfor {beaten:.1f} % of captions\n(= 100 − text→image R@1)",
            transform=ax.transAxes, ha="left", va="top", fontsize=8)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    return fig


_RANK_BINS = ((1, 1, "1"), (2, 2, "2"), (3, 5, "3–5"), (6, 10, "6–10"), (11, 20, "11–20"), (21, 50, "21–50"),
              (51, 100, "51–100"), (101, np.inf, ">100"))


def plot_rank_histogram(i2t_ranks, t2i_ranks, title: str = "Where the right answer lands"):
    """Two panels: (a) how often the right answer lands at rank 1, 2, 3–5, ... and (b) R@K against K.

    The ranks are 0-based, one per query, as returned by
    :func:`siamese_utils.core.metrics.retrieval_ranks`. Panel (a) groups the
    1-based ranks into bins (bins past the largest rank are dropped), as
    percentages of each direction's queries; panel (b) draws R@K, the percent
    of queries whose right answer is in the top K, on a log K axis, with R@1,
    R@5 and R@10 marked. Returns the figure.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    directions = []
    for name, ranks, label, color in (("i2t_ranks", i2t_ranks, "image → text", "tab:blue"),
                                      ("t2i_ranks", t2i_ranks, "text → image", "tab:orange")):
        ranks = _as_numpy(ranks, name, dtype=np.int64)
        if ranks.ndim != 1 or ranks.size == 0:
            raise ValueError(f"{name} has shape {ranks.shape}; pass a 1-D array with one 0-based rank per query")
        if ranks.min() < 0:
            raise ValueError(f"{name} holds negative ranks; ranks count from 0 (the right answer first)")
        directions.append((ranks, f"{label} ({ranks.size} queries)", color))
    largest = max(int(r.max()) for r, _, _ in directions) + 1  # 1-based
    used = [b for b in _RANK_BINS if b[0] <= largest]

    fig, (ax_bins, ax_rec) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    x = np.arange(len(used))
    bar_w = 0.4
    for d, (ranks, label, color) in enumerate(directions):
        shares = [float(((ranks + 1 >= lo) & (ranks + 1 <= hi)).mean() * 100) for lo, hi, _ in used]
        bars = ax_bins.bar(x + (d - 0.5) * bar_w, shares, bar_w, color=color, label=label)
        ax_bins.bar_label(bars, [f"{v:.0f}" if v >= 9.5 else f"{v:.1f}" if v > 0 else "" for v in shares],
                          fontsize=7, padding=1)
    ax_bins.set_xticks(x, [name for _, _, name in used])
    ax_bins.set_xlabel("rank of the right answer (1 = top)")
    ax_bins.set_ylabel("queries (%)")
    ax_bins.set_ylim(0, 108)
    ax_bins.set_title("(a) rank of the right answer", fontsize=10)
    ax_bins.legend(fontsize=8, loc="upper right")

    k_max = max(largest, 10)
    ks = np.arange(1, k_max + 1)
    recalls = []
    for ranks, label, color in directions:
        counts = np.bincount(ranks, minlength=k_max)[:k_max]
        recalls.append(np.cumsum(counts) / ranks.size * 100)  # recall[K - 1] = share of ranks < K
        ax_rec.plot(ks, recalls[-1], color=color, label=label, marker="o", markersize=5, markevery=[0, 4, 9])
    for k in (1, 5, 10):  # both values stacked, highest first, under the curves (or over them when they are low)
        values = sorted(((r[k - 1], color) for r, (_, _, color) in zip(recalls, directions)), reverse=True)
        below = values[-1][0] > 25
        anchor = values[-1][0] if below else values[0][0]
        for place, (value, color) in enumerate(values if below else values[::-1]):
            ax_rec.annotate(f"{value:.1f}", (k, anchor), xytext=(3, -(13 + 10 * place) if below else 6 + 10 * place),
                            textcoords="offset points", ha="left", fontsize=7.5, color=color,
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.4})
    ax_rec.set_xscale("log")
    ax_rec.set_xlim(0.9, k_max * 1.1)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if t <= k_max]
    ax_rec.set_xticks(ticks)
    ax_rec.xaxis.set_major_formatter(ScalarFormatter())
    ax_rec.xaxis.set_minor_formatter(NullFormatter())
    ax_rec.set_ylim(0, 103)
    ax_rec.grid(True, which="major", alpha=0.3)
    ax_rec.set_xlabel("K (log scale)")
    ax_rec.set_ylabel("R@K (% of queries)")
    ax_rec.set_title("(b) recall at K", fontsize=10)
    ax_rec.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def pca_2d(x) -> tuple[np.ndarray, np.ndarray]:
    """``(coords, explained)``: the rows of ``x`` projected on its first two principal components.

    ``x`` is ``(n, d)`` (an array or a tensor); it is centred and decomposed
    with numpy's SVD in float64. Each axis's sign is fixed so that the largest
    entry (in absolute value) of its direction is positive, so the result does
    not depend on the row order. ``coords`` is ``(n, 2)``, ``explained`` the
    share of the variance along each of the two axes.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    x = _as_numpy(x, "x", dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (rows x dimensions) matrix, got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"x has shape {x.shape}; PCA in 2-D needs at least 2 rows and 2 columns")
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2].copy()
    axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])[:, None]
    total = float((singular**2).sum())
    explained = singular[:2] ** 2 / total if total > 0 else np.zeros(2)
    return centred @ axes.T, explained


def plot_embedding_map(
    img_emb,
    txt_emb,
    txt_to_img: Sequence[int],
    images: Sequence | None = None,
    title: str = "Images and captions in the shared space (PCA)",
    thumbnail: float = 0.06,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """Images and captions as points in 2-D: the first two principal components of their joint embeddings.

    The PCA (:func:`pca_2d`) is fitted on image and caption embeddings
    together, so both live in the same plane. Captions are small dots, images
    larger squares (or, with ``images``, thumbnails ``thumbnail`` of the
    figure's width wide); a thin grey line joins each caption to its image.
    With at most 20 images each image and its captions share a colour;
    otherwise images are blue and captions orange. Returns the figure.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    img = _as_numpy(img_emb, "img_emb")
    txt = _as_numpy(txt_emb, "txt_emb")
    for name, e in (("img_emb", img), ("txt_emb", txt)):
        if e.ndim != 2 or e.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (count, dim) matrix of embeddings, got shape {e.shape}")
    n, m = img.shape[0], txt.shape[0]
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"img_emb has {img.shape[1]} dimensions and txt_emb {txt.shape[1]}; they must agree")
    owner = check_txt_to_img(txt_to_img, n, m, every_image=False, captions="rows of txt_emb",
                             images="rows of img_emb").numpy()
    if images is not None and len(images) != n:
        raise ValueError(f"img_emb has {n} rows but {len(images)} images were given; pass one image per row")

    coords, explained = pca_2d(np.concatenate([img, txt]))
    img_xy, txt_xy = coords[:n], coords[n:]
    if n <= 20:
        palette = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
        img_colors = [palette[i] for i in range(n)]
        txt_colors = [palette[i] for i in owner]
        img_label, txt_label = "grey", "grey"  # the legend shows the marker shapes; colours mean "which image"
    else:
        img_colors, txt_colors = "tab:blue", "tab:orange"
        img_label, txt_label = "tab:blue", "tab:orange"

    fig_w = 7.5
    fig, ax = plt.subplots(figsize=(fig_w, 6.5), layout="constrained")
    ax.add_collection(LineCollection(np.stack([txt_xy, img_xy[owner]], axis=1), colors="grey", alpha=0.35,
                                     linewidths=0.6, zorder=1))
    ax.scatter(txt_xy[:, 0], txt_xy[:, 1], s=14, c=txt_colors, alpha=0.85, linewidths=0, zorder=2,
               label="captions")
    ax.scatter(img_xy[:, 0], img_xy[:, 1], s=70, c=img_colors, marker="s", edgecolors="black", linewidths=0.8,
               zorder=3, label="images")
    if images is not None:
        for i, image in enumerate(images):
            arr = _as_display_array(image, mean, std)
            step = max(1, arr.shape[1] // 64)  # a thumbnail needs no more than ~64 pixels across
            arr = np.clip(arr[::step, ::step], 0.0, 1.0)
            zoom = thumbnail * fig_w * 72 / arr.shape[1]  # OffsetImage sizes are in points
            edge = img_colors[i] if isinstance(img_colors, list) else img_colors
            ax.add_artist(AnnotationBbox(OffsetImage(arr, zoom=zoom), tuple(img_xy[i]), frameon=True, pad=0.15,
                                         bboxprops={"edgecolor": edge, "linewidth": 1.5}, zorder=4))
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.08)
    ax.set_xlabel(f"PC 1 ({explained[0] * 100:.1f} % of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1] * 100:.1f} % of variance)")
    handles = [
        Line2D([], [], marker="s", linestyle="", markersize=8, markerfacecolor=img_label, markeredgecolor="black",
               label=f"images ({n})"),
        Line2D([], [], marker="o", linestyle="", markersize=5, markerfacecolor=txt_label, markeredgewidth=0,
               label=f"captions ({m})"),
        Line2D([], [], color="grey", alpha=0.6, linewidth=0.8, label="caption — its image"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best",
              title="one colour per image" if isinstance(img_colors, list) else None, title_fontsize=8)
    ax.set_title(title)
    return fig


def plot_word_importance(importance, unseen: Sequence[str] = (), title: str | None = None):
    """One bar per word of a caption: how much its score with an image drops when the word is left out.

    ``importance`` is a :class:`~siamese_utils.chapters.widgets.WordImportance` (or
    anything with ``caption``, ``score`` and a ``words`` table with ``word``
    and ``change`` columns). Red bars (to the right) support the match, blue
    ones speak against it; ``unseen`` words (never in a training caption) are
    hatched. Words read top to bottom in caption order. Returns the figure.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """
    import matplotlib.pyplot as plt

    table = importance.words
    if len(table) == 0:
        raise ValueError("the caption has no words to show; explain a caption with at least one word")
    words = [str(w) for w in table["word"]]
    change = _as_numpy(table["change"], "change")
    y = np.arange(len(words))
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(words) + 1.3), layout="constrained")
    colors = ["tab:red" if c >= 0 else "tab:blue" for c in change]
    bars = ax.barh(y, change, color=colors, alpha=0.8)
    for bar, word in zip(bars, words):
        if word in unseen:
            bar.set_hatch("///")
            bar.set_edgecolor("black")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{w}  (unseen)" if w in unseen else w for w in words])
    ax.invert_yaxis()
    ax.set_xlabel("score − score without the word   (> 0: the word supports the match)")
    wrapped = "\n".join(textwrap.wrap(f"“{importance.caption}”", 70))
    ax.set_title(f"{title or 'Which words the match rests on'}\n{wrapped} · score {importance.score:.3f}",
                 fontsize=10)
    return fig


_FACTOR_COLOURS = {"default": "#4d4d4d", "loss": "#4c72b0", "text tower": "#dd8452", "image tower": "#55a868"}


def plot_grid(results, title: str = "One factor at a time, several seeds"):
    """A comparison grid at a glance: test rsum and training time per variant, every seed shown.

    ``results`` is the frame of :func:`siamese_utils.chapters.comparisons.run_grid` (one row per
    run). Left: each run's rsum as a dot, the mean as a bar, the default's mean
    as a dashed line, so a difference can be judged against the spread of the
    seeds. Right: training time of the fastest seed (log scale). Colours mark the factor varied.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(results["variant"]))
    if not order:
        raise ValueError("no results to plot: run the grid first")
    groups = {name: results[results["variant"] == name] for name in order}
    y = np.arange(len(order))[::-1]
    fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(11, 0.42 * len(order) + 1.6), layout="constrained",
                                      sharey=True, gridspec_kw={"width_ratios": [3, 1.2]})
    for yi, name in zip(y, order):
        g = groups[name]
        colour = _FACTOR_COLOURS.get(g["factor"].iloc[0], "#8172b3")
        ax.barh(yi, g["rsum"].mean(), color=colour, alpha=0.35, height=0.7)
        ax.plot(g["rsum"], np.full(len(g), yi), "o", color=colour, markersize=4)
        ax_time.barh(yi, g["seconds"].min(), color=colour, alpha=0.6, height=0.7)
    if "default" in groups:
        ax.axvline(groups["default"]["rsum"].mean(), color="#4d4d4d", linestyle="--", linewidth=1,
                   label="default (mean)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, order)
    ax.set(xlabel="test rsum (sum of six recalls, max 600)", xlim=(0, max(float(results["rsum"].max()) * 1.08, 1.0)),
           title="retrieval quality: dots are seeds, bars their mean")
    ax_time.set_xscale("log")
    ax_time.set(xlabel="training time, fastest run (s, log scale)", title="cost")
    fig.suptitle(title)
    return fig


def plot_cell_maps(images: Sequence, maps: Sequence[Sequence], captions: Sequence[Sequence[str]],
                   title: str = "Where the image tower looks", width: float = 2.6, wrap: int = 26,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """One row per image: the image, then one map per caption (titled with the caption), drawn over the image (red:
    the cells that raise the caption's score, blue: those that lower it).

    ``maps[r][c]``: a ``(g, g)`` score grid for image ``r`` and caption ``captions[r][c]`` (for example
    ``composition.cell_similarity``); one colour scale for the whole figure, symmetric about zero.

    Explained in ``notebooks/05_composition.ipynb``.
    """
    import matplotlib.pyplot as plt

    if len(images) != len(maps) or len(maps) != len(captions):
        raise ValueError(f"{len(images)} images, {len(maps)} rows of maps and {len(captions)} rows of captions: "
                         "give one row of each per image")
    arrays = [[np.asarray(torch.as_tensor(m).detach().cpu(), dtype=float) for m in row] for row in maps]
    if any(len(row) != len(caps) for row, caps in zip(arrays, captions)):
        raise ValueError("each row needs one map per caption")
    limit = max(float(np.abs(m).max()) for row in arrays for m in row) or 1.0
    cols = 1 + max(len(row) for row in arrays)
    fig, axes = plt.subplots(len(images), cols, figsize=(width * cols, width * len(images) + 0.6), squeeze=False)
    shown = None
    for r, (image, row, caps) in enumerate(zip(images, arrays, captions)):
        picture = _as_display_array(image, mean, std)
        axes[r][0].imshow(picture)
        axes[r][0].set_title("image", fontsize=9)
        for c in range(1, cols):
            ax = axes[r][c]
            if c - 1 >= len(row):
                ax.axis("off")
                continue
            size = picture.shape[0]
            ax.imshow(picture, alpha=0.55)
            shown = ax.imshow(row[c - 1], cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6,
                              extent=(0, size, size, 0), interpolation="nearest")
            ax.set_title(textwrap.fill(caps[c - 1], wrap), fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.6, label="share of the score")
    return fig
