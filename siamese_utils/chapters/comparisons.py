"""Controlled comparisons: one factor varied around a default, several seeds, one CSV.

Explained in ``notebooks/06_losses_and_encoders.ipynb``.

The seed post's commenters asked three things: a ResNet instead of the tiny
CNN, attention instead of reading the last token, a triplet or cross-entropy
loss instead of the slow contrastive one. Answering them fairly takes a
design, not a pile of runs:

- a **default** model and training recipe (chapter 03's);
- **one factor at a time** (the loss, the text tower, the image tower) varied
  around it, every other setting held fixed, so each difference has one cause;
- the **same budget** for every variant (epochs, batch size, learning-rate
  schedule, data), several **seeds** each, and the spread reported with the mean;
- every run appended to one CSV as soon as it finishes, so an interrupted grid
  resumes where it stopped, and runs already made with the same settings are
  reused instead of repeated.

``python -m siamese_utils grid --data data/tiny --out runs/grid.csv`` runs the
same grid from the command line.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.data import CaptionedImages
from ..core.metrics import METRIC_KEYS, retrieval_metrics, retrieval_ranks
from ..core.models import ModelConfig, build_model
from ..core.runtime import atomic_write, seed_everything
from ..core.train import DEFAULT_MODEL, TrainConfig, encode_split, fit

__all__ = ["Variant", "GridError", "commenter_grid", "run_grid", "read_grid", "summarize_grid", "format_summary",
           "compare_rsum"]

FACTORS = ("default", "loss", "text tower", "image tower", "batches", "hard negatives", "flip", "epochs")
RESULT_KEYS = ("i2t_r1", "t2i_r1", "rsum", "seconds")


class GridError(ValueError):
    """A grid that cannot run as asked (bad settings, or a results file that is not a grid CSV)."""


@dataclass(frozen=True)
class Variant:
    """One cell of a comparison: a name, the factor it varies, and the full settings.

    ``factor`` is ``"default"`` for the reference cell, otherwise the one thing
    that differs from it (``"loss"``, ``"text tower"``, ``"image tower"``);
    ``level`` is that factor's value in words. ``train`` holds everything about
    training except the seed, which :func:`run_grid` sets per run.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """

    name: str
    factor: str
    level: str
    model: ModelConfig
    train: TrainConfig
    about: str = ""

    def __post_init__(self) -> None:
        if not self.name or "," in self.name or "\n" in self.name:
            raise GridError(f"variant name {self.name!r} must be non-empty, without commas or line breaks")
        if self.factor not in FACTORS:
            raise GridError(f"variant {self.name!r}: factor {self.factor!r}; use one of {', '.join(FACTORS)}")


def commenter_grid(model: ModelConfig = DEFAULT_MODEL, train: TrainConfig | None = None,
                   pretrained_lr: float = 1e-4) -> list[Variant]:
    """The comparison of chapter 06: the default, then each commenter's question as one varied factor.

    - **loss** (tower pair fixed): the seed's ``CosineEmbeddingLoss`` on one
      random negative per pair, VSE++'s hinge loss summed over the batch, its
      hardest-negative form (after one warm-up epoch of the summed form), and
      InfoNCE (the default);
    - **text tower**: the seed's LSTM read at its last real token, the GRU with
      mean pooling (the default), the GRU with attention pooling, pretrained
      MiniLM frozen and fine-tuned;
    - **image tower**: the seed's CNN and a ResNet-18, both from scratch, the
      pretrained EfficientNet-Lite0 frozen (the default: locked-image tuning)
      and fine-tuned.

    Fine-tuned pretrained weights learn at ``pretrained_lr`` (the new layers at
    ``train.lr``), as is usual when fine-tuning: at the learning rate of
    freshly initialised layers they would forget what they were pretrained on.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    train = train or TrainConfig()
    ft = replace(train, pretrained_lr=pretrained_lr)
    scratch = dict(pretrained=False, freeze_image=False)
    return [
        Variant("default", "default", "InfoNCE · GRU mean · EfficientNet frozen", model, train,
                "chapter 03's model and recipe"),
        Variant("loss: cosine", "loss", "cosine (the seed's)", model, replace(train, loss="cosine"),
                "CosineEmbeddingLoss on the pair and one random negative"),
        Variant("loss: hinge", "loss", "hinge, summed", model, replace(train, loss="hinge"),
                "VSE++'s triplet loss over every negative in the batch"),
        Variant("loss: hardest", "loss", "hinge, hardest negative", model, replace(train, loss="hardest"),
                "VSE++'s max-of-hinges, after one warm-up epoch of the summed loss"),
        Variant("text: seed LSTM", "text tower", "the seed's LSTM, last token",
                replace(model, text_tower="seed_lstm", word_dim=None, text_hidden=512), train,
                "word vectors of 768, one LSTM of 512, read at the last real token"),
        Variant("text: GRU attention", "text tower", "GRU, attention pooling",
                replace(model, text_tower="gru_attention"), train, "the default GRU with learned attention pooling"),
        Variant("text: MiniLM frozen", "text tower", "MiniLM, frozen",
                replace(model, text_tower="minilm", freeze_text=True), train,
                "pretrained all-MiniLM-L6-v2 with only its projection trained"),
        Variant("text: MiniLM fine-tuned", "text tower", "MiniLM, fine-tuned",
                replace(model, text_tower="minilm"), ft, f"pretrained all-MiniLM-L6-v2, its weights at lr {pretrained_lr:g}"),
        Variant("image: seed CNN", "image tower", "the seed's CNN, from scratch",
                replace(model, image_tower="seed_cnn", **scratch), train, "two convolutions, random weights"),
        Variant("image: ResNet-18", "image tower", "ResNet-18, from scratch",
                replace(model, image_tower="resnet18", **scratch), train, "torchvision ResNet-18, random weights"),
        Variant("image: EfficientNet fine-tuned", "image tower", "EfficientNet-Lite0, fine-tuned",
                replace(model, freeze_image=False), ft, f"pretrained EfficientNet-Lite0, its weights at lr {pretrained_lr:g}"),
    ]


# --------------------------------------------------------------------------- results file

COLUMNS = ("variant", "factor", "level", "seed", *METRIC_KEYS, "val_rsum", "val_rsum_by_epoch", "seconds",
           "trainable_params", "train_images", "model_config", "train_config", "data")
# On the tiny set (its scenes stored), also: how often each two-shape test caption's image beats its minimal pair
# (percent per question, and as JSON every such caption's image, what its partner swaps and its 0/1 outcome, in
# caption order), and text -> image
# R@1 by meaning. Files written before these existed still read: the columns are optional.
COMPOSITION_COLUMNS = ("beats_colours", "beats_places", "beats_outcomes", "semantic_t2i_r1")
# Every test query's rank (JSON: {"i2t": [...], "t2i": [...]}), for intervals over test queries (compare_rsum). Also
# optional: files written before it existed still read, and their runs are reused; compare_rsum asks for it.
RANK_COLUMNS = ("test_ranks",)
OPTIONAL_COLUMNS = (*COMPOSITION_COLUMNS, *RANK_COLUMNS)


def read_grid(path: str | os.PathLike) -> pd.DataFrame:
    """Read a grid CSV written by :func:`run_grid` (an empty frame if the file does not exist).

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=[*COLUMNS, *OPTIONAL_COLUMNS])
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise GridError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); "
                        "move it aside or pass another --out file") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise GridError(f"{path}: not a grid results file (no column(s) {', '.join(missing)}); "
                        "move it aside or pass another --out file")
    return df.reindex(columns=[*COLUMNS, *OPTIONAL_COLUMNS])


def _same_settings(row: pd.Series, variant: Variant, train: TrainConfig, data_key: str, train_images) -> bool:
    try:
        model_ok = ModelConfig.from_dict(json.loads(row["model_config"])) == variant.model
        train_ok = TrainConfig.from_dict(json.loads(row["train_config"])) == train
    except (ValueError, TypeError):
        return False
    stored_subset = None if pd.isna(row["train_images"]) else int(row["train_images"])
    return model_ok and train_ok and row["data"] == data_key and stored_subset == train_images


def _data_key(split: CaptionedImages) -> str:
    return str(Path(split.source).resolve())


# --------------------------------------------------------------------------- running


def run_grid(variants: Sequence[Variant], train_split: CaptionedImages, val_split: CaptionedImages,
             test_split: CaptionedImages, tokenizer, *, seeds: Iterable[int] = (0, 1, 2),
             out: str | os.PathLike | None = None, device: torch.device | None = None,
             train_images: int | None = None, log: Callable[[str], None] | None = print) -> pd.DataFrame:
    """Train and test every variant with every seed; one row per run, appended to ``out`` as it finishes.

    Each run seeds everything with its seed, builds the model, trains it with
    :func:`siamese_utils.core.train.fit` on ``train_split`` (its first
    ``train_images`` images if given), keeps the last epoch, and reports the
    test metrics, the validation rsum after each epoch and the wall time of
    training. With ``out`` (a CSV), a run whose variant, seed, settings and data
    are already in the file is read back instead of trained again, so an
    interrupted grid resumes and a finished one costs nothing to show again;
    rows of other settings stay in the file untouched.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    variants = list(variants)
    seeds = list(seeds)
    if not variants:
        raise GridError("no variants to run")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise GridError(f"variant names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    if not seeds or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0 for s in seeds):
        raise GridError(f"seeds={seeds!r}: give one or more non-negative integers")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"seeds={seeds!r} repeat a seed; each seed is one run")
    if train_images is not None:
        if not isinstance(train_images, int) or isinstance(train_images, bool) or not 2 <= train_images:
            raise GridError(f"train_images={train_images!r} must be an integer of at least 2 (or None: all)")
        if train_images > len(train_split):
            raise GridError(f"train_images={train_images} but the training split has {len(train_split)} images")
        train_split = train_split[:train_images]
    device = device or torch.device("cpu")
    path = Path(out) if out is not None else None
    table = read_grid(path) if path is not None else pd.DataFrame(columns=[*COLUMNS, *OPTIONAL_COLUMNS])
    data_key = _data_key(test_split)

    rows = []
    for variant in variants:
        for seed in seeds:
            train = replace(variant.train, seed=int(seed))
            done = table[(table["variant"] == variant.name) & (table["seed"] == seed)]
            done = [r for _, r in done.iterrows() if _same_settings(r, variant, train, data_key, train_images)]
            if done:
                rows.append(done[-1].to_dict())
                if log is not None:
                    log(f"{variant.name:<32} seed {seed}  rsum {done[-1]['rsum']:6.1f}  (from {path.name})")
                continue
            row = _run_one(variant, train, train_split, val_split, test_split, tokenizer, device)
            row.update(data=data_key, train_images=train_images)
            rows.append(row)
            if path is not None:
                new = pd.DataFrame([row], columns=[*COLUMNS, *OPTIONAL_COLUMNS])
                table = new if table.empty else pd.concat([table, new], ignore_index=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
            if log is not None:
                log(f"{variant.name:<32} seed {seed}  rsum {row['rsum']:6.1f}  trained in {row['seconds']:.0f} s")
    return pd.DataFrame(rows, columns=[*COLUMNS, *OPTIONAL_COLUMNS]).astype({"seed": int})


def _run_one(variant: Variant, train: TrainConfig, train_split, val_split, test_split, tokenizer, device) -> dict:
    seed_everything(train.seed)
    model = build_model(variant.model)
    tick = time.perf_counter()
    result = fit(model, train_split, val_split, train, tokenizer, device=device, progress=False, log=None)
    seconds = time.perf_counter() - tick
    img_emb, txt_emb = encode_split(result.model, test_split, tokenizer, device, image_size=train.image_size,
                                    max_length=train.max_length)
    test = retrieval_metrics(img_emb, txt_emb, test_split.txt_to_img)
    i2t, t2i = retrieval_ranks(img_emb, txt_emb, test_split.txt_to_img)
    return {**_composition_scores(test_split, img_emb @ txt_emb.T),
        "test_ranks": json.dumps({"i2t": [int(r) for r in i2t], "t2i": [int(r) for r in t2i]}),
        "variant": variant.name, "factor": variant.factor, "level": variant.level, "seed": train.seed,
        **{k: float(test[k]) for k in METRIC_KEYS},
        "val_rsum": float(result.val_metrics["rsum"]),
        "val_rsum_by_epoch": json.dumps([round(float(v), 4) for v in result.history["val_rsum"]]),
        "seconds": seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "model_config": json.dumps(variant.model.to_dict(), sort_keys=True),
        "train_config": json.dumps(train.to_dict(), sort_keys=True),
    }


def _composition_scores(split: CaptionedImages, sim: torch.Tensor) -> dict:
    """:data:`COMPOSITION_COLUMNS` of a tiny-set split (NaN for other data)."""
    from .analysis import ASKS, failure_analysis, semantic_recall, truth_matrix
    try:
        report, truth = failure_analysis(split, sim), truth_matrix(split)
    except ValueError:  # not the tiny set: no scenes, no stored meaning
        return dict.fromkeys(COMPOSITION_COLUMNS, float("nan"))
    pairs = report.dropna(subset=["beats_partner"])
    share = {key: 100.0 * float(pairs.loc[pairs["asks"] == ASKS[kind], "beats_partner"].astype(float).mean())
             for key, kind in (("beats_colours", "swap_colours"), ("beats_places", "swap_places"))}
    outcomes = {"image": pairs["image"].tolist(), "partner_swaps": [kind for kind in pairs["asks"].map(
        {v: k for k, v in ASKS.items()})], "beats": pairs["beats_partner"].astype(int).tolist()}
    return {**share, "beats_outcomes": json.dumps(outcomes),
            "semantic_t2i_r1": semantic_recall(sim, truth)["t2i_r1"]}


# --------------------------------------------------------------------------- is a difference real?


def compare_rsum(results: pd.DataFrame, pairs: Sequence[tuple[str, str]], txt_to_img, samples: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Mean test rsum of variant ``a`` minus variant ``b`` for each ``(a, b)``, with a 95 % interval and a verdict.

    ``results``: :func:`run_grid` rows with their ``test_ranks``, both variants run with the same seeds, on the
    test split whose ``txt_to_img`` is given. Each bootstrap sample draws seeds and test images with replacement
    (an image with its captions), the same draw for both variants: the interval is paired and holds both the
    seeds' spread and the sampling noise of the test set. ``verdict`` is "better" or "worse" only where the
    interval excludes zero. Returns one row per pair: ``a``, ``b``, ``change``, ``low``, ``high``, ``verdict``.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    owner = np.asarray(txt_to_img)
    n = int(owner.max()) + 1
    captions = np.bincount(owner, minlength=n).astype(float)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)]).astype(float)

    def per_image(row) -> tuple[np.ndarray, np.ndarray]:  # summed over K: i2t hits, and t2i hits, per image
        if not isinstance(row["test_ranks"], str):
            raise GridError(f"{row['variant']} seed {row['seed']}: no per-query test ranks stored (a run from "
                            "before they were); remove its rows from the results file and run the grid again")
        ranks = json.loads(row["test_ranks"])
        i2t, t2i = np.asarray(ranks["i2t"]), np.asarray(ranks["t2i"])
        if len(i2t) != n or len(t2i) != len(owner):
            raise GridError(f"{row['variant']} seed {row['seed']}: its ranks are of another test split "
                            f"({len(i2t)} images, {len(t2i)} captions; expected {n}, {len(owner)})")
        return (sum((i2t < k).astype(float) for k in (1, 5, 10)),
                np.bincount(owner, sum((t2i < k).astype(float) for k in (1, 5, 10)), n))

    def sampled_rsum(name: str) -> tuple[list[int], np.ndarray]:  # (seeds, (seeds, samples) rsum per draw)
        runs = results[results["variant"] == name].sort_values("seed")
        if runs.empty:
            raise GridError(f"no runs of {name!r} in the results")
        rows = []
        for _, row in runs.iterrows():
            i2t, t2i = per_image(row)
            rows.append(100 * counts @ i2t / n + 100 * (counts @ t2i) / (counts @ captions))
        return runs["seed"].astype(int).tolist(), np.stack(rows)

    out = []
    for a, b in pairs:
        (seeds_a, rsum_a), (seeds_b, rsum_b) = sampled_rsum(a), sampled_rsum(b)
        if seeds_a != seeds_b:
            raise GridError(f"{a!r} ran with seeds {seeds_a} and {b!r} with {seeds_b}: compare runs of the same seeds")
        draw = np.random.default_rng(seed + 1).integers(0, len(seeds_a), (samples, len(seeds_a)))
        columns = np.arange(samples)[:, None]
        diff = rsum_a[draw, columns].mean(axis=1) - rsum_b[draw, columns].mean(axis=1)
        change = float(results.loc[results["variant"] == a, "rsum"].mean()
                       - results.loc[results["variant"] == b, "rsum"].mean())
        low, high = np.percentile(diff, [2.5, 97.5])
        out.append({"a": a, "b": b, "change": change, "low": float(low), "high": float(high),
                    "verdict": "better" if low > 0 else "worse" if high < 0 else ""})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- summaries


def summarize_grid(results: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds of R@1 both ways and rsum, and the training time, one row per variant.

    Columns: ``factor``, ``level``, ``seeds``, then ``<metric>_mean`` and
    ``<metric>_std`` for ``i2t_r1``, ``t2i_r1``, ``rsum`` and ``seconds``,
    ``seconds_min`` (the fastest run: wall time depends on whatever else the
    machine was doing, so, as with ``timeit``, the minimum is the best estimate
    of what a run costs), and ``rsum_vs_default`` (the difference of the
    means). The standard deviation is the sample one (``ddof=1``); with one
    seed it is ``NaN``. Rows keep the order of ``order`` (variant names) or of
    their first appearance.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    if results.empty:
        raise GridError("no results to summarise: run the grid first")
    order = list(order) if order is not None else list(dict.fromkeys(results["variant"]))
    groups = results.groupby("variant", sort=False)
    stats = groups[list(RESULT_KEYS)].agg(["mean", "std"])
    stats.columns = [f"{k}_{s}" for k, s in stats.columns]
    first = groups[["factor", "level"]].first()
    summary = (first.join(groups["seed"].count().rename("seeds")).join(stats)
               .join(groups["seconds"].min().rename("seconds_min")).reindex(order))
    if "default" in summary.index:
        summary["rsum_vs_default"] = summary["rsum_mean"] - summary.loc["default", "rsum_mean"]
    summary.index.name = "variant"
    return summary


def format_summary(summary: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """The summary as text, ``mean ± std`` per cell (``mean`` alone for one seed) and the fastest run's time.

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    def cell(mean: float, std: float, d: int) -> str:
        return f"{mean:.{d}f}" if math.isnan(std) else f"{mean:.{d}f} ± {std:.{d}f}"

    out = pd.DataFrame(index=summary.index)
    out["factor"], out["level"], out["seeds"] = summary["factor"], summary["level"], summary["seeds"]
    titles = {"i2t_r1": "R@1 image→text", "t2i_r1": "R@1 text→image", "rsum": "rsum"}
    for key, title in titles.items():
        out[title] = [cell(m, s, digits) for m, s in zip(summary[f"{key}_mean"], summary[f"{key}_std"])]
    out["train s (fastest)"] = [f"{v:.0f}" for v in summary["seconds_min"]]
    if "rsum_vs_default" in summary:
        out["Δ rsum"] = [f"{v:+.{digits}f}" for v in summary["rsum_vs_default"]]
    return out
