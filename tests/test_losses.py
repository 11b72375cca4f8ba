"""Contrastive losses (chapter 03): VSE++'s hinge triplet losses, CLIP's InfoNCE,
the seed's cosine-embedding loss, and the masking of captions of the same image."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from siamese_utils.core.losses import (
    LOSSES,
    contrastive_loss,
    cosine_embedding_loss,
    hinge_triplet_loss,
    info_nce_loss,
    positive_mask,
)

DTYPE = torch.float64


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def random_pairs(seed: int, batch: int = 8, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image embeddings and captions near them (so the losses are neither 0 nor huge)."""
    g = torch.Generator().manual_seed(seed)
    img = unit(torch.randn(batch, dim, generator=g, dtype=DTYPE))
    txt = unit(img + 0.7 * torch.randn(batch, dim, generator=g, dtype=DTYPE))
    return img, txt


# ---------------------------------------------------------------------------
# hinge_triplet_loss: hand-computed values
# ---------------------------------------------------------------------------

# Three pairs of 2-d unit vectors (x = (1, 0), y = (0, 1), b = (0.8, 0.6), d = (0.8, -0.6)):
#   images   = x, y, b          captions = d, b, x
# sim = images @ captions.T (row: image, column: caption):
#        c0     c1    c2
#   i0 [ 0.8,   0.8,  1.0 ]
#   i1 [-0.6,   0.6,  0.0 ]
#   i2 [ 0.28,  1.0,  0.8 ]      (0.8*0.8 - 0.6*0.6 = 0.28, 0.64 + 0.36 = 1.0)
# d = diag(sim) = [0.8, 0.6, 0.8]; margin 0.2.
# Image i against caption j != i: max(0, 0.2 + sim[i, j] - d[i])
#   i0: c1 0.2+0.8-0.8 = 0.2,   c2 0.2+1.0-0.8 = 0.4      -> sum 0.6, max 0.4
#   i1: c0 0.2-0.6-0.6 < 0,     c2 0.2+0.0-0.6 < 0        -> sum 0.0, max 0.0
#   i2: c0 0.2+0.28-0.8 < 0,    c1 0.2+1.0-0.8 = 0.4      -> sum 0.4, max 0.4
# Caption j against image i != j: max(0, 0.2 + sim[i, j] - d[j])
#   c0: i1 0.2-0.6-0.8 < 0,     i2 0.2+0.28-0.8 < 0       -> sum 0.0, max 0.0
#   c1: i0 0.2+0.8-0.6 = 0.4,   i2 0.2+1.0-0.6 = 0.6      -> sum 1.0, max 0.6
#   c2: i0 0.2+1.0-0.8 = 0.4,   i1 0.2+0.0-0.8 < 0        -> sum 0.4, max 0.4
# Per anchor (both directions added):
#   VSE0 (sum):    [0.6 + 0.0, 0.0 + 1.0, 0.4 + 0.4] = [0.6, 1.0, 0.8] -> sum 2.4, mean 0.8
#   VSE++ (max):   [0.4 + 0.0, 0.0 + 0.6, 0.4 + 0.4] = [0.4, 0.6, 0.8] -> sum 1.8, mean 0.6
HAND_IMG = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=DTYPE)
HAND_TXT = torch.tensor([[0.8, -0.6], [0.8, 0.6], [1.0, 0.0]], dtype=DTYPE)


@pytest.mark.parametrize(
    "max_violation, reduction, expected",
    [(False, "sum", 2.4), (False, "mean", 0.8), (True, "sum", 1.8), (True, "mean", 0.6)],
)
def test_hinge_hand_computed(max_violation, reduction, expected):
    """VSE0 sums and VSE++ takes the hardest negative, both directions added, margin 0.2 (see the table above)."""
    loss = hinge_triplet_loss(HAND_IMG, HAND_TXT, margin=0.2, max_violation=max_violation, reduction=reduction)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_hinge_default_margin_is_vse_0_2_and_mean():
    """Defaults: margin 0.2, sum over negatives, mean over the batch."""
    assert hinge_triplet_loss(HAND_IMG, HAND_TXT).item() == pytest.approx(0.8, abs=1e-12)


def test_hinge_margin_enters_every_cost():
    """Margin 0.4 on the hand example: every cost above grows by 0.2 and new ones switch on.

    Image vs caption: i0 0.4 + 0.6 = 1.0; i1 0; i2 0.6 + (0.4+0.28-0.8 < 0) = 0.6.
    Caption vs image: c0 0; c1 0.6 + 0.8 = 1.4; c2 0.6 + (0.4+0-0.8 < 0) = 0.6.  Sum = 3.6.
    """
    assert hinge_triplet_loss(HAND_IMG, HAND_TXT, margin=0.4, reduction="sum").item() == pytest.approx(3.6)


def vsepp_contrastive_loss(im, s, margin=0.2, max_violation=False):
    """VSE++'s ContrastiveLoss.forward (vsepp/model.py), rewritten here without the Variable API."""
    scores = im @ s.T
    diagonal = scores.diag().view(im.size(0), 1)
    d1 = diagonal.expand_as(scores)
    d2 = diagonal.t().expand_as(scores)
    cost_s = (margin + scores - d1).clamp(min=0)  # caption retrieval: image i, caption j
    cost_im = (margin + scores - d2).clamp(min=0)  # image retrieval: caption j, image i
    mask = torch.eye(scores.size(0), dtype=torch.bool)
    cost_s = cost_s.masked_fill(mask, 0)
    cost_im = cost_im.masked_fill(mask, 0)
    if max_violation:
        cost_s = cost_s.max(1)[0]
        cost_im = cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hinge_sum_equals_vsepp_contrastive_loss(seed, max_violation):
    """reduction="sum" is VSE++'s ContrastiveLoss; "mean" is that divided by the batch size."""
    img, txt = random_pairs(seed, batch=9)
    expected = vsepp_contrastive_loss(img, txt, 0.2, max_violation)
    assert expected.item() > 0
    got = hinge_triplet_loss(img, txt, max_violation=max_violation, reduction="sum")
    torch.testing.assert_close(got, expected)
    got_mean = hinge_triplet_loss(img, txt, max_violation=max_violation, reduction="mean")
    torch.testing.assert_close(got_mean, expected / 9)


def test_hinge_all_distinct_image_index_equals_none():
    """An image_index with no repeats masks only the diagonal, exactly as no image_index."""
    img, txt = random_pairs(3, batch=6)
    for hardest in (False, True):
        a = hinge_triplet_loss(img, txt, torch.tensor([5, 3, 0, 1, 2, 4]), max_violation=hardest)
        b = hinge_triplet_loss(img, txt, None, max_violation=hardest)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Duplicate images: the other caption of the same image is not a negative
# ---------------------------------------------------------------------------

# Pairs 0 and 1 show the same image (image_index [0, 0, 1, 2]); pairs 2 and 3 other images.
DUP_INDEX = torch.tensor([0, 0, 1, 2])


def batch_with_knob(img_row: int, txt_row: int, p: torch.Tensor):
    """A batch in which ``p`` moves only ``sim[img_row, txt_row]``.

    Pairs 0 and 1 are two captions of one image (same image vector ``u``, captions near
    ``u``), so ``(image 0, caption 1)`` and ``(image 1, caption 0)`` are hard "negatives"
    if nobody masks them. One extra coordinate is ``p`` in image ``img_row`` and 1 in
    caption ``txt_row`` and 0 elsewhere, so ``sim[img_row, txt_row]`` grows by ``p`` and no
    other dot product changes. At ``p = 0`` the norms do not depend on ``p`` to first
    order either, so even the cosine loss has d loss / d p = 0 unless the pair counts.
    """
    g = torch.Generator().manual_seed(11)
    u = unit(torch.randn(8, generator=g, dtype=DTYPE))
    img = torch.stack([u, u, unit(torch.randn(8, generator=g, dtype=DTYPE)), unit(torch.randn(8, generator=g, dtype=DTYPE))])
    txt = unit(img + 0.1 * torch.randn(4, 8, generator=g, dtype=DTYPE))
    img_extra = torch.stack([p if i == img_row else torch.zeros((), dtype=DTYPE) for i in range(4)])
    txt_extra = torch.tensor([1.0 if j == txt_row else 0.0 for j in range(4)], dtype=DTYPE)
    return torch.cat([img, img_extra[:, None]], dim=1), torch.cat([txt, txt_extra[:, None]], dim=1)


LOSS_FNS = {
    "hinge": lambda img, txt, idx: hinge_triplet_loss(img, txt, idx),
    "hardest": lambda img, txt, idx: hinge_triplet_loss(img, txt, idx, max_violation=True),
    "infonce": lambda img, txt, idx: info_nce_loss(img, txt, math.log(10.0), idx),
    # num_negatives=3 draws every other caption in this 4-pair batch, whatever the noise.
    "cosine": lambda img, txt, idx: cosine_embedding_loss(
        img, txt, idx, num_negatives=3, generator=torch.Generator().manual_seed(0)
    ),
}


def test_knob_moves_exactly_one_similarity():
    """Sanity check of the construction the masking tests rely on."""
    img0, txt0 = batch_with_knob(0, 1, torch.tensor(0.0, dtype=DTYPE))
    img1, txt1 = batch_with_knob(0, 1, torch.tensor(0.5, dtype=DTYPE))
    delta = img1 @ txt1.T - img0 @ txt0.T
    expected = torch.zeros(4, 4, dtype=DTYPE)
    expected[0, 1] = 0.5
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-15)
    sim = img0 @ txt0.T
    # The same-image pairs are the hardest negatives and violate the margin.
    assert sim[0, 1] == sim[0, [1, 2, 3]].max() and sim[0, 1] + 0.2 > sim[0, 0]
    assert sim[1, 0] == sim[1, [0, 2, 3]].max() and sim[1, 0] + 0.2 > sim[1, 1]
    assert sim[0, 1] > 0.3 and sim[1, 0] > 0.3  # active for the cosine loss's margin too


@pytest.mark.parametrize("pair", [(0, 1), (1, 0)], ids=["image0-caption1", "image1-caption0"])
@pytest.mark.parametrize("name", list(LOSS_FNS))
def test_same_image_pair_has_no_gradient_when_masked(name, pair):
    """d loss / d sim[i, k] is 0 for a same-image pair when image_index is given, and not 0 without it."""
    grads = {}
    for label, idx in (("masked", DUP_INDEX), ("unmasked", None)):
        p = torch.zeros((), dtype=DTYPE, requires_grad=True)
        img, txt = batch_with_knob(*pair, p)
        LOSS_FNS[name](img, txt, idx).backward()
        grads[label] = p.grad.item()
    assert grads["masked"] == 0.0
    assert abs(grads["unmasked"]) > 1e-3


@pytest.mark.parametrize("pair", [(0, 1), (1, 0)], ids=["image0-caption1", "image1-caption0"])
@pytest.mark.parametrize("name", ["hinge", "hardest", "infonce"])
def test_same_image_pair_similarity_does_not_change_loss_when_masked(name, pair):
    """Raising sim[i, k] of a same-image pair leaves the loss unchanged when masked and raises it when not."""
    values = {}
    for p in (0.0, 0.5):
        img, txt = batch_with_knob(*pair, torch.tensor(p, dtype=DTYPE))
        values[p] = {"masked": LOSS_FNS[name](img, txt, DUP_INDEX), "unmasked": LOSS_FNS[name](img, txt, None)}
    torch.testing.assert_close(values[0.5]["masked"], values[0.0]["masked"], rtol=0, atol=1e-12)
    assert values[0.5]["unmasked"] > values[0.0]["unmasked"] + 1e-3


def test_masking_matters_for_the_value():
    """With a duplicate in the batch, the masked losses are smaller than the unmasked ones."""
    img, txt = batch_with_knob(0, 1, torch.tensor(0.0, dtype=DTYPE))
    for name in ("hinge", "hardest", "infonce"):
        assert LOSS_FNS[name](img, txt, DUP_INDEX) < LOSS_FNS[name](img, txt, None) - 1e-3, name


def test_positive_mask():
    """True where two pairs show the same image; the identity without image_index."""
    torch.testing.assert_close(positive_mask(None, 3), torch.eye(3, dtype=torch.bool))
    expected = torch.tensor(
        [[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool
    )
    torch.testing.assert_close(positive_mask(torch.tensor([7, 7, 2, 7]), 4), expected)
    torch.testing.assert_close(positive_mask([7, 7, 2, 7], 4), expected)  # a list works too


# ---------------------------------------------------------------------------
# info_nce_loss
# ---------------------------------------------------------------------------


def test_info_nce_hand_computed_2x2():
    """logit_scale log(5): logits = 5 * [[1, 0.8], [0, 0.6]] = [[5, 4], [0, 3]].

    image 0 -> caption 0: -log(e^5 / (e^5 + e^4)) = log(1 + e^-1)
    image 1 -> caption 1: -log(e^3 / (e^0 + e^3)) = log(1 + e^-3)
    caption 0 -> image 0 (column [5, 0]): log(1 + e^-5)
    caption 1 -> image 1 (column [4, 3]): -log(e^3 / (e^4 + e^3)) = log(1 + e^1)
    loss = mean of the two directions' means = (sum of the four) / 4
         = (0.313262 + 0.048587 + 0.006715 + 1.313262) / 4 ~= 0.420457
    """
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DTYPE)
    txt = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=DTYPE)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-3)) + math.log1p(math.exp(-5)) + math.log1p(math.e)) / 4
    assert expected == pytest.approx(0.420457, abs=1e-6)
    assert info_nce_loss(img, txt, math.log(5.0)).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_hand_computed_with_duplicate_image():
    """Three pairs, pairs 0 and 1 of the same image; orthonormal embeddings, logit_scale log(2): logits = 2 * I.

    Masked: row 0 is a softmax over captions {0, 2} only: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2);
    row 1 over {1, 2}: log(1 + e^-2); row 2 over all three: log(1 + 2 e^-2). Columns are the
    same by symmetry, so loss = (2 log(1 + e^-2) + log(1 + 2 e^-2)) / 3 = (2 * 0.126928 + 0.239545) / 3
    ~= 0.164467. Unmasked every row and column is log(1 + 2 e^-2) ~= 0.239545.
    """
    eye = torch.eye(3, dtype=DTYPE)
    masked = (2 * math.log1p(math.exp(-2)) + math.log1p(2 * math.exp(-2))) / 3
    unmasked = math.log1p(2 * math.exp(-2))
    assert (masked, unmasked) == pytest.approx((0.164467, 0.239545), abs=1e-6)
    assert info_nce_loss(eye, eye, math.log(2.0), torch.tensor([0, 0, 1])).item() == pytest.approx(masked, rel=1e-12)
    assert info_nce_loss(eye, eye, math.log(2.0)).item() == pytest.approx(unmasked, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_info_nce_equals_clip_reference(seed):
    """(CE(logits, arange) + CE(logits.T, arange)) / 2 with logits = exp(logit_scale) * img @ txt.T."""
    img, txt = random_pairs(seed, batch=10)
    logit_scale = math.log(1 / 0.07)
    logits = math.exp(logit_scale) * img @ txt.T
    labels = torch.arange(10)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(info_nce_loss(img, txt, logit_scale), expected)
    torch.testing.assert_close(info_nce_loss(img, txt, torch.tensor(logit_scale)), expected)
    # All-distinct image_index changes nothing.
    torch.testing.assert_close(info_nce_loss(img, txt, logit_scale, torch.arange(10) * 3), expected)


def test_info_nce_logit_scale_is_clamped_at_100():
    """exp(logit_scale) is clamped at 100: log(1000) gives the loss of log(100), log(50) does not."""
    img, txt = random_pairs(4, batch=6)
    at_100 = info_nce_loss(img, txt, math.log(100.0))
    torch.testing.assert_close(info_nce_loss(img, txt, math.log(1000.0)), at_100)
    torch.testing.assert_close(info_nce_loss(img, txt, torch.tensor(math.log(1000.0))), at_100)
    assert abs(info_nce_loss(img, txt, math.log(50.0)) - at_100) > 1e-3


def test_info_nce_gradient_reaches_logit_scale():
    """A learnable logit_scale gets the gradient of the reference expression (and none once clamped)."""
    img, txt = random_pairs(5, batch=6)
    logit_scale = torch.tensor(math.log(10.0), dtype=DTYPE, requires_grad=True)
    info_nce_loss(img, txt, logit_scale).backward()
    ref_scale = torch.tensor(math.log(10.0), dtype=DTYPE, requires_grad=True)
    logits = ref_scale.exp() * img @ txt.T
    labels = torch.arange(6)
    ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()
    assert logit_scale.grad is not None and abs(logit_scale.grad.item()) > 1e-4
    torch.testing.assert_close(logit_scale.grad, ref_scale.grad)

    clamped = torch.tensor(math.log(1000.0), dtype=DTYPE, requires_grad=True)
    info_nce_loss(img, txt, clamped).backward()
    assert clamped.grad.item() == 0.0


def test_info_nce_float32_parameter_with_float32_embeddings():
    """The usual training case: float32 embeddings and an nn.Parameter logit_scale."""
    img, txt = (t.float() for t in random_pairs(6, batch=5))
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss = info_nce_loss(img, txt, scale)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and scale.grad is not None


def test_info_nce_masked_loss_and_gradients_are_finite():
    """Masking with -inf must not leak NaN into the loss or the gradients."""
    img, txt = random_pairs(7, batch=6)
    img.requires_grad_(True)
    loss = info_nce_loss(img, txt, math.log(100.0), torch.tensor([0, 0, 0, 1, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(img.grad).all()


# ---------------------------------------------------------------------------
# cosine_embedding_loss
# ---------------------------------------------------------------------------


def drawn_negatives(batch, same, num_negatives, seed):
    """Which captions the loss draws for each image: the same noise, re-run with a generator of the same seed."""
    noise = torch.rand(batch, batch, generator=torch.Generator().manual_seed(seed))
    noise = noise.masked_fill(same, -1.0)
    picks = noise.topk(min(num_negatives, batch - 1), dim=1).indices
    return [(i, int(j)) for i in range(batch) for j in picks[i] if not same[i, j]]


def seed_cosine_loss(img, txt, negatives, margin=0.3):
    """nn.CosineEmbeddingLoss(margin) on the positives (+1) followed by the given negatives (-1)."""
    rows = [i for i, _ in negatives]
    cols = [j for _, j in negatives]
    x1 = torch.cat([img, img[rows]])
    x2 = torch.cat([txt, txt[cols]])
    y = torch.cat([torch.ones(len(img)), -torch.ones(len(negatives))]).to(img.dtype)
    return torch.nn.CosineEmbeddingLoss(margin=margin)(x1, x2, y)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cosine_equals_nn_cosine_embedding_loss_on_the_drawn_negatives(seed):
    """With a seeded generator the loss is CosineEmbeddingLoss(0.3) on positives + the negatives that noise draws."""
    img, txt = random_pairs(seed, batch=5)
    loss = cosine_embedding_loss(img, txt, generator=torch.Generator().manual_seed(seed))
    negatives = drawn_negatives(5, torch.eye(5, dtype=torch.bool), 1, seed)
    assert len(negatives) == 5 and all(i != j for i, j in negatives)
    torch.testing.assert_close(loss, seed_cosine_loss(img, txt, negatives))


def test_cosine_value_is_one_of_the_possible_draws():
    """Independently of how the noise is used: the loss is CosineEmbeddingLoss over *some* choice of
    one other caption per image (3 pairs: 2^3 choices), never one that pairs an image with its own caption."""
    img, txt = random_pairs(8, batch=3)
    allowed = {
        round(seed_cosine_loss(img, txt, list(enumerate(choice))).item(), 12)
        for choice in itertools.product(*[[j for j in range(3) if j != i] for i in range(3)])
    }
    seen = set()
    for seed in range(20):
        value = round(cosine_embedding_loss(img, txt, generator=torch.Generator().manual_seed(seed)).item(), 12)
        assert value in allowed
        seen.add(value)
    assert len(seen) > 1  # the draw does depend on the seed


def test_cosine_every_negative_drawn_when_num_negatives_is_large():
    """num_negatives = B - 1 (or more) draws every other caption: a fixed value, whatever the seed."""
    img, txt = random_pairs(9, batch=4)
    everything = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = seed_cosine_loss(img, txt, everything)
    for num_negatives, seed in [(3, 0), (3, 1), (7, 2)]:
        got = cosine_embedding_loss(img, txt, num_negatives=num_negatives, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("seed", [0, 5])
def test_cosine_num_negatives_two(seed):
    """num_negatives=2 adds two distinct negatives per image (a 6-pair batch gives 6 + 12 triples)."""
    img, txt = random_pairs(seed, batch=6)
    negatives = drawn_negatives(6, torch.eye(6, dtype=torch.bool), 2, seed)
    assert len(negatives) == 12 and len(set(negatives)) == 12
    loss = cosine_embedding_loss(img, txt, num_negatives=2, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(loss, seed_cosine_loss(img, txt, negatives))


def test_cosine_never_draws_a_caption_of_the_same_image():
    """Five of six pairs show one image; each image still gets min(k, #other-image captions) negatives, all of other images.

    Image 0's five pairs are e1 with caption e1, pair 5 is b = (0.8, 0.6) with caption b. Positives
    have cos 1 (loss 0); every other-image negative has cos 0.8 (loss 0.8 - 0.3 = 0.5); a same-image
    negative would have cos 1 (loss 0.7). With n = 5 * min(k, 1) + min(k, 5) negatives the mean over
    the 6 + n triples is 0.5 n / (6 + n) (up to CosineEmbeddingLoss's eps): k=1 -> 3/12, k=3 -> 4/14,
    k>=5 -> 5/16.
    """
    e1 = torch.tensor([1.0, 0.0], dtype=DTYPE)
    b = torch.tensor([0.8, 0.6], dtype=DTYPE)
    img = torch.stack([e1] * 5 + [b])
    txt = img.clone()
    index = torch.tensor([4, 4, 4, 4, 4, 9])
    for seed in range(10):
        for k in (1, 3, 5, 9):
            n = 5 * min(k, 1) + min(k, 5)
            loss = cosine_embedding_loss(img, txt, index, num_negatives=k, generator=torch.Generator().manual_seed(seed))
            assert loss.item() == pytest.approx(0.5 * n / (6 + n), abs=1e-9), (seed, k)
    # Without image_index, same-image captions are drawn (cos 1, loss 0.7 each) and the loss shows it.
    unmasked = {
        cosine_embedding_loss(img, txt, None, generator=torch.Generator().manual_seed(seed)).item() for seed in range(5)
    }
    assert max(unmasked) > 0.25 + 0.01


def test_cosine_with_duplicates_equals_reference_on_other_image_negatives():
    """With duplicates and num_negatives large, the negatives are exactly the other-image pairs."""
    img, txt = random_pairs(10, batch=5)
    index = torch.tensor([0, 0, 1, 1, 2])
    loss = cosine_embedding_loss(img, txt, index, num_negatives=4, generator=torch.Generator().manual_seed(3))
    other = [(i, j) for i in range(5) for j in range(5) if index[i] != index[j]]
    torch.testing.assert_close(loss, seed_cosine_loss(img, txt, other))


def test_cosine_seed_determines_the_draw():
    """Same seed -> same loss; over several seeds, different draws give different losses."""
    img, txt = random_pairs(12, batch=8)

    def run(seed):
        return cosine_embedding_loss(img, txt, generator=torch.Generator().manual_seed(seed)).item()

    assert run(42) == run(42)
    assert len({run(s) for s in range(6)}) > 1


def test_cosine_margin_and_hand_value():
    """Two pairs, (1, 0) and (0.6, 0.8): positives cos 1 (loss 0); both negatives cos 0.6 -> max(0, 0.6 - margin)."""
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=DTYPE)
    txt = img.clone()
    # Two positives (loss 0) and two negatives with cos 0.6: mean = 2 * (0.6 - m) / 4.
    assert cosine_embedding_loss(img, txt).item() == pytest.approx(2 * 0.3 / 4)
    assert cosine_embedding_loss(img, txt, margin=0.5).item() == pytest.approx(2 * 0.1 / 4)
    assert cosine_embedding_loss(img, txt, margin=0.7).item() == pytest.approx(0.0)


@pytest.mark.parametrize("index", [torch.tensor([3, 3, 3]), None], ids=["all-same-image", "one-pair"])
def test_cosine_batch_without_negatives_raises(index):
    """A batch where every pair shows the same image has no negative to draw."""
    n = 3 if index is not None else 1
    img, txt = random_pairs(0, batch=n)
    with pytest.raises(ValueError, match="every pair in this batch shows the same image"):
        cosine_embedding_loss(img, txt, index)


def test_cosine_num_negatives_must_be_positive():
    img, txt = random_pairs(0, batch=3)
    with pytest.raises(ValueError, match="num_negatives=0"):
        cosine_embedding_loss(img, txt, num_negatives=0)


# ---------------------------------------------------------------------------
# contrastive_loss: dispatch by name
# ---------------------------------------------------------------------------


def test_dispatch_hinge_and_hardest():
    """"hinge" is VSE0, "hardest" VSE++, "hardest" with hardest=False the warm-up (= "hinge"); margin passes through."""
    img, txt = random_pairs(13, batch=7)
    index = torch.tensor([0, 1, 1, 2, 3, 4, 5])
    vse0 = hinge_triplet_loss(img, txt, index)
    vsepp = hinge_triplet_loss(img, txt, index, max_violation=True)
    assert abs(vse0 - vsepp) > 1e-3  # the two are distinguishable on this batch
    torch.testing.assert_close(contrastive_loss("hinge", img, txt, index), vse0)
    torch.testing.assert_close(contrastive_loss("hinge", img, txt, index, hardest=True), vse0)
    torch.testing.assert_close(contrastive_loss("hardest", img, txt, index), vsepp)
    torch.testing.assert_close(contrastive_loss("hardest", img, txt, index, hardest=False), vse0)
    torch.testing.assert_close(
        contrastive_loss("hardest", img, txt, index, margin=0.5), hinge_triplet_loss(img, txt, index, 0.5, True)
    )
    assert contrastive_loss("hinge", HAND_IMG, HAND_TXT).item() == pytest.approx(0.8)  # margin 0.2 by default


def test_dispatch_infonce():
    """"infonce" is info_nce_loss with the given logit_scale and image_index; without logit_scale it refuses."""
    img, txt = random_pairs(14, batch=6)
    index = torch.tensor([0, 0, 1, 2, 3, 4])
    torch.testing.assert_close(
        contrastive_loss("infonce", img, txt, index, logit_scale=2.5), info_nce_loss(img, txt, 2.5, index)
    )
    with pytest.raises(ValueError, match="'infonce' loss needs the model's logit_scale"):
        contrastive_loss("infonce", img, txt, index)


def test_dispatch_cosine():
    """"cosine" is cosine_embedding_loss with margin 0.3 by default and the given generator."""
    img, txt = random_pairs(15, batch=6)
    index = torch.tensor([0, 0, 1, 2, 3, 4])

    def g():
        return torch.Generator().manual_seed(7)

    torch.testing.assert_close(
        contrastive_loss("cosine", img, txt, index, generator=g()),
        cosine_embedding_loss(img, txt, index, margin=0.3, generator=g()),
    )
    torch.testing.assert_close(
        contrastive_loss("cosine", img, txt, index, margin=0.1, generator=g()),
        cosine_embedding_loss(img, txt, index, margin=0.1, generator=g()),
    )
    assert contrastive_loss("cosine", img, txt, index, margin=0.1, generator=g()) != contrastive_loss(
        "cosine", img, txt, index, generator=g()
    )


def test_dispatch_unknown_name_lists_the_choices():
    img, txt = random_pairs(0, batch=3)
    with pytest.raises(ValueError, match="unknown loss 'triplet'") as info:
        contrastive_loss("triplet", img, txt)
    for name in LOSSES:
        assert repr(name) in str(info.value)
    assert set(LOSSES) == {"cosine", "hinge", "hardest", "infonce"}


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------

ALL_LOSSES = [
    lambda img, txt, idx=None: hinge_triplet_loss(img, txt, idx),
    lambda img, txt, idx=None: hinge_triplet_loss(img, txt, idx, max_violation=True),
    lambda img, txt, idx=None: info_nce_loss(img, txt, 1.0, idx),
    lambda img, txt, idx=None: cosine_embedding_loss(img, txt, idx),
]
LOSS_IDS = ["hinge", "hardest", "infonce", "cosine"]


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=LOSS_IDS)
def test_mismatched_embeddings_raise_naming_the_shapes(loss_fn):
    img = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"img_emb \(3, 4\) and txt_emb \(4, 4\)"):
        loss_fn(img, torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"img_emb \(3, 4\) and txt_emb \(3, 5\)"):
        loss_fn(img, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"img_emb \(4,\) and txt_emb \(4,\)"):
        loss_fn(torch.randn(4), torch.randn(4))


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=LOSS_IDS)
def test_wrong_image_index_shape_raises_naming_the_shapes(loss_fn):
    img, txt = random_pairs(0, batch=3)
    with pytest.raises(ValueError, match=r"image_index has shape \(2,\).*\(3,\)"):
        loss_fn(img, txt, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"image_index has shape \(3, 1\).*\(3,\)"):
        loss_fn(img, txt, torch.tensor([[0], [1], [2]]))


def test_unknown_reduction_raises():
    with pytest.raises(ValueError, match="reduction='none'"):
        hinge_triplet_loss(HAND_IMG, HAND_TXT, reduction="none")
