"""How fast does a dual encoder train on the tiny set, per configuration?

Training pairs per second and seconds per training epoch (validation
excluded) on the train split, for four models with the same GRU text tower:

1. the default, ``DEFAULT_MODEL``: EfficientNet-Lite0, pretrained and frozen,
   its features computed once and cached (each step runs only the image
   projection, the text tower and the loss);
2. the same frozen EfficientNet without the feature cache (the tower runs
   forward on every batch): what the cache buys;
3. EfficientNet-Lite0 pretrained and fine-tuned (not frozen);
4. the seed's CNN trained from scratch.

Everything goes through the library's own training path: the pair dataset
built by ``training_pairs`` exactly as ``fit`` builds it (an
``ImageTextDataset`` of cached features, or of prepared pixels with the
caption-aware flip, seeded per epoch), batches from ``make_loader`` and
``Collator``, AdamW and the schedule from ``make_optimizer`` and
``make_scheduler``, and ``train_one_epoch`` for the steps. The loader is
wrapped only to note when each batch is asked for, which splits a call into
steps (collation included).

Configuration 1 is timed over whole epochs: median of ``--repeats``, after one
warm-up step. Epochs of 2-4 take tens of seconds or more on two cores, so each
of those gets one ``train_one_epoch`` call over a subset of ``--steps`` + 1
batches' worth of pairs (a seeded shuffle of the split); the first step is the
warm-up, and seconds per epoch are extrapolated from the median of the others
(pairs in the split / pairs per second). The median full-batch step of
configuration 1's epochs, extrapolated the same way, checks the method. Also
reported: configuration 1's one-off setup, decoding and resizing the split
(``prepare_images``, median of ``--repeats``; every configuration pays it) and
computing the frozen tower's features (``training_pairs``, timed once, as
``fit`` does it once). Every model is built from the same seed. CPU only;
on a shared machine the load average is printed, since other processes on the
cores inflate every figure.

    python benchmarks/training.py [--data data/tiny] [--batch-size 128] [--steps 6] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time

import torch

import siamese_utils as su
from siamese_utils.core import models
from siamese_utils.core.runtime import epoch_seed
from siamese_utils.core.train import (
    DEFAULT_MODEL,
    Runtime,
    TrainConfig,
    make_optimizer,
    make_scheduler,
    prepare_images,
    train_one_epoch,
    training_pairs,
)

CONFIGURATIONS: list[tuple[str, models.ModelConfig, bool]] = [
    ("1 EfficientNet frozen, features cached (default)", DEFAULT_MODEL, True),
    ("2 EfficientNet frozen, no feature cache", DEFAULT_MODEL, False),
    ("3 EfficientNet fine-tuned", dataclasses.replace(DEFAULT_MODEL, freeze_image=False), False),
    ("4 seed CNN from scratch", dataclasses.replace(DEFAULT_MODEL, image_tower="seed_cnn", pretrained=False,
                                                    freeze_image=False), False),
]
DEVICE = torch.device("cpu")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class StepClock:
    """Wraps a loader and notes the time each batch is asked for: step ``k`` runs from request ``k`` to ``k + 1``.

    So a step is what ``train_one_epoch`` does for one batch: collate it (tokenize, stack, flip), forward,
    loss, backward, clipping, optimizer and schedule.
    """

    def __init__(self, loader):
        self.loader = loader
        self.marks: list[float] = []
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            self.marks.append(time.perf_counter())
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.sizes.append(len(batch))
            yield batch

    def steps(self) -> list[tuple[int, float]]:
        """``(pairs, seconds)`` of every step."""
        return [(n, b - a) for n, a, b in zip(self.sizes, self.marks, self.marks[1:])]


class Trainer:
    """One configuration set up as ``fit`` sets it up: model, pair dataset, collator, optimizer, schedule."""

    def __init__(self, model_config: models.ModelConfig, cache: bool, config: TrainConfig, runtime: Runtime, split,
                 images: torch.Tensor, collate: su.Collator):
        su.seed_everything(config.seed)  # the same initial weights on every run
        self.config = config = dataclasses.replace(config, cache_features=cache)
        self.runtime = runtime
        self.model = su.build_model(model_config).to(DEVICE)
        self.cache = cache
        # As fit: with the cache, the frozen tower's features are computed once here (timed: a setup cost).
        start = time.perf_counter()
        self.dataset, features = training_pairs(self.model, split, images, config, DEVICE, runtime.eval_batch_size)
        self.encode_seconds = time.perf_counter() - start if cache else None
        assert features == cache
        self.collate = collate
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config, math.ceil(len(self.dataset) / config.batch_size))
        self.trainable = models.count_parameters(self.model)[1]
        self.epoch = 0

    def run(self, indices: list[int] | None = None) -> tuple[float, list[tuple[int, float]]]:
        """``train_one_epoch`` over the split, or over the pairs ``indices``, seeded as ``fit`` seeds an epoch.

        Returns its seconds and ``(pairs, seconds)`` of each step.
        """
        seed = epoch_seed(self.config.seed, self.epoch)  # fit's per-epoch seed
        su.seed_everything(seed)
        self.dataset.set_epoch_seed(seed)  # each pair's flip, from the epoch and the caption
        dataset = self.dataset if indices is None else torch.utils.data.Subset(self.dataset, indices)
        clock = StepClock(su.make_loader(dataset, self.config.batch_size, shuffle=True, seed=seed,
                                         collate_fn=self.collate, num_workers=self.runtime.num_workers))
        start = time.perf_counter()
        train_one_epoch(self.model, clock, self.optimizer, self.scheduler, self.config, self.epoch, DEVICE,
                        features=self.cache, progress=False)
        seconds = time.perf_counter() - start
        self.epoch += 1
        return seconds, clock.steps()

    def pairs(self, steps: int) -> list[int]:
        """``steps`` batches' worth of pairs from a seeded shuffle of the split (wrapping round if need be)."""
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.config.seed))
        return order[torch.arange(steps * self.config.batch_size) % len(order)].tolist()


def full_step_seconds(steps: list[tuple[int, float]], batch_size: int) -> float:
    """Median seconds of the steps over a full batch (an epoch's last batch may be smaller)."""
    return statistics.median(s for n, s in steps if n == batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="whole epochs of configuration 1, and setup repeats")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    su.seed_everything(0)

    split = su.read_dataset(args.data).split("train")
    config = TrainConfig(batch_size=args.batch_size, image_size=args.image_size)
    runtime = Runtime()
    collate = su.Collator(su.load_tokenizer(), config.max_length)
    pairs = split.num_captions
    print(f"{args.data} [train]: {len(split)} images, {pairs} pairs; {args.image_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, CPU")

    # One-off setup of configuration 1, as fit does it (fit also does both for the validation split).
    prepare_s = median_seconds(lambda: prepare_images(split, args.image_size), args.repeats)
    images = prepare_images(split, args.image_size)

    rows = []
    for name, model_config, cache in CONFIGURATIONS:
        trainer = Trainer(model_config, cache, config, runtime, split, images, collate)
        if cache:  # fast enough for whole epochs
            encode_s = trainer.encode_seconds
            trainer.run(trainer.pairs(1))  # warm-up step: allocations, lazy imports
            epochs = [trainer.run() for _ in range(args.repeats)]
            epoch_s = statistics.median(seconds for seconds, _ in epochs)
            step_s = full_step_seconds([step for _, steps in epochs for step in steps], args.batch_size)
            check = (args.batch_size / step_s, pairs * step_s / args.batch_size)
            how = f"measured: median of {args.repeats} epochs"
        else:  # one call over steps + 1 batches; the first is the warm-up
            _, steps = trainer.run(trainer.pairs(args.steps + 1))
            step_s = full_step_seconds(steps[1:], args.batch_size)
            epoch_s = pairs * step_s / args.batch_size
            how = f"extrapolated: median of {args.steps} steps"
        rows.append({"configuration": name, "trainable": trainer.trainable,
                     "pairs/s": pairs / epoch_s, "s/epoch": epoch_s, "how": how})
        print(f"  {name}: {epoch_s:.2f} s/epoch ({how})", flush=True)

    print(f"\none-off setup of configuration 1: decoding + resizing {len(split)} images (prepare_images, median "
          f"of {args.repeats}; every configuration pays it) {prepare_s:.2f} s ({len(split) / prepare_s:,.0f} images/s); "
          f"frozen-tower features (training_pairs, once) {encode_s:.2f} s ({len(split) / encode_s:,.0f} images/s)")
    base = rows[0]["s/epoch"]
    width = max(len(row["configuration"]) for row in rows)
    print(f"\n{'configuration':{width}s} {'trainable params':>16s} {'pairs/s':>8s} {'s/epoch':>8s} {'vs 1':>6s}  how")
    for row in rows:
        print(f"{row['configuration']:{width}s} {row['trainable']:>16,} {row['pairs/s']:>8,.1f} "
              f"{row['s/epoch']:>8.2f} {row['s/epoch'] / base:>5.1f}x  {row['how']}")
    print("(vs 1: seconds per epoch relative to configuration 1)")
    print(f"\ncheck of the extrapolation, configuration 1 from the median of its full-batch steps: "
          f"{check[0]:,.0f} pairs/s, {check[1]:.2f} s/epoch (measured {base:.2f} s)")
    print(f"configuration 1's first epoch including its setup: {prepare_s + encode_s + base:.2f} s")
    load = (load_start, os.getloadavg()[0])
    print(f"1-minute load average at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; "
          f"benchmark took {time.perf_counter() - started:.0f} s"
          + ("\nwarning: the load exceeded the cores: other processes shared them, so these timings are inflated "
               "(threads that wait for each other suffer most; compare with --threads 1)"
             if max(load) > (os.cpu_count() or 1) + 0.5 else ""))


if __name__ == "__main__":
    main()
