"""The notebooks as documents: committed executed and in order, the house skeleton, and
what they teach from scratch agreeing with the library. (nbval executes them separately.)"""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:2] == ["01_preprocessing.ipynb", "02_model_construction.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_in_order_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), (
        "outputs must come from one in-order run: python -m siamese_utils refresh-notebooks"
    )
    for c in code:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", _source(c)[:80]
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"stderr (a warning or progress bar) in a stored output: {_source(c)[:80]}"
            )
        assert "execution" not in c.get("metadata", {}), "strip timing metadata (refresh-notebooks does)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_house_skeleton(path):
    cells = _cells(path)
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    number = path.name[:2]
    assert re.match(rf"# {number} · \S", _source(cells[0])), "first line: '# NN · Title'"
    assert "colab.research.google.com/github/" in markdown and f"notebooks/{path.name}" in markdown
    for heading in ("## Summary", "## Exercises", "## References"):
        assert f"\n{heading}" in markdown, heading
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for c in cells:
        if c["cell_type"] == "code":
            ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", _source(c), flags=re.M))  # valid Python, magics aside


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_colab_setup_is_one_short_cell_of_its_own(path):
    """Colab's set-up (clone, install, cd) is the first code cell, at most 8 lines, and holds nothing else."""
    code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
    colab = [i for i, src in enumerate(code) if "IS_COLAB = " in src]
    assert colab == [0], "one Colab set-up cell, the first code cell"
    lines = code[0].strip().splitlines()
    assert len(lines) <= 8, f"{len(lines)} lines: keep the Colab cell to the clone, the install and the cd"
    assert not any(line.startswith(("from ", "import ")) and line != "import sys" for line in lines), (
        "the imports go in the next cell")
    assert "!git clone" not in code[0], "clone only where the folder is missing: !test -d DIR || git clone ..."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_grading_cells_are_collapsed(path):
    """A reader sees the exercise and the verdict of its check ("... passes the checks"), not the checking code:
    every nbgrader test cell opens with its source collapsed (JupyterLab's "source_hidden"; a click shows it)."""
    for c in _cells(path):
        meta = c.get("metadata", {})
        if c["cell_type"] == "code" and meta.get("nbgrader", {}).get("grade"):
            assert meta.get("jupyter", {}).get("source_hidden") is True, _source(c)[:60]
            assert any("passes the checks" in "".join(o.get("text", "")) for o in c.get("outputs", [])), (
                "a grading cell ends by printing its verdict, so the collapsed cell still says something")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_are_short(path):
    """A chapter reads as prose with short code between: the median code cell is at most 10 lines."""
    sizes = sorted(len(_source(c).strip().splitlines()) for c in _cells(path) if c["cell_type"] == "code")
    median = (sizes[(len(sizes) - 1) // 2] + sizes[len(sizes) // 2]) / 2
    assert median <= 10, f"median code cell {median} lines: split the longest cells, with a sentence between"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_cell_tags_not_comment_lines(path):
    """The reader's page carries no test machinery: nbval's markers are tags, which JupyterLab keeps out of sight."""
    for c in _cells(path):
        if c["cell_type"] == "code":
            assert "# NBVAL_" not in _source(c), f"tag the cell instead (nbval-check-output): {_source(c)[:60]!r}"
            tags = c.get("metadata", {}).get("tags", [])
            assert not {"nbval-check-output", "nbval-ignore-output"} <= set(tags), _source(c)[:60]


def _definitions(path, name, **names):
    """Execute the notebook cell that defines the function or class `name` and return the object.

    The cell sees torch, nn, F, math and the given ``names``.
    """
    import math

    import torch.nn.functional as F
    from torch import nn

    for c in _cells(path):
        if c["cell_type"] == "code" and re.search(rf"^(def|class) {name}\b", _source(c), re.M):
            namespace = {"torch": torch, "nn": nn, "F": F, "math": math, **names}
            exec(compile(_source(c), f"{path.name}:{name}", "exec"), namespace)
            return namespace[name]
    raise AssertionError(f"{path.name} no longer defines {name}")


def test_dynamic_padding_taught_in_01_agrees_with_the_collator(tokenizer, tiny_dir):
    from siamese_utils.core.data import Collator, read_dataset

    pad_token_ids = _definitions(REPO / "notebooks" / "01_preprocessing.ipynb", "pad_token_ids")
    captions = read_dataset(tiny_dir).split("test").captions
    collate = Collator(tokenizer, max_length=512)
    for start in range(0, len(captions), 37):
        chunk = captions[start : start + 37]
        ids, mask = pad_token_ids([tokenizer(c)["input_ids"] for c in chunk], tokenizer.pad_token_id)
        ref = collate.tokenize(chunk)
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])


NB02 = REPO / "notebooks" / "02_model_construction.ipynb"


def _padded_batch(tokenizer):
    captions = ["a red circle", "We see a yellow triangle above a red square", "a big disc"]
    enc = tokenizer(captions, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_seed_network_copied_in_02_is_the_library_one_without_its_embedding():
    from siamese_utils.chapters.seed import SeedSiameseNetwork

    SiameseNetwork = _definitions(NB02, "SiameseNetwork")
    torch.manual_seed(0)
    library = SeedSiameseNetwork().eval()
    verbatim = SiameseNetwork().eval()
    missing, unexpected = verbatim.load_state_dict(library.state_dict(), strict=False)
    assert missing == [] and unexpected == ["token_embedding.weight"]
    images, vectors = torch.randn(3, 3, 32, 32), torch.randn(3, 7, 768)
    with torch.no_grad():
        assert torch.equal(verbatim(images, vectors), library(images, vectors))


def test_pooling_taught_in_02_agrees_with_the_library(tokenizer):
    from siamese_utils.core import models

    ids, mask = _padded_batch(tokenizer)
    hidden = torch.randn(*ids.shape, 16)
    for name in ("last_real_token", "masked_mean"):
        torch.testing.assert_close(_definitions(NB02, name)(hidden, mask), getattr(models, name)(hidden, mask))
    torch.manual_seed(0)
    ours, library = _definitions(NB02, "AttentionPool")(16), models.AttentionPool(16)
    library.load_state_dict(ours.state_dict())
    for a, b in zip(ours(hidden, mask), library(hidden, mask)):
        torch.testing.assert_close(a, b)


def test_two_tower_taught_in_02_is_the_core_of_the_dual_encoder(tokenizer):
    from siamese_utils.core.models import build_model

    torch.manual_seed(0)
    model = build_model(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8).eval()
    core = _definitions(NB02, "TwoTower")(model.image_tower, model.text_tower, 16).eval()
    core.load_state_dict(model.state_dict())
    ids, mask = _padded_batch(tokenizer)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.similarity(model.encode_images(images), model.encode_texts(ids, mask))
        got = core.similarity(core.encode_images(images), core.encode_texts(ids, mask))
    torch.testing.assert_close(got, expected)
    assert core.logit_scale.item() == pytest.approx(model.logit_scale.item())


NB03 = REPO / "notebooks" / "03_contrastive_training.ipynb"


def _batch_with_duplicates(seed, batch=12, dim=8):
    g = torch.Generator().manual_seed(seed)
    image_index = torch.randint(0, 7, (batch,), generator=g)  # several pairs share an image
    images = torch.nn.functional.normalize(torch.randn(7, dim, generator=g), dim=1)
    img_emb = images[image_index]
    txt_emb = torch.nn.functional.normalize(img_emb + 0.8 * torch.randn(batch, dim, generator=g), dim=1)
    return img_emb, txt_emb, image_index


@pytest.mark.parametrize("seed", range(5))
def test_losses_taught_in_03_agree_with_the_library(seed):
    from siamese_utils.core import losses

    hinge_loss = _definitions(NB03, "hinge_loss")
    info_nce = _definitions(NB03, "info_nce")
    cosine_loss = _definitions(NB03, "cosine_loss")
    img_emb, txt_emb, image_index = _batch_with_duplicates(seed)
    sim = img_emb @ txt_emb.T
    same = image_index[:, None] == image_index[None, :]
    scale = torch.tensor(2.5)
    for hardest in (False, True):
        assert torch.allclose(hinge_loss(sim, same, hardest=hardest),
                              losses.hinge_triplet_loss(img_emb, txt_emb, image_index, max_violation=hardest))
    assert torch.allclose(info_nce(sim, scale, same), losses.info_nce_loss(img_emb, txt_emb, scale, image_index))
    # The library draws negatives at random; with as many draws as other-image captions it takes them all.
    fewest = int((~same).sum(1).min())
    negatives = torch.stack([torch.nonzero(~same[i]).flatten()[:fewest] for i in range(len(sim))])
    if bool(((~same).sum(1) == fewest).all()):
        expected = losses.cosine_embedding_loss(img_emb, txt_emb, image_index, num_negatives=fewest)
        assert torch.allclose(cosine_loss(sim, negatives), expected)
    reference = torch.nn.CosineEmbeddingLoss(margin=0.3)
    rows = torch.arange(len(sim))[:, None].expand_as(negatives).flatten()
    x1 = torch.cat([img_emb, img_emb[rows]])
    x2 = torch.cat([txt_emb, txt_emb[negatives.flatten()]])
    y = torch.cat([torch.ones(len(sim)), -torch.ones(len(rows))])
    assert torch.allclose(cosine_loss(sim, negatives), reference(x1, x2, y), atol=1e-6)


def test_training_loop_taught_in_03_trains_like_the_library(small_tiny, tokenizer):
    """The notebook's train_one_epoch and siamese_utils.core.train.train_one_epoch reach the same weights."""
    from siamese_utils.core import losses
    from siamese_utils.core import train as T
    from siamese_utils.core.data import Collator, ImageTextDataset, make_loader, read_dataset
    from siamese_utils.core.models import ModelConfig, build_model

    notebook_loop = _definitions(NB03, "train_one_epoch")
    split = read_dataset(small_tiny).split("train")
    images = T.prepare_images(split, 16)
    config = T.TrainConfig(batch_size=16, image_size=16, flip="off")
    dataset = ImageTextDataset(split, images=images)
    model_config = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8)
    weights = []
    for which in ("notebook", "library"):
        torch.manual_seed(0)
        model = build_model(model_config)
        optimizer = T.make_optimizer(model, config)
        scheduler = T.make_scheduler(optimizer, config, steps_per_epoch=3)
        loader = make_loader(dataset, 16, shuffle=True, seed=0, collate_fn=Collator(tokenizer, 32))
        device = torch.device("cpu")
        if which == "notebook":
            def loss_fn(img, txt, index, model=model):
                return losses.info_nce_loss(img, txt, model.logit_scale, index)

            loss = notebook_loop(model, loader, optimizer, scheduler, loss_fn, device)
        else:
            loss = T.train_one_epoch(model, loader, optimizer, scheduler, config, 0, device, progress=False)
        weights.append((loss, model.state_dict()))
    (loss_a, a), (loss_b, b) = weights
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- 04 evaluation

NB04 = REPO / "notebooks" / "04_evaluation.ipynb"


@pytest.mark.parametrize("counts", [[5, 5, 5], [4, 5, 6, 5], [1, 3, 2, 6, 1]], ids=["3x5", "4-5-6", "uneven"])
def test_protocol_taught_in_04_agrees_with_the_library(counts):
    """The sorting loop and metrics of chapter 04 equal retrieval_ranks / retrieval_metrics, ties included."""
    import numpy as np

    from siamese_utils.core.metrics import METRIC_KEYS, retrieval_metrics, retrieval_ranks

    ranks_by_sorting = _definitions(NB04, "ranks_by_sorting", np=np)
    metrics_from_ranks = _definitions(NB04, "metrics_from_ranks", np=np)
    g = torch.Generator().manual_seed(len(counts))
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    img = torch.nn.functional.normalize(torch.randn(len(counts), 6, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img[owner] + torch.randn(len(owner), 6, generator=g), dim=1)
    txt[1] = txt[-1]  # an exact tie: the same caption vector under two images
    i2t, t2i = ranks_by_sorting((img @ txt.T).tolist(), owner.tolist())
    expected_i2t, expected_t2i = retrieval_ranks(img, txt, owner)
    np.testing.assert_array_equal(i2t, expected_i2t)
    np.testing.assert_array_equal(t2i, expected_t2i)
    ours, library = metrics_from_ranks(i2t, t2i), retrieval_metrics(img, txt, owner)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(library[key], abs=1e-9), key


def test_fused_scores_in_04_are_the_seed_networks_own():
    """The factorised first fusion layer of chapter 04 gives what the network computes pair by pair."""
    from siamese_utils.chapters.seed import SeedSiameseNetwork

    fused_scores = _definitions(NB04, "fused_scores")
    torch.manual_seed(0)
    net = SeedSiameseNetwork().eval()
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(1000, 2000, (4, 7))
    prototype = torch.nn.functional.normalize(torch.randn(256), dim=0)
    got = fused_scores(net, images, ids, prototype)
    with torch.no_grad():
        pairwise = torch.stack([net(images[i:i + 1].expand(4, -1, -1, -1), ids) @ prototype for i in range(3)])
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, pairwise, atol=1e-5, rtol=1e-4)


def _parameters_source(path):
    (cell,) = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    return _source(cell)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_short_setting_is_switched_by_the_project_variable_alone(path):
    """Not by CI, which a newcomer's shell does not set; one line, which says how to switch."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"environ(\.get)?[\[(]\s*\\?[\"']CI\\?[\"']", text), "read SIAMESE_SMOKE, not CI"
    if "SMOKE" in _parameters_source(path):
        (line,) = [l for l in _parameters_source(path).splitlines() if l.startswith("SMOKE =")]
        assert line.startswith('SMOKE = os.environ.get("SIAMESE_SMOKE") == "1"  # '), line
        assert "SMOKE = True" in line, "the comment says how to switch by hand"


def test_the_readme_test_command_runs_the_notebooks_in_their_short_setting():
    """`python -m pytest` with CI unset (a newcomer's shell) gives every notebook kernel SIAMESE_SMOKE=1.

    In one process (-n 0): xdist's workers inherit the environment this conftest sets, as kernels do."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SIAMESE_SMOKE", "PYTEST_ADDOPTS")}
    probe = "tests/fixtures/smoke_probe.ipynb"
    result = subprocess.run([sys.executable, "-m", "pytest", probe, "-q", "-n", "0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-2000:]


def test_the_test_run_trains_into_its_own_folder_not_the_repositorys_runs():
    """The notebooks under test write SIAMESE_RUNS; conftest.py points it outside the checkout."""
    import os

    runs = Path(os.environ["SIAMESE_RUNS"]).resolve()
    assert REPO not in runs.parents and runs != REPO / "runs"
