"""Two-stage retrieval: mining hard negatives, the token-region cross-encoder, reranking."""

import numpy as np
import pytest
import torch

from siamese_utils.core import models as M
from siamese_utils.core.metrics import metrics_from_scores, ranks_from_scores
from siamese_utils.chapters.rerank import (
    CrossAttentionEncoder,
    CrossTrainConfig,
    PairScorer,
    hard_negative_captions,
    hard_negative_images,
    image_regions,
    mine_training_pairs,
    pool_regions,
    rerank,
    same_caption_mask,
    score_all_pairs,
    top_k_candidates,
    train_cross_encoder,
)

# Image 2 has a caption word for word equal to one of image 0's: a templated duplicate.
CAPTIONS = ["a red circle", "a circle that is red", "a blue square", "a square in blue",
            "A red  circle", "a green triangle", "a yellow disc", "a disc of yellow"]
OWNER = np.array([0, 0, 1, 1, 2, 2, 3, 3])


def _sim(seed=0, n=4, m=8):
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed))


def test_same_caption_mask_treats_duplicate_texts_as_matches():
    match = same_caption_mask(OWNER, CAPTIONS)
    assert match.shape == (4, 8)
    assert match[0, 4] and match[2, 0]  # the same text (case and spaces aside) under images 0 and 2
    assert not match[1, 0] and match[1, 2] and match[1, 3]


def test_mined_negatives_are_never_matches_and_hardest_first():
    sim = _sim()
    sim[2, 0] = 10.0  # image 2 scores highest for caption 0, whose text it also owns: not a negative
    sim[0, 4] = 10.0  # and image 0 for caption 4
    match = same_caption_mask(OWNER, CAPTIONS)
    images = hard_negative_images(sim, OWNER, CAPTIONS, 2)
    captions = hard_negative_captions(sim, OWNER, CAPTIONS, 3)
    assert images.shape == (8, 2) and captions.shape == (4, 3)
    assert 2 not in images[0].tolist() and 0 not in images[4].tolist()
    for j in range(8):
        assert not match[images[j], j].any()
        allowed = [i for i in range(4) if not match[i, j]]
        expected = sorted(allowed, key=lambda i: -float(sim[i, j]))[:2]  # brute force, hardest first
        assert images[j].tolist() == expected
    for i in range(4):
        assert not match[i, captions[i]].any()
        assert (sim[i, captions[i]].diff() <= 0).all()
        allowed = [j for j in range(8) if not match[i, j]]
        assert captions[i].tolist() == sorted(allowed, key=lambda j: -float(sim[i, j]))[:3]


def test_training_pairs_hold_every_positive_once_and_clean_negatives():
    sim = _sim(1)
    pairs = mine_training_pairs(sim, OWNER, CAPTIONS, per_caption=2, per_image=3)
    match = same_caption_mask(OWNER, CAPTIONS)
    positives = pairs.label == 1
    assert positives.sum() == 8 and (pairs.image[positives] == torch.as_tensor(OWNER)).all()
    assert not match[pairs.image[~positives], pairs.caption[~positives]].any()
    keys = (pairs.image * 8 + pairs.caption).tolist()
    assert len(keys) == len(set(keys))
    assert set(pairs.to_frame(CAPTIONS).columns) == {"image", "caption", "label", "text"}


def test_a_truth_mask_keeps_every_true_pair_out_of_the_negatives():
    sim = _sim(3)
    truth = same_caption_mask(OWNER, CAPTIONS).clone()
    truth[1, 6] = truth[3, 0] = True  # "a yellow disc" is also true of image 1; "a red circle" of image 3
    sim[1, 6] = sim[3, 0] = 10.0      # and the dual encoder ranks those first
    images = hard_negative_images(sim, OWNER, CAPTIONS, 1, matches=truth)  # caption 0 has one wrong image left
    captions = hard_negative_captions(sim, OWNER, CAPTIONS, 2, matches=truth)
    assert 1 not in images[6].tolist() and 3 not in images[0].tolist()
    assert 6 not in captions[1].tolist() and 0 not in captions[3].tolist()
    pairs = mine_training_pairs(sim, OWNER, CAPTIONS, 1, 2, matches=truth)
    negatives = pairs.label == 0
    assert not truth[pairs.image[negatives], pairs.caption[negatives]].any()
    # without the mask, the same-text rule alone takes them as negatives
    assert hard_negative_images(sim, OWNER, CAPTIONS, 1)[6].tolist() == [1]


def test_a_truth_mask_must_fit_and_hold_every_own_pair():
    truth = same_caption_mask(OWNER, CAPTIONS)
    with pytest.raises(ValueError, match=r"matches has shape \(3, 8\) but sim has \(4, 8\)"):
        hard_negative_images(_sim(), OWNER, CAPTIONS, 1, matches=truth[:3])
    wrong = truth.clone()
    wrong[2, 5] = False
    with pytest.raises(ValueError, match="caption 5 does not match its own image 2.*truth_matrix"):
        mine_training_pairs(_sim(), OWNER, CAPTIONS, 1, 1, matches=wrong)


def test_mining_asks_for_no_more_negatives_than_exist():
    with pytest.raises(ValueError, match="only 2 images that are not its matches"):
        hard_negative_images(_sim(), OWNER, CAPTIONS, 3)
    with pytest.raises(ValueError, match="positive whole number"):
        hard_negative_captions(_sim(), OWNER, CAPTIONS, 0)
    with pytest.raises(ValueError, match="8 captions"):
        hard_negative_images(_sim(m=7), OWNER, CAPTIONS, 1)


def _oracle(owner):
    owner = torch.as_tensor(owner)
    return lambda i, j: (owner[j] == i).float()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_oracle_reranking_gives_r1_equal_to_the_share_of_truths_in_the_top_k(k):
    n, m = 6, 30
    owner = np.repeat(np.arange(n), 5)
    sim = _sim(k, n, m)
    i2t, t2i = ranks_from_scores(sim, owner)  # no ties in random scores: rank < k <=> truth among the k
    result = rerank(sim, _oracle(owner), k)
    metrics = result.metrics(owner)
    assert metrics["t2i_r1"] == pytest.approx(100.0 * np.mean(t2i < k))
    assert metrics["i2t_r1"] == pytest.approx(100.0 * np.mean(i2t < k))
    assert result.pairs_scored <= m * k + n * k and result.t2i_candidates.shape == (m, k)


def test_reranking_everything_equals_scoring_the_full_matrix():
    n, m = 5, 15
    owner = np.repeat(np.arange(n), 3)
    sim, cross = _sim(3, n, m), _sim(4, n, m)
    cross[0, :3] = cross[0, 3]  # exact ties in the cross scores stay ties
    result = rerank(sim, lambda i, j: cross[i, j], k=n, k_captions=m)
    assert result.metrics(owner) == metrics_from_scores(cross, owner)
    assert result.pairs_scored == n * m
    assert torch.equal(score_all_pairs(lambda i, j: cross[i, j], n, m, chunk_size=7), cross)


def test_candidates_come_first_and_the_rest_keep_the_dual_order():
    sim = _sim(5, 6, 12)
    result = rerank(sim, lambda i, j: -sim[i, j], k=3, k_captions=4)  # a cross-encoder that reverses the order
    for j in range(12):
        column, candidates = result.t2i_sim[:, j], top_k_candidates(sim, 3, dim=0)[j]
        order = torch.sort(column, descending=True, stable=True).indices.tolist()
        assert order[:3] == candidates.flip(0).tolist()  # reversed by the cross-encoder
        rest = [i for i in torch.sort(sim[:, j], descending=True, stable=True).indices.tolist() if i not in candidates]
        assert order[3:] == rest and torch.equal(column[rest], sim[rest, j])
    for i in range(6):
        order = torch.sort(result.i2t_sim[i], descending=True, stable=True).indices.tolist()
        assert order[:4] == top_k_candidates(sim, 4, dim=1)[i].flip(0).tolist()
    fused = rerank(sim, lambda i, j: torch.zeros(len(i)), k=3, dual_weight=1.0)  # fusion: dual order kept
    assert torch.equal(torch.sort(fused.t2i_sim, dim=0, descending=True).indices,
                       torch.sort(sim, dim=0, descending=True).indices)


@pytest.mark.parametrize("k, k_captions, message", [
    (7, None, "only 6 images"), (0, None, "positive whole number"), (2.5, None, "positive whole number"),
    (2, 13, "only 12 captions"), (2, 0, "positive whole number"),
])
def test_bad_k_is_refused_with_what_to_do(k, k_captions, message):
    with pytest.raises(ValueError, match=message):
        rerank(_sim(0, 6, 12), lambda i, j: torch.zeros(len(i)), k, k_captions)


def test_rerank_refuses_broken_cross_scores():
    with pytest.raises(ValueError, match="NaN or infinite"):
        rerank(_sim(0, 4, 8), lambda i, j: torch.full((len(i),), float("nan")), 2)
    with pytest.raises(ValueError, match="scores for"):
        rerank(_sim(0, 4, 8), lambda i, j: torch.zeros(3), 2)


# --------------------------------------------------------------------------- the cross-encoder


@pytest.fixture
def small_dual():
    torch.manual_seed(0)
    return M.build_model(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8).eval()


def test_an_untrained_cross_encoder_from_a_dual_encoder_ranks_like_it(small_dual, tokenizer):
    images = torch.randn(4, 3, 16, 16)
    regions = image_regions(small_dual.image_tower, images)
    cross = CrossAttentionEncoder.from_dual_encoder(small_dual, hidden_dim=8, num_regions=1).eval()
    scorer = PairScorer(cross, regions, CAPTIONS, tokenizer)
    full = score_all_pairs(scorer, 4, 8)
    with torch.no_grad():
        tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        dual = small_dual.similarity(small_dual.encode_images(images),
                                     small_dual.encode_texts(tokens["input_ids"], tokens["attention_mask"]))
    torch.testing.assert_close(full, cross.dual_scale.detach() * dual, atol=1e-5, rtol=1e-5)
    assert scorer.pairs_scored == 32


def test_pair_scorer_agrees_with_the_forward_pass(small_dual, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 16, 16)
    cross = CrossAttentionEncoder.from_dual_encoder(small_dual, hidden_dim=8, num_regions=1).eval()
    torch.nn.init.normal_(cross.head.weight)  # a head that is not zero
    scorer = PairScorer(cross, image_regions(small_dual.image_tower, images), CAPTIONS, tokenizer, batch_size=5)
    i, j = torch.tensor([0, 2, 1, 2]), torch.tensor([7, 0, 3, 3])
    tokens = tokenizer([CAPTIONS[c] for c in j.tolist()], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = cross(images[i], tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(scorer(i, j), expected, atol=1e-5, rtol=1e-4)


def test_image_regions_average_to_the_pooled_features():
    tower = M.EfficientNetLite0Tower(pretrained=False).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        regions = image_regions(tower, images)
        assert regions.shape == (2, 4, 1280)
        torch.testing.assert_close(regions.mean(dim=1), tower(images))


@pytest.mark.parametrize("tower", ["grid_cnn", "grid_cnn_pooled"])
def test_grid_cells_are_regions_that_rebuild_the_towers_output(tower, tokenizer):
    torch.manual_seed(0)
    dual = M.build_model(image_tower=tower, text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        regions = image_regions(dual.image_tower, images)
        assert regions.shape == (4, 16, 64)  # a 4x4 grid of 64 channels
        torch.testing.assert_close(pool_regions(dual.image_tower, regions), dual.image_tower(images))
    # so a cross-encoder built from the composition model starts out ranking exactly like it
    cross = CrossAttentionEncoder.from_dual_encoder(dual, hidden_dim=8, num_regions=16).eval()
    full = score_all_pairs(PairScorer(cross, regions, CAPTIONS, tokenizer), 4, 8)
    with torch.no_grad():
        tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        sim = dual.similarity(dual.encode_images(images), dual.encode_texts(tokens["input_ids"],
                                                                           tokens["attention_mask"]))
    torch.testing.assert_close(full, cross.dual_scale.detach() * sim, atol=1e-5, rtol=1e-5)


def test_cross_encoder_refuses_what_it_cannot_use(small_dual):
    with pytest.raises(TypeError, match="token_states"):
        CrossAttentionEncoder(M.BagOfWordsTower(word_dim=8), 16)
    cross = CrossAttentionEncoder(M.GRUTower(word_dim=8, hidden_dim=8), 16, hidden_dim=8, num_regions=4)
    with pytest.raises(ValueError, match="9 regions per image but this cross-encoder was built for 4"):
        cross.project_regions(torch.randn(2, 9, 16))
    with pytest.raises(ValueError, match="no image tower"):
        cross(torch.randn(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("train_text_tower", [False, True])
def test_training_lowers_the_loss_and_leaves_the_dual_encoder_alone(small_dual, tokenizer, train_text_tower):
    torch.manual_seed(2)
    regions = torch.randn(4, 3, 12)  # three regions of 12 features per image
    cross = CrossAttentionEncoder(M.GRUTower(word_dim=8, hidden_dim=8), 12, hidden_dim=16, num_regions=3)
    pairs = mine_training_pairs(_sim(2), OWNER, CAPTIONS, per_caption=2, per_image=2)
    text_before = {k: v.clone() for k, v in cross.text_tower.state_dict().items()}
    config = CrossTrainConfig(num_epochs=30, batch_size=8, lr=3e-3, warmup_epochs=0, train_text_tower=train_text_tower)
    history = train_cross_encoder(cross, regions, CAPTIONS, pairs, tokenizer, config, log=None)
    assert len(history) == 30 and history["loss"].iloc[-1] < 0.8 * history["loss"].iloc[0]
    changed = any(not torch.equal(v, cross.text_tower.state_dict()[k]) for k, v in text_before.items())
    assert changed == train_text_tower
    dual_before = {k: v.clone() for k, v in small_dual.state_dict().items()}
    from_dual = CrossAttentionEncoder.from_dual_encoder(small_dual, hidden_dim=8)
    train_cross_encoder(from_dual, image_regions(small_dual.image_tower, torch.randn(4, 3, 16, 16)), CAPTIONS,
                        pairs, tokenizer, CrossTrainConfig(num_epochs=1, batch_size=8, train_text_tower=True), log=None)
    assert all(torch.equal(v, small_dual.state_dict()[k]) for k, v in dual_before.items())
    assert not small_dual.image_tower.training


def test_training_refuses_pairs_that_do_not_fit(tokenizer):
    cross = CrossAttentionEncoder(M.GRUTower(word_dim=8, hidden_dim=8), 12, hidden_dim=8)
    pairs = mine_training_pairs(_sim(2), OWNER, CAPTIONS, per_caption=1, per_image=1)
    with pytest.raises(ValueError, match="outside \\[0, 3\\) of the region features"):
        train_cross_encoder(cross, torch.randn(3, 2, 12), CAPTIONS, pairs, tokenizer, log=None)
    with pytest.raises(ValueError, match="num_epochs=0"):
        CrossTrainConfig(num_epochs=0)


def test_train_reranker_mines_no_true_pair_and_trains_a_second_stage_for_the_grid_model(tokenizer):
    from siamese_utils.chapters.analysis import truth_matrix
    from siamese_utils.core.data import CaptionedImages, read_dataset
    from siamese_utils.core.train import prepare_images
    from siamese_utils.chapters.rerank import train_reranker

    test = read_dataset("data/tiny").split("test")
    split = CaptionedImages(test.records[20:40], test.source, "test")  # minimal pairs among them
    torch.manual_seed(0)
    dual = M.build_model(image_tower="grid_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8).eval()
    regions = image_regions(dual.image_tower, prepare_images(split, 64))
    truth = truth_matrix(split)
    config = CrossTrainConfig(num_epochs=1, batch_size=64)
    cross, pairs, history = train_reranker(dual, split, regions, tokenizer, config, matches=truth, hidden_dim=8)
    negatives = pairs.label == 0
    assert negatives.any() and not truth[pairs.image[negatives], pairs.caption[negatives]].any()
    assert int(pairs.label.sum()) == split.num_captions and len(history) == 1
    assert cross.num_regions == 16 and not cross.training
    again = train_reranker(dual, split, regions, tokenizer, config, matches=truth, hidden_dim=8)[0]
    for (name, p), q in zip(cross.named_parameters(), again.parameters()):
        assert torch.equal(p, q), f"{name}: a seeded second stage repeats"
