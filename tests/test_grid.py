"""The comparison grid: one factor at a time, seeds, resumable CSV, summaries, the CLI, and per-tower learning rates."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from siamese_utils.chapters import comparisons as grid_module
from siamese_utils.tools.cli import main
from siamese_utils.core.data import read_dataset
from siamese_utils.chapters.comparisons import (GridError, Variant, commenter_grid, format_summary, read_grid, run_grid,
                                summarize_grid)
from siamese_utils.core.models import ModelConfig, build_model
from siamese_utils.core.train import DEFAULT_MODEL, TrainConfig, make_optimizer

LIGHT = ModelConfig(image_tower="seed_cnn", text_tower="bow", word_dim=16, embed_dim=16)
QUICK = TrainConfig(num_epochs=1, batch_size=16, image_size=16, max_length=12)


def light_grid():
    return [Variant("default", "default", "light", LIGHT, QUICK),
            Variant("loss: hinge", "loss", "hinge", LIGHT, replace(QUICK, loss="hinge"))]


@pytest.fixture(scope="module")
def splits(small_tiny):
    data = read_dataset(small_tiny)
    return data.split("train"), data.split("val"), data.split("test")


def test_runs_every_variant_and_seed_and_writes_one_row_each(splits, tokenizer, tmp_path):
    out = tmp_path / "grid.csv"
    res = run_grid(light_grid(), *splits, tokenizer, seeds=(0, 1), out=out, log=None)
    assert list(zip(res["variant"], res["seed"])) == [("default", 0), ("default", 1), ("loss: hinge", 0),
                                                      ("loss: hinge", 1)]
    stored = read_grid(out)
    assert len(stored) == 4 and stored["rsum"].tolist() == pytest.approx(res["rsum"].tolist())
    assert all(0 <= r <= 600 for r in res["rsum"]) and (res["seconds"] > 0).all()
    assert json.loads(stored["train_config"][2])["loss"] == "hinge" and stored["seed"][1] == 1
    assert len(json.loads(stored["val_rsum_by_epoch"][0])) == QUICK.num_epochs


def test_same_seed_same_numbers_other_seed_other_numbers(splits, tokenizer):
    v = light_grid()[:1]
    a = run_grid(v, *splits, tokenizer, seeds=(0, 1), log=None)
    b = run_grid(v, *splits, tokenizer, seeds=(0,), log=None)
    assert a["rsum"][0] == b["rsum"][0]
    assert a["val_rsum_by_epoch"][0] == b["val_rsum_by_epoch"][0]
    assert a["rsum"][0] != a["rsum"][1] or a["val_rsum"][0] != a["val_rsum"][1]


def test_finished_runs_are_reused_and_changed_settings_retrained(splits, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "grid.csv"
    first = run_grid(light_grid(), *splits, tokenizer, seeds=(0,), out=out, log=None)
    calls = []
    real = grid_module._run_one

    def counting(variant, train, *args):
        calls.append((variant.name, train.seed))
        return real(variant, train, *args)

    monkeypatch.setattr(grid_module, "_run_one", counting)
    again = run_grid(light_grid(), *splits, tokenizer, seeds=(0,), out=out, log=None)
    assert calls == [] and again["rsum"].tolist() == first["rsum"].tolist()
    # another seed, and a variant whose settings changed under the same name: only those are trained
    changed = [light_grid()[0], replace(light_grid()[1], train=replace(QUICK, loss="hinge", lr=1e-3))]
    run_grid(changed, *splits, tokenizer, seeds=(0, 1), out=out, log=None)
    assert calls == [("default", 1), ("loss: hinge", 0), ("loss: hinge", 1)]
    assert len(read_grid(out)) == 2 + 3  # the old hinge row stays in the file


def test_an_interrupted_grid_keeps_what_finished_and_resumes(splits, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "grid.csv"
    real = grid_module._run_one

    def dies_on_hinge(variant, *args):
        if variant.name == "loss: hinge":
            raise KeyboardInterrupt
        return real(variant, *args)

    monkeypatch.setattr(grid_module, "_run_one", dies_on_hinge)
    with pytest.raises(KeyboardInterrupt):
        run_grid(light_grid(), *splits, tokenizer, seeds=(0,), out=out, log=None)
    assert read_grid(out)["variant"].tolist() == ["default"]
    calls = []
    monkeypatch.setattr(grid_module, "_run_one", lambda v, *a: calls.append(v.name) or real(v, *a))
    run_grid(light_grid(), *splits, tokenizer, seeds=(0,), out=out, log=None)
    assert calls == ["loss: hinge"] and len(read_grid(out)) == 2


def test_train_images_uses_the_first_images_and_is_part_of_the_settings(splits, tokenizer, tmp_path):
    out = tmp_path / "grid.csv"
    run_grid(light_grid()[:1], *splits, tokenizer, seeds=(0,), out=out, train_images=8, log=None)
    run_grid(light_grid()[:1], *splits, tokenizer, seeds=(0,), out=out, log=None)
    stored = read_grid(out)
    assert len(stored) == 2 and stored["train_images"].iloc[0] == 8 and pd.isna(stored["train_images"].iloc[1])


def test_summary_means_and_sample_std_and_difference_to_default():
    rows = [dict(variant=v, factor=f, level=v, seed=s, i2t_r1=a, t2i_r1=b, rsum=r, seconds=t)
            for v, f, s, a, b, r, t in [("default", "default", 0, 10, 20, 300, 5), ("default", "default", 1, 14, 22, 320, 7),
                                        ("x", "loss", 0, 30, 10, 100, 3)]]
    summary = summarize_grid(pd.DataFrame(rows))
    assert summary.loc["default", "rsum_mean"] == 310
    assert summary.loc["default", "rsum_std"] == pytest.approx(np.std([300, 320], ddof=1))
    assert math.isnan(summary.loc["x", "rsum_std"]) and summary.loc["x", "seeds"] == 1
    assert summary.loc["x", "rsum_vs_default"] == -210
    text = format_summary(summary)
    assert text.loc["default", "rsum"] == "310.0 ± 14.1" and text.loc["x", "rsum"] == "100.0"
    assert text.loc["x", "Δ rsum"] == "-210.0"
    assert summary.loc["default", "seconds_min"] == 5 and text.loc["default", "train s (fastest)"] == "5"
    with pytest.raises(GridError, match="run the grid first"):
        summarize_grid(pd.DataFrame(columns=rows[0].keys()))


def test_commenter_grid_varies_exactly_the_factor_it_names():
    variants = commenter_grid()
    default = variants[0]
    assert default.model == DEFAULT_MODEL and default.factor == "default"
    assert len({v.name for v in variants}) == len(variants) == 11
    for v in variants[1:]:
        model_diff = {k for k, x in v.model.to_dict().items() if default.model.to_dict()[k] != x}
        train_diff = {k for k, x in v.train.to_dict().items() if default.train.to_dict()[k] != x}
        if v.factor == "loss":
            assert not model_diff and train_diff == {"loss"}
        else:
            tower = "text_tower" if v.factor == "text tower" else "image_tower"
            allowed = {tower, "word_dim", "text_hidden", "freeze_text", "freeze_image", "pretrained"}
            assert model_diff and model_diff <= allowed, (v.name, model_diff)
            assert train_diff <= {"pretrained_lr"}
            assert ("pretrained_lr" in train_diff) == ("fine-tuned" in v.name)
        assert v.train.num_epochs == default.train.num_epochs and v.train.batch_size == default.train.batch_size


def test_bad_settings_are_refused_with_the_value_named(splits, tokenizer, tmp_path):
    v = light_grid()
    with pytest.raises(GridError, match="unique"):
        run_grid([v[0], v[0]], *splits, tokenizer, log=None)
    with pytest.raises(GridError, match=r"seeds=\[-1\]"):
        run_grid(v, *splits, tokenizer, seeds=[-1], log=None)
    with pytest.raises(GridError, match="repeat a seed"):
        run_grid(v, *splits, tokenizer, seeds=[0, 0], log=None)
    with pytest.raises(GridError, match="train_images=999 but the training split has 48"):
        run_grid(v, *splits, tokenizer, train_images=999, log=None)
    with pytest.raises(GridError, match="factor 'towers'"):
        Variant("x", "towers", "x", LIGHT, QUICK)
    with pytest.raises(GridError, match="without commas"):
        Variant("a,b", "loss", "x", LIGHT, QUICK)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(GridError, match=r"other\.csv: not a grid results file .*move it aside"):
        run_grid(v, *splits, tokenizer, out=other, log=None)
    assert other.read_text() == "a,b\n1,2\n"  # the foreign file is left as it was


def test_pretrained_lr_puts_only_pretrained_tower_weights_in_the_slow_group():
    model = build_model(replace(DEFAULT_MODEL, freeze_image=False))
    plain = make_optimizer(model, TrainConfig())
    assert [g["lr"] for g in plain.param_groups] == [2e-3, 2e-3]
    opt = make_optimizer(model, TrainConfig(pretrained_lr=1e-4))
    slow = {id(p) for g in opt.param_groups if g["lr"] == 1e-4 for p in g["params"]}
    assert slow == {id(p) for p in model.image_tower.parameters()}
    n_all = sum(len(g["params"]) for g in opt.param_groups)
    assert n_all == sum(1 for p in model.parameters() if p.requires_grad)
    # nothing pretrained to slow down: the same two groups as without the setting
    scratch = build_model(LIGHT)
    assert len(make_optimizer(scratch, TrainConfig(pretrained_lr=1e-4)).param_groups) == 2
    with pytest.raises(ValueError, match="pretrained_lr=0 must be a positive number"):
        TrainConfig(pretrained_lr=0)


def test_cli_lists_runs_and_refuses_unknown_variants(small_tiny, tmp_path, capsys):
    assert main(["grid", "--list"]) == 0
    assert "image: ResNet-18" in capsys.readouterr().out
    assert main(["grid", "--data", str(small_tiny), "--only", "resnet"]) == 2
    assert "--only 'resnet': no such variant; see --list" in capsys.readouterr().err
    assert main(["grid", "--only", "default"]) == 2
    assert "--data DIR is needed" in capsys.readouterr().err
    out = tmp_path / "g.csv"
    assert main(["grid", "--data", str(small_tiny), "--only", "loss: cosine", "--seeds", "3", "--num-epochs", "1",
                 "--image-size", "32", "--train-images", "16", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "loss: cosine" in printed and f"one row per run in {out}" in printed
    stored = read_grid(out)
    assert stored["seed"].tolist() == [3] and json.loads(stored["train_config"][0])["image_size"] == 32
    torch.set_num_threads(2)


def test_train_command_records_pretrained_lr(small_tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_tiny), "--out", str(out), "--num-epochs", "1", "--image-size", "16",
                 "--image-tower", "seed_cnn", "--no-pretrained", "--text-tower", "bow", "--word-dim", "16",
                 "--embed-dim", "16", "--pretrained-lr", "1e-4"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["pretrained_lr"] == 1e-4
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "x"), "--pretrained-lr", "0"])
    assert exit_.value.code == 2 and "--pretrained-lr: pretrained_lr=0.0 must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    torch.set_num_threads(2)


def _ranked_runs(name, ranks_per_seed, owner):
    """Grid rows of one variant whose test ranks are given per seed (i2t over images, t2i over captions)."""
    from siamese_utils.core.metrics import _metrics_from_ranks

    rows = []
    for seed, (i2t, t2i) in enumerate(ranks_per_seed):
        metrics = _metrics_from_ranks(np.asarray(i2t), np.asarray(t2i))
        rows.append({"variant": name, "seed": seed, "rsum": metrics["rsum"],
                     "test_ranks": json.dumps({"i2t": list(map(int, i2t)), "t2i": list(map(int, t2i))})})
    return rows


def test_compare_rsum_pairs_seeds_and_test_images_and_names_a_verdict_only_outside_the_interval():
    from siamese_utils.chapters.comparisons import compare_rsum
    from siamese_utils.core.metrics import _metrics_from_ranks

    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(30), 3)
    noisy = [(rng.integers(0, 8, 30), rng.integers(0, 8, 90)) for _ in range(3)]
    good = [(np.zeros(30, int), np.zeros(90, int))] * 3
    results = pd.DataFrame(_ranked_runs("noisy", noisy, owner) + _ranked_runs("good", good, owner)
                           + _ranked_runs("noisy again", noisy, owner))
    table = compare_rsum(results, [("good", "noisy"), ("noisy", "good"), ("noisy again", "noisy")], owner,
                         samples=500).set_index("a")
    assert table.loc["good", "verdict"] == "better" and table.loc["noisy", "verdict"] == "worse"
    assert table.loc["good", "low"] > 0 and table.loc["noisy", "high"] < 0
    assert table.loc["noisy again", ["change", "low", "high"]].tolist() == [0, 0, 0]
    assert table.loc["noisy again", "verdict"] == ""
    means = results.groupby("variant")["rsum"].mean()
    assert table.loc["good", "change"] == pytest.approx(means["good"] - means["noisy"])
    # one seed, one draw: the sampled rsum is the rsum of the drawn images with their captions, by brute force
    one = pd.DataFrame(_ranked_runs("a", noisy[:1], owner) + _ranked_runs("b", good[:1], owner))
    got = compare_rsum(one, [("a", "b")], owner, samples=1, seed=5).loc[0, "low"]
    images = np.random.default_rng(5).integers(0, 30, 30)
    captions = np.concatenate([np.flatnonzero(owner == i) for i in images])
    drawn = _metrics_from_ranks(noisy[0][0][images], noisy[0][1][captions])["rsum"] - 600
    assert got == pytest.approx(drawn)


def test_compare_rsum_asks_for_ranks_and_for_the_same_seeds():
    from siamese_utils.chapters.comparisons import compare_rsum

    owner = np.repeat(np.arange(4), 2)
    runs = _ranked_runs("a", [(np.zeros(4, int), np.zeros(8, int))] * 2, owner)
    old = [{"variant": "old", "seed": s, "rsum": 600.0, "test_ranks": float("nan")} for s in (0, 1)]
    with pytest.raises(GridError, match="old seed 0: no per-query test ranks stored.*run the grid again"):
        compare_rsum(pd.DataFrame(runs + old), [("a", "old")], owner)
    with pytest.raises(GridError, match=r"'a' ran with seeds \[0, 1\] and 'b' with \[0\]"):
        compare_rsum(pd.DataFrame(runs + _ranked_runs("b", [(np.zeros(4, int), np.zeros(8, int))], owner)),
                     [("a", "b")], owner)
    with pytest.raises(GridError, match="another test split"):
        compare_rsum(pd.DataFrame(runs), [("a", "a")], np.repeat(np.arange(5), 2))


def test_grid_rows_store_every_test_querys_rank(splits, tokenizer):
    from siamese_utils.core.metrics import _metrics_from_ranks

    row = run_grid(light_grid()[:1], *splits, tokenizer, seeds=(0,), log=None).iloc[0]
    ranks = json.loads(row["test_ranks"])
    test = splits[2]
    assert len(ranks["i2t"]) == len(test) and len(ranks["t2i"]) == test.num_captions
    assert _metrics_from_ranks(np.array(ranks["i2t"]), np.array(ranks["t2i"]))["rsum"] == pytest.approx(row["rsum"])
