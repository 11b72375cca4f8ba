"""Retrieval metrics (chapters 03 and 04): R@K, medr and meanr in both directions, with the pessimistic tie
rule; COCO's 1K folds; chance level; agreement with slow reference loops and with torchmetrics."""

import math

import numpy as np
import pytest
import torch

import siamese_utils.core.metrics as metrics_module
from siamese_utils.core.metrics import (
    METRIC_KEYS,
    chance_metrics,
    fold_indices,
    format_metrics,
    metrics_from_scores,
    metrics_table,
    ranks_from_scores,
    retrieval_metrics,
    retrieval_metrics_per_fold,
    retrieval_ranks,
)


def structured(seed, counts, dim=16, noise=2.5):
    """Unit image vectors and, for image i, ``counts[i]`` captions = image + noise, normalised (float32)."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((len(counts), dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(len(counts)), counts)
    txt = img[owner] + noise * rng.standard_normal((len(owner), dim)) / math.sqrt(dim)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32), owner


FIVE_EACH = [5] * 30
UNEVEN = np.random.default_rng(99).integers(1, 8, size=35).tolist()


def reference_ranks(img, txt, owner):
    """Slow and obviously correct: one query at a time, plain Python counting."""
    sim = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
    n, m = sim.shape
    i2t = []
    for i in range(n):
        best_own = max(sim[i, j] for j in range(m) if owner[j] == i)
        i2t.append(sum(1 for j in range(m) if owner[j] != i and sim[i, j] >= best_own))
    t2i = []
    for j in range(m):
        own_score = sim[owner[j], j]
        t2i.append(sum(1 for i in range(n) if i != owner[j] and sim[i, j] >= own_score))
    return np.array(i2t), np.array(t2i)


def metrics_from_ranks(i2t, t2i):
    out = {}
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{prefix}_r{k}"] = 100.0 * np.mean(ranks < k)
        out[f"{prefix}_medr"] = math.floor(np.median(ranks)) + 1
        out[f"{prefix}_meanr"] = np.mean(ranks) + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def vsepp_ranks(img, txt, owner):
    """VSE++'s i2t / t2i (evaluation.py), generalised from "captions 5i..5i+4" to any txt_to_img:
    argsort the scores in descending order; an image's rank is the best position of one of its
    captions, a caption's rank the position of its image."""
    sim = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
    n, m = sim.shape
    i2t = np.zeros(n, dtype=int)
    for index in range(n):
        inds = np.argsort(sim[index])[::-1]
        i2t[index] = min(np.where(inds == j)[0][0] for j in range(m) if owner[j] == index)
    t2i = np.zeros(m, dtype=int)
    for j in range(m):
        inds = np.argsort(sim[:, j])[::-1]
        t2i[j] = np.where(inds == owner[j])[0][0]
    return i2t, t2i


def assert_metrics_equal(got, expected):
    assert list(got) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


# ---------------------------------------------------------------------------
# Against references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [FIVE_EACH, UNEVEN], ids=["five-each", "uneven"])
def test_ranks_and_metrics_match_reference_loop(counts):
    """retrieval_ranks / retrieval_metrics equal the per-query reference loop, for numpy and torch inputs."""
    img, txt, owner = structured(1, counts)
    ref_i2t, ref_t2i = reference_ranks(img, txt, owner)
    # The data is neither trivial nor hopeless, so the comparison has teeth.
    assert 0 < np.mean(ref_i2t == 0) < 1 and 0 < np.mean(ref_t2i == 0) < 1 and ref_t2i.max() >= 10
    i2t, t2i = retrieval_ranks(img, txt, owner)
    assert i2t.shape == (len(counts),) and t2i.shape == (len(owner),)
    assert np.issubdtype(i2t.dtype, np.integer) and np.issubdtype(t2i.dtype, np.integer)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)

    expected = metrics_from_ranks(ref_i2t, ref_t2i)
    assert_metrics_equal(retrieval_metrics(img, txt, owner), expected)
    assert_metrics_equal(retrieval_metrics(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(owner)), expected)
    assert_metrics_equal(retrieval_metrics(img.tolist(), txt.tolist(), owner.tolist()), expected)


def test_torch_inputs_with_grad_and_float64():
    """Tensors that require grad, or are float64, are accepted and give the same numbers."""
    img, txt, owner = structured(2, FIVE_EACH)
    expected = retrieval_metrics(img, txt, owner)
    img_t = torch.from_numpy(img).double().requires_grad_(True)
    txt_t = torch.from_numpy(txt).double()
    assert retrieval_metrics(img_t, txt_t, owner) == expected


@pytest.mark.parametrize("counts", [FIVE_EACH, UNEVEN], ids=["five-each", "uneven"])
def test_chunking_does_not_change_the_ranks(counts):
    """chunk_size=7 (and 1, and larger than N) gives the same ranks as the default."""
    img, txt, owner = structured(3, counts)
    default = retrieval_ranks(img, txt, owner)
    for chunk_size in (1, 7, len(counts) - 1, 1000):
        got = retrieval_ranks(img, txt, owner, chunk_size=chunk_size)
        np.testing.assert_array_equal(got[0], default[0])
        np.testing.assert_array_equal(got[1], default[1])
    ref_i2t, ref_t2i = reference_ranks(img, txt, owner)
    np.testing.assert_array_equal(default[0], ref_i2t)
    np.testing.assert_array_equal(default[1], ref_t2i)


@pytest.mark.parametrize("counts", [FIVE_EACH, UNEVEN], ids=["five-each", "uneven"])
def test_equals_vsepp_on_tie_free_data(counts):
    """Without ties, the numbers are VSE++'s argsort-based i2t / t2i."""
    img, txt, owner = structured(4, counts)
    sim = img.astype(np.float64) @ txt.astype(np.float64).T
    # Tie-free: no candidate scores within float32 rounding of the ground truth it is compared with.
    own = owner[None, :] == np.arange(len(counts))[:, None]
    best_own = np.where(own, sim, -np.inf).max(axis=1)
    assert np.abs(sim - best_own[:, None])[~own].min() > 1e-6
    own_score = sim[owner, np.arange(len(owner))]
    assert np.abs(sim - own_score[None, :])[~own].min() > 1e-6
    i2t, t2i = vsepp_ranks(img, txt, owner)
    assert_metrics_equal(retrieval_metrics(img, txt, owner), metrics_from_ranks(i2t, t2i))


# ---------------------------------------------------------------------------
# Ties count against the ground truth
# ---------------------------------------------------------------------------


def test_duplicate_caption_under_two_images_is_a_tie_against_each():
    """Images 0 and 1 each have a caption v = (0.5, 0.5, 0) (a repeated template caption).

    Image 0 scores its own v at 0.5 and image 1's v at 0.5 too: a tie, which counts against it,
    so its rank is 1 (not 0); the same for image 1. Image 2 is clean. i2t R@1 is 33.3, not 100.
    Each v scores 0.5 with both images: t2i rank 1 (pessimistic), not 0.
    """
    img = np.eye(3, dtype=np.float32)
    v = [0.5, 0.5, 0.0]
    txt = np.array([v, [0.25, 0, 0], v, [0, 0.25, 0], [0, 0, 1]], dtype=np.float32)
    owner = [0, 0, 1, 1, 2]
    i2t, t2i = retrieval_ranks(img, txt, owner)
    np.testing.assert_array_equal(i2t, [1, 1, 0])
    np.testing.assert_array_equal(t2i, [1, 0, 1, 0, 0])
    metrics = retrieval_metrics(img, txt, owner)
    assert metrics["i2t_r1"] == pytest.approx(100 / 3) and metrics["t2i_r1"] == pytest.approx(60.0)
    # VSE++'s argsort puts one of the two tied v's first: it would report i2t R@1 = 66.7 or 100.
    assert metrics_from_ranks(*vsepp_ranks(img, txt, owner))["i2t_r1"] > metrics["i2t_r1"]


def test_identical_images_tie_for_their_captions():
    """Two identical image vectors: each one's caption finds the other image exactly as high, so t2i rank 1."""
    img = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    txt = np.array([[0.75, 0.25, 0], [0.5, 0.25, 0], [0, 1, 0]], dtype=np.float32)
    i2t, t2i = retrieval_ranks(img, txt, [0, 1, 2])
    np.testing.assert_array_equal(t2i, [1, 1, 0])
    # Both images score caption 0 at 0.75 and caption 1 at 0.5: image 1's own caption loses to caption 0.
    np.testing.assert_array_equal(i2t, [0, 1, 0])


def test_all_zero_embeddings_rank_last():
    """Everything scores 0: every candidate ties with the ground truth, so every rank is as bad as it gets."""
    img = np.zeros((4, 3), dtype=np.float32)
    txt = np.zeros((8, 3), dtype=np.float32)
    owner = [0, 0, 1, 1, 2, 2, 3, 3]
    i2t, t2i = retrieval_ranks(img, txt, owner)
    np.testing.assert_array_equal(i2t, [6, 6, 6, 6])  # the 6 captions of the other images
    np.testing.assert_array_equal(t2i, [3] * 8)  # the 3 other images
    m = retrieval_metrics(img, txt, owner)
    assert (m["i2t_r1"], m["i2t_r5"], m["i2t_r10"]) == (0.0, 0.0, 100.0)
    assert (m["t2i_r1"], m["t2i_r5"], m["t2i_r10"]) == (0.0, 100.0, 100.0)
    assert (m["i2t_medr"], m["i2t_meanr"], m["t2i_medr"], m["t2i_meanr"]) == (7.0, 7.0, 4.0, 4.0)


# ---------------------------------------------------------------------------
# Known values
# ---------------------------------------------------------------------------


def test_perfect_embeddings():
    """Captions equal to their image's vector, distinct images: R@1 = 100 both ways, medr = meanr = 1, rsum 600."""
    rng = np.random.default_rng(5)
    img = rng.standard_normal((12, 16))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(12), 5)
    m = retrieval_metrics(img, img[owner], owner)
    assert m == {
        "i2t_r1": 100.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "i2t_medr": 1.0, "i2t_meanr": 1.0,
        "t2i_r1": 100.0, "t2i_r5": 100.0, "t2i_r10": 100.0, "t2i_medr": 1.0, "t2i_meanr": 1.0,
        "rsum": 600.0,
    }  # fmt: skip


# Three images (the identity, so that sim[i, j] is caption j's i-th coordinate) and five captions.
#              c0    c1    c2    c3    c4        owners: c0, c1 -> image 0; c2, c3 -> image 1; c4 -> image 2
HAND_SIM = [[0.5, 0.25, 0.75, 0.0, 0.25],   # image 0: own best 0.5 (c0); c2 0.75 >= 0.5      -> rank 1
            [0.25, 0.0, 0.5, 0.25, 0.25],   # image 1: own best 0.5 (c2); nothing else >= 0.5  -> rank 0
            [0.0, 1.0, 0.25, 0.5, 0.5]]     # image 2: own 0.5 (c4); c1 1.0 and c3 0.5 (tie)   -> rank 2
# t2i, column by column: c0 own 0.5, others 0.25, 0 -> 0;  c1 own 0.25, image 2 has 1.0 -> 1;
# c2 own 0.5, image 0 has 0.75 -> 1;  c3 own 0.25, image 2 has 0.5 -> 1;  c4 own 0.5, others 0.25 -> 0.
HAND_OWNER = [0, 0, 1, 1, 2]


def test_hand_made_three_images():
    """Known ranks and metrics on a hand-made example (see the table above)."""
    img = np.eye(3, dtype=np.float32)
    txt = np.array(HAND_SIM, dtype=np.float32).T
    i2t, t2i = retrieval_ranks(img, txt, HAND_OWNER)
    np.testing.assert_array_equal(i2t, [1, 0, 2])
    np.testing.assert_array_equal(t2i, [0, 1, 1, 1, 0])
    m = retrieval_metrics(img, txt, HAND_OWNER)
    # i2t ranks [1, 0, 2]: R@1 1/3, R@5 = R@10 = 100, median 1 -> medr 2, mean 1 -> meanr 2.
    # t2i ranks [0, 1, 1, 1, 0]: R@1 2/5, R@5 = R@10 = 100, median 1 -> medr 2, mean 0.6 -> meanr 1.6.
    expected = {
        "i2t_r1": 100 / 3, "i2t_r5": 100.0, "i2t_r10": 100.0, "i2t_medr": 2.0, "i2t_meanr": 2.0,
        "t2i_r1": 40.0, "t2i_r5": 100.0, "t2i_r10": 100.0, "t2i_medr": 2.0, "t2i_meanr": 1.6,
        "rsum": 100 / 3 + 40.0 + 400.0,
    }  # fmt: skip
    assert_metrics_equal(m, expected)


def test_medr_floors_an_even_median_and_r5_r10_cut_at_k():
    """Ranks 0..9 of ten captions: median 4.5 -> medr floor(4.5) + 1 = 5; R@5 = 50, R@10 = 100."""
    # Ten images on the diagonal; caption j scores its own image 1 and exactly j other images higher (2).
    n = 10
    img = np.eye(n, dtype=np.float32)
    txt = np.zeros((n, n), dtype=np.float32)
    for j in range(n):
        txt[j, j] = 1.0
        txt[j, [(j + 1 + k) % n for k in range(j)]] = 2.0
    _, t2i = retrieval_ranks(img, txt, np.arange(n))
    np.testing.assert_array_equal(t2i, np.arange(n))
    m = retrieval_metrics(img, txt, np.arange(n))
    assert (m["t2i_r1"], m["t2i_r5"], m["t2i_r10"], m["t2i_medr"], m["t2i_meanr"]) == (10.0, 50.0, 100.0, 5.0, 5.5)


# ---------------------------------------------------------------------------
# Keys, types, formatting
# ---------------------------------------------------------------------------


def test_metric_keys_and_types():
    """METRIC_KEYS has exactly this order; the dict has exactly those keys, in order, as Python floats."""
    assert METRIC_KEYS == (
        "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
        "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
        "rsum",
    )  # fmt: skip
    img, txt, owner = structured(6, [3] * 8)
    m = retrieval_metrics(img, txt, owner)
    assert list(m) == list(METRIC_KEYS)
    assert all(type(v) is float for v in m.values()), {k: type(v) for k, v in m.items()}
    assert m["rsum"] == pytest.approx(sum(m[k] for k in METRIC_KEYS if "_r" in k and "med" not in k and "mean" not in k))


def test_format_metrics():
    """One line, recalls joined by '/', rounded to ``digits``."""
    img = np.eye(3, dtype=np.float32)
    m = retrieval_metrics(img, np.array(HAND_SIM, dtype=np.float32).T, HAND_OWNER)
    assert format_metrics(m) == "i2t R@1/5/10 33.3/100.0/100.0 | t2i R@1/5/10 40.0/100.0/100.0 | rsum 473.3"
    assert format_metrics(m, digits=2) == (
        "i2t R@1/5/10 33.33/100.00/100.00 | t2i R@1/5/10 40.00/100.00/100.00 | rsum 473.33"
    )
    assert format_metrics(m, digits=0) == "i2t R@1/5/10 33/100/100 | t2i R@1/5/10 40/100/100 | rsum 473"


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "img_shape, txt_shape, owner, message",
    [
        ((3, 4), (6, 4), [0, 0, 1, 1, 2], r"txt_to_img has shape \(5,\) for 6 captions; it needs one image index per caption, \(6,\)"),
        ((3, 4), (6, 4), [[0, 0, 1, 1, 2, 2]], r"txt_to_img has shape \(1, 6\)"),
        ((3, 4), (6, 4), [0, 0, 1, 1, 2, 3], r"outside \[0, 3\) for 3 images"),
        ((3, 4), (6, 4), [0, 0, 1, 1, 2, -1], r"outside \[0, 3\) for 3 images"),
        ((3, 4), (6, 4), [0, 0, 2, 2, 2, 2], r"images \[1\] have no caption"),
        ((4, 4), (6, 4), [0, 0, 2, 2, 2, 2], r"images \[1, 3\] have no caption"),
        ((4,), (6, 4), [0, 0, 1, 1, 2, 2], r"img_emb must be a \(count, dim\) matrix of embeddings, got shape \(4,\)"),
        ((3, 4), (4,), [0, 0, 1, 1, 2, 2], r"txt_emb must be a \(count, dim\) matrix of embeddings, got shape \(4,\)"),
        ((3, 4), (6, 5), [0, 0, 1, 1, 2, 2], r"img_emb has 4 dimensions and txt_emb 5; they must agree"),
    ],
)
def test_bad_inputs_raise_clear_errors(img_shape, txt_shape, owner, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(np.ones(img_shape), np.ones(txt_shape), owner)
    with pytest.raises(ValueError, match=message):
        retrieval_ranks(torch.ones(img_shape), torch.ones(txt_shape), owner)


# ---------------------------------------------------------------------------
# torchmetrics, where installed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 10])
def test_t2i_recall_matches_torchmetrics_hit_rate(k):
    """Text -> image R@K is torchmetrics' RetrievalHitRate(top_k=K) with one query per caption."""
    torchmetrics_retrieval = pytest.importorskip("torchmetrics.retrieval")
    img, txt, owner = structured(7, FIVE_EACH)
    sim = torch.from_numpy(img) @ torch.from_numpy(txt).T  # (N, M)
    n, m = sim.shape
    preds = sim.T.reshape(-1)  # caption-major: caption j's scores for images 0..N-1
    target = (torch.arange(n)[None, :] == torch.from_numpy(owner)[:, None]).reshape(-1)
    indexes = torch.arange(m).repeat_interleave(n)
    hit_rate = torchmetrics_retrieval.RetrievalHitRate(top_k=k)(preds, target, indexes=indexes)
    assert retrieval_metrics(img, txt, owner)[f"t2i_r{k}"] == pytest.approx(100 * hit_rate.item(), abs=1e-4)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_i2t_recall_matches_torchmetrics_hit_rate_not_recall(k):
    """Image -> text R@K is RetrievalHitRate (is *any* own caption in the top K?), not RetrievalRecall.

    RetrievalRecall divides the own captions found in the top K by the five an image has, so at K = 1
    it cannot exceed 20 %: a different quantity, which papers do not report.
    """
    torchmetrics_retrieval = pytest.importorskip("torchmetrics.retrieval")
    img, txt, owner = structured(8, FIVE_EACH, noise=1.5)
    sim = torch.from_numpy(img) @ torch.from_numpy(txt).T  # (N, M): image i's scores for every caption
    n, m = sim.shape
    preds = sim.reshape(-1)
    target = (torch.from_numpy(owner)[None, :] == torch.arange(n)[:, None]).reshape(-1)
    indexes = torch.arange(n).repeat_interleave(m)
    hit_rate = torchmetrics_retrieval.RetrievalHitRate(top_k=k)(preds, target, indexes=indexes).item()
    recall = torchmetrics_retrieval.RetrievalRecall(top_k=k)(preds, target, indexes=indexes).item()
    ours = retrieval_metrics(img, txt, owner)[f"i2t_r{k}"]
    assert ours == pytest.approx(100 * hit_rate, abs=1e-4)
    # RetrievalRecall: the share of an image's five captions in its top K, averaged.
    in_top = (sim.argsort(dim=1, descending=True)[:, :k].flatten(), torch.arange(n).repeat_interleave(k))
    found = (torch.from_numpy(owner)[in_top[0]] == in_top[1]).float().reshape(n, k).sum(1) / 5
    assert recall == pytest.approx(found.mean().item(), abs=1e-6)
    if k == 1:
        assert recall <= 0.2 and ours > 20.0  # a good model, yet "recall" reads at most 20 %
    assert 100 * recall <= ours


# ---------------------------------------------------------------------------
# Shapes, chunks and the fast path
# ---------------------------------------------------------------------------

MIXED_456 = np.random.default_rng(3).choice([4, 5, 6], size=40).tolist()


@pytest.mark.parametrize(
    "counts, dim",
    [([4] * 25, 8), ([5] * 30, 16), ([6] * 20, 32), (MIXED_456, 16), ([1] * 60, 16), ([50] * 3, 4)],
    ids=["four-each", "five-each", "six-each", "four-five-six", "one-each", "fifty-each"],
)
def test_equals_reference_loop_for_many_shapes(counts, dim):
    """Images with 4, 5, 6 (mixed), 1 and 50 captions, several dimensions: every metric within 1e-6."""
    img, txt, owner = structured(11, counts, dim=dim)
    expected = metrics_from_ranks(*reference_ranks(img, txt, owner))
    got = retrieval_metrics(img, txt, owner)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_default_chunks_split_a_large_gallery(monkeypatch):
    """With a small score budget the default chunking takes many blocks in both directions; same ranks."""
    img, txt, owner = structured(12, MIXED_456)
    expected = retrieval_ranks(img, txt, owner, chunk_size=len(owner))  # one block each way
    monkeypatch.setattr(metrics_module, "_CHUNK_SCORES", 3 * len(owner))  # 3 rows per block
    got = retrieval_ranks(img, txt, owner)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], reference_ranks(img, txt, owner)[0])


def test_captions_in_any_order():
    """Captions need not be grouped by image: shuffling them changes no image -> text rank."""
    img, txt, owner = structured(13, MIXED_456)
    perm = np.random.default_rng(0).permutation(len(owner))
    i2t, t2i = retrieval_ranks(img, txt, owner, chunk_size=7)
    i2t_shuffled, t2i_shuffled = retrieval_ranks(img, txt[perm], owner[perm], chunk_size=7)
    np.testing.assert_array_equal(i2t_shuffled, i2t)
    np.testing.assert_array_equal(t2i_shuffled, t2i[perm])


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be a positive number of rows, got 0"):
        retrieval_ranks(np.eye(2), np.eye(2), [0, 1], chunk_size=0)


# ---------------------------------------------------------------------------
# COCO 1K: five folds of 1,000 images
# ---------------------------------------------------------------------------


def test_folds_average_the_metrics_of_each_fold():
    """folds=5 is the mean over five consecutive image folds, each ranked only within itself."""
    img, txt, owner = structured(14, [5] * 50, noise=2.0)
    per_fold = retrieval_metrics_per_fold(img, txt, owner, 5)
    assert len(per_fold) == 5
    for f, m in enumerate(per_fold):  # fold f: images 10f..10f+9 and, as VSE++ slices them, captions 50f..50f+49
        images, captions = slice(10 * f, 10 * f + 10), slice(50 * f, 50 * f + 50)
        assert m == retrieval_metrics(img[images], txt[captions], owner[captions] - 10 * f)
    mean = retrieval_metrics(img, txt, owner, folds=5)
    for key in METRIC_KEYS:
        assert mean[key] == pytest.approx(np.mean([m[key] for m in per_fold]), abs=1e-9), key
    # Smaller galleries are easier: the 1K-style numbers beat the full-set ones.
    assert mean["rsum"] > retrieval_metrics(img, txt, owner)["rsum"]
    assert retrieval_metrics(img, txt, owner, folds=1) == retrieval_metrics(img, txt, owner)


def test_fold_indices_follow_the_images_not_the_caption_order():
    owner = np.array([2, 0, 1, 3, 0, 3, 2, 1])
    (images0, captions0), (images1, captions1) = fold_indices(4, owner, 2)
    np.testing.assert_array_equal(images0, [0, 1])
    np.testing.assert_array_equal(captions0, [1, 2, 4, 7])
    np.testing.assert_array_equal(images1, [2, 3])
    np.testing.assert_array_equal(captions1, [0, 3, 5, 6])


@pytest.mark.parametrize("folds, message", [(3, "10 images cannot be cut into 3 equal folds"),
                                            (0, "folds must be a positive integer, got 0"),
                                            (2.5, "folds must be a positive integer, got 2.5")])
def test_bad_folds(folds, message):
    img, txt, owner = structured(15, [2] * 10)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(img, txt, owner, folds=folds)


# ---------------------------------------------------------------------------
# Chance level
# ---------------------------------------------------------------------------


def _enumerated_chance(counts):
    """Every ordering of the captions (for i2t) and of the images (for t2i), equally likely."""
    import itertools

    owner = np.repeat(np.arange(len(counts)), counts)
    n, m = len(counts), len(owner)
    i2t = [min(pos for pos, j in enumerate(order) if owner[j] == i)
           for order in itertools.permutations(range(m)) for i in range(n)]
    t2i = [order.index(owner[j]) for order in itertools.permutations(range(n)) for j in range(m)]
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("counts", [[1, 2, 1], [2, 2, 2], [3, 1, 1, 2]])
def test_chance_metrics_are_exact(counts):
    """Against the average over every possible ordering: R@K and mean rank exactly, medr as the median."""
    i2t, t2i = _enumerated_chance(counts)
    chance = chance_metrics(np.repeat(np.arange(len(counts)), counts))
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            assert chance[f"{prefix}_r{k}"] == pytest.approx(100 * np.mean(ranks < k), abs=1e-9)
        assert chance[f"{prefix}_meanr"] == pytest.approx(np.mean(ranks) + 1, abs=1e-9)
        assert chance[f"{prefix}_medr"] == np.sort(ranks)[(len(ranks) - 1) // 2] + 1  # the lower median


def test_chance_metrics_match_random_embeddings():
    """Random embeddings score about chance (500 draws of 20 images x 100 captions)."""
    owner = np.repeat(np.arange(20), 5)
    rng = np.random.default_rng(0)
    draws = [retrieval_metrics(rng.standard_normal((20, 8)), rng.standard_normal((100, 8)), owner)
             for _ in range(500)]
    chance = chance_metrics(owner)
    assert chance["t2i_r1"] == 5.0 and chance["t2i_r10"] == 50.0 and chance["t2i_meanr"] == 10.5
    assert chance["i2t_r1"] == pytest.approx(5.0)  # 1 - C(95, 1) / C(100, 1)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_meanr", "t2i_meanr"):
        assert np.mean([d[key] for d in draws]) == pytest.approx(chance[key], rel=0.05, abs=0.5), key


def test_chance_metrics_errors():
    with pytest.raises(ValueError, match=r"images \[1\] have no caption"):
        chance_metrics([0, 0, 2])


# ---------------------------------------------------------------------------
# Score matrices (cross-encoders, the seed's fused network)
# ---------------------------------------------------------------------------


def test_scores_give_the_same_ranks_as_embeddings():
    img, txt, owner = structured(16, MIXED_456)
    sim = torch.from_numpy(img) @ torch.from_numpy(txt).T
    for chunk_size in (None, 3):
        got, expected = ranks_from_scores(sim, owner, chunk_size), retrieval_ranks(img, txt, owner, chunk_size)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert metrics_from_scores(sim.numpy(), owner) == retrieval_metrics(img, txt, owner)


def test_any_score_matrix_follows_the_reference_loop():
    """A matrix that is no product of embeddings: the reference loop on (sim, identity) gives its ranks."""
    owner = np.repeat(np.arange(7), [1, 2, 3, 4, 5, 6, 2])
    sim = np.random.default_rng(17).standard_normal((7, len(owner))).astype(np.float32)
    sim[3, :5] = sim[3, 5]  # exact ties as well
    expected = reference_ranks(sim, np.eye(len(owner), dtype=np.float32), owner)
    got = ranks_from_scores(sim, owner)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match=r"txt_to_img has shape \(3,\) for \d+ captions; it needs one image index per caption"):
        ranks_from_scores(sim, [0, 1, 2])


def test_metrics_table_rows_and_grouped_columns():
    img, txt, owner = structured(18, FIVE_EACH)
    good, chance = retrieval_metrics(img, txt, owner), chance_metrics(owner)
    table = metrics_table({"model": good, "chance": chance})
    assert list(table.index) == ["model", "chance"]
    assert table.shape == (2, 11)
    assert table[("image → text", "R@1")]["model"] == good["i2t_r1"]
    assert table[("text → image", "meanr")]["chance"] == chance["t2i_meanr"]
    assert table[("", "rsum")].tolist() == [good["rsum"], chance["rsum"]]
    with pytest.raises(ValueError, match=r"results\['bad'\] lacks \['rsum'\]"):
        metrics_table({"bad": {k: 0.0 for k in METRIC_KEYS if k != "rsum"}})
