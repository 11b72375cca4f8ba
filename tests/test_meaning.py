"""The tiny set's ground truth of meaning: stored meanings, the caption parser, the truth function,
and retrieval scored by meaning (truth matrix, semantic ceiling, multi-positive recall)."""

import json
import random

import numpy as np
import pytest
import torch

from siamese_utils.chapters import analysis
from siamese_utils.core.data import read_dataset
from siamese_utils.datasets.tiny import (RELATION_WORDS, WHERE_PHRASES, is_true_of, load_meanings, parse_caption,
                                         stored_config)


@pytest.fixture(scope="module")
def entries(tiny_dir):
    return json.loads((tiny_dir / "dataset.json").read_text())["images"]


@pytest.fixture(scope="module")
def test_split(tiny_dir):
    return read_dataset(tiny_dir).split("test")


def _meaning(*objects, relation=None, where=None):
    return {"objects": [dict(zip(("colour", "shape", "size"), o)) for o in objects], "relation": relation,
            "where": where}


# --------------------------------------------------------------------------- stored meaning and parser


def test_every_sentence_stores_a_meaning_the_parser_reads_back(entries):
    for e in entries:
        for s in e["sentences"]:
            meaning = s["meaning"]
            assert set(meaning) == {"objects", "relation", "where"}
            assert len(meaning["objects"]) == (1 if e["scene"]["kind"] == "single" else 2)
            assert parse_caption(s["raw"]) == meaning, s["raw"]


def test_read_dataset_still_reads_it_and_load_meanings_follows_the_captions(tiny_dir, entries, test_split):
    data = read_dataset(tiny_dir)
    assert len(data) == 800 and data.num_captions == 4000
    meanings = load_meanings(test_split)
    assert len(meanings) == test_split.num_captions
    assert [parse_caption(c) for c in test_split.captions] == meanings
    assert stored_config(test_split).image_size == 64


def test_parser_ignores_case_period_articles_and_synonyms():
    expected = _meaning(("red", "circle", "small"), ("blue", "square", None), relation="below")
    for text in ("A tiny red disc beneath a blue box.", "there is a  small red circle under the blue square",
                 "small red circle below blue square", "we see a little red disc under an blue box"):
        assert parse_caption(text) == expected, text
    assert parse_caption("Just an orange rhombus in the bottom right corner.") == _meaning(
        ("orange", "diamond", None), where="bottom right corner")
    assert parse_caption("a big green triangle on a plain background on the left") == _meaning(
        ("green", "triangle", "large"), where="left")
    assert parse_caption("a purple square placed on top of a yellow circle")["relation"] == "above"


def test_parser_refuses_what_is_not_a_tiny_set_caption():
    with pytest.raises(ValueError, match=r"'a red pentagon' is not a tiny-set caption: unknown word\(s\) 'pentagon'"):
        parse_caption("a red pentagon")
    with pytest.raises(ValueError, match=r"'circle red a' is not a tiny-set caption: its words follow no template"):
        parse_caption("circle red a")
    with pytest.raises(ValueError, match="not a tiny-set caption"):
        parse_caption("a red circle left of a blue square in the middle")


# --------------------------------------------------------------------------- truth


def test_every_caption_is_true_of_its_image_and_false_of_its_minimal_pair(entries):
    by_id = {e["imgid"]: e for e in entries}
    for e in entries:
        partner = by_id[e["scene"]["partner"]]["scene"] if "partner" in e["scene"] else None
        for s in e["sentences"]:
            assert is_true_of(s["meaning"], e["scene"]), (s["raw"], e["scene"])
            if partner is not None:
                assert not is_true_of(s["meaning"], partner), (s["raw"], partner)


SCENE = {"kind": "swap_places", "objects": [
    {"colour": "red", "shape": "circle", "size": "small", "x": 12.0, "y": 30.0, "r": 7.0},
    {"colour": "blue", "shape": "square", "size": "large", "x": 48.0, "y": 34.0, "r": 12.0}]}
SINGLE = {"kind": "single", "objects": [{"colour": "green", "shape": "triangle", "size": "large", "x": 10.0,
                                         "y": 10.0, "r": 12.0}]}


@pytest.mark.parametrize("caption, true", [
    ("a red circle left of a blue square", True),
    ("a big blue box to the right of a small red disc", True),  # the other view of the same relation
    ("a red circle right of a blue square", False),  # wrong relation
    ("a red circle above a blue square", False),  # mostly sideways: not clearly above
    ("a green circle left of a blue square", False),  # wrong colour
    ("a large red circle left of a blue square", False),  # wrong size named
    ("a red square left of a blue circle", False),  # colours bound to the wrong shapes
    ("a red circle", False),  # one object described, two in the scene
])
def test_hand_made_cases_against_a_pair(caption, true):
    assert is_true_of(parse_caption(caption), SCENE) is true


def test_hand_made_cases_against_a_single():
    assert is_true_of(parse_caption("a big green triangle in the top left corner"), SINGLE)
    assert is_true_of(parse_caption("a green triangle"), SINGLE)
    assert not is_true_of(parse_caption("a green triangle in the middle"), SINGLE)
    assert not is_true_of(parse_caption("a small green triangle"), SINGLE)
    assert not is_true_of(parse_caption("a green triangle left of a red circle"), SINGLE)  # pair vs single
    # Two objects and no relation: both must be there, anywhere.
    assert is_true_of(_meaning(("blue", "square", None), ("red", "circle", None)), SCENE)
    assert not is_true_of(_meaning(("blue", "square", None), ("red", "square", None)), SCENE)
    with pytest.raises(ValueError, match="between two objects"):
        is_true_of(_meaning(("green", "triangle", None), relation="left of"), SINGLE)
    with pytest.raises(ValueError, match="for one object"):
        is_true_of(_meaning(("red", "circle", None), ("blue", "square", None), where="middle"), SCENE)
    assert set(WHERE_PHRASES) >= {"middle", "top left corner"} and "left of" in RELATION_WORDS


# --------------------------------------------------------------------------- retrieval by meaning


def test_truth_matrix_of_the_test_split(test_split):
    truth = analysis.truth_matrix(test_split)
    assert truth.dtype == torch.bool and truth.shape == (len(test_split), test_split.num_captions)
    owner = torch.as_tensor(test_split.txt_to_img)
    assert truth[owner, torch.arange(len(owner))].all()
    ceiling = analysis.semantic_ceiling(truth, test_split.txt_to_img)
    k = truth.sum(dim=0).double()
    assert ceiling["t2i_r1"] == pytest.approx(100 * (1 / k).mean().item())
    assert ceiling["t2i_r1"] < 100  # some captions, e.g. "we see a purple square", are true of two test images
    assert ceiling["t2i_r1"] == pytest.approx(98.1)
    assert analysis.semantic_recall(truth.float(), truth) == {f"{d}_r{K}": 100.0 for d in ("i2t", "t2i")
                                                              for K in (1, 5, 10)}


def test_truth_matrix_needs_stored_meaning(tmp_path, test_split):
    (tmp_path / "captions.csv").write_text("image,caption\na.png,a red circle\n")
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    plain = read_dataset(tmp_path, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match="no stored meaning; regenerate it with `python -m siamese_utils make-tiny"):
        analysis.truth_matrix(plain)
    doc = json.loads(test_split.source.read_text())
    for e in doc["images"]:
        for s in e["sentences"]:
            del s["meaning"]
    (tmp_path / "images" / "old").mkdir()
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = read_dataset(tmp_path / "old.json", check_files=False).split("test")
    with pytest.raises(ValueError, match=r"carry no stored 'meaning'.*make-tiny") as info:
        analysis.truth_matrix(old)
    assert "\n" not in str(info.value)


def _brute_force(sim, truth, ks):
    n, m = len(sim), len(sim[0])
    out = {}
    for direction in ("i2t", "t2i"):
        queries = range(n) if direction == "i2t" else range(m)
        ranks = []
        for q in queries:
            pairs = [(sim[q][c], truth[q][c]) for c in range(m)] if direction == "i2t" else \
                [(sim[i][q], truth[i][q]) for i in range(n)]
            best = max(s for s, right in pairs if right)
            ranks.append(sum(1 for s, right in pairs if s >= best and not right))
        for K in ks:
            out[f"{direction}_r{K}"] = 100.0 * sum(r < K for r in ranks) / len(ranks)
    return out


def _ceiling_by_simulation(truth, owner, K, trials, rng):
    """Shuffle the images a caption is true of (and the captions true of an image); count own hits in the top K."""
    n, m = len(truth), len(truth[0])
    t2i = i2t = 0.0
    for _ in range(trials):
        for j in range(m):
            true_images = [i for i in range(n) if truth[i][j]]
            rng.shuffle(true_images)
            t2i += owner[j] in true_images[:K]
        for i in range(n):
            true_captions = [j for j in range(m) if truth[i][j]]
            rng.shuffle(true_captions)
            i2t += any(owner[j] == i for j in true_captions[:K])
    return 100 * i2t / (trials * n), 100 * t2i / (trials * m)


def test_metrics_match_a_brute_force_loop_on_random_data():
    rng = np.random.default_rng(0)
    for n, m in ((7, 21), (12, 30)):
        owner = np.repeat(np.arange(n), m // n)[:m] if m % n == 0 else rng.integers(n, size=m)
        owner[:n] = np.arange(n)  # every image owns a caption
        truth = rng.random((n, m)) < 0.25
        truth[owner, np.arange(m)] = True
        sim = rng.integers(0, 4, size=(n, m)).astype(np.float32)  # small integers: many ties
        got = analysis.semantic_recall(torch.from_numpy(sim), torch.from_numpy(truth), ks=(1, 2, 5))
        want = _brute_force(sim.tolist(), truth.tolist(), (1, 2, 5))
        assert got == pytest.approx(want)
        ceiling = analysis.semantic_ceiling(truth, owner, ks=(1, 3))
        r = random.Random(1)
        for K in (1, 3):
            i2t, t2i = _ceiling_by_simulation(truth.tolist(), owner.tolist(), K, 400, r)
            assert ceiling[f"t2i_r{K}"] == pytest.approx(t2i, abs=2.5)
            assert ceiling[f"i2t_r{K}"] == pytest.approx(i2t, abs=2.5)
        k = truth.sum(axis=0)
        assert ceiling["t2i_r1"] == pytest.approx(100 * np.mean(1 / k))


def test_metrics_refuse_inconsistent_inputs():
    truth = torch.eye(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="sim has shape"):
        analysis.semantic_recall(torch.zeros(2, 3), truth)
    with pytest.raises(ValueError, match="false of their own image"):
        analysis.semantic_ceiling(truth, [1, 0, 2])
    with pytest.raises(ValueError, match="true of no image"):
        analysis.semantic_recall(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool))


def test_compare_rankings_agrees_with_the_metrics_and_brute_force_intervals():
    import numpy as np
    import torch

    from siamese_utils.chapters.analysis import compare_rankings, semantic_recall
    from siamese_utils.core.metrics import metrics_from_scores

    g = torch.Generator().manual_seed(0)
    owner = np.repeat(np.arange(12), 3)
    truth = torch.zeros(12, 36, dtype=torch.bool)
    truth[owner, np.arange(36)] = True
    truth[1, 0] = truth[5, 7] = True
    before, after = torch.randn(12, 36, generator=g), torch.randn(12, 36, generator=g)
    table = compare_rankings(before, after, owner, truth, samples=300, seed=1)
    for sim, column in ((before, "before"), (after, "after")):
        metrics = metrics_from_scores(sim, owner)
        for d, name in (("i2t", "image → text"), ("t2i", "text → image")):
            for k in (1, 5, 10):
                assert table.loc[f"{name} R@{k}", column] == pytest.approx(metrics[f"{d}_r{k}"])
            assert table.loc[f"semantic {name} R@1", column] == pytest.approx(semantic_recall(sim, truth)[f"{d}_r1"])
        assert table.loc["rsum", column] == pytest.approx(metrics["rsum"])
    assert (table["change"] == table["after"] - table["before"]).all()
    # brute force: one bootstrap draw of images, their captions with them
    draws = np.random.default_rng(1).integers(0, 12, size=(300, 12))
    diffs = []
    for images in draws:
        caps = np.concatenate([np.flatnonzero(owner == i) for i in images])
        rank = lambda sim: [int((sim[:, j] > sim[owner[j], j]).sum() + (sim[:, j] == sim[owner[j], j]).sum() - 1)
                            for j in caps]
        diffs.append(100 * (np.mean(np.array(rank(after)) < 1) - np.mean(np.array(rank(before)) < 1)))
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert table.loc["text → image R@1", "low"] == pytest.approx(low)
    assert table.loc["text → image R@1", "high"] == pytest.approx(high)
    same = compare_rankings(before, before, owner)
    assert (same[["change", "low", "high"]] == 0).all().all() and "semantic image → text R@1" not in same.index


def test_compare_rankings_reads_each_direction_from_its_own_matrix():
    import numpy as np
    import torch

    from siamese_utils.chapters.analysis import compare_rankings

    g = torch.Generator().manual_seed(2)
    owner = np.repeat(np.arange(8), 2)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    split = compare_rankings(a, (a, b), owner)  # image -> text unchanged, text -> image from b
    assert (split.loc[[f"image → text R@{k}" for k in (1, 5, 10)], "change"] == 0).all()
    whole = compare_rankings(a, b, owner)
    for k in (1, 5, 10):
        assert split.loc[f"text → image R@{k}", "after"] == whole.loc[f"text → image R@{k}", "after"]
