"""How fast is the retrieval protocol, and does the fast path give exactly the reference numbers?

Two gallery sizes with five captions per image, as on Flickr30k and COCO:
1K (1,000 images x 5,000 captions: Flickr30k's test split, one COCO 1K fold)
and 5K (5,000 x 25,000: COCO's 5K test). Embeddings are random but
structured (each caption is its image's unit vector plus noise, normalised),
so ranks spread over the whole range as they do for a real model (R@1 about
10-20 % at 1K, half that at 5K).

Timed, each on the same embeddings:

1. ``retrieval_metrics`` (``siamese_utils.core.metrics``): vectorised and chunked,
   counts instead of sorts; median of ``--repeats`` calls;
2. the reference loop, as VSE++'s ``evaluation.py`` computes ``i2t`` and
   ``t2i``: one full ``argsort`` per query in a Python loop over NumPy
   arrays, on the float32 scores computed once; timed once (it takes about a
   minute at 5K);
3. at 5K also COCO's 1K protocol, ``retrieval_metrics(..., folds=5)``.

The check: all eleven metrics of 1 and 2 printed side by side, and the
largest difference between them (identical means 0). Then the ratio of the
times. CPU only; the load average is printed, since
other processes on the cores inflate every figure.

    python benchmarks/evaluation.py [--sizes 1000 5000] [--dim 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from siamese_utils.core.metrics import METRIC_KEYS, retrieval_metrics

CAPTIONS_PER_IMAGE = 5


def embeddings(num_images: int, dim: int, seed: int = 0, noise: float = 4.0):
    """Unit image vectors, and five noisy unit captions per image, captions 5i..5i+4 belonging to image i."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((num_images, dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(num_images), CAPTIONS_PER_IMAGE)
    txt = img[owner] + noise * rng.standard_normal((len(owner), dim)) / np.sqrt(dim)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32), owner


def reference_loop(img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
    """VSE++'s protocol as its evaluation.py runs it: a Python loop with one full argsort per query.

    The float32 scores are computed once (one matrix product, as the fast
    path computes them) so that both see the same numbers; the loop itself is
    VSE++'s: image i's rank is the best position among captions 5i..5i+4, a
    caption's rank the position of its image.
    """
    sim = (torch.from_numpy(img) @ torch.from_numpy(txt).T).numpy()
    n = len(img)
    i2t = np.zeros(n)
    for i in range(n):  # image i against every caption; its rank is its best caption's position
        order = np.argsort(sim[i])[::-1]
        i2t[i] = min(np.where(order == j)[0][0] for j in range(CAPTIONS_PER_IMAGE * i, CAPTIONS_PER_IMAGE * (i + 1)))
    t2i = np.zeros(CAPTIONS_PER_IMAGE * n)
    for j in range(CAPTIONS_PER_IMAGE * n):  # caption j against every image; its rank is its image's position
        order = np.argsort(sim[:, j])[::-1]
        t2i[j] = np.where(order == j // CAPTIONS_PER_IMAGE)[0][0]
    out = {}
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{prefix}_r{k}"] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
        out[f"{prefix}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{prefix}_meanr"] = ranks.mean() + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="numbers of images")
    parser.add_argument("--dim", type=int, default=64, help="embedding size (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the fast path (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, embeddings of {args.dim} dimensions")

    for n in args.sizes:
        img, txt, owner = embeddings(n, args.dim)
        print(f"\n{n:,} images x {len(txt):,} captions")
        fast_s, fast = median_seconds(lambda: retrieval_metrics(img, txt, owner), args.repeats)
        print(f"  retrieval_metrics           {fast_s:8.3f} s  (median of {args.repeats})")
        if n % 1000 == 0 and n > 1000:
            folds_s, _ = median_seconds(lambda: retrieval_metrics(img, txt, owner, folds=n // 1000), args.repeats)
            print(f"  ... folds={n // 1000} (COCO 1K)       {folds_s:8.3f} s  (median of {args.repeats})")
        if args.no_reference:
            continue
        start = time.perf_counter()
        reference = reference_loop(img, txt)
        ref_s = time.perf_counter() - start
        print(f"  reference loop (VSE++)      {ref_s:8.3f} s  (once)")
        print(f"  fast path is {ref_s / fast_s:,.0f} times faster")
        print("  " + " ".join(f"{k:>9}" for k in METRIC_KEYS))
        print("  " + " ".join(f"{fast[k]:9.4f}" for k in METRIC_KEYS) + "  retrieval_metrics")
        print("  " + " ".join(f"{reference[k]:9.4f}" for k in METRIC_KEYS) + "  reference loop")
        worst = max(abs(fast[k] - reference[k]) for k in METRIC_KEYS)
        print(f"  largest difference: {worst:.3g} ({'identical' if worst < 1e-9 else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
