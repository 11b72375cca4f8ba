"""Contrastive losses for a dual encoder: the seed's cosine-embedding loss used
correctly, VSE++'s hinge triplet losses (summed and hardest negative) and
CLIP's symmetric InfoNCE.

Every loss takes a batch of unit-length ``img_emb`` and ``txt_emb`` (row ``i``
of each is a matching pair) and, optionally, ``image_index``: which image each
pair shows. When one image appears twice in a batch (two of its captions were
drawn), its other caption is *not* a negative; the losses mask such pairs out
instead of pushing a true match apart.

Explained in ``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .models import MAX_LOGIT_SCALE

__all__ = [
    "LOSSES",
    "positive_mask",
    "cosine_embedding_loss",
    "hinge_triplet_loss",
    "info_nce_loss",
    "contrastive_loss",
]

Reduction = Literal["mean", "sum"]


def positive_mask(image_index: torch.Tensor | None, batch_size: int, device=None) -> torch.Tensor:
    """``(B, B)`` boolean matrix: ``True`` where pair ``i``'s image and pair ``j``'s image are the same.

    Without ``image_index`` every pair is taken to show a different image, and
    the mask is the identity (the diagonal: each pair with itself).

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    if image_index is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    image_index = torch.as_tensor(image_index, device=device)
    if image_index.shape != (batch_size,):
        raise ValueError(
            f"image_index has shape {tuple(image_index.shape)}; it needs one image index per pair, ({batch_size},)"
        )
    return image_index[:, None] == image_index[None, :]


def _check_pair(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> None:
    if img_emb.ndim != 2 or img_emb.shape != txt_emb.shape:
        raise ValueError(
            f"img_emb {tuple(img_emb.shape)} and txt_emb {tuple(txt_emb.shape)} must both be (batch, dim), "
            "row i of each being one matching pair"
        )


def _reduce(per_item: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    raise ValueError(f"reduction={reduction!r}; use 'mean' or 'sum'")


def cosine_embedding_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    image_index: torch.Tensor | None = None,
    margin: float = 0.3,
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The seed's loss, used as intended: ``nn.CosineEmbeddingLoss`` on (image, caption, +-1) triples.

    Each matching pair ``(img_emb[i], txt_emb[i])`` is a ``+1`` triple (loss
    ``1 - cos``); for each image, ``num_negatives`` captions of *other* images
    in the batch are drawn at random as ``-1`` triples (loss
    ``max(0, cos - margin)``). The margin is the seed's 0.3. Captions of the
    same image are never drawn as negatives. All triples are averaged, as
    ``CosineEmbeddingLoss`` does.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    _check_pair(img_emb, txt_emb)
    if num_negatives < 1:
        raise ValueError(f"num_negatives={num_negatives}; draw at least one negative caption per image")
    batch = img_emb.shape[0]
    same = positive_mask(image_index, batch, img_emb.device)
    if bool(same.all()):
        raise ValueError("every pair in this batch shows the same image, so there is no negative caption to draw")
    # Random scores, -1 on same-image pairs: the top `num_negatives` of each row are
    # distinct captions of other images (or, when a row has fewer, repeats are avoided
    # as far as possible by taking the highest-scoring ones).
    noise = torch.rand(batch, batch, generator=generator, device="cpu").to(img_emb.device)
    noise = noise.masked_fill(same, -1.0)
    k = min(num_negatives, batch - 1)
    negatives = noise.topk(k, dim=1).indices  # (B, k)
    valid = ~same.gather(1, negatives)  # a row with too few other images can still hit a same-image pair
    rows = torch.arange(batch, device=img_emb.device)[:, None].expand_as(negatives)
    neg_img, neg_txt = img_emb[rows[valid]], txt_emb[negatives[valid]]
    x1 = torch.cat([img_emb, neg_img])
    x2 = torch.cat([txt_emb, neg_txt])
    target = torch.cat([torch.ones(batch, device=img_emb.device), -torch.ones(len(neg_img), device=img_emb.device)])
    return F.cosine_embedding_loss(x1, x2, target, margin=margin)


def hinge_triplet_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    image_index: torch.Tensor | None = None,
    margin: float = 0.2,
    max_violation: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """VSE++'s hinge triplet loss in both directions, over the in-batch negatives.

    With ``sim = img_emb @ txt_emb.T`` and ``d = diag(sim)``: for image ``i``
    each caption ``j`` of another image costs ``max(0, margin + sim[i, j] -
    d[i])``, and for caption ``i`` each other image ``j`` costs ``max(0,
    margin + sim[j, i] - d[i])``. ``max_violation=False`` sums the costs over
    the negatives (VSE0); ``max_violation=True`` keeps only the hardest one
    (VSE++). Per anchor, the two directions are added; ``reduction`` then
    averages (``"mean"``) or sums (``"sum"``, VSE++'s code) over the batch.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    _check_pair(img_emb, txt_emb)
    sim = img_emb @ txt_emb.T
    d = sim.diagonal()
    same = positive_mask(image_index, sim.shape[0], sim.device)
    cost_txt = (margin + sim - d[:, None]).clamp(min=0).masked_fill(same, 0.0)  # image i vs caption j
    cost_img = (margin + sim - d[None, :]).clamp(min=0).masked_fill(same, 0.0)  # caption j vs image i
    if max_violation:
        per_anchor = cost_txt.max(dim=1).values + cost_img.max(dim=0).values
    else:
        per_anchor = cost_txt.sum(dim=1) + cost_img.sum(dim=0)
    return _reduce(per_anchor, reduction)


def info_nce_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    image_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: cross-entropy over the scaled similarity matrix, both directions.

    ``logits = exp(logit_scale).clamp(max=100) * img_emb @ txt_emb.T``; row
    ``i`` should pick caption ``i`` and column ``i`` image ``i``; the loss is
    the mean of the image->text and text->image cross-entropies.
    ``logit_scale`` is the *log* of the inverse temperature (a model's
    learnable ``logit_scale``). Other captions of the same image are removed
    from each softmax (set to ``-inf``) rather than treated as wrong answers.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    _check_pair(img_emb, txt_emb)
    scale = torch.as_tensor(logit_scale, dtype=img_emb.dtype, device=img_emb.device).exp().clamp(max=MAX_LOGIT_SCALE)
    logits_per_image = scale * (img_emb @ txt_emb.T)
    batch = logits_per_image.shape[0]
    others = positive_mask(image_index, batch, logits_per_image.device)
    others.fill_diagonal_(False)
    logits_per_image = logits_per_image.masked_fill(others, float("-inf"))
    labels = torch.arange(batch, device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


LOSSES = {
    "cosine": "the seed's CosineEmbeddingLoss on matching and sampled non-matching pairs (margin 0.3)",
    "hinge": "hinge triplet loss summed over all in-batch negatives (VSE0, margin 0.2)",
    "hardest": "hinge triplet loss on the hardest in-batch negative (VSE++), after a warm-up on the sum",
    "infonce": "symmetric InfoNCE over the similarity matrix with a learnable temperature (CLIP)",
}


def contrastive_loss(
    name: str,
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    image_index: torch.Tensor | None = None,
    *,
    logit_scale: torch.Tensor | float | None = None,
    margin: float | None = None,
    hardest: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One of :data:`LOSSES` by name, as the training loop calls it.

    ``hardest=False`` makes ``"hardest"`` behave like ``"hinge"`` (the
    warm-up). ``margin`` defaults to each loss's own (0.3 for ``"cosine"``,
    0.2 for the hinge losses); ``"infonce"`` needs ``logit_scale``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    own_margin = {} if margin is None else {"margin": margin}  # else each loss's default
    if name == "cosine":
        return cosine_embedding_loss(img_emb, txt_emb, image_index, generator=generator, **own_margin)
    if name in ("hinge", "hardest"):
        return hinge_triplet_loss(img_emb, txt_emb, image_index, max_violation=name == "hardest" and hardest,
                                  **own_margin)
    if name == "infonce":
        if logit_scale is None:
            raise ValueError("the 'infonce' loss needs the model's logit_scale")
        return info_nce_loss(img_emb, txt_emb, logit_scale, image_index)
    raise ValueError(f"unknown loss {name!r}. Choose one of: " + "; ".join(f"{k!r}: {v}" for k, v in LOSSES.items()))
