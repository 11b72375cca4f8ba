"""How fast is nearest-neighbour search over a million-item gallery, and what does approximate search miss?

A gallery of ``--size`` random unit vectors of ``--dim`` dimensions (default
1,000,000 x 256, the models' default ``embed_dim``) and ``--queries`` random
unit queries, searched for their ``--k`` best items by inner product with
``siamese_utils.chapters.scaling.index.EmbeddingIndex``:

1. exact, FAISS ``IndexFlatIP``;
2. approximate, FAISS ``IndexIVFFlat`` with ``--nlist`` lists, k-means trained
   on a random sample of ``--train-per-list`` vectors per list, searched at
   each ``--nprobe``;
3. exact, the pure-torch fallback (blocks of the gallery scored in turn).

For each: build time (once: adding the vectors; for IVF also training),
queries per second (all queries in one call, median of ``--repeats`` calls
after a warm-up call), memory (the index's own bytes, and the growth of the
process's resident memory while it was built), and recall@k against the exact
search (the share of each query's true ``k`` nearest items returned). The
dense ``(Q, N)`` score matrix these avoid is printed for scale. Uniformly
random vectors have no clusters, the hardest case for IVF: a query's true
neighbours are barely closer than any other item and scatter over many lists.
Real embeddings cluster by content; ``--clusters C`` draws gallery and
queries around ``C`` random centres (noise of relative norm ``--spread``) to
show that case. CPU only; the load
average is printed, since other processes on the cores inflate every figure.

    python benchmarks/faiss_search.py [--size 1000000] [--dim 256] [--queries 1000] [--threads 2]
                                      [--nlist 1024] [--nprobe 1 8 32 128] [--clusters 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from siamese_utils.chapters.scaling.index import EmbeddingIndex, faiss_available


def unit_vectors(n: int, dim: int, seed: int, centres: np.ndarray | None = None, spread: float = 1.0,
                 chunk: int = 65536) -> np.ndarray:
    """``n`` random unit vectors (float32), made in chunks so that no float64 copy of the whole set exists.

    With ``centres`` ``(C, dim)`` (unit vectors), each vector is a random
    centre plus Gaussian noise of norm about ``spread``, normalised: clustered
    data, as embeddings of related images and captions are.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        if centres is not None:
            block *= spread / np.sqrt(dim)
            block += centres[rng.integers(len(centres), size=len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


def rss_bytes() -> int | None:
    """The process's resident memory now (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def built(make) -> tuple[EmbeddingIndex, float, int | None]:
    """``make()``'s index, its build seconds and the growth of resident memory while it was built."""
    gc.collect()
    before, start = rss_bytes(), time.perf_counter()
    index = make()
    seconds = time.perf_counter() - start
    after = rss_bytes()
    return index, seconds, (after - before) if before is not None and after is not None else None


def queries_per_second(index: EmbeddingIndex, queries: np.ndarray, k: int, repeats: int, **options) -> float:
    index.search(queries, k, **options)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, k, **options)
        times.append(time.perf_counter() - start)
    return len(queries) / statistics.median(times)


def gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="gallery vectors (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=256, help="dimensions (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per search call (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed search calls (default: %(default)s)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (default: %(default)s)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 8, 32, 128],
                        help="IVF lists scanned per query (default: %(default)s)")
    parser.add_argument("--train-per-list", type=int, default=64,
                        help="k-means training vectors per IVF list, sampled from the gallery (default: %(default)s)")
    parser.add_argument("--clusters", type=int, default=0,
                        help="draw gallery and queries around this many random centres (default: 0, uniform)")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="with --clusters, the noise's norm relative to the centres' (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for name in ("size", "dim", "queries", "k", "threads", "repeats", "nlist", "train_per_list"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.clusters < 0 or not args.spread > 0:
        parser.error(f"--clusters must be >= 0 and --spread > 0, got {args.clusters} and {args.spread}")
    if args.k > args.size:
        parser.error(f"--k {args.k} is more than the gallery's --size {args.size}")
    if args.nlist > args.size or any(not 1 <= p <= args.nlist for p in args.nprobe):
        parser.error(f"--nlist must be at most --size ({args.size}) and every --nprobe between 1 and --nlist "
                     f"({args.nlist}); got --nlist {args.nlist} --nprobe {' '.join(map(str, args.nprobe))}")
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    have_faiss = faiss_available()
    if have_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    print(f"torch {torch.__version__}, faiss {faiss.__version__ if have_faiss else 'not installed'}, "
          f"{args.threads} threads, {os.cpu_count()} CPUs, load average {load_start:.2f}")

    centres = unit_vectors(args.clusters, args.dim, seed=3) if args.clusters else None
    gallery = unit_vectors(args.size, args.dim, seed=0, centres=centres, spread=args.spread)
    queries = unit_vectors(args.queries, args.dim, seed=1, centres=centres, spread=args.spread)
    shape = f"around {args.clusters:,} centres (spread {args.spread})" if args.clusters else "uniform"
    print(f"gallery {args.size:,} x {args.dim} ({gb(gallery.nbytes)} GB, {shape}), {args.queries:,} queries, "
          f"k={args.k}; the dense score matrix would take {gb(4 * args.queries * args.size)} GB")

    rows: list[dict] = []

    def report(method: str, index: EmbeddingIndex, build_s: float, rss: int | None, qps: float, recall: float):
        rows.append({"method": method, "build_s": build_s, "queries_per_s": qps, "index_bytes": index.memory_bytes,
                     "rss_growth_bytes": rss, f"recall@{args.k}": recall})
        print(f"  {method:28s} build {build_s:7.2f} s  {qps:10,.0f} queries/s  index {gb(index.memory_bytes)} GB  "
              f"RSS +{gb(rss)} GB  recall@{args.k} {recall:.3f}", flush=True)

    truth = None
    if have_faiss:
        flat, build_s, rss = built(lambda: EmbeddingIndex(args.dim, "flat", backend="faiss").add(gallery))
        qps = queries_per_second(flat, queries, args.k, args.repeats)
        truth = flat.search(queries, args.k)[1]
        report("exact, FAISS IndexFlatIP", flat, build_s, rss, qps, flat.recall(queries, args.k, reference=truth))
        del flat

        sample = np.random.default_rng(2).choice(args.size, min(args.size, args.train_per_list * args.nlist),
                                                 replace=False)
        ivf, build_s, rss = built(lambda: EmbeddingIndex(args.dim, "ivf", nlist=args.nlist, backend="faiss")
                                  .train(gallery[np.sort(sample)]).add(gallery))
        for nprobe in args.nprobe:
            qps = queries_per_second(ivf, queries, args.k, args.repeats, nprobe=nprobe)
            recall = ivf.recall(queries, args.k, reference=truth, nprobe=nprobe)
            report(f"IVF{args.nlist}, nprobe={nprobe}", ivf, build_s, rss, qps, recall)
        with tempfile.TemporaryDirectory() as tmp:  # the index's bytes, as FAISS writes them
            file_bytes = ivf.save(Path(tmp) / "ivf.index").stat().st_size
        print(f"  (IVF file written by faiss.write_index: {gb(file_bytes)} GB)")
        del ivf
    else:
        print("  faiss is not installed (pip install faiss-cpu): timing the torch fallback only")

    fallback, build_s, rss = built(lambda: EmbeddingIndex(args.dim, "flat", backend="torch").add(gallery))
    qps = queries_per_second(fallback, queries, args.k, args.repeats)
    if truth is None:
        truth = fallback.search(queries, args.k)[1]
    report("exact, torch blocked top-k", fallback, build_s, rss, qps,
           fallback.recall(queries, args.k, reference=truth))
    del fallback

    print(f"\n| method | build (s) | queries/s | index (GB) | RSS growth (GB) | recall@{args.k} |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['build_s']:.2f} | {row['queries_per_s']:,.0f} | {gb(row['index_bytes'])} | "
              f"{gb(row['rss_growth_bytes'])} | {row[f'recall@{args.k}']:.3f} |")
    load = (load_start, os.getloadavg()[0])
    print(f"\n1-minute load average at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; "
          f"benchmark took {time.perf_counter() - started:.0f} s"
          + ("\nwarning: the load exceeded the cores: other processes shared them, so these timings are inflated"
             if max(load) > (os.cpu_count() or 1) + 0.5 else ""))
    if args.json is not None:
        result = {"size": args.size, "dim": args.dim, "queries": args.queries, "k": args.k, "threads": args.threads,
                  "nlist": args.nlist, "clusters": args.clusters, "spread": args.spread, "load_average": load,
                  "rows": rows}
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
