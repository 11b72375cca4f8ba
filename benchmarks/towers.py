"""How fast is each tower, forward and backward, on this machine?

One training step's worth of work per tower (forward, a scalar loss, backward)
on a batch of tiny-set images or captions, median over repeats, all in one run.
Also times the two ways of reading a recurrent tower at the last real token:
packing the batch (the library's way) and running over the padding, then
gathering. Frozen towers only run forward; ``--forward-only`` times that.

    python benchmarks/towers.py [--image-size 64] [--batch-size 128] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import siamese_utils as su
from siamese_utils.chapters.seed import SeedLSTMTower
from siamese_utils.core import models


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up: allocations, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn, inputs, repeats: int, forward_only: bool, params: torch.nn.Module | None = None) -> float:
    """Median seconds of ``fn(*inputs)``, plus a backward pass into ``params`` (default: ``fn``) unless forward only."""
    params = params if params is not None else fn

    def step():
        if forward_only:
            with torch.no_grad():
                fn(*inputs)
        else:
            params.zero_grad(set_to_none=True)
            fn(*inputs).float().pow(2).mean().backward()

    return median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = su.read_dataset(args.data).split("train")
    pairs = su.ImageTextDataset(data, su.ImageTextTransform(su.ImageTransformConfig(image_size=args.image_size), False))
    collate = su.Collator(su.load_tokenizer())
    batch = collate([pairs[i] for i in torch.randperm(len(pairs))[: args.batch_size].tolist()])
    mode = "forward only" if args.forward_only else "forward + backward"
    print(f"batch of {args.batch_size}: images {args.image_size} px, captions padded to {batch.input_ids.shape[1]} "
          f"tokens; {mode}; {torch.get_num_threads()} threads; median of {args.repeats}")

    print(f"\n{'image tower':20s} {'parameters':>12s} {'ms/batch':>10s} {'images/s':>10s}")
    for name in models.IMAGE_TOWERS:
        tower = models.build_image_tower(name, pretrained=False).train(not args.forward_only)
        seconds = timed(tower, (batch.images,), args.repeats, args.forward_only)
        print(f"{name:20s} {models.count_parameters(tower)[0]:>12,} {seconds * 1e3:>10.1f} "
              f"{args.batch_size / seconds:>10,.0f}")

    print(f"\n{'text tower':20s} {'parameters':>12s} {'ms/batch':>10s} {'captions/s':>10s}")
    text_inputs = (batch.input_ids, batch.attention_mask)
    for name in ("seed_lstm", "gru", "gru_attention", "minilm"):
        tower = models.build_text_tower(name).train(not args.forward_only)
        seconds = timed(tower, text_inputs, args.repeats, args.forward_only)
        print(f"{name:20s} {models.count_parameters(tower)[0]:>12,} {seconds * 1e3:>10.1f} "
              f"{args.batch_size / seconds:>10,.0f}")

    lstm = SeedLSTMTower()

    def unpacked(input_ids, attention_mask):
        hidden, _ = lstm.lstm(lstm.embedding(input_ids))
        return models.last_real_token(hidden, attention_mask)

    packed_s = timed(lstm, text_inputs, args.repeats, args.forward_only)
    unpacked_s = timed(unpacked, text_inputs, args.repeats, args.forward_only, params=lstm)
    with torch.no_grad():
        same = torch.allclose(lstm(*text_inputs), unpacked(*text_inputs), atol=1e-5)
    real = int(batch.attention_mask.sum())
    print(f"\nseed_lstm read at the last real token ({real / batch.attention_mask.numel():.0%} of positions are real): "
          f"packed {packed_s * 1e3:.1f} ms, padded + gather {unpacked_s * 1e3:.1f} ms "
          f"({unpacked_s / packed_s:.2f}x); same features: {same}")


if __name__ == "__main__":
    main()
