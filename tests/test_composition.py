"""Composition: swapped-word negatives, the truth judge, grouped and partner batches, the loss with negatives,
the image encoded once per batch, and the grid tower."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from siamese_utils.chapters import composition
from siamese_utils.chapters.analysis import truth_matrix
from siamese_utils.chapters.scaling import distributed
from siamese_utils.chapters.scaling.train import fit_at_scale
from siamese_utils.chapters.composition import (hard_negatives, partners, register_judge, swapped_captions,
                                                truth_judge)
from siamese_utils.core.data import Collator, ImageTextDataset, read_dataset
from siamese_utils.core.losses import info_nce_loss
from siamese_utils.core.models import build_model
from siamese_utils.core.text import swap_left_right
from siamese_utils.core.train import BATCHES, NEGATIVE_MAKERS, ContrastiveStep, TrainConfig, fit
from siamese_utils.core.transforms import CaptionAwareHorizontalFlip
from siamese_utils.datasets import tiny


@pytest.fixture(scope="module")
def train_split(tiny_dir):
    return read_dataset(tiny_dir).split("train")


# --------------------------------------------------------------------------- swapped-word negatives
@pytest.mark.parametrize("caption, expected", [
    ("A small red circle to the left of a big blue square.",
     ["A small blue circle to the left of a big red square.", "A small red circle to the right of a big blue square."]),
    ("a green box on top of a red disc", ["a red box on top of a green disc", "a green box beneath a red disc"]),
    ("Red circle Under a blue box", ["Blue circle Under a red box", "Red circle Over a blue box"]),
    ("a yellow circle in the top left corner",
     ["a yellow circle in the top right corner", "a yellow circle in the bottom left corner"]),
    ("a red circle above a red square", ["a red circle below a red square"]),  # one colour: nothing to swap
    ("just a purple diamond", []),
])
def test_swapped_captions_exchange_colours_and_reverse_each_axis(caption, expected):
    assert swapped_captions(caption) == expected


def test_hard_negatives_are_never_true_of_their_image(train_split):
    negatives = hard_negatives(train_split)
    scenes = [r.meta["scene"] for r in train_split]
    owner = train_split.txt_to_img
    assert len(negatives) == len(train_split.captions)
    found = 0
    for j, found_for_j in enumerate(negatives):
        for caption in found_for_j:
            assert not tiny.is_true_of(tiny.parse_caption(caption), scenes[owner[j]]), caption
            found += 1
    # Every two-shape caption keeps at least its reversed relation: the judge drops only what is true.
    two_shapes = [j for j in range(len(owner)) if scenes[owner[j]]["kind"] != "single"]
    assert all(negatives[j] for j in two_shapes)
    assert found > 2 * len(two_shapes)


def test_the_judge_drops_exactly_the_swapped_captions_that_are_true(train_split):
    judge, negatives = truth_judge(train_split), hard_negatives(train_split)
    dropped = 0
    for j, (caption, i) in enumerate(zip(train_split.captions, train_split.txt_to_img.tolist())):
        for candidate in swapped_captions(caption):
            true = judge(candidate, i) or candidate in train_split[i].captions
            assert (candidate in negatives[j]) != true, (caption, candidate)
            dropped += true
    assert dropped == 0  # the tiny set's language has no swap that stays true; the judge guards other data


def test_a_registered_judge_removes_the_negatives_it_finds_true(tmp_path, tiny_dir):
    (tmp_path / "images").mkdir()
    names = [r.name for r in read_dataset(tiny_dir).split("train")[:2]]
    for name in names:
        shutil.copy(tiny_dir / "images" / name, tmp_path / "images" / name)
    (tmp_path / "captions.csv").write_text("image,caption,split\n" + "".join(
        f"{name},a red cat left of a blue dog,train\n" for name in names))
    split = read_dataset(tmp_path).split("train")
    assert hard_negatives(split) == [["a blue cat left of a red dog", "a red cat right of a blue dog"]] * 2
    # A judge that knows the first image is symmetric: the reversed relation is true of it.
    register_judge(lambda data: (lambda caption, i: i == 0 and "right" in caption)
                   if data.source == split.source else None)
    assert hard_negatives(split) == [["a blue cat left of a red dog"],
                                     ["a blue cat left of a red dog", "a red cat right of a blue dog"]]


def test_the_tiny_judge_answers_only_for_the_tiny_set(tmp_path, tiny_dir, train_split):
    judge = tiny.judge(train_split)
    assert judge(train_split.captions[0], 0) is True
    with pytest.raises(ValueError, match="not a tiny-set caption"):
        judge("a dog on a sofa", 0)
    (tmp_path / "images").mkdir()
    name = train_split[0].name
    shutil.copy(tiny_dir / "images" / name, tmp_path / "images" / name)
    (tmp_path / "captions.csv").write_text(f"image,caption,split\n{name},a red thing,train\n")
    other = read_dataset(tmp_path).split("train")
    assert tiny.judge(other) is None and truth_judge(other) is None
    # Without a judge, only the image's own captions are dropped.
    assert hard_negatives(other) == [[]]


# --------------------------------------------------------------------------- grouped and partner batches
def _order(dataset, seed):
    dataset.set_epoch_seed(seed)
    return [dataset[k]["caption_index"] for k in range(len(dataset))]


def test_partner_units_follow_the_stored_partners(train_split):
    units = partners(train_split)
    assert sorted(i for u in units for i in u) == list(range(len(train_split)))
    for unit in units:
        scenes = [train_split[i].meta["scene"] for i in unit]
        if len(unit) == 2:
            assert scenes[0]["partner"] == train_split[unit[1]].meta["imgid"]
        else:
            assert scenes[0]["kind"] == "single"


@pytest.mark.parametrize("group", ["images", "partners"])
def test_grouped_orders_hold_whole_images_and_partners_and_are_seeded(train_split, group):
    units = BATCHES[group](train_split)
    dataset = ImageTextDataset(train_split, images=torch.zeros(len(train_split), 3, 4, 4), units=units)
    order = _order(dataset, 7)
    assert sorted(order) == list(range(len(train_split.captions)))
    assert order == _order(dataset, 7)  # the epoch seed alone decides: a resumed run gets the same batches
    assert order != _order(dataset, 8)
    owner = train_split.txt_to_img
    images = [owner[j] for j in order]
    runs = [images[k] for k in range(len(images)) if k == 0 or images[k] != images[k - 1]]
    assert len(runs) == len(train_split)  # each image's five captions come together
    position = {r.meta["imgid"]: i for i, r in enumerate(train_split)}
    beside = 0
    for k, i in enumerate(runs):
        partner = train_split[i].meta["scene"].get("partner")
        if partner is not None and group == "partners":
            assert position[partner] in runs[max(k - 1, 0):k + 2]
        beside += partner is not None and position.get(partner) in runs[max(k - 1, 0):k + 2]
    if group == "images":
        assert beside < len(train_split) // 4  # shuffled images: partners meet by chance only


def test_a_grouped_flip_mirrors_all_of_an_images_captions_and_their_negatives(train_split):
    negatives = hard_negatives(train_split)
    dataset = ImageTextDataset(train_split, CaptionAwareHorizontalFlip(1.0), negatives=negatives,
                               units=BATCHES["images"](train_split),
                               images=torch.arange(len(train_split), dtype=torch.float)[:, None, None, None]
                               .expand(-1, 3, 2, 2))
    dataset.set_epoch_seed(0)
    for k in range(200):
        item = dataset[k]
        j = item["caption_index"]
        assert item["caption"] == swap_left_right(train_split.captions[j])
        assert item["negatives"] == [swap_left_right(n) for n in negatives[j]]
        assert torch.equal(item["image"], item["image"].flip(-1))  # (constant images: the flip is applied)


def test_the_collator_keeps_each_negative_with_its_pair(tokenizer, train_split):
    items = [{"image": torch.zeros(3, 2, 2), "caption": c, "image_index": i, "caption_index": i,
              "negatives": swapped_captions(c)} for i, c in enumerate(["a red circle left of a blue box",
                                                                     "just a green disc", "a red box above a blue disc"])]
    batch = Collator(tokenizer, 32)(items)
    assert batch.negative_owner.tolist() == [0, 0, 2, 2]
    decoded = tokenizer.batch_decode(batch.negative_ids, skip_special_tokens=True)
    assert decoded[1] == "a red circle right of a blue box" and decoded[3] == "a red box below a blue disc"
    assert batch.to("cpu").negative_ids is batch.negative_ids or torch.equal(batch.to("cpu").negative_ids,
                                                                            batch.negative_ids)
    plain = Collator(tokenizer, 32)([{**it, "negatives": []} for it in items])
    assert plain.negative_ids is None and plain.to("cpu").negative_owner is None


# --------------------------------------------------------------------------- the loss and the step
def test_info_nce_with_negatives_matches_a_written_out_softmax():
    torch.manual_seed(0)
    img, txt, neg = (F.normalize(torch.randn(n, 8), dim=-1) for n in (4, 4, 3))
    index = torch.tensor([0, 0, 1, 2])  # pairs 0 and 1 show the same image
    owner = torch.tensor([1, 2, 3])  # negatives of pairs 1, 2 and 3
    scale = torch.tensor(2.0)
    loss = info_nce_loss(img, txt, scale, index, neg, owner)
    s, total = scale.exp(), 0.0
    for r in range(4):
        others = [c for c in range(4) if c == r or index[c] != index[r]]
        mine = [n for n in range(3) if index[owner[n]] == index[r]]
        logits = torch.cat([s * img[r] @ txt[others].T, s * img[r] @ neg[mine].T])
        total += -(logits[others.index(r)] - logits.logsumexp(0))
    text_side = info_nce_loss(img, txt, scale, index) * 2 - F.cross_entropy(
        (s * img @ txt.T).masked_fill((index[:, None] == index[None, :]) & ~torch.eye(4, dtype=torch.bool),
                                      float("-inf")), torch.arange(4))
    assert torch.allclose(loss, (total / 4 + text_side) / 2, atol=1e-6)
    assert torch.allclose(info_nce_loss(img, txt, scale, index, neg[:0], owner[:0]), info_nce_loss(img, txt, scale,
                                                                                                   index))


def test_an_image_with_several_captions_is_encoded_once(monkeypatch):
    torch.manual_seed(0)
    model = build_model(image_tower="grid_cnn", text_tower="gru", word_dim=8, text_hidden=8, embed_dim=8).eval()
    step = ContrastiveStep(model, TrainConfig(batches="images"))
    images = torch.randn(3, 3, 64, 64)
    index = torch.tensor([0, 0, 1, 1, 2])
    ids = torch.randint(1, 100, (5, 6))
    mask = torch.ones_like(ids)
    seen = []
    forward = model.image_tower.forward
    monkeypatch.setattr(model.image_tower, "forward", lambda x: seen.append(len(x)) or forward(x))
    once = step(images[index], ids, mask, index)
    assert seen == [3]
    different = images[index].clone()
    different[1] = different[1].flip(-1)  # the same image index, other pixels: encoded as they are
    step(different, ids, mask, index)
    assert seen[-1] == 5
    img, txt = model.encode_images(images[index]), model.encode_texts(ids, mask)
    assert torch.allclose(once, info_nce_loss(img, txt, model.logit_scale, index), atol=1e-6)
    # Caption batches encode every row, as chapter 03's loop does: a trainable tower's BatchNorm sees the duplicates.
    ContrastiveStep(model, TrainConfig())(images[index], ids, mask, index)
    assert seen[-1] == 5


def test_training_asks_the_registered_maker_for_negatives(monkeypatch, small_tiny):
    split = read_dataset(small_tiny).split("train")
    assert NEGATIVE_MAKERS[-1] is hard_negatives  # chapter 05's swapped words, registered on import
    model = build_model(image_tower="seed_cnn")
    from siamese_utils.core.train import training_pairs
    pairs, _ = training_pairs(model, split, torch.zeros(len(split), 3, 16, 16), TrainConfig(hard_negatives=True),
                              torch.device("cpu"))
    assert pairs.negatives == hard_negatives(split)
    monkeypatch.setattr("siamese_utils.core.train.NEGATIVE_MAKERS", [])
    with pytest.raises(ValueError, match="needs a maker of hard-negative captions"):
        training_pairs(model, split, torch.zeros(len(split), 3, 16, 16), TrainConfig(hard_negatives=True),
                       torch.device("cpu"))


def test_recipe_settings_are_checked():
    with pytest.raises(ValueError, match="hard_negatives.*hinge"):
        TrainConfig(hard_negatives=True, loss="hinge")
    with pytest.raises(ValueError, match="batches"):
        TrainConfig(batches="scenes")


def test_fit_at_scale_refuses_grouped_batches_across_processes(monkeypatch, small_tiny, tokenizer):
    data = read_dataset(small_tiny)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="batches='partners'.*torchrun"):
        fit_at_scale(build_model(image_tower="seed_cnn"), data.split("train"), data.split("val"),
                     TrainConfig(batches="partners", batch_size=10), tokenizer, progress=False, log=None)


def test_a_resumed_composition_run_equals_the_uninterrupted_one(tmp_path, small_tiny, tokenizer):
    data = read_dataset(small_tiny)
    train, val = data.split("train"), data.split("val")
    config = dataclasses.replace(composition.COMPOSITION_TRAIN, num_epochs=2, batch_size=20, image_size=16,
                                 hard_negatives=True)
    model_config = dataclasses.replace(composition.COMPOSITION_MODEL, image_tower="seed_cnn", word_dim=8,
                                       text_hidden=8, embed_dim=8)
    results = []
    for out, stop in ((tmp_path / "whole", None), (tmp_path / "resumed", 1)):
        torch.manual_seed(0)
        model = build_model(model_config)
        fit(model, train, val, config, tokenizer, out_dir=out, progress=False, log=None, stop_after=stop)
        if stop:
            torch.manual_seed(0)
            model = build_model(model_config)
            fit(model, train, val, config, tokenizer, out_dir=out, resume=True, progress=False, log=None)
        results.append(model.state_dict())
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


# --------------------------------------------------------------------------- the grid tower
def test_the_grid_tower_keeps_cells_and_explains_its_score():
    torch.manual_seed(0)
    model = build_model(composition.COMPOSITION_MODEL).eval()
    assert model.image_tower.out_dim == 1024
    image = torch.randn(3, 64, 64)
    caption = F.normalize(torch.randn(model.embed_dim), dim=0)
    cells = composition.cell_similarity(model, image, caption)
    assert cells.shape == (4, 4)
    raw = model.image_proj(model.image_tower(image[None]))[0]
    assert torch.allclose(cells.sum() + model.image_proj.bias @ caption, raw @ caption, atol=1e-4)
    with pytest.raises(ValueError, match="64-px.*image_size"):
        model.image_tower(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model(composition.COMPOSITION_MODEL, pretrained=True)


def test_each_rung_of_the_ladder_changes_one_thing_from_the_rung_it_names():
    rungs = {v.name: v for v in composition.ladder(num_epochs=3)}

    def changed(a, b):
        return ([k for k, v in a.model.to_dict().items() if v != b.model.to_dict()[k]]
                + [k for k, v in a.train.to_dict().items() if v != b.train.to_dict()[k]])

    first, *rest = rungs.values()
    assert first.model.text_tower == "bow" and first.model.image_tower == "grid_cnn_pooled"
    assert composition.compared_with(first.name) == ""
    for variant in rest:
        before = rungs[composition.compared_with(variant.name)]
        assert len(changed(before, variant)) == 1, (variant.name, changed(before, variant))
    default = rungs["+ swapped-word negatives"]
    assert default.model == composition.COMPOSITION_MODEL
    assert default.train == dataclasses.replace(composition.COMPOSITION_TRAIN, num_epochs=3)
    assert all(v.train.num_epochs == composition.COMPOSITION_TRAIN.num_epochs for v in composition.ladder())


def test_bootstrap_intervals_hold_the_mean_and_pair_the_variants():
    import pandas as pd

    rng = np.random.default_rng(0)
    layout = {"image": [i // 5 for i in range(40)], "partner_swaps": ["swap_colours"] * 20 + ["swap_places"] * 20}

    def rows(name, p):
        return [{"variant": name, "seed": s, "beats_outcomes": json.dumps(
            {**layout, "beats": (rng.random(40) < p).astype(int).tolist()})} for s in range(3)]

    results = pd.DataFrame(rows("coin", 0.5) + rows("good", 0.97))
    table = composition.bootstrap_beats(results, ["coin", "good"], "colours", samples=500)
    for name in ("coin", "good"):
        assert table.loc[name, "low"] <= table.loc[name, "mean"] <= table.loc[name, "high"]
    assert table.loc["good", "diff low"] > 0  # clearly better: the paired interval excludes zero
    assert np.isnan(table.loc["coin", "vs previous"])
    with pytest.raises(ValueError, match="same seeds"):
        composition.bootstrap_beats(results[results["seed"] < 2].iloc[:-1], ["coin", "good"], "colours")


def test_comparisons_against_baselines_give_paired_intervals_and_verdicts():
    import pandas as pd

    rng = np.random.default_rng(1)
    layout = {"image": [i // 5 for i in range(40)], "partner_swaps": ["swap_places"] * 40}

    def rows(name, p):
        return [{"variant": name, "seed": s, "beats_outcomes": json.dumps(
            {**layout, "beats": (rng.random(40) < p).astype(int).tolist()})} for s in range(3)]

    results = pd.DataFrame(rows("coin", 0.5) + rows("good", 0.97) + rows("bad", 0.03) + rows("twin", 0.5))
    baselines = {"coin": "", "good": "coin", "bad": "coin", "twin": "coin"}
    table = composition.beats_against(results, baselines, "places", samples=500)
    assert list(table.index) == list(baselines) and table.loc["coin", "verdict"] == ""
    assert table.loc["good", "verdict"] == "helps" and table.loc["bad", "verdict"] == "hurts"
    assert table.loc["twin", "verdict"] == "no clear change"  # another coin: its interval holds zero
    paired = composition.bootstrap_beats(results, ["coin", "good"], "places", samples=500)
    assert table.loc["good", ["mean", "diff low", "diff high"]].tolist() == paired.loc["good", ["mean", "diff low", "diff high"]].tolist()
    shown = composition.format_beats({"places": table})
    assert list(shown.columns) == [("places", "beats (%)"), ("places", "change"), ("places", "verdict")]
    r = table.loc["good"]
    assert shown.loc["good", ("places", "change")] == f"{r['vs previous']:+.1f} [{r['diff low']:+.1f}, {r['diff high']:+.1f}]"
    assert shown.loc["coin", ("places", "change")] == "" and shown.loc["coin", ("places", "beats (%)")].startswith(
        f"{table.loc['coin', 'mean']:.1f} [")


def test_truth_matrix_and_judge_agree(tiny_dir):
    test = read_dataset(tiny_dir).split("test")
    truth, judge = truth_matrix(test), tiny.judge(test)
    for j in range(0, truth.shape[1], 17):
        for i in range(truth.shape[0]):
            assert bool(truth[i, j]) == judge(test.captions[j], i)
