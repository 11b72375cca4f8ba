"""Chapter 04's failure analysis of the tiny set: what each caption asks, how it ranks, what went wrong.

The tiny set's generator stores each image's scene (its objects, their colours,
shapes, sizes and places) and, for two-object scenes, its minimal-pair
``partner``; this module reads them to sort every test caption by the question
it asks and to name what the top-ranked wrong image gets wrong.

It also scores retrieval by meaning rather than by origin. A caption such as
"a yellow circle" is true of several images, but the standard protocol counts
only the image it was written for: :func:`truth_matrix` says which captions are
true of which images (from the meanings stored with the captions),
:func:`semantic_ceiling` what the standard protocol allows a model that can
only judge truth, and :func:`semantic_recall` R@K with every true image (or
caption) counted as a hit.

Explained in ``notebooks/04_evaluation.ipynb``.
"""

from __future__ import annotations

import json
from math import comb
from typing import Any, Sequence

import numpy as np
import torch

from ..datasets import tiny

__all__ = ["ASKS", "what_differs", "failure_analysis", "truth_matrix", "semantic_ceiling", "semantic_recall",
           "compare_rankings"]

ASKS = {"single": "colour, shape, size", "swap_colours": "which colour is which shape",
        "swap_places": "where each shape is"}


def what_differs(scene: dict[str, Any], other: dict[str, Any]) -> str:
    """The first thing, in this order, that tells ``other``'s objects from ``scene``'s.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    a, b = scene["objects"], other["objects"]
    if len(a) != len(b):
        return "number of shapes"
    for attribute in ("colour", "shape", "size"):
        if sorted(o[attribute] for o in a) != sorted(o[attribute] for o in b):
            return attribute
    return "arrangement"  # the same objects, bound or placed differently


def failure_analysis(split, sim: Any) -> "pd.DataFrame":
    """One row per caption of a split of the tiny set: what it asks, how it ranks, and what went wrong.

    ``sim`` is the ``(images, captions)`` similarity matrix of ``split`` (for
    example ``img_emb @ txt_emb.T``); every caption is a text -> image query.
    Columns:

    - ``caption``, ``image`` (its image's position in the split);
    - ``asks``: what telling its image from every other one takes: "colour,
      shape, size" (one shape), "which colour is which shape" (two shapes
      whose minimal-pair partner swaps their colours) or "where each shape is"
      (the partner swaps their places);
    - ``rank``: 1-based rank of its image (ties count against it);
    - ``top``: the best-scoring image (the lowest index among exact ties);
    - ``beats_partner``: whether its image scores strictly above its minimal
      pair, the scene whose captions use the same words (``<NA>`` for one shape);
    - ``wrong``: what the top image gets wrong, "" when it is right: "its
      minimal pair", else the first of "number of shapes", "colour", "shape",
      "size" that differs, else "arrangement" (same objects, elsewhere).

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    import pandas as pd
    import torch

    sim = torch.as_tensor(np.asarray(sim) if not isinstance(sim, torch.Tensor) else sim).detach().cpu().float()
    owner = np.asarray(split.txt_to_img)
    if sim.shape != (len(split), len(owner)):
        raise ValueError(f"sim has shape {tuple(sim.shape)}; for this split it must be (images, captions) = "
                         f"({len(split)}, {len(owner)}): pass img_emb @ txt_emb.T")
    scenes = [record.meta.get("scene") for record in split]
    if any(scene is None for scene in scenes):
        raise ValueError(f"{split.source}: its entries carry no 'scene'; failure_analysis needs the tiny set's "
                         "ground truth (write it with `python -m siamese_utils make-tiny`)")
    position = {record.meta.get("imgid", record.index): i for i, record in enumerate(split)}
    own = sim[torch.as_tensor(owner), torch.arange(len(owner))]
    ranks = ((sim >= own[None, :]).sum(dim=0) - 1).numpy()
    tops = sim.argmax(dim=0).numpy()  # the first maximum: the lowest index among ties
    rows = []
    for j, (caption, i) in enumerate(zip(split.captions, owner)):
        scene, top = scenes[i], int(tops[j])
        partner = position.get(scene.get("partner"), -1) if "partner" in scene else -1
        if ranks[j] == 0:
            wrong = ""
        elif top == partner:
            wrong = "its minimal pair"
        else:
            wrong = what_differs(scene, scenes[top])
        rows.append({"caption": caption, "image": int(i), "asks": ASKS.get(scene["kind"], scene["kind"]),
                     "rank": int(ranks[j]) + 1, "top": top, "partner": partner,
                     "beats_partner": bool(sim[i, j] > sim[partner, j]) if partner >= 0 else pd.NA,
                     "wrong": wrong})
    frame = pd.DataFrame(rows)
    frame["asks"] = pd.Categorical(frame["asks"], categories=list(dict.fromkeys(ASKS.values())))
    frame["beats_partner"] = frame["beats_partner"].astype("boolean")
    return frame


# --------------------------------------------------------------------------- retrieval by meaning


def truth_matrix(split) -> torch.Tensor:
    """``(images, captions)`` bool tensor of a tiny-set split: ``[i, j]`` is whether caption ``j`` is true of image ``i``.

    Judged by ``tiny.is_true_of`` from the meaning stored with each caption and
    each image's scene; a file without them raises ``ValueError``. Every caption
    is true of its own image, and may be of others.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    meanings = tiny.load_meanings(split)
    image_size = tiny.stored_config(split).image_size
    scenes = [record.meta["scene"] for record in split]
    truth = torch.zeros(len(scenes), len(meanings), dtype=torch.bool)
    columns: dict[str, list[int]] = {}  # the same meaning, judged once
    for j, meaning in enumerate(meanings):
        columns.setdefault(json.dumps(meaning, sort_keys=True), []).append(j)
    for same in columns.values():
        column = torch.tensor([tiny.is_true_of(meanings[same[0]], scene, image_size) for scene in scenes])
        truth[:, same] = column[:, None]
    return truth


def _check_truth(truth: Any, txt_to_img: Any | None = None) -> torch.Tensor:
    truth = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth).bool().cpu()
    if truth.ndim != 2:
        raise ValueError(f"truth must be an (images, captions) matrix, got shape {tuple(truth.shape)}")
    if not bool(truth.any(dim=0).all()):
        raise ValueError("truth has captions true of no image; every caption must be true of at least its own")
    if txt_to_img is not None:
        owner = torch.as_tensor(np.asarray(txt_to_img), dtype=torch.long)
        if owner.shape != (truth.shape[1],):
            raise ValueError(f"txt_to_img has shape {tuple(owner.shape)}; it needs one image per caption "
                             f"({truth.shape[1]},)")
        if not bool(truth[owner, torch.arange(len(owner))].all()):
            raise ValueError("truth says some captions are false of their own image; is it the same split?")
    return truth


def semantic_ceiling(truth: Any, txt_to_img: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The standard protocol's R@K (percent) for a model that scores by truth alone; keys like ``t2i_r1``, ``i2t_r1``.

    Such a model scores every image a caption is true of equally, so it cannot
    tell the caption's own image from the others. Text -> image: a caption
    true of ``k`` images finds its own in the top ``K`` with probability
    ``min(1, K / k)`` under random tie-breaking, so R@1 is ``100 * mean(1 / k)``
    over captions. Image -> text: of the ``t`` captions true of an image, ``n``
    are its own, and one of them is in a random top ``K`` of the ``t`` with
    probability ``1 - C(t - n, K) / C(t, K)`` (``n / t`` for R@1). These are
    expected values, not strict bounds: a model may exploit the generator's
    habits (captions of images off the place grid never name a place).

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    owner = torch.as_tensor(np.asarray(txt_to_img), dtype=torch.long)
    truth = _check_truth(truth, owner)
    k = truth.sum(dim=0).double()  # images each caption is true of
    t = truth.sum(dim=1).tolist()  # captions true of each image
    n = torch.bincount(owner, minlength=truth.shape[0]).tolist()  # each image's own captions
    out = {}
    for K in ks:
        hit = [1.0 - comb(ti - ni, K) / comb(ti, K) if K < ti else 1.0 for ti, ni in zip(t, n)]
        out[f"i2t_r{K}"] = 100.0 * float(np.mean(hit))
    for K in ks:
        out[f"t2i_r{K}"] = 100.0 * float(torch.clamp(K / k, max=1.0).mean())
    return out


def semantic_recall(sim: Any, truth: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Multi-positive R@K (percent) both ways, from an ``(images, captions)`` score matrix; keys like ``i2t_r1``.

    Text -> image: a caption hits at ``K`` when an image it is true of is among
    the top ``K``; image -> text: an image hits when a caption true of it is.
    Ties count against the query, as in ``siamese_utils.core.metrics``: the rank
    is the number of wrong candidates scoring at least as high as the best right one.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    ranks = _semantic_ranks(sim, truth)
    return {f"{d}_r{K}": 100.0 * float((ranks[d] < K).double().mean()) for d in ("i2t", "t2i") for K in ks}


def _semantic_ranks(sim: Any, truth: Any) -> dict[str, torch.Tensor]:
    """Per query, the number of wrong candidates scoring at least as high as the best right one."""
    truth = _check_truth(truth)
    sim = torch.as_tensor(np.asarray(sim) if not isinstance(sim, torch.Tensor) else sim).detach().cpu().float()
    if sim.shape != truth.shape:
        raise ValueError(f"sim has shape {tuple(sim.shape)} and truth {tuple(truth.shape)}; both are (images, captions)")
    if not bool(truth.any(dim=1).all()):
        raise ValueError("truth has images no caption is true of; image -> text recall needs one for every image")
    lowest = torch.finfo(sim.dtype).min
    ranks = {}
    for direction, scores, right in (("i2t", sim, truth), ("t2i", sim.T, truth.T)):
        best = torch.where(right, scores, torch.full_like(scores, lowest)).amax(dim=1, keepdim=True)
        ranks[direction] = ((scores >= best) & ~right).sum(dim=1)
    return ranks


def compare_rankings(before: Any, after: Any, txt_to_img: Any, truth: Any = None, samples: int = 2000,
                     seed: int = 0) -> "pd.DataFrame":
    """Two ``(images, captions)`` score matrices of the same split, compared query by query, with 95 % intervals.

    ``before`` and ``after`` are each one matrix, or a pair ``(i2t_sim,
    t2i_sim)`` where the two directions were ranked apart (a reranker's
    :class:`~siamese_utils.chapters.rerank.Reranked` matrices).

    Rows: R@1/5/10 both ways and rsum (the standard protocol, ties against the
    truth), then, with ``truth`` (:func:`truth_matrix`), "semantic" R@1 both
    ways (:func:`semantic_recall`). Columns: ``before``, ``after``, ``change``
    and its 95 % interval ``low``, ``high`` from a paired bootstrap over test
    images: each sample draws images with replacement and, with them, their
    captions, and scores both matrices on the same draw. The interval holds
    the sampling noise of the test set only (one model each, no seeds).

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    import pandas as pd

    from ..core.metrics import ranks_from_scores

    owner = np.asarray(txt_to_img)
    n = int(np.shape(before[0] if isinstance(before, (tuple, list)) else before)[0])

    def hits(sims) -> dict[str, np.ndarray]:  # per image: its i2t hit, and how many of its captions hit t2i
        i2t_sim, t2i_sim = sims if isinstance(sims, (tuple, list)) else (sims, sims)
        i2t, t2i = ranks_from_scores(i2t_sim, owner)[0], ranks_from_scores(t2i_sim, owner)[1]
        out = {}
        for K in (1, 5, 10):
            out[f"image → text R@{K}"] = (i2t < K).astype(float)
            out[f"text → image R@{K}"] = np.bincount(owner, (t2i < K).astype(float), n)
        if truth is not None:
            semantic = {"i2t": _semantic_ranks(i2t_sim, truth)["i2t"], "t2i": _semantic_ranks(t2i_sim, truth)["t2i"]}
            out["semantic image → text R@1"] = (semantic["i2t"].numpy() < 1).astype(float)
            out["semantic text → image R@1"] = np.bincount(owner, (semantic["t2i"].numpy() < 1).astype(float), n)
        return out

    a, b = hits(before), hits(after)
    captions = np.bincount(owner, minlength=n).astype(float)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))  # the same draws for every row
    rows, changes = {}, {}
    for name in a:
        weight = captions if "text → image" in name else np.ones(n)
        value = [100 * hit.sum() / weight.sum() for hit in (a[name], b[name])]
        changes[name] = 100 * (b[name] - a[name])[draws].sum(axis=1) / weight[draws].sum(axis=1)
        rows[name] = value + [value[1] - value[0], *np.percentile(changes[name], [2.5, 97.5])]
    standard = [name for name in a if not name.startswith("semantic")]
    rsum = [sum(rows[name][i] for name in standard) for i in (0, 1)]
    rows["rsum"] = rsum + [rsum[1] - rsum[0],
                           *np.percentile(sum(changes[name] for name in standard), [2.5, 97.5])]
    order = standard + ["rsum"] + [name for name in a if name.startswith("semantic")]
    return pd.DataFrame({name: rows[name] for name in order}, index=["before", "after", "change", "low", "high"]).T
