"""Retrieval metrics: Recall@K, median and mean rank both ways, as VSE++ and the Flickr30k and COCO papers do.

- image -> text: an image's rank is that of the best-ranked of its own captions among all captions;
- text -> image: a caption's rank is that of its image among all images;
- ranks count from 0; R@K (percent) is the share of ranks below K; ``rsum`` adds the six recalls;
  ``medr = floor(median(rank)) + 1`` and ``meanr = mean(rank) + 1``.

Ties: a candidate that scores exactly as high as the ground truth counts as ranked above it (the pessimistic rule).
Templated captions repeat, so equal strings embed to equal vectors and tie exactly; handing such ties to the ground
truth would inflate image -> text recall. Without ties every rule gives VSE++'s numbers.

Introduced in ``notebooks/03_contrastive_training.ipynb``; every function here is built from scratch, checked and timed
in ``notebooks/04_evaluation.ipynb``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["METRIC_KEYS", "retrieval_ranks", "ranks_from_scores", "retrieval_metrics", "metrics_from_scores",
           "retrieval_metrics_per_fold", "fold_indices", "check_txt_to_img", "chance_metrics", "metrics_table",
           "format_metrics"]

_CHUNK_SCORES = 1 << 22  # scores held at once: 4 Mi float32 = 16 MB

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
               "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr", "rsum")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a (count, dim) matrix of embeddings, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


def check_txt_to_img(txt_to_img: Any, num_images: int, num_captions: int, *, every_image: bool = True,
                     captions: str = "captions", images: str = "images") -> torch.Tensor:
    """``txt_to_img`` (the image index of each caption) as a long tensor, checked against the sizes it indexes.

    ``every_image``: every image needs a caption. ``captions``, ``images``: what the sizes were read from, for messages.
    """
    owner = torch.as_tensor(np.asarray(txt_to_img), dtype=torch.long)
    if owner.shape != (num_captions,):
        raise ValueError(f"txt_to_img has shape {tuple(owner.shape)} for {num_captions} {captions}; it needs one "
                         f"image index per caption, ({num_captions},)")
    if num_captions and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError(f"txt_to_img holds image indices outside [0, {num_images}) for {num_images} {images}")
    if every_image:
        counts = torch.bincount(owner, minlength=num_images)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
            raise ValueError(f"images {missing} have no caption in txt_to_img; every image needs at least one")
    return owner


def _count_ranks(i2t_block: Callable[[int, int], torch.Tensor], t2i_block: Callable[[int, int], torch.Tensor],
                 owner: torch.Tensor, n: int, m: int, chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks from score blocks: ``i2t_block(a, b)`` scores images a..b-1, ``t2i_block(a, b)`` captions a..b-1."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    # Image -> text. Captions grouped by image, so a chunk of images owns one contiguous run of them.
    counts = torch.bincount(owner, minlength=n)
    by_image = torch.argsort(owner, stable=True)
    first = torch.zeros(n + 1, dtype=torch.long)
    first[1:] = counts.cumsum(0)
    rows_per_chunk = chunk_size or max(1, _CHUNK_SCORES // max(m, 1))
    i2t = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        sim = i2t_block(start, stop)  # (chunk, M)
        own = by_image[first[start]:first[stop]]  # the captions of these images
        row = owner[own] - start
        own_score = sim[row, own]
        best = torch.full((stop - start,), float("-inf")).scatter_reduce_(0, row, own_score, "amax")
        # Candidates scoring >= the best own caption, minus the image's own captions among them (ties included).
        own_at_best = torch.zeros(stop - start, dtype=torch.int32).scatter_add_(
            0, row, (own_score >= best[row]).to(torch.int32))
        i2t[start:stop] = (sim >= best[:, None]).sum(dim=1, dtype=torch.int32) - own_at_best

    # Text -> image: the images scoring >= the caption's own image, minus that image itself.
    rows_per_chunk = chunk_size or max(1, _CHUNK_SCORES // max(n, 1))
    t2i = torch.empty(m, dtype=torch.int64)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        sim = t2i_block(start, stop)  # (chunk, N)
        own_score = sim[torch.arange(stop - start), owner[start:stop]]
        t2i[start:stop] = (sim >= own_score[:, None]).sum(dim=1, dtype=torch.int32) - 1
    return i2t.numpy(), t2i.numpy()


@torch.no_grad()
def retrieval_ranks(img_emb: Any, txt_emb: Any, txt_to_img: Any,
                    chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(i2t_ranks, t2i_ranks)``: the 0-based rank of the ground truth for every image and every caption.

    ``img_emb`` is ``(N, D)``, ``txt_emb`` ``(M, D)``, ``txt_to_img`` the image index of each caption. Scores are dot
    products in float32, as in every published evaluation. ``chunk_size`` images (captions) at a time are scored against
    all captions (images); the default keeps one block at about 4 million scores (16 MB), whatever the gallery.
    """
    img, txt = _as_tensor(img_emb, "img_emb"), _as_tensor(txt_emb, "txt_emb")
    n, m = img.shape[0], txt.shape[0]
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"img_emb has {img.shape[1]} dimensions and txt_emb {txt.shape[1]}; they must agree")
    owner = check_txt_to_img(txt_to_img, n, m)
    return _count_ranks(lambda a, b: img[a:b] @ txt.T, lambda a, b: txt[a:b] @ img.T, owner, n, m, chunk_size)


@torch.no_grad()
def ranks_from_scores(sim: Any, txt_to_img: Any, chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`retrieval_ranks` from an ``(N, M)`` score matrix: for models whose scores are not dot products."""
    scores = _as_tensor(sim, "sim")
    n, m = scores.shape
    owner = check_txt_to_img(txt_to_img, n, m)
    return _count_ranks(lambda a, b: scores[a:b], lambda a, b: scores[:, a:b].T, owner, n, m, chunk_size)


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    # 100 * hits / n, not 100 * mean(...): the former is exact for counts (52.4, not 52.400000000000006)
    out = {f"{prefix}_r{k}": 100.0 * int(np.count_nonzero(ranks < k)) / len(ranks) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def _metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    metrics = {**_summarise(i2t, "i2t"), **_summarise(t2i, "t2i")}
    metrics["rsum"] = round(sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)), 9)
    return {key: metrics[key] for key in METRIC_KEYS}


def fold_indices(num_images: int, txt_to_img: Any, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(images, captions)`` index arrays of each of ``folds`` equal, consecutive folds of the images.

    Fold ``f`` holds images ``f*N/folds`` to ``(f+1)*N/folds - 1`` and all their captions: COCO's "1K" protocol is
    ``folds=5`` on its 5,000 test images (VSE++'s captions ``5000*f`` to ``5000*f + 4999``, with five per image).
    """
    owner = np.asarray(txt_to_img)
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 1:
        raise ValueError(f"folds must be a positive integer, got {folds!r}")
    if num_images % folds:
        raise ValueError(f"{num_images} images cannot be cut into {folds} equal folds; COCO's 1K protocol is "
                         "folds=5 on its 5,000 test images")
    size = num_images // folds
    return [(np.arange(f * size, (f + 1) * size), np.flatnonzero((owner >= f * size) & (owner < (f + 1) * size)))
            for f in range(folds)]


def retrieval_metrics(img_emb: Any, txt_emb: Any, txt_to_img: Any, folds: int = 1) -> dict[str, float]:
    """The standard retrieval metrics as a dict with the keys of :data:`METRIC_KEYS`; R@K in percent.

    Embeddings may be torch tensors or NumPy arrays; ``txt_to_img`` gives the image of each caption. ``folds=1`` ranks
    against the whole set (Flickr30k's 1K test, COCO "5K"); ``folds=5`` on COCO's 5,000 test images is COCO "1K": each
    metric is computed within each fold of 1,000 images (:func:`fold_indices`), then averaged over the folds.
    """
    if folds == 1:
        return _metrics_from_ranks(*retrieval_ranks(img_emb, txt_emb, txt_to_img))
    per_fold = retrieval_metrics_per_fold(img_emb, txt_emb, txt_to_img, folds)
    mean = {key: float(np.mean([m[key] for m in per_fold])) for key in METRIC_KEYS}
    mean["rsum"] = round(sum(mean[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)), 9)
    return mean


def retrieval_metrics_per_fold(img_emb: Any, txt_emb: Any, txt_to_img: Any, folds: int) -> list[dict[str, float]]:
    """:func:`retrieval_metrics` of each fold on its own (their mean is ``retrieval_metrics(..., folds=folds)``)."""
    img, txt = _as_tensor(img_emb, "img_emb"), _as_tensor(txt_emb, "txt_emb")
    owner = np.asarray(txt_to_img)
    if owner.shape != (txt.shape[0],):
        raise ValueError(f"txt_to_img has shape {owner.shape}; it needs one image index per caption, ({txt.shape[0]},)")
    return [_metrics_from_ranks(*retrieval_ranks(img[images], txt[captions], owner[captions] - images[0]))
            for images, captions in fold_indices(img.shape[0], owner, folds)]


def metrics_from_scores(sim: Any, txt_to_img: Any) -> dict[str, float]:
    """:func:`retrieval_metrics` from an ``(N, M)`` score matrix instead of embeddings (:func:`ranks_from_scores`)."""
    return _metrics_from_ranks(*ranks_from_scores(sim, txt_to_img))


def chance_metrics(txt_to_img: Any, num_images: int | None = None) -> dict[str, float]:
    """What random scores achieve on average: the exact expected metrics of a model that ranks at random.

    Text -> image: a caption's image is equally likely at every rank, so R@K = K / N and the mean rank (N + 1) / 2.
    Image -> text: an image with ``c`` of the ``M`` captions misses the top K with probability C(M - c, K) / C(M, K);
    its best caption's expected 0-based rank is (M - c) / (c + 1). ``medr``: the median of the pooled rank distribution.
    """
    owner = np.asarray(txt_to_img, dtype=np.int64)
    n = int(num_images) if num_images is not None else int(owner.max()) + 1
    m = len(owner)
    counts = np.bincount(owner, minlength=n)
    if (counts == 0).any():
        raise ValueError(f"images {np.flatnonzero(counts == 0)[:5].tolist()} have no caption in txt_to_img")
    # P(best own caption's 0-based rank >= r) = C(M - c, r) / C(M, r), for each image, r = 0 .. M - c.
    r = np.arange(m + 1)
    miss = np.ones((n, m + 1))
    for c in np.unique(counts):
        factors = np.clip((m - c - r[:-1]) / (m - r[:-1]), 0.0, None)
        miss[counts == c, 1:] = np.cumprod(factors)
    at_least = miss.mean(axis=0)  # pooled over the images
    out = {f"i2t_r{k}": 100.0 * (1.0 - at_least[min(k, m)]) for k in (1, 5, 10)}
    out["i2t_medr"] = float(np.argmax(1.0 - at_least[1:] >= 0.5) + 1)
    out["i2t_meanr"] = float(np.mean((m - counts) / (counts + 1)) + 1)
    out.update({f"t2i_r{k}": 100.0 * min(k, n) / n for k in (1, 5, 10)})
    out["t2i_medr"] = float(np.ceil(n / 2))
    out["t2i_meanr"] = (n + 1) / 2
    out["rsum"] = round(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)), 9)
    return {key: out[key] for key in METRIC_KEYS}


def metrics_table(results: dict[str, dict[str, float]]) -> "pd.DataFrame":
    """A table of named metric dicts: one row per name, two-level columns (direction, metric), rsum last."""
    import pandas as pd
    labels = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "medr", "meanr": "meanr"}
    directions = {"i2t": "image → text", "t2i": "text → image"}
    columns = [(directions[key[:3]], labels[key[4:]]) if key != "rsum" else ("", "rsum") for key in METRIC_KEYS]
    for name, metrics in results.items():
        missing = [key for key in METRIC_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"results[{name!r}] lacks {missing}; pass dicts from retrieval_metrics")
    rows = [[float(metrics[key]) for key in METRIC_KEYS] for metrics in results.values()]
    return pd.DataFrame(rows, index=list(results), columns=pd.MultiIndex.from_tuples(columns))


def format_metrics(metrics: dict[str, float], digits: int = 1) -> str:
    """One line: ``i2t R@1/5/10 ... | t2i R@1/5/10 ... | rsum ...``, rounded to ``digits``."""

    def r(d: str) -> str:
        return "/".join(f"{metrics[f'{d}_r{k}']:.{digits}f}" for k in (1, 5, 10))

    return f"i2t R@1/5/10 {r('i2t')} | t2i R@1/5/10 {r('t2i')} | rsum {metrics['rsum']:.{digits}f}"
