"""Contrastive losses for a dual encoder: the seed's cosine-embedding loss used correctly, VSE++'s hinge triplet losses
(summed and hardest negative) and CLIP's symmetric InfoNCE.

Every loss takes a batch of unit-length ``img_emb`` and ``txt_emb`` (row ``i`` of each is a matching pair) and,
optionally, ``image_index``: which image each pair shows. Another caption of the same image in the batch is *not* a
negative; the losses mask such pairs out.

Explained in ``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .models import MAX_LOGIT_SCALE

__all__ = ["LOSSES", "positive_mask", "cosine_embedding_loss", "hinge_triplet_loss", "info_nce_loss",
           "contrastive_loss"]

Reduction = Literal["mean", "sum"]


def positive_mask(image_index: torch.Tensor | None, batch_size: int, device=None) -> torch.Tensor:
    """``(B, B)`` mask: ``True`` where pairs ``i`` and ``j`` show the same image (identity without ``image_index``)."""
    if image_index is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    image_index = torch.as_tensor(image_index, device=device)
    if image_index.shape != (batch_size,):
        raise ValueError(f"image_index has shape {tuple(image_index.shape)}; it needs one image index per pair, "
                         f"({batch_size},)")
    return image_index[:, None] == image_index[None, :]


def _check_pair(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> None:
    if img_emb.ndim != 2 or img_emb.shape != txt_emb.shape:
        raise ValueError(f"img_emb {tuple(img_emb.shape)} and txt_emb {tuple(txt_emb.shape)} must both be "
                         "(batch, dim), row i of each being one matching pair")


def _reduce(per_item: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    raise ValueError(f"reduction={reduction!r}; use 'mean' or 'sum'")


def cosine_embedding_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, image_index: torch.Tensor | None = None,
                          margin: float = 0.3, num_negatives: int = 1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's loss, used as intended: ``nn.CosineEmbeddingLoss`` on (image, caption, +-1) triples.

    Matching pairs are ``+1`` triples (loss ``1 - cos``); for each image, ``num_negatives`` random captions of *other*
    images are ``-1`` triples (loss ``max(0, cos - margin)``). All triples are averaged.
    """
    _check_pair(img_emb, txt_emb)
    if num_negatives < 1:
        raise ValueError(f"num_negatives={num_negatives}; draw at least one negative caption per image")
    batch = img_emb.shape[0]
    same = positive_mask(image_index, batch, img_emb.device)
    if bool(same.all()):
        raise ValueError("every pair in this batch shows the same image, so there is no negative caption to draw")
    # Random scores, -1 on same-image pairs: the top `num_negatives` of each row are distinct captions of other
    # images (a row with fewer takes them all, then same-image pairs, which `valid` drops).
    noise = torch.rand(batch, batch, generator=generator, device="cpu").to(img_emb.device)
    noise = noise.masked_fill(same, -1.0)
    k = min(num_negatives, batch - 1)
    negatives = noise.topk(k, dim=1).indices  # (B, k)
    valid = ~same.gather(1, negatives)  # a row with too few other images can still hit a same-image pair
    rows = torch.arange(batch, device=img_emb.device)[:, None].expand_as(negatives)
    neg_img, neg_txt = img_emb[rows[valid]], txt_emb[negatives[valid]]
    x1, x2 = torch.cat([img_emb, neg_img]), torch.cat([txt_emb, neg_txt])
    target = torch.cat([torch.ones(batch, device=img_emb.device), -torch.ones(len(neg_img), device=img_emb.device)])
    return F.cosine_embedding_loss(x1, x2, target, margin=margin)


def hinge_triplet_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, image_index: torch.Tensor | None = None,
                       margin: float = 0.2, max_violation: bool = False, reduction: Reduction = "mean") -> torch.Tensor:
    """VSE++'s hinge triplet loss in both directions, over the in-batch negatives.

    With ``sim = img_emb @ txt_emb.T`` and ``d = diag(sim)``, image ``i`` pays ``max(0, margin + sim[i, j] - d[i])`` for
    each caption ``j`` of another image, caption ``i`` pays ``max(0, margin + sim[j, i] - d[i])`` for each other image
    ``j``. ``max_violation``: only the hardest negative counts (VSE++), else all (VSE0). Per anchor the two directions
    are added; ``reduction`` then averages or sums (VSE++'s code) over the batch.
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


def info_nce_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                  image_index: torch.Tensor | None = None, negatives: torch.Tensor | None = None,
                  negative_owner: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: cross-entropy over the scaled similarity matrix, both directions.

    ``logits = exp(logit_scale).clamp(max=100) * img_emb @ txt_emb.T`` (``logit_scale``: the *log* of the inverse
    temperature); row ``i`` should pick caption ``i`` and column ``i`` image ``i``; the loss averages the two
    cross-entropies. Other captions of the same image are left out of each softmax. Hard ``negatives`` ``(N, D)`` join
    the image -> text softmax of the rows showing the image of pair ``negative_owner[n]``, and no other (NegCLIP).
    """
    _check_pair(img_emb, txt_emb)
    scale = torch.as_tensor(logit_scale, dtype=img_emb.dtype, device=img_emb.device).exp().clamp(max=MAX_LOGIT_SCALE)
    logits_per_image = scale * (img_emb @ txt_emb.T)
    batch = logits_per_image.shape[0]
    others = positive_mask(image_index, batch, logits_per_image.device)
    others.fill_diagonal_(False)
    logits_per_image = logits_per_image.masked_fill(others, float("-inf"))
    labels = torch.arange(batch, device=logits_per_image.device)
    text_side = F.cross_entropy(logits_per_image.T, labels)
    if negatives is not None and len(negatives):
        index = torch.arange(batch, device=img_emb.device) if image_index is None else image_index
        theirs = index[:, None] == index[negative_owner][None, :]
        extra = (scale * (img_emb @ negatives.T)).masked_fill(~theirs, float("-inf"))
        logits_per_image = torch.cat([logits_per_image, extra], dim=1)
    return (F.cross_entropy(logits_per_image, labels) + text_side) / 2


LOSSES = {
    "cosine": "the seed's CosineEmbeddingLoss on matching and sampled non-matching pairs (margin 0.3)",
    "hinge": "hinge triplet loss summed over all in-batch negatives (VSE0, margin 0.2)",
    "hardest": "hinge triplet loss on the hardest in-batch negative (VSE++), after a warm-up on the sum",
    "infonce": "symmetric InfoNCE over the similarity matrix with a learnable temperature (CLIP)",
}


def contrastive_loss(name: str, img_emb: torch.Tensor, txt_emb: torch.Tensor, image_index: torch.Tensor | None = None,
                     *, logit_scale: torch.Tensor | float | None = None, margin: float | None = None,
                     hardest: bool = True, generator: torch.Generator | None = None,
                     negatives: torch.Tensor | None = None, negative_owner: torch.Tensor | None = None) -> torch.Tensor:
    """One of :data:`LOSSES` by name, as the training loop calls it.

    ``hardest=False`` makes ``"hardest"`` behave like ``"hinge"`` (the warm-up); ``margin`` defaults to each loss's own
    (cosine 0.3, hinge 0.2); ``"infonce"`` needs ``logit_scale`` and alone takes hard ``negatives``."""
    if negatives is not None and name != "infonce":
        raise ValueError(f"hard negatives join the 'infonce' loss's softmax; the {name!r} loss takes none")
    own_margin = {} if margin is None else {"margin": margin}
    if name == "cosine":
        return cosine_embedding_loss(img_emb, txt_emb, image_index, generator=generator, **own_margin)
    if name in ("hinge", "hardest"):
        return hinge_triplet_loss(img_emb, txt_emb, image_index, max_violation=name == "hardest" and hardest,
                                  **own_margin)
    if name == "infonce":
        if logit_scale is None:
            raise ValueError("the 'infonce' loss needs the model's logit_scale")
        return info_nce_loss(img_emb, txt_emb, logit_scale, image_index, negatives, negative_owner)
    raise ValueError(f"unknown loss {name!r}. Choose one of: " + "; ".join(f"{k!r}: {v}" for k, v in LOSSES.items()))
