"""Retrieval metrics: Recall@K, median and mean rank in both directions, as
VSE++ and the papers reporting Flickr30k and COCO compute them.

- image -> text: an image's rank is that of the best-ranked of its own
  captions among all captions;
- text -> image: a caption's rank is that of its image among all images;
- ranks count from 0; R@K (percent) is the share of ranks below K;
  ``medr = floor(median(rank)) + 1`` and ``meanr = mean(rank) + 1``;
  ``rsum`` adds the six recalls.

Ties: a candidate that scores exactly as high as the ground truth counts as
ranked above it (the pessimistic rule). Templated captions repeat, so equal
strings embed to equal vectors and tie exactly; handing such ties to the
ground truth would inflate image -> text recall. Without ties every rule gives
VSE++'s numbers.

Explained in ``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["METRIC_KEYS", "retrieval_ranks", "retrieval_metrics", "format_metrics"]

METRIC_KEYS = (
    "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
    "rsum",
)  # fmt: skip


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a (count, dim) matrix of embeddings, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


@torch.no_grad()
def retrieval_ranks(
    img_emb: Any, txt_emb: Any, txt_to_img: Any, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``(i2t_ranks, t2i_ranks)``: the 0-based rank of the ground truth for every image and every caption.

    ``img_emb`` is ``(N, D)``, ``txt_emb`` ``(M, D)``, ``txt_to_img`` the image
    index of each caption (``M`` integers in ``[0, N)``; every image needs at
    least one caption). Scores are dot products (cosine similarity for unit
    vectors), computed ``chunk_size`` images at a time.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    img = _as_tensor(img_emb, "img_emb")
    txt = _as_tensor(txt_emb, "txt_emb")
    owner = torch.as_tensor(np.asarray(txt_to_img), dtype=torch.long)
    n, m = img.shape[0], txt.shape[0]
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"img_emb has {img.shape[1]} dimensions and txt_emb {txt.shape[1]}; they must agree")
    if owner.shape != (m,):
        raise ValueError(f"txt_to_img has shape {tuple(owner.shape)}; it needs one image index per caption, ({m},)")
    if m and (owner.min() < 0 or owner.max() >= n):
        raise ValueError(f"txt_to_img holds image indices outside [0, {n}) for {n} images")
    counts = torch.bincount(owner, minlength=n)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"images {missing} have no caption in txt_to_img; every image needs at least one")

    i2t = torch.empty(n, dtype=torch.long)
    t2i_gt = torch.empty(m)  # score of each caption's own image
    t2i = torch.zeros(m, dtype=torch.long)
    for start in range(0, n, chunk_size):
        sim = img[start:start + chunk_size] @ txt.T  # (chunk, M)
        rows = torch.arange(start, start + sim.shape[0])
        own = owner[None, :] == rows[:, None]  # (chunk, M): caption j belongs to image i
        best_own = sim.masked_fill(~own, float("-inf")).max(dim=1).values
        i2t[rows] = ((sim >= best_own[:, None]) & ~own).sum(dim=1)
        in_chunk = (owner >= start) & (owner < start + sim.shape[0])
        t2i_gt[in_chunk] = sim[owner[in_chunk] - start, torch.nonzero(in_chunk).flatten()]
    for start in range(0, n, chunk_size):
        sim = img[start:start + chunk_size] @ txt.T
        t2i += (sim >= t2i_gt[None, :]).sum(dim=0)
    t2i -= 1  # the caption's own image is among those scoring >= its own score
    return i2t.numpy(), t2i.numpy()


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    # 100 * hits / n, not 100 * mean(...): the former is exact for counts (52.4, not 52.400000000000006)
    out = {f"{prefix}_r{k}": 100.0 * int(np.count_nonzero(ranks < k)) / len(ranks) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(img_emb: Any, txt_emb: Any, txt_to_img: Any) -> dict[str, float]:
    """The standard retrieval metrics as a dict with the keys of :data:`METRIC_KEYS`.

    Embeddings may be torch tensors or NumPy arrays; ``txt_to_img`` gives the
    image of each caption (five per image on Flickr30k, COCO and the tiny set,
    but any number works). R@K are percentages.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    i2t, t2i = retrieval_ranks(img_emb, txt_emb, txt_to_img)
    metrics = {**_summarise(i2t, "i2t"), **_summarise(t2i, "t2i")}
    metrics["rsum"] = round(sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)), 9)
    return {key: metrics[key] for key in METRIC_KEYS}


def format_metrics(metrics: dict[str, float], digits: int = 1) -> str:
    """One line: ``i2t R@1/5/10 ... | t2i R@1/5/10 ... | rsum ...``, rounded to ``digits``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    def r(d: str) -> str:
        return "/".join(f"{metrics[f'{d}_r{k}']:.{digits}f}" for k in (1, 5, 10))

    return f"i2t R@1/5/10 {r('i2t')} | t2i R@1/5/10 {r('t2i')} | rsum {metrics['rsum']:.{digits}f}"
