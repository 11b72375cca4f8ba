"""Composition: a dual encoder that knows which colour is which shape and where each shape is.

A bag of words cannot tell "a red circle left of a blue square" from "a blue
circle left of a red square", and a pooled image feature cannot say where
anything is. The tiny set's minimal pairs ask exactly this. What answers them,
measured one ingredient at a time in the chapter:

- an image tower that keeps *where*: :class:`GridCNN`, a small CNN trained from
  scratch whose 4x4 grid of features is flattened, not pooled, so that the
  projection into the shared space sees every cell in its place
  (``image_tower="grid_cnn"``);
- an order-aware text tower (the GRU);
- batches of whole images, each with all its captions (``batches="images"``:
  an image is encoded once for its five captions);
- hard negatives made by swapping colour and relation words (NegCLIP), never
  one that is true of the image (``hard_negatives=True``);
- the caption-aware flip (``flip="swap"``).

Putting each scene's minimal-pair partner in the same batch
(``batches="partners"``) was tried as well; the chapter measures it.

:data:`COMPOSITION_MODEL` and :data:`COMPOSITION_TRAIN` are the recipe that
``python -m siamese_utils train`` uses on the tiny set; the locked-image model of
chapter 03 (``core.train.DEFAULT_MODEL``) stays the fast comparison.

Explained in ``notebooks/05_composition.ipynb``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.data import CaptionedImages
from ..core.models import ImageTower, ModelConfig, Tower, register_tower
from ..core.text import match_case
from ..core.train import BATCHES, NEGATIVE_MAKERS, TrainConfig
from ..datasets import tiny

__all__ = ["swapped_captions", "register_judge", "truth_judge", "hard_negatives", "partners", "GridCNN", "COMPOSITION_MODEL",
           "COMPOSITION_TRAIN", "LADDER", "ladder", "compared_with", "bootstrap_beats", "beats_against", "format_beats",
           "beats_partner", "cell_similarity"]


# --------------------------------------------------------------------------- swapped-word hard negatives

# Colour words and relation words that name an order: what composition-aware negatives swap (NegCLIP).
COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "brown", "pink", "grey", "gray")
_COLOUR = re.compile(r"\b(" + "|".join(COLOUR_WORDS) + r")\b", re.IGNORECASE)
_OPPOSITES = ({"left": "right", "right": "left"},  # one table per axis: each gives its own negative
              {"above": "below", "below": "above", "over": "under", "under": "over", "on top of": "beneath",
               "beneath": "on top of", "top": "bottom", "bottom": "top"})
_RELATIONS = tuple(re.compile(r"\b(" + "|".join(sorted(axis, key=len, reverse=True)) + r")\b", re.IGNORECASE)
                   for axis in _OPPOSITES)


def swapped_captions(caption: str) -> list[str]:
    """Hard negatives made from a caption by swapping words (NegCLIP): its first two different colour words
    exchanged; its left/right words reversed; its vertical words reversed ("above" <-> "below", "top" <->
    "bottom", ...).

    Each is the caption's words in another order or with one relation reversed, so a model that reads words without
    their order cannot tell it from the caption. It is usually false of the caption's image, not always (a caption may
    say the same thing both ways): ``train.fit`` drops those a dataset's truth judge (:func:`..data.register_judge`)
    finds true.
    """
    out = []
    colours = list(_COLOUR.finditer(caption))
    pair = next(((a, b) for k, a in enumerate(colours) for b in colours[k + 1:]
                 if a.group(1).lower() != b.group(1).lower()), None)
    if pair is not None:
        a, b = pair
        out.append(caption[:a.start()] + match_case(b.group(1).lower(), a.group(1)) + caption[a.end():b.start()]
                   + match_case(a.group(1).lower(), b.group(1)) + caption[b.end():])
    for axis, pattern in zip(_OPPOSITES, _RELATIONS):
        if pattern.search(caption):
            out.append(pattern.sub(lambda m, axis=axis: match_case(axis[m.group(1).lower()], m.group(1)), caption))
    return out



# A dataset that knows what its captions mean can say whether a caption is true of an image. The tiny set's judge
# (``datasets.tiny.judge``) is always asked; readers registered here may answer for other data.
_JUDGES: list[Callable[[CaptionedImages], Callable[[str, int], bool] | None]] = [tiny.judge]


def register_judge(reader: Callable[[CaptionedImages], Callable[[str, int], bool] | None]) -> None:
    """Add a reader of truth judges: ``reader(split)`` returns ``judge(caption, image_position) -> bool``, or None."""
    if reader not in _JUDGES:
        _JUDGES.append(reader)


def truth_judge(data: CaptionedImages) -> Callable[[str, int], bool] | None:
    """The first judge that can tell, for ``data``, whether a caption is true of an image; None if none can."""
    return next((judge for judge in (reader(data) for reader in _JUDGES) if judge is not None), None)


def hard_negatives(split: CaptionedImages) -> list[list[str]]:
    """Per caption, its :func:`swapped_captions` that are not true of its image: what ``hard_negatives=True`` adds.

    Which are true, :func:`truth_judge` says (on the tiny set, from its stored meanings); without a judge, only
    swaps equal to one of the image's own captions are dropped.
    """
    judge, own = truth_judge(split), [set(r.captions) for r in split]
    return [[n for n in swapped_captions(c) if n not in own[i] and not (judge and judge(n, i))]
            for c, i in zip(split.captions, split.txt_to_img.tolist())]


NEGATIVE_MAKERS.append(hard_negatives)


def partners(data: CaptionedImages) -> list[list[int]]:
    """The images of ``data`` in units for ``batches="partners"``: each beside its minimal-pair partner.

    The partner is the ``imgid`` named by an entry's ``partner`` field, or by its ``scene``'s (the tiny set's), when
    it is in ``data``; an image without one is a unit alone.
    """
    position = {r.meta.get("imgid", r.index): i for i, r in enumerate(data)}
    named = [position.get(r.meta.get("partner", (r.meta.get("scene") or {}).get("partner")), -1) for r in data]
    units, placed = [], set()
    for i, p in enumerate(named):
        if i not in placed:
            units.append([i] + ([p] if p not in (-1, i) and p not in placed else []))
            placed.update(units[-1])
    return units


BATCHES["partners"] = partners


# --------------------------------------------------------------------------- the grid tower
def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class GridCNN(ImageTower):
    """A small CNN from scratch that keeps a grid: 64-px images -> 64 channels on a 4x4 grid, flattened (1,024).

    A strided 4x4 convolution (32 channels, 32 x 32), then three 3x3 convolution blocks, each followed by 2x2 max
    pooling (64 channels; 16, 8, 4 cells a side). No global pooling: feature ``c * 16 + k`` is channel ``c`` in cell
    ``k`` (row-major), so a linear projection can weigh a red corner differently from a red centre.
    ``cells(images)`` returns the grid before flattening, ``(B, 64, 4, 4)``.
    """

    def __init__(self, width: int = 32, image_size: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), *_block(width, 2 * width), nn.MaxPool2d(2),
                                    *_block(2 * width, 2 * width), nn.MaxPool2d(2),
                                    *_block(2 * width, 2 * width), nn.MaxPool2d(2))
        self.grid, self.channels = image_size // 16, 2 * width
        self.out_dim = self.channels * self.grid * self.grid

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.layers(images)
        if grid.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"GridCNN was built for {16 * self.grid}-px images (a {self.grid}x{self.grid} grid); "
                             f"got {tuple(images.shape[-2:])} px: train with that image_size")
        return grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cells(images).flatten(1)


def _grid_cnn(pretrained: bool) -> GridCNN:
    if pretrained:
        raise ValueError("grid_cnn has no pretrained weights; it is trained from scratch (pretrained=False)")
    return GridCNN()


register_tower("image", "grid_cnn", Tower(_grid_cnn, "a small CNN from scratch, its 4x4 grid flattened, not pooled"))

COMPOSITION_MODEL = ModelConfig(image_tower="grid_cnn", text_tower="gru", word_dim=128, text_hidden=128)
"""The composition model: :class:`GridCNN` (from scratch) and a bidirectional GRU (128-d words, 128 hidden)."""

COMPOSITION_TRAIN = TrainConfig(batches="images", hard_negatives=True, num_epochs=30, batch_size=320)
"""Its recipe: InfoNCE over whole images (64 a step, with their 320 captions) and swapped-word negatives, 30 epochs."""

# The chapter's ladder: from a bag of words to the default, one ingredient added per rung; then what was tried beside
# it, each against the rung it changes. (name, factor, level, model changes, recipe changes, compared with)
LADDER: tuple[tuple[str, str, str, dict[str, Any], dict[str, Any], str], ...] = (
    ("bag of words over a pooled image", "default", "start", {"text_tower": "bow", "image_tower": "grid_cnn_pooled"},
     {"hard_negatives": False}, ""),
    ("+ word order (GRU)", "text tower", "gru", {"image_tower": "grid_cnn_pooled"}, {"hard_negatives": False},
     "bag of words over a pooled image"),
    ("+ a grid that keeps where", "image tower", "grid_cnn", {}, {"hard_negatives": False}, "+ word order (GRU)"),
    ("+ swapped-word negatives", "hard negatives", "on (the default)", {}, {}, "+ a grid that keeps where"),
    ("default with a pooled image", "image tower", "grid_cnn_pooled", {"image_tower": "grid_cnn_pooled"}, {},
     "+ swapped-word negatives"),
    ("default + partners in the batch", "batches", "partners", {}, {"batches": "partners"}, "+ swapped-word negatives"),
    ("default without the flip", "flip", "off", {}, {"flip": "off"}, "+ swapped-word negatives"),
)


class _PooledGridCNN(GridCNN):
    """:class:`GridCNN` with its grid averaged away: the ablation that forgets where things are."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = self.channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cells(images).mean(dim=(2, 3))


register_tower("image", "grid_cnn_pooled", Tower(lambda pretrained: _PooledGridCNN(),
                                                 "GridCNN with its grid averaged (the ablation that forgets where)"))


def ladder(num_epochs: int | None = None, **train: Any) -> list:
    """:data:`LADDER` as :class:`~.comparisons.Variant` objects for :func:`~.comparisons.run_grid`.

    ``num_epochs`` (default: :data:`COMPOSITION_TRAIN`'s) and ``train``: recipe changes for every rung.
    """
    from .comparisons import Variant
    epochs = num_epochs or COMPOSITION_TRAIN.num_epochs
    return [Variant(name, factor, level, replace(COMPOSITION_MODEL, **model),
                    replace(COMPOSITION_TRAIN, **{**train, **recipe, "num_epochs": epochs}))
            for name, factor, level, model, recipe, _ in LADDER]


def compared_with(name: str) -> str:
    """The rung of :data:`LADDER` that the rung ``name`` changes ("" for the first)."""
    return next(before for rung, *_, before in LADDER if rung == name)


def bootstrap_beats(results, names: Sequence[str], question: str, samples: int = 2000, seed: int = 0):
    """Mean beats-partner (percent) of each variant, and of each one minus the one before it, with 95 % intervals.

    ``results``: :func:`~.comparisons.run_grid` rows on a tiny-set test split (their ``beats_outcomes``), every
    variant with the same seeds; ``question``: "colours" or "places". Each bootstrap sample draws seeds and test
    scenes with replacement, the same draw for every variant (so differences are paired), and averages the
    outcomes of the drawn scenes' captions: the interval holds both the seeds' spread and the sampling noise of a
    100-image test set. Returns a frame: ``mean``, ``low``, ``high``, ``vs previous``, ``diff low``, ``diff high``.
    """
    import numpy as np
    import pandas as pd
    kind = {"colours": "swap_colours", "places": "swap_places"}[question]
    outcomes, seeds, layout = {}, None, None
    for name in names:
        rows = results[results["variant"] == name].sort_values("seed")
        if seeds is None:
            seeds = rows["seed"].tolist()
        if rows["seed"].tolist() != seeds or rows.empty:
            raise ValueError(f"variant {name!r} has seeds {rows['seed'].tolist()}, others {seeds}: run the same seeds")
        stored = [json.loads(o) for o in rows["beats_outcomes"]]
        layout = layout or (stored[0]["image"], stored[0]["partner_swaps"])
        if any((o["image"], o["partner_swaps"]) != layout for o in stored):
            raise ValueError(f"variant {name!r} was tested on other captions than the others: use one test split")
        outcomes[name] = np.array([o["beats"] for o in stored], dtype=float)  # (seeds, captions)
    scenes, kinds = np.array(layout[0]), np.array(layout[1])
    keep = kinds == kind
    scene_ids, scene_of = np.unique(scenes[keep], return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(samples) for name in names}
    for b in range(samples):
        chosen_seeds = rng.integers(len(seeds), size=len(seeds))
        weight = np.bincount(rng.integers(len(scene_ids), size=len(scene_ids)), minlength=len(scene_ids))[scene_of]
        for name in names:
            picked = outcomes[name][chosen_seeds][:, keep]
            draws[name][b] = 100.0 * float((picked * weight).sum() / (weight.sum() * len(seeds)))
    rows = {}
    for k, name in enumerate(names):
        mean = 100.0 * float(outcomes[name][:, keep].mean())
        low, high = np.percentile(draws[name], [2.5, 97.5])
        row = {"mean": mean, "low": low, "high": high}
        if k:
            diff = draws[name] - draws[names[k - 1]]
            row.update({"vs previous": mean - rows[names[k - 1]]["mean"],
                        "diff low": np.percentile(diff, 2.5), "diff high": np.percentile(diff, 97.5)})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def beats_against(results, baselines: dict[str, str], question: str, samples: int = 2000, seed: int = 0):
    """Each variant's beats-partner rate and its paired change from its baseline, with 95 % intervals and a verdict.

    ``baselines``: variant -> the variant it is compared with ("" for none), in the order of the rows. Each row is
    :func:`bootstrap_beats` of the pair (the same draws for both); ``verdict`` is "helps" or "hurts" only where the
    interval of the change excludes zero, else "no clear change" ("" without a baseline).
    """
    import pandas as pd
    rows = [bootstrap_beats(results, [base, name] if base else [name], question, samples, seed).iloc[-1]
            for name, base in baselines.items()]
    table = pd.DataFrame(rows).reindex(columns=["mean", "low", "high", "vs previous", "diff low", "diff high"])
    table["verdict"] = ["" if pd.isna(r["vs previous"]) else "helps" if r["diff low"] > 0 else
                        "hurts" if r["diff high"] < 0 else "no clear change" for _, r in table.iterrows()]
    return table


def format_beats(tables: dict[str, Any]):
    """:func:`beats_against` tables (question -> table) side by side as text: rate [interval], change [interval], verdict."""
    import pandas as pd

    def interval(value, low, high, sign=""):
        return "" if pd.isna(value) else f"{value:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"

    shown = {}
    for question, table in tables.items():
        shown[(question, "beats (%)")] = [interval(r["mean"], r["low"], r["high"]) for _, r in table.iterrows()]
        shown[(question, "change")] = [interval(r["vs previous"], r["diff low"], r["diff high"], "+")
                                       for _, r in table.iterrows()]
        shown[(question, "verdict")] = table["verdict"].tolist()
    return pd.DataFrame(shown, index=next(iter(tables.values())).index)


def beats_partner(split, sim: Any) -> dict[str, float]:
    """Percent of a tiny-set split's two-shape captions whose image outscores its minimal pair, per question type.

    Keys: "which colour is which shape", "where each shape is" (chapter 04's :func:`..analysis.failure_analysis`).
    """
    from .analysis import failure_analysis
    frame = failure_analysis(split, sim).dropna(subset=["beats_partner"])
    return {str(k): 100.0 * float(v) for k, v in frame.groupby("asks", observed=True)["beats_partner"].mean().items()}


@torch.no_grad()
def cell_similarity(model, image: torch.Tensor, caption_embedding: torch.Tensor) -> torch.Tensor:
    """Where the image tower "looks": ``(grid, grid)`` scores of each cell alone against a caption's embedding.

    The flattened grid goes through the image projection one cell at a time (the other cells zeroed), so the scores
    sum, with the projection's bias, to the image's unnormalised score: a map of which cells make the match.
    """
    tower = model.image_tower
    if not isinstance(tower, GridCNN):
        raise ValueError(f"cell_similarity needs a GridCNN image tower, not {type(tower).__name__}")
    grid = tower.cells(image[None])[0]  # (C, g, g)
    channels, g = grid.shape[0], grid.shape[-1]
    weight = model.image_proj.weight.view(-1, channels, g, g)  # (D, C, g, g)
    per_cell = torch.einsum("dcij,cij->ijd", weight, grid)  # each cell's share of the projection
    return per_cell @ caption_embedding
