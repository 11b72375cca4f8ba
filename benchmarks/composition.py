"""Does the default model read composition? The targets of the composition recipe, measured.

For each seed, the default ``python -m siamese_utils train --data DATA --out RUN --seed S`` runs as a reader
types it (a subprocess, ``--threads`` CPU threads, timed from start to exit: data, training, validation and the
test evaluation), then its checkpoint is scored on the test split:

- **beats partner**: percent of two-shape captions whose own image outscores its minimal pair, per question
  ("which colour is which shape", "where each shape is"; chapter 04's failure analysis);
- **rsum** and R@1 both ways (the standard protocol);
- **semantic R@1** text -> image (any image the caption is true of counts) beside its ceiling (100: every
  caption is true of its own image), and what the misses get wrong: for each caption whose best-scoring image is
  false of it, what that image gets wrong ("shape", "arrangement", "colour", ...: chapter 04's
  ``failure_analysis``, as chapter 05 counts them), in percent of all captions; and the same semantic R@1 on the
  train split, in folds of as many images as the test split (does the model fit the images it learned from?);
- the **train time**.

The same runs on a tiny set generated with another seed (``make-tiny --seed N``, written to a temporary
folder): nothing in the recipe may be tuned to the committed test split. Means and standard deviations over
the seeds, per-seed rows, and each target with PASS or MISS:

- committed set: beats partner >= 97 % on both questions, rsum >= 580, semantic t2i R@1 >= 98, train <= 180 s;
- other set: beats partner >= 95 % on both questions.

    python benchmarks/composition.py [--data data/tiny] [--seeds 0 1 2] [--other-seed 7] [--threads 2]
                                     [--json results.json] [--train-flag=--num-epochs=2 ...]

How much does the number of training scenes matter? ``--num-train N`` generates both sets with N train images
(``make-tiny --seed 0 --num-train N``, data/tiny's own generator, in place of the committed set; and
``make-tiny --seed OTHER --num-train N``), the same targets applied. Their val and test scenes differ from the
600-scene sets' (the generator draws every split from one stream), so compare means over seeds and sets.

Exit status 0 when every target is met, 1 otherwise. CPU only; the 1-minute load average is printed, since
other processes on the cores inflate the train time (not the metrics: CPU training is deterministic at a
fixed thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ("which colour is which shape", "where each shape is")
WRONG = ("shape", "arrangement", "colour", "size", "number of shapes", "its minimal pair")  # chapter 04's "wrong"
TARGETS = {  # (dataset, metric) -> (threshold, at least?)
    ("committed", QUESTIONS[0]): (97.0, True), ("committed", QUESTIONS[1]): (97.0, True),
    ("committed", "rsum"): (580.0, True), ("committed", "semantic t2i R@1"): (98.0, True),
    ("committed", "train s"): (180.0, False),
    ("other", QUESTIONS[0]): (95.0, True), ("other", QUESTIONS[1]): (95.0, True),
}


def semantic_misses(split, sim: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """``{"missed: shape": percent, ...}``: captions whose best image is false of them, by what that image gets wrong.

    ``sim`` and ``truth``: ``(images, captions)``. The best image and what it gets wrong are chapter 04's
    ``failure_analysis`` columns ``top`` and ``wrong`` (as chapter 05 counts them), in percent of all captions.
    """
    from siamese_utils.chapters.analysis import failure_analysis

    report = failure_analysis(split, sim)
    missed = ~truth[torch.tensor(report["top"].tolist()), torch.arange(len(report))].numpy()
    counts = report.loc[missed, "wrong"].value_counts()
    return {f"missed: {kind}": 100.0 * int(counts.get(kind, 0)) / len(report) for kind in WRONG}


def score(run: Path, data: Path) -> dict[str, float]:
    """Beats-partner, rsum, R@1 and semantic R@1 of a trained run on the test split of ``data``."""
    import siamese_utils as su
    from siamese_utils.chapters.analysis import semantic_recall, truth_matrix
    from siamese_utils.chapters.composition import beats_partner
    from siamese_utils.core.metrics import metrics_from_scores
    from siamese_utils.core.train import encode_split, load_run

    model, recipe = load_run(run / "model.pt")
    test = su.read_dataset(data).split("test")
    img, txt = encode_split(model, test, su.load_tokenizer(), image_size=recipe.image_size,
                            max_length=recipe.max_length)
    sim, truth = img @ txt.T, truth_matrix(test)
    standard = metrics_from_scores(sim, test.txt_to_img)
    semantic = semantic_recall(sim, truth)
    return {**beats_partner(test, sim), "rsum": standard["rsum"], "i2t R@1": standard["i2t_r1"],
            "t2i R@1": standard["t2i_r1"], "semantic t2i R@1": semantic["t2i_r1"],
            **semantic_misses(test, sim, truth), "semantic t2i R@1, train": train_fit(model, recipe, data, len(test))}


def train_fit(model, recipe, data: Path, gallery: int) -> float:
    """Semantic t2i R@1 on the train split, in folds of ``gallery`` images (the test split's size), averaged: how
    well the model fits the images it was trained on, with as many candidates per query as on the test split."""
    import siamese_utils as su
    from siamese_utils.chapters.analysis import semantic_recall, truth_matrix
    from siamese_utils.core.train import encode_split

    train = su.read_dataset(data).split("train")
    img, txt = encode_split(model, train, su.load_tokenizer(), image_size=recipe.image_size,
                            max_length=recipe.max_length)
    sim, truth, owner = img @ txt.T, truth_matrix(train), train.txt_to_img
    folds = [(start, start + gallery) for start in range(0, len(train) - gallery + 1, gallery)]
    return statistics.mean(semantic_recall(sim[a:b][:, (owner >= a) & (owner < b)],
                                           truth[a:b][:, (owner >= a) & (owner < b)])["t2i_r1"] for a, b in folds)


def train(data: Path, out: Path, seed: int, threads: int, flags: list[str]) -> float:
    """Seconds for the default ``train`` command, run as a subprocess with ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    tick = time.perf_counter()
    command = [sys.executable, "-m", "siamese_utils", "train", "--data", str(data), "--out", str(out),
               "--seed", str(seed), "--threads", str(threads), *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"train failed ({done.returncode}) for {data} seed {seed}:\n{done.stderr[-2000:]}")
    return seconds


def make_tiny(out: Path, seed: int, num_train: int | None) -> Path:
    """``make-tiny --seed SEED [--num-train N]`` into ``out``; returns ``out``."""
    size = [] if num_train is None else ["--num-train", str(num_train)]
    subprocess.run([sys.executable, "-m", "siamese_utils", "make-tiny", "--out", str(out), "--seed", str(seed), *size],
                   check=True, capture_output=True, cwd=REPO)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the committed set (default: data/tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--other-seed", type=int, default=7, help="make-tiny seed of the second set (default: 7)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--train-flag", action="append", default=[], help="extra train flag, e.g. --train-flag=--recipe=locked-image")
    parser.add_argument("--num-train", type=int, help="generate both sets with this many train images (in place of "
                                                      "--data: make-tiny --seed 0 and --seed OTHER)")
    args = parser.parse_args(argv)
    if args.num_train is not None and args.data is not None:
        parser.error("--num-train generates both sets; leave out --data")
    args.data = args.data or REPO / "data" / "tiny"
    if args.num_train is not None and args.num_train < 100:
        parser.error(f"--num-train {args.num_train}: at least 100 (one fold of the test split's 100 images)")
    if not (args.data / "dataset.json").is_file():
        parser.error(f"--data {args.data}: no dataset there (a folder with dataset.json; make one with make-tiny)")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}; train flags: {args.train_flag or 'none'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        first = (("committed", args.data) if args.num_train is None
                 else ("seed 0", make_tiny(Path(tmp) / "tiny-seed-0", 0, args.num_train)))
        sets = [first, ("other", make_tiny(Path(tmp) / "tiny-other", args.other_seed, args.num_train))]
        for name, data in sets:
            for seed in args.seeds:
                run = Path(tmp) / f"{name}-{seed}"
                seconds = train(data, run, seed, args.threads, args.train_flag)
                rows.append({"dataset": name, "seed": seed, **score(run, data), "train s": seconds})
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
    made = "" if args.num_train is None else f" --num-train {args.num_train}; in place of {args.data}: " \
                                              f"make-tiny --seed 0 --num-train {args.num_train}, its targets applied"
    print(f"\nmean (sd) over seeds {args.seeds}; other set: make-tiny --seed {args.other_seed}{made}")
    met = True
    for role, (name, _) in zip(("committed", "other"), sets):
        mine = [r for r in rows if r["dataset"] == name]
        for metric in (*QUESTIONS, "rsum", "i2t R@1", "t2i R@1", "semantic t2i R@1",
                       *(f"missed: {kind}" for kind in WRONG), "semantic t2i R@1, train", "train s"):
            values = [r[metric] for r in mine]
            mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")
            line = f"{name:>9}  {metric:<28} {mean:7.1f} ({sd:.1f})"
            if (role, metric) in TARGETS:
                threshold, at_least = TARGETS[(role, metric)]
                ok = mean >= threshold if at_least else mean <= threshold
                met &= ok
                line += f"   target {'>=' if at_least else '<='} {threshold:g}: {'PASS' if ok else 'MISS'}"
            print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
