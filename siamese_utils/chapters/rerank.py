"""Two-stage retrieval: a dual encoder finds the top-k, a cross-encoder reorders them.

The design of ALBEF and BLIP. A cross-encoder (here
:class:`CrossAttentionEncoder`, whose caption tokens
attend over image regions) judges one (image, caption) pair better than two
independent vectors can, but it must run once per pair: a whole gallery costs
N x M passes. A dual encoder costs one pass per image and per caption. So the
dual encoder ranks everything and the cross-encoder rescores only each query's
``k`` best candidates, in both directions.

- Mining (:func:`hard_negative_images`, :func:`hard_negative_captions`,
  :func:`mine_training_pairs`): the cross-encoder learns from the mistakes the
  dual encoder makes, the top-ranked wrong images of each caption and wrong
  captions of each image, next to the true pairs. A "wrong" candidate whose
  caption text equals one of the image's own captions (templated datasets
  repeat captions across images) is a match, not a negative, and is skipped.
- Training (:class:`CrossTrainConfig`, :func:`train_cross_encoder`): binary
  cross-entropy on those pairs, from precomputed image-region features.
- Scoring (:class:`PairScorer`, :func:`score_all_pairs`) and reranking
  (:func:`rerank`, :class:`Reranked`): a score matrix per direction in which the
  reranked candidates sit above every other candidate, so that
  :func:`~siamese_utils.core.metrics.metrics_from_scores` gives Recall@K with the
  project's tie rule.

Explained in ``notebooks/07_reranking.ipynb``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import Collator
from ..core.metrics import METRIC_KEYS, check_txt_to_img, metrics_from_scores
from ..core.models import MAX_LOGIT_SCALE, DualEncoder, EfficientNetLite0Tower, masked_mean
from ..core.runtime import epoch_seed, seed_everything
from ..core.train import decay_groups, encode_split, make_scheduler
from .composition import GridCNN
from .towers import ResNetTower

__all__ = [
    "CrossAttentionEncoder",
    "image_regions",
    "pool_regions",
    "same_caption_mask",
    "hard_negative_images",
    "hard_negative_captions",
    "MinedPairs",
    "mine_training_pairs",
    "CrossTrainConfig",
    "train_cross_encoder",
    "train_reranker",
    "PairScorer",
    "score_all_pairs",
    "top_k_candidates",
    "Reranked",
    "rerank",
]

PairScores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- mining hard negatives


def _normalise(caption: str) -> str:
    return " ".join(caption.lower().split())  # what BERT's uncased tokenizer cannot tell apart either


def _check_sim(sim: Any) -> torch.Tensor:
    sim = torch.as_tensor(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be an (images, captions) score matrix, got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.float()
    if bool(torch.isnan(sim).any()):
        raise ValueError("sim holds NaN scores; check the model that produced it")
    return sim.detach().cpu()


def same_caption_mask(txt_to_img: Any, captions: Sequence[str], num_images: int | None = None) -> torch.Tensor:
    """``(N, M)`` booleans: ``True`` where caption ``j``'s text is one of image ``i``'s own captions.

    Texts are compared lower-cased with runs of spaces collapsed (what the
    uncased tokenizer sees). Such a pair is a true match even when caption
    ``j`` was written for another image, so it is never mined as a negative.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    m = len(captions)
    n = int(num_images) if num_images is not None else (int(np.max(txt_to_img)) + 1 if m else 0)
    owner = check_txt_to_img(txt_to_img, n, m, every_image=False)
    texts: dict[str, int] = {}
    text_id = torch.tensor([texts.setdefault(_normalise(c), len(texts)) for c in captions], dtype=torch.long)
    has_text = torch.zeros(n, len(texts), dtype=torch.bool)
    has_text[owner, text_id] = True
    return has_text[:, text_id]


def _hardest(scores: torch.Tensor, excluded: torch.Tensor, k: int, what: str, per: str) -> torch.Tensor:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{k!r} negatives per {per}: ask for a positive whole number")
    available = (~excluded).sum(dim=1)
    if len(available) and int(available.min()) < k:
        row = int(available.argmin())
        raise ValueError(f"{per} {row} has only {int(available[row])} {what} that are not its matches; "
                         f"ask for at most that many negatives per {per}")
    masked = scores.masked_fill(excluded, float("-inf"))
    return torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]  # exact ties: lower index first


def _matches(sim: torch.Tensor, txt_to_img: Any, captions: Sequence[str], matches: Any) -> torch.Tensor:
    """The ``(N, M)`` pairs that are not negatives: ``matches`` if given (it must hold every own pair), else
    :func:`same_caption_mask`."""
    if matches is None:
        match = same_caption_mask(txt_to_img, captions, sim.shape[0])
        if match.shape != sim.shape:
            raise ValueError(f"sim has shape {tuple(sim.shape)} but there are {len(captions)} captions")
        return match
    match = torch.as_tensor(np.asarray(matches) if not isinstance(matches, torch.Tensor) else matches).bool().cpu()
    if match.shape != sim.shape:
        raise ValueError(f"matches has shape {tuple(match.shape)} but sim has {tuple(sim.shape)}: one entry per "
                         "(image, caption) pair of the same split")
    owner = check_txt_to_img(txt_to_img, sim.shape[0], sim.shape[1], every_image=False)
    missing = ~match[owner, torch.arange(sim.shape[1])]
    if bool(missing.any()):
        j = int(missing.nonzero()[0])
        raise ValueError(f"matches says caption {j} does not match its own image {int(owner[j])}; pass a mask that "
                         "is True for every (image, caption) pair of the data (e.g. analysis.truth_matrix(split))")
    return match


def hard_negative_images(sim: Any, txt_to_img: Any, captions: Sequence[str], k: int,
                         matches: Any = None) -> torch.Tensor:
    """``(M, k)`` image indices: each caption's ``k`` top-ranked images that do not match it, hardest first.

    ``sim`` is the dual encoder's ``(N images, M captions)`` score matrix.
    ``matches``, an ``(N, M)`` boolean mask, says which images a caption is
    true of (on the tiny set, :func:`~siamese_utils.chapters.analysis.truth_matrix`);
    without it, an image matches a caption when the caption's text is one of
    the image's own captions (:func:`same_caption_mask`).

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    sim = _check_sim(sim)
    return _hardest(sim.T, _matches(sim, txt_to_img, captions, matches).T, k, "images", "caption")


def hard_negative_captions(sim: Any, txt_to_img: Any, captions: Sequence[str], k: int,
                           matches: Any = None) -> torch.Tensor:
    """``(N, k)`` caption indices: each image's ``k`` top-ranked captions that do not describe it, hardest first.

    A caption that ``matches`` marks as true of the image (by default: whose
    text equals one of the image's own captions, :func:`same_caption_mask`)
    describes it too and is skipped.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    sim = _check_sim(sim)
    return _hardest(sim, _matches(sim, txt_to_img, captions, matches), k, "captions", "image")


@dataclass
class MinedPairs:
    """Training pairs for a cross-encoder: ``image``, ``caption`` (indices) and ``label`` (1 match, 0 not).

    Explained in ``notebooks/07_reranking.ipynb``.
    """

    image: torch.Tensor
    caption: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return len(self.label)

    def to_frame(self, captions: Sequence[str] | None = None) -> pd.DataFrame:
        """The pairs as a table (with the caption text when ``captions`` is given)."""
        frame = pd.DataFrame({"image": self.image.numpy(), "caption": self.caption.numpy(),
                              "label": self.label.numpy().astype(int)})
        if captions is not None:
            frame["text"] = [captions[j] for j in self.caption.tolist()]
        return frame


def mine_training_pairs(sim: Any, txt_to_img: Any, captions: Sequence[str], per_caption: int = 3,
                        per_image: int = 3, matches: Any = None) -> MinedPairs:
    """Every true (image, caption) pair plus hard negatives from both directions, each pair once.

    Negatives: the ``per_caption`` hardest images of each caption
    (:func:`hard_negative_images`) and the ``per_image`` hardest captions of
    each image (:func:`hard_negative_captions`); a pair found from both sides
    is kept once. ``per_caption=0`` or ``per_image=0`` skips that direction.
    ``matches``: the pairs that are never negatives (see
    :func:`hard_negative_images`). Positives first (in caption order), then negatives sorted by image and
    caption.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    sim = _check_sim(sim)
    n, m = sim.shape
    owner = check_txt_to_img(txt_to_img, n, m, every_image=False)
    if len(captions) != m:
        raise ValueError(f"sim has {m} caption columns but {len(captions)} captions were given")
    keys = []
    if per_caption:
        images = hard_negative_images(sim, owner, captions, per_caption, matches)
        keys.append((images * m + torch.arange(m)[:, None]).flatten())
    if per_image:
        caps = hard_negative_captions(sim, owner, captions, per_image, matches)
        keys.append((torch.arange(n)[:, None] * m + caps).flatten())
    negatives = torch.unique(torch.cat(keys)) if keys else torch.empty(0, dtype=torch.long)
    image = torch.cat([owner, negatives // m])
    caption = torch.cat([torch.arange(m), negatives % m])
    label = torch.cat([torch.ones(m), torch.zeros(len(negatives))])
    return MinedPairs(image, caption, label)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CrossTrainConfig:
    """How a cross-encoder is trained on mined pairs: ``num_epochs``, ``batch_size``, AdamW's ``lr`` and
    ``weight_decay``, ``warmup_epochs`` then a ``"cosine"`` or ``"constant"`` ``schedule``, ``grad_clip``,
    ``max_length`` (tokens per caption) and ``seed``.

    ``train_text_tower=False`` (the default) keeps the text tower as it is
    (from a trained dual encoder, it already knows the words) and computes
    every caption's token states once, so each step runs only the fusion
    layers: seconds per epoch on a CPU instead of minutes.

    Explained in ``notebooks/07_reranking.ipynb``.
    """

    num_epochs: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    schedule: str = "cosine"
    grad_clip: float | None = 2.0
    max_length: int = 32
    seed: int = 0
    train_text_tower: bool = False

    def __post_init__(self) -> None:
        for name in ("num_epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("weight_decay and warmup_epochs must be >= 0")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule={self.schedule!r}; use 'cosine' or 'constant'")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be positive, or None to turn clipping off")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    length = int(mask.sum(dim=1).max()) if len(mask) else 0
    return ids[:, :length], mask[:, :length]


def _check_regions(regions: torch.Tensor, num_images: int) -> torch.Tensor:
    if not isinstance(regions, torch.Tensor) or regions.ndim not in (2, 3):
        raise ValueError("regions must be a tensor of image features, (N, R, F) from image_regions or (N, F)")
    if regions.shape[0] != num_images:
        raise ValueError(f"regions hold {regions.shape[0]} images but the captions belong to {num_images}")
    return regions


def train_cross_encoder(cross: CrossAttentionEncoder, regions: torch.Tensor, captions: Sequence[str],
                        pairs: MinedPairs, tokenizer, config: CrossTrainConfig = CrossTrainConfig(), *,
                        device: torch.device | str | None = None,
                        log: Callable[[str], None] | None = print) -> pd.DataFrame:
    """Train ``cross`` on ``pairs`` with binary cross-entropy; returns one row per epoch (``loss``, ``seconds``).

    ``regions`` are the images' features, computed once
    (:func:`image_regions` of a frozen tower), indexed by
    ``pairs.image``; ``captions`` are indexed by ``pairs.caption``. The pairs
    are shuffled every epoch from a generator seeded by ``(config.seed,
    epoch)``, so a run repeats. The image tower, if any, is not trained.
    The returned frame's ``attrs["step_losses"]`` holds every step's loss.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    device = torch.device(device) if device is not None else next(cross.parameters()).device
    if len(pairs) == 0:
        raise ValueError("no training pairs; mine some with mine_training_pairs")
    if int(pairs.caption.max()) >= len(captions) or int(pairs.caption.min()) < 0:
        raise ValueError(f"pairs name caption indices outside [0, {len(captions)})")
    if int(pairs.image.max()) >= len(regions) or int(pairs.image.min()) < 0:
        raise ValueError(f"pairs name image indices outside [0, {len(regions)}) of the region features")
    regions = _check_regions(regions, len(regions)).detach()  # features, computed once: nothing to train there
    seed_everything(config.seed)
    cross.to(device)
    tokens = Collator(tokenizer, config.max_length).tokenize(list(captions))
    all_ids, all_mask = tokens["input_ids"], tokens["attention_mask"]
    frozen = ("image_tower.",) if config.train_text_tower else ("image_tower.", "text_tower.")
    params = [p for name, p in cross.named_parameters() if p.requires_grad and not name.startswith(frozen)]
    states = None
    if not config.train_text_tower:  # token states once per caption; only the fusion layers train
        cross.text_tower.eval()
        with torch.no_grad():
            states = torch.cat([cross.text_tower.token_states(all_ids[s:s + 256].to(device),
                                                              all_mask[s:s + 256].to(device))
                                for s in range(0, len(captions), 256)])  # (M, T, H), all padded to one T
    optimizer = torch.optim.AdamW(decay_groups(params, config.weight_decay), lr=config.lr)
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    rows, step_losses = [], []
    for epoch in range(config.num_epochs):
        tick = time.perf_counter()
        cross.train()
        if states is not None:
            cross.text_tower.eval()
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch)))
        total = 0.0
        for start in range(0, len(pairs), config.batch_size):
            batch = order[start:start + config.batch_size]
            ids, mask = _trim(all_ids[pairs.caption[batch]], all_mask[pairs.caption[batch]])
            ids, mask, images = ids.to(device), mask.to(device), regions[pairs.image[batch]].to(device)
            if states is None:
                logits = cross.score_features(images, ids, mask)
            else:
                logits = cross.score_states(images, states[pairs.caption[batch].to(device), :mask.size(1)], mask)
            loss = F.binary_cross_entropy_with_logits(logits, pairs.label[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step_losses.append(float(loss.detach()))
            total += float(loss.detach()) * len(batch)
        rows.append({"epoch": epoch + 1, "loss": total / len(pairs), "seconds": time.perf_counter() - tick})
        if log is not None:
            log(f"epoch {epoch + 1:>2}/{config.num_epochs}  loss {rows[-1]['loss']:.4f}")
    cross.eval()
    history = pd.DataFrame(rows)
    history.attrs["step_losses"] = step_losses
    return history


def train_reranker(dual: DualEncoder, split, regions: torch.Tensor, tokenizer,
                   config: CrossTrainConfig = CrossTrainConfig(), *, matches: Any = None, per_caption: int = 2,
                   per_image: int = 2, hidden_dim: int = 128, device: torch.device | str | None = None,
                   log: Callable[[str], None] | None = None) -> tuple["CrossAttentionEncoder", MinedPairs, pd.DataFrame]:
    """A second stage for ``dual`` in one call: mine its mistakes on ``split``, build a cross-encoder, train it.

    ``regions`` are ``split``'s images as :func:`image_regions` of ``dual``'s
    image tower gives them (computed once). The dual encoder ranks the
    split; :func:`mine_training_pairs` takes each caption's ``per_caption``
    hardest wrong images and each image's ``per_image`` hardest wrong captions,
    never a pair ``matches`` marks as true; the cross-encoder starts from
    ``dual`` (:meth:`CrossAttentionEncoder.from_dual_encoder`, seeded by
    ``config.seed``) and learns from those pairs (:func:`train_cross_encoder`).
    Returns the cross-encoder, the mined pairs and the training history.

    Explained in ``notebooks/07_reranking.ipynb``, which first takes these steps one by one.
    """
    dual = dual.eval()
    img_emb, txt_emb = encode_split(dual, split, tokenizer, device, max_length=config.max_length,
                                    image_features=pool_regions(dual.image_tower, regions))
    pairs = mine_training_pairs(dual.similarity(img_emb, txt_emb), split.txt_to_img, split.captions, per_caption,
                                per_image, matches)
    torch.manual_seed(config.seed)
    cross = CrossAttentionEncoder.from_dual_encoder(dual, hidden_dim=hidden_dim,
                                                    num_regions=regions.shape[1] if regions.ndim == 3 else 1)
    history = train_cross_encoder(cross, regions, split.captions, pairs, tokenizer, config, device=device, log=log)
    return cross, pairs, history


# --------------------------------------------------------------------------- scoring pairs


class PairScorer:
    """Scores (image, caption) pairs of one split with a cross-encoder: ``scorer(image_index, caption_index)``.

    The unimodal parts are computed once, here: every image's projected
    regions and every caption's projected token states. A call then runs only
    the per-pair fusion (:meth:`CrossAttentionEncoder.fuse`)
    in batches of ``batch_size`` pairs, and returns float32 logits on the CPU.
    ``pairs_scored`` counts the pairs scored so far.

    Explained in ``notebooks/07_reranking.ipynb``.
    """

    def __init__(self, cross: CrossAttentionEncoder, regions: torch.Tensor, captions: Sequence[str], tokenizer,
                 max_length: int = 32, batch_size: int = 2048, device: torch.device | str | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.cross = cross.eval()
        self.device = torch.device(device) if device is not None else next(cross.parameters()).device
        self.batch_size = batch_size
        self.num_images, self.num_captions = len(regions), len(captions)
        _check_regions(regions, len(regions))
        tokens = Collator(tokenizer, max_length).tokenize(list(captions))
        self.mask = tokens["attention_mask"].to(self.device)
        ids = tokens["input_ids"].to(self.device)
        with torch.no_grad():
            raw = [regions[s:s + 256].to(self.device) for s in range(0, len(regions), 256)]
            states = [cross.text_tower.token_states(ids[s:s + 256], self.mask[s:s + 256])
                      for s in range(0, len(captions), 256)]
            self.regions = torch.cat([cross.project_regions(r) for r in raw])
            self.tokens = torch.cat([cross.token_proj(h) for h in states])
            self.img_dual = self.txt_dual = None
            if cross.dual_image_proj is not None:  # the dual encoder's embeddings, for its score of each pair
                self.img_dual = torch.cat([cross.dual_embeddings(regions=r) for r in raw])
                self.txt_dual = torch.cat([
                    cross.dual_embeddings(token_states=h, attention_mask=self.mask[s * 256:(s + 1) * 256])
                    for s, h in enumerate(states)])
        self.pairs_scored = 0

    @torch.no_grad()
    def __call__(self, image_index: torch.Tensor, caption_index: torch.Tensor) -> torch.Tensor:
        image_index = torch.as_tensor(image_index, dtype=torch.long).flatten()
        caption_index = torch.as_tensor(caption_index, dtype=torch.long).flatten()
        if image_index.shape != caption_index.shape:
            raise ValueError(f"{len(image_index)} image indices but {len(caption_index)} caption indices")
        out = []
        for s in range(0, len(image_index), self.batch_size):
            i = image_index[s:s + self.batch_size].to(self.device)
            j = caption_index[s:s + self.batch_size].to(self.device)
            cosine = (self.img_dual[i] * self.txt_dual[j]).sum(-1) if self.img_dual is not None else None
            out.append(self.cross.fuse(self.regions[i], self.tokens[j], self.mask[j], cosine).float().cpu())
        self.pairs_scored += len(image_index)
        return torch.cat(out) if out else torch.empty(0)


def score_all_pairs(score_pairs: PairScores, num_images: int, num_captions: int,
                    chunk_size: int = 1 << 16) -> torch.Tensor:
    """The cross-encoder's full ``(num_images, num_captions)`` score matrix: every pair, what reranking avoids.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    total = num_images * num_captions
    out = torch.empty(total)
    for s in range(0, total, chunk_size):
        flat = torch.arange(s, min(total, s + chunk_size))
        out[s:s + len(flat)] = score_pairs(flat // num_captions, flat % num_captions)
    return out.view(num_images, num_captions)


# --------------------------------------------------------------------------- reranking


def _check_k(k: Any, gallery: int, what: str, per: str) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r}: rerank a positive whole number of {what} per {per} (1 <= k <= {gallery})")
    if k > gallery:
        raise ValueError(f"k={k} but the gallery has only {gallery} {what}: rerank at most {gallery} {what} "
                         f"per {per}")
    return int(k)


def top_k_candidates(sim: Any, k: int, dim: int) -> torch.Tensor:
    """The indices of the ``k`` best scores along ``dim`` of ``sim``, best first; exact ties go to the lower index.

    ``dim=0``: for each caption (column), its ``k`` best images, ``(M, k)``;
    ``dim=1``: for each image (row), its ``k`` best captions, ``(N, k)``.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    sim = _check_sim(sim)
    scores = sim.T if dim == 0 else sim
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def _dense_ranks(values: torch.Tensor) -> torch.Tensor:
    """Per row, 0 for the lowest value, +1 for each larger distinct value: equal values, equal ranks."""
    ordered, order = torch.sort(values, dim=1)
    step = torch.zeros_like(ordered, dtype=torch.long)
    step[:, 1:] = (ordered[:, 1:] > ordered[:, :-1]).long()
    return torch.empty_like(step).scatter_(1, order, step.cumsum(dim=1))


@dataclass
class Reranked:
    """What :func:`rerank` returns.

    - ``t2i_sim`` ``(N, M)``: column ``j`` orders the images for caption ``j``:
      its ``k`` candidates in the cross-encoder's order, above all other
      images, which keep their dual-encoder scores (and so their order);
    - ``i2t_sim`` ``(N, M)``: the same by rows, for each image's ``k_captions``
      caption candidates;
    - ``t2i_candidates`` ``(M, k)``, ``i2t_candidates`` ``(N, k_captions)``;
    - ``pairs_scored``: distinct pairs sent to the cross-encoder (a pair that
      is a candidate in both directions is scored once); ``seconds``: the wall
      time of that scoring.

    :meth:`metrics` gives the retrieval metrics, image -> text from
    ``i2t_sim`` and text -> image from ``t2i_sim``.

    Explained in ``notebooks/07_reranking.ipynb``.
    """

    t2i_sim: torch.Tensor
    i2t_sim: torch.Tensor
    t2i_candidates: torch.Tensor
    i2t_candidates: torch.Tensor
    k: int
    k_captions: int
    pairs_scored: int
    seconds: float

    def metrics(self, txt_to_img: Any) -> dict[str, float]:
        """R@1/5/10, medr, meanr both ways and rsum (keys of :data:`~siamese_utils.core.metrics.METRIC_KEYS`)."""
        i2t = metrics_from_scores(self.i2t_sim, txt_to_img)
        t2i = metrics_from_scores(self.t2i_sim, txt_to_img)
        out = {key: (i2t if key.startswith("i2t") else t2i)[key] for key in METRIC_KEYS if key != "rsum"}
        out["rsum"] = round(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)), 9)
        return {key: out[key] for key in METRIC_KEYS}


def _place_on_top(sim: torch.Tensor, candidates: torch.Tensor, fused: torch.Tensor, base: float) -> torch.Tensor:
    """Rows of ``sim`` with ``candidates`` rescored ``base + 1 + dense rank of fused``: above everything else."""
    out = sim.clone()
    out.scatter_(1, candidates, (base + 1 + _dense_ranks(fused)).to(out.dtype))
    return out


def rerank(sim: Any, score_pairs: PairScores, k: int, k_captions: int | None = None,
           dual_weight: float = 0.0) -> Reranked:
    """Rerank a dual encoder's top candidates with a cross-encoder, text -> image and image -> text.

    ``sim`` is the dual encoder's ``(N images, M captions)`` score matrix;
    ``score_pairs(image_index, caption_index)`` returns the cross-encoder's
    logits for those pairs (a :class:`PairScorer`). For each caption, its
    ``k`` best images by ``sim`` (:func:`top_k_candidates`) are rescored; for
    each image, its ``k_captions`` best captions (default ``k``, at most M).

    Each query's candidates are ordered by ``cross + dual_weight * dual``
    (``dual_weight=0``: the cross-encoder alone; a positive weight fuses the
    two scores, a tie-breaker when it is small) and placed above every other
    candidate; the others keep their dual score. Equal fused scores stay
    equal, so the metrics' tie rule (ties count against the ground truth)
    applies to them. In the returned matrices the candidates' entries are
    whole numbers above the largest dual score: an ordering, not a
    probability.

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    sim = _check_sim(sim).float()
    n, m = sim.shape
    k = _check_k(k, n, "images", "caption")
    k_captions = _check_k(k if k_captions is None else k_captions, m, "captions", "image")
    if not isinstance(dual_weight, (int, float)) or not math.isfinite(dual_weight):
        raise ValueError(f"dual_weight={dual_weight!r} must be a finite number")
    finite = sim[torch.isfinite(sim)]
    base = float(math.floor(float(finite.max())) + 1) if len(finite) else 0.0
    if abs(base) + max(k, k_captions) + 2 >= 2 ** 24:
        raise ValueError(f"scores up to {float(finite.max()):.3g} are too large to order exactly in float32; "
                         "pass similarities (cosines) or logits of moderate size")
    t2i_candidates = top_k_candidates(sim, k, dim=0)  # (M, k) images
    i2t_candidates = top_k_candidates(sim, k_captions, dim=1)  # (N, kc) captions
    keys = torch.cat([(t2i_candidates * m + torch.arange(m)[:, None]).flatten(),
                      (torch.arange(n)[:, None] * m + i2t_candidates).flatten()])
    unique, inverse = torch.unique(keys, return_inverse=True)
    tick = time.perf_counter()
    cross = torch.as_tensor(score_pairs(unique // m, unique % m)).detach().float().cpu().flatten()
    seconds = time.perf_counter() - tick
    if cross.shape != unique.shape:
        raise ValueError(f"score_pairs returned {tuple(cross.shape)} scores for {len(unique)} pairs")
    if not bool(torch.isfinite(cross).all()):
        raise ValueError("the cross-encoder returned NaN or infinite scores; check the model and its inputs")
    fused = cross[inverse] + dual_weight * sim.flatten()[keys]
    split = m * k
    t2i_fused = fused[:split].view(m, k)
    i2t_fused = fused[split:].view(n, k_captions)
    t2i_sim = _place_on_top(sim.T, t2i_candidates, t2i_fused, base).T.contiguous()
    i2t_sim = _place_on_top(sim, i2t_candidates, i2t_fused, base)
    return Reranked(t2i_sim, i2t_sim, t2i_candidates, i2t_candidates, k, k_captions, len(unique), seconds)


# --------------------------------------------------------------------------- the cross-attention encoder


def image_regions(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """An image tower's features per region, before global pooling: ``(B, R, out_dim)``.

    For :class:`EfficientNetLite0Tower` the last feature map, ``R = (S / 32)^2``
    regions of an ``S``-pixel image (2 x 2 at 64 pixels, 3 x 3 at 96); their
    mean is exactly the tower's pooled output. For :class:`ResNetTower` its
    last convolutional map. For chapter 05's
    :class:`~siamese_utils.chapters.composition.GridCNN` its grid cells
    (16 at 64 pixels), whose features, channel by channel and cell by cell,
    are exactly the tower's flattened output (:func:`pool_regions`). Any
    other tower gives its pooled features as one region (``R = 1``).

    Explained in ``notebooks/07_reranking.ipynb``.
    """
    if isinstance(tower, EfficientNetLite0Tower):
        maps = tower.net.forward_features(images * tower.input_scale + tower.input_shift)
    elif isinstance(tower, GridCNN):
        maps = tower.cells(images)
    elif isinstance(tower, ResNetTower):
        net = tower.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        maps = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    else:
        return tower(images).unsqueeze(1)
    return maps.flatten(2).transpose(1, 2)


def pool_regions(tower: nn.Module, regions: torch.Tensor) -> torch.Tensor:
    """What ``tower`` outputs, rebuilt from its :func:`image_regions`: ``(B, R, C)`` -> ``(B, out_dim)``.

    The mean over regions (a pooled tower), or for a :class:`GridCNN` that
    keeps its grid, the cells flattened channel-major (feature ``c * R + k``),
    as its ``forward`` does. ``(B, F)`` features pass through.
    """
    if regions.ndim == 2:
        return regions
    if type(tower) is GridCNN:  # its pooled ablation (a subclass) averages its cells like any pooled tower
        return regions.transpose(1, 2).flatten(1)
    return regions.mean(dim=1)


class CrossAttentionEncoder(nn.Module):
    """A cross-encoder that fuses *tokens* with image *regions*: each caption token attends over the image.

    The design of ALBEF's and BLIP's matching head, made small. A text tower
    with per-token states (a :class:`GRUTower`) reads the caption; each token
    state, projected to ``hidden_dim``, is the query of a scaled dot-product
    attention over the image's region features (from :func:`image_regions`,
    projected, plus a learned embedding of each region's position when
    ``num_regions`` is given). Each token is fused with what it attended to as
    ``[q, a, q * a]`` through an MLP, the fused tokens are averaged over the
    real tokens (:func:`masked_mean`) and a linear head gives one match logit
    per (image, caption) pair.

    So a word can look at *where* in the picture its object is, which a dual
    encoder, whose image is one pooled vector, cannot. The price: the fusion
    runs once per pair. The unimodal parts do not depend on the pair and are
    computed once per image (:meth:`project_regions`) and once per caption
    (:meth:`encode_tokens`); :meth:`fuse` is the per-pair part.

    Built with :meth:`from_dual_encoder`, it also keeps the dual encoder's own
    score of the pair: the logit is ``dual_scale * cosine + bias + head(...)``,
    the cosine computed from the same pooled features with copies of the dual
    encoder's projections (``dual_scale`` starts at its inverse temperature).
    Training then learns a *correction* to the dual encoder from its
    mistakes, and an untrained head ranks exactly like the dual encoder.

    ``score_features(regions, input_ids, attention_mask)`` scores pairs from
    precomputed region features (a frozen image tower's, computed once);
    ``forward(images, input_ids, attention_mask)`` runs ``image_tower`` first,
    like :class:`CrossEncoder`.

    Explained in ``notebooks/07_reranking.ipynb``.
    """

    def __init__(self, text_tower: nn.Module, image_dim: int, hidden_dim: int = 128, num_regions: int | None = None,
                 dropout: float = 0.1, image_tower: nn.Module | None = None, dual: "DualEncoder | None" = None):
        super().__init__()
        if not callable(getattr(text_tower, "token_states", None)):
            raise TypeError(f"{type(text_tower).__name__} gives no per-token states; the cross-attention needs a "
                            "text tower with token_states(input_ids, attention_mask), such as GRUTower")
        self.text_tower = text_tower
        self.image_tower = image_tower
        self.num_regions = num_regions
        self.image_proj = nn.Sequential(nn.Linear(image_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.region_position = nn.Parameter(torch.zeros(num_regions, hidden_dim)) if num_regions else None
        self.token_proj = nn.Sequential(nn.Linear(text_tower.out_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.fusion = nn.Sequential(nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden_dim, 1)
        if self.region_position is not None:
            nn.init.normal_(self.region_position, std=0.02)
        self.dual_image_proj = self.dual_text_proj = None
        if dual is not None:
            import copy

            self.dual_image_proj = copy.deepcopy(dual.image_proj).requires_grad_(False)
            self.dual_text_proj = copy.deepcopy(dual.text_proj).requires_grad_(False)
            self.dual_scale = nn.Parameter(dual.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE).clone())
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_dual_encoder(cls, dual: "DualEncoder", **options: Any) -> "CrossAttentionEncoder":
        """A cross-encoder starting from a trained dual encoder: its text tower (copied), image tower (shared), score.

        Starting from a text tower that already knows the words, and from the
        dual encoder's score, is what makes a few epochs enough (ALBEF likewise
        initialises its fusion layers from its text encoder). ``options`` go to
        the constructor.
        """
        import copy

        tower = dual.image_tower  # a grid's regions are its cells, of `channels` features each
        region_dim = tower.channels if isinstance(tower, GridCNN) else tower.out_dim
        return cls(copy.deepcopy(dual.text_tower), region_dim, image_tower=tower, dual=dual, **options)

    # -- the unimodal parts: once per image, once per caption ------------------------------------------------
    def project_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """Region features ``(B, R, image_dim)`` (pooled ``(B, image_dim)``: one region) -> ``(B, R, hidden_dim)``."""
        if regions.ndim == 2:
            regions = regions.unsqueeze(1)
        if regions.ndim != 3:
            raise ValueError(f"region features must be (B, regions, features), got shape {tuple(regions.shape)}")
        projected = self.image_proj(regions)
        if self.region_position is not None:
            if regions.size(1) != self.num_regions:
                raise ValueError(
                    f"the features have {regions.size(1)} regions per image but this cross-encoder was built for "
                    f"{self.num_regions} (its image size); compute them at the image size it was trained with")
            projected = projected + self.region_position
        return projected

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``(B, T)`` -> projected token states ``(B, T, hidden_dim)``."""
        return self.token_proj(self.text_tower.token_states(input_ids, attention_mask))

    # -- the per-pair part --------------------------------------------------------------------------------------
    def fuse(self, regions: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor,
             dual_cosine: torch.Tensor | None = None) -> torch.Tensor:
        """Match logits ``(B,)`` from projected regions ``(B, R, H)`` and tokens ``(B, T, H)`` of B pairs.

        ``dual_cosine`` ``(B,)``: the dual encoder's score of each pair (see
        :meth:`dual_embeddings`), needed by a cross-encoder built from one.
        """
        weights = torch.softmax(tokens @ regions.transpose(1, 2) / math.sqrt(tokens.size(-1)), dim=-1)
        attended = weights @ regions  # (B, T, H): what each token sees in the image
        fused = self.fusion(torch.cat([tokens, attended, tokens * attended], dim=-1))
        logits = self.head(masked_mean(fused, attention_mask)).squeeze(-1)
        if self.dual_image_proj is not None:
            if dual_cosine is None:
                raise ValueError("this cross-encoder adds the dual encoder's score: pass dual_cosine")
            logits = logits + self.dual_scale * dual_cosine
        return logits

    def dual_embeddings(self, regions: torch.Tensor | None = None, token_states: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The dual encoder's unit embedding of images (from raw region features) or captions (from token states)."""
        if self.dual_image_proj is None:
            return None
        if regions is not None:
            return F.normalize(self.dual_image_proj(pool_regions(self.image_tower, regions)), dim=-1)
        pool = getattr(self.text_tower, "attention", None)
        if pool is not None:
            return F.normalize(self.dual_text_proj(pool(token_states, attention_mask)[0]), dim=-1)
        pooled = masked_mean(token_states, attention_mask)
        return F.normalize(self.dual_text_proj(pooled), dim=-1)

    def score_features(self, regions: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (regions[i], caption i), from precomputed region features."""
        states = self.text_tower.token_states(input_ids, attention_mask)
        return self.score_states(regions, states, attention_mask)

    def score_states(self, regions: torch.Tensor, token_states: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` from raw region features and the text tower's token states of B pairs."""
        cosine = None
        if self.dual_image_proj is not None:
            cosine = (self.dual_embeddings(regions=regions)
                      * self.dual_embeddings(token_states=token_states, attention_mask=attention_mask)).sum(-1)
        return self.fuse(self.project_regions(regions), self.token_proj(token_states), attention_mask, cosine)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (images[i], caption i), through ``image_tower``."""
        if self.image_tower is None:
            raise ValueError("this cross-encoder has no image tower: pass image_tower= when building it, "
                             "or score precomputed region features with score_features")
        return self.score_features(image_regions(self.image_tower, images), input_ids, attention_mask)

    def match_probability(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``sigmoid(logits)``: the probability that each caption describes its image."""
        return torch.sigmoid(self(images, input_ids, attention_mask))

    def train(self, mode: bool = True) -> "CrossAttentionEncoder":
        """Training mode for the fusion layers and the text tower; the image tower (used frozen) stays in eval mode."""
        super().train(mode)
        if self.image_tower is not None:
            self.image_tower.eval()
        return self
