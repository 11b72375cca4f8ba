"""How fast does one epoch of (image, caption) batches come out of the loader?

Compares images decoded once and cached in memory (the default for small
splits) with decoding every image each time it is read, on the same data, in
one run. Reports the median over repeats and the ratio.

    python benchmarks/data_loading.py [--data data/tiny] [--image-size 64] [--batch-size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import siamese_utils as su


def epoch_seconds(dataset, collate, batch_size: int, workers: int) -> float:
    loader = su.make_loader(dataset, batch_size, shuffle=True, seed=0, collate_fn=collate, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/tiny")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    data = su.read_dataset(args.data).split(args.split)
    transform = su.ImageTextTransform(su.ImageTransformConfig(image_size=args.image_size), train=True)
    collate = su.Collator(su.load_tokenizer())
    print(f"{args.data} [{args.split}]: {len(data)} images, {data.num_captions} pairs; "
          f"{args.image_size} px, batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads")
    results = {}
    for cached in (True, False):
        start = time.perf_counter()
        dataset = su.ImageTextDataset(data, transform, cache_images=cached)
        build = time.perf_counter() - start
        times = [epoch_seconds(dataset, collate, args.batch_size, args.workers) for _ in range(args.repeats)]
        results[cached] = statistics.median(times)
        label = "decoded once, cached" if cached else "decoded on every read"
        print(f"{label:24s} build {build:6.2f} s   epoch median {results[cached]:6.2f} s "
              f"({data.num_captions / results[cached]:,.0f} pairs/s, {args.repeats} repeats)")
    print(f"cached epochs are {results[False] / results[True]:.2f}x faster")


if __name__ == "__main__":
    main()
