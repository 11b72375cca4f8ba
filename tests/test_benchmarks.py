"""The GPU step benchmark runs at its tiny sizes on a CPU and the FAISS benchmark at a tiny size; both report
every variant with a positive throughput, and bad flags (of these and of the composition benchmark) are refused
with a message naming the value."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from siamese_utils.chapters.scaling.index import faiss_available

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def start(script, *args, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "SIAMESE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # the tiny sizes, on the CPU, offline
    return subprocess.Popen([sys.executable, str(BENCHMARKS / script), *args, "--json", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both benchmarks, started together (each spends most of its time importing torch)."""
    tmp = tmp_path_factory.mktemp("bench")
    procs = {
        # MobileNet: ResNet-18's bf16 convolutions take seconds per step on a CPU without native bf16
        "gpu_step": start("gpu_step.py", "--tiny", "--image-tower", "mobilenet_v3_small", "--threads", "1",
                          "--workers", "1", out=tmp / "gpu.json"),
        "faiss_search": start("faiss_search.py", "--size", "3000", "--dim", "32", "--queries", "50", "--nlist", "16",
                              "--nprobe", "1", "16", "--repeats", "1", "--threads", "1", out=tmp / "faiss.json"),
    }
    results = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{output}"
        results[name] = (output, json.loads((tmp / ("gpu.json" if name == "gpu_step" else "faiss.json")).read_text()))
    return results


def test_gpu_step_tiny_reports_every_variant(runs):
    output, result = runs["gpu_step"]
    assert result["mode"] == "tiny" and result["batch_size"] == 8 and result["image_size"] == 64
    assert result["image_tower"] == "mobilenet_v3_small"
    names = [row["variant"] for row in result["rows"]]
    assert names[:3] == ["fp32, eager", "bf16 autocast", "bf16 + channels-last"]  # no compile without --compile
    assert names[3].endswith("batches on the device") and len(names) == 7
    for name, images in zip(names[4:], ("memory", "disk", "stream")):  # fit's three image pipelines, fed by workers
        assert name.endswith(f'images="{images}" (1 workers)')
    assert [row["setup_s"] is None for row in result["rows"][3:]] == [True, False, False, False]
    for row in result["rows"]:
        assert row["pairs_per_s"] > 0 and row["step_ms"] > 0
        assert row["mfu"] is None  # no peak for a CPU
        assert f"| {row['variant']} | " in output  # a row of the markdown table
    assert result["flops_per_step"] > 0 and result["rows"][0]["optimizer"] == "fused"
    assert "| variant | pairs/s | ms/step | MFU |" in output and "n/a |" in output


def test_faiss_search_tiny_measures_recall_against_exact(runs):
    output, result = runs["faiss_search"]
    rows = {row["method"]: row for row in result["rows"]}
    exact = ["exact, torch blocked top-k"] + (["exact, FAISS IndexFlatIP"] if faiss_available() else [])
    for method in exact:
        assert rows[method]["recall@10"] == 1.0 and rows[method]["index_bytes"] == 3000 * 32 * 4
    if faiss_available():
        assert rows["IVF16, nprobe=16"]["recall@10"] == 1.0  # every list scanned
        assert 0 < rows["IVF16, nprobe=1"]["recall@10"] < 1.0
    for row in rows.values():
        assert row["queries_per_s"] > 0 and row["build_s"] >= 0
        assert f"| {row['method']} | " in output


def load(script, monkeypatch):
    name = f"benchmark_{script.removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script,args,message", [
    ("faiss_search.py", ["--nprobe", "0"], "every --nprobe between 1 and --nlist"),
    ("faiss_search.py", ["--size", "5", "--k", "10"], "--k 10 is more than the gallery's --size 5"),
    ("faiss_search.py", ["--queries", "0"], "--queries must be at least 1, got 0"),
    ("gpu_step.py", ["--data", "no/such/folder"], "--data no/such/folder: no dataset there"),
    ("gpu_step.py", ["--workers", "-1"], "--workers must be >= 0"),
    ("gpu_step.py", ["--image-tower", "resnet5"], "--image-tower resnet5: not a torchvision classification model"),
    ("composition.py", ["--data", "no/such/folder"], "--data no/such/folder: no dataset there"),
    ("composition.py", ["--threads", "0"], "--threads must be at least 1, got 0"),
    ("composition.py", ["--seeds", "0", "0"], "--seeds 0 0: each seed once"),
    ("composition.py", ["--num-train", "50"], "--num-train 50: at least 100"),
    ("composition.py", ["--num-train", "1200", "--data", "data/tiny"], "--num-train generates both sets; leave out --data"),
    ("composition.py", ["--data=data/tiny", "--num-train", "1200"], "--num-train generates both sets; leave out --data"),
])
def test_bad_flags_are_refused(script, args, message, monkeypatch, capsys):
    module = load(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_composition_sorts_semantic_misses_by_what_the_top_image_gets_wrong(monkeypatch):
    """Each caption whose best image is false of it counts once, under what that image gets wrong; the misses add up
    to what semantic R@1 leaves out."""
    import torch

    import siamese_utils as su
    from siamese_utils.chapters.analysis import failure_analysis, semantic_recall, truth_matrix

    module = load("composition.py", monkeypatch)
    test = su.read_dataset(REPO / "data" / "tiny").split("test")
    truth = truth_matrix(test)
    own = torch.zeros_like(truth, dtype=torch.float)
    own[test.txt_to_img, torch.arange(truth.shape[1])] = 1.0
    assert sum(module.semantic_misses(test, own, truth).values()) == 0  # every caption finds its own image

    report = failure_analysis(test, own)
    one = 100.0 / truth.shape[1]
    j = int(report.index[report["asks"] == "where each shape is"][0])  # its partner: the same shapes, swapped places
    wrong = own.clone()
    wrong[int(report.loc[j, "partner"]), j] = 2.0
    misses = module.semantic_misses(test, wrong, truth)
    assert misses == {f"missed: {kind}": one if kind == "its minimal pair" else 0.0 for kind in module.WRONG}
    single = [k for k in report.index if report.loc[k, "asks"] == "colour, shape, size"]
    j, other = next((j, i) for j in single for i in range(len(test))  # a one-shape caption, an image with two
                    if len(test[i].meta["scene"]["objects"]) == 2)
    wrong = own.clone()
    wrong[other, j] = 2.0
    assert module.semantic_misses(test, wrong, truth)["missed: number of shapes"] == one

    sim = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    misses = module.semantic_misses(test, sim, truth)
    assert set(misses) == {f"missed: {kind}" for kind in module.WRONG}
    assert abs(sum(misses.values()) - (100.0 - semantic_recall(sim, truth)["t2i_r1"])) < 1e-9
    assert misses["missed: colour"] > misses["missed: arrangement"]  # at random, most top images differ in colour


def test_composition_train_fit_scores_each_fold_of_the_train_split_alone(monkeypatch):
    """The train split's R@1 by meaning, fold by fold: a caption competes only with the images of its own fold."""
    import torch

    import siamese_utils as su
    from siamese_utils.chapters.composition import COMPOSITION_TRAIN
    from siamese_utils.core import train as core_train

    module = load("composition.py", monkeypatch)
    train = su.read_dataset(REPO / "data" / "tiny").split("train")
    owner, images = torch.as_tensor(train.txt_to_img), torch.eye(len(train))
    elsewhere = images[(owner + 100) % len(train)]  # an image of the next fold
    for text, expected in ((images[owner], 100.0),  # each caption on its own image
                           (0.5 * images[owner] + elsewhere, 100.0),  # closer to an image it does not compete with
                           (elsewhere, 0.0)):  # on no image of its fold: all tie at zero, and ties count against
        monkeypatch.setattr(core_train, "encode_split", lambda *args, text=text, **kwargs: (images, text))
        assert module.train_fit(None, COMPOSITION_TRAIN, REPO / "data" / "tiny", gallery=100) == expected


def test_composition_num_train_generates_both_sets_with_that_many_train_scenes(monkeypatch, tmp_path, capsys):
    """``--num-train N`` trains on ``make-tiny --seed 0 --num-train N`` in place of the committed set, and on the
    other seed's set of the same size; the committed set's targets apply to the first."""
    module = load("composition.py", monkeypatch)
    seen = []

    def fake_train(data, out, seed, threads, flags):
        entries = json.loads((data / "dataset.json").read_text())["images"]
        seen.append((data.name, seed, sum(e["split"] == "train" for e in entries), entries[0]["sentences"][0]["raw"]))
        return 1.0

    metrics = {q: 100.0 for q in module.QUESTIONS} | {"rsum": 600.0, "i2t R@1": 100.0, "t2i R@1": 100.0,
                                                      "semantic t2i R@1": 100.0, "semantic t2i R@1, train": 100.0}
    monkeypatch.setattr(module, "train", fake_train)
    monkeypatch.setattr(module, "score", lambda run, data: metrics | {f"missed: {k}": 0.0 for k in module.WRONG})
    assert module.main(["--num-train", "120", "--seeds", "0", "--json", str(tmp_path / "rows.json")]) == 0
    assert [(name, seed, n) for name, seed, n, _ in seen] == [("tiny-seed-0", 0, 120), ("tiny-other", 0, 120)]
    committed = json.loads((REPO / "data" / "tiny" / "dataset.json").read_text())["images"]
    assert seen[0][3] == committed[0]["sentences"][0]["raw"]  # seed 0: the committed set's generator
    assert seen[0][3] != seen[1][3]                           # the other seed: other scenes
    assert [r["dataset"] for r in json.loads((tmp_path / "rows.json").read_text())] == ["seed 0", "other"]
    out = capsys.readouterr().out
    assert "make-tiny --seed 0 --num-train 120, its targets applied" in out
    assert "seed 0  train s" in out and "target <= 180: PASS" in out
