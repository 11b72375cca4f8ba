"""Chapter 04's failure analysis of the tiny set: what each caption asks, how it ranks, what went wrong.

The tiny set's generator stores each image's scene (its objects, their colours,
shapes, sizes and places) and, for two-object scenes, its minimal-pair
``partner``; this module reads them to sort every test caption by the question
it asks and to name what the top-ranked wrong image gets wrong.

Explained in ``notebooks/04_evaluation.ipynb``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ASKS", "what_differs", "failure_analysis"]

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
