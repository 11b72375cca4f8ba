"""How long does the search panel of notebook 08 take to answer, on a CPU?

On the tiny set's test split (100 images, 500 captions) with the model of
``--run``: by default the series' default model (chapter 05's grid CNN + GRU),
the trained run in ``runs/05_composition/default`` when it is there, otherwise
the same architecture untrained (timings do not depend on the weights).
``--run runs/03_contrastive_training`` times chapter 03's locked-image model
(frozen EfficientNet-Lite0 + GRU) instead. Timed, each over many queries,
medians in milliseconds:

1. building the gallery: every image and caption encoded once (once per panel);
2. ``Gallery.search_text``: tokenise, encode one caption, multiply, sort;
3. ``Gallery.search_image`` with a picture from outside the gallery (one pass
   through the image tower), and with an index (no network at all);
4. ``word_importance``: the caption and each caption-minus-one-word, one batch;
5. the text panel's whole answer to a new query (search, why-this-match,
   HTML redraw), the image panel's answer to a picked image, and one redraw
   of the embedding explorer's map.

The target is interactive speed: well under 100 ms per query. The load
average is printed, since other processes on the cores inflate every figure.

    python benchmarks/interactive.py [--queries 100] [--threads 2] [--data data/tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import siamese_utils as su
from siamese_utils.core.search import Gallery
from siamese_utils.chapters.composition import COMPOSITION_MODEL, COMPOSITION_TRAIN
from siamese_utils.core.train import load_run, prepare_images
from siamese_utils.chapters.widgets import (EmbeddingExplorer, ImageSearchPanel, TextSearchPanel, seen_token_ids,
                                   word_importance)

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, items) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=100, help="queries per measurement (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "tiny", help="dataset folder")
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "05_composition" / "default",
                        help="a trained run folder (default: chapter 05's default model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    su.seed_everything(0)

    data = su.read_dataset(args.data)
    train, test = data.split("train"), data.split("test")
    tokenizer = su.load_tokenizer()
    if (args.run / "model.pt").is_file():
        (model, recipe), source = load_run(args.run), f"trained model from {args.run}"
    else:
        model, recipe = su.build_model(COMPOSITION_MODEL), COMPOSITION_TRAIN
        source = "untrained default model (timings do not depend on weights)"
    model.eval()
    images = prepare_images(test, recipe.image_size)
    print(f"{source}; {len(test)} images, {test.num_captions} captions; torch {torch.__version__}, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f}")

    start = time.perf_counter()
    gallery = Gallery(model, test, tokenizer, image_size=recipe.image_size, max_length=recipe.max_length,
                      images=images)
    build_ms = 1000 * (time.perf_counter() - start)
    seen = seen_token_ids(train.captions, tokenizer)
    n = min(args.queries, test.num_captions)
    captions = test.captions[:n]
    pictures = [test.records[i % len(test)] for i in range(n)]
    pil = [su.load_image(r.path) for r in pictures]
    text_panel = TextSearchPanel(gallery, seen)
    image_panel = ImageSearchPanel(gallery)
    explorer = EmbeddingExplorer(gallery)
    points = [("image", i % len(test)) if i % 2 else ("caption", i % test.num_captions) for i in range(n)]

    rows = [
        ("gallery: encode the split once", build_ms),
        ("Gallery.search_text", median_ms(lambda c: gallery.search_text(c, 5), captions)),
        ("Gallery.search_image, a new picture", median_ms(lambda im: gallery.search_image(im, 5), pil)),
        ("Gallery.search_image, an index", median_ms(lambda i: gallery.search_image(i, 5), range(n))),
        ("word_importance", median_ms(lambda c: word_importance(gallery, c, 0), captions)),
        ("text panel: search + why + redraw", median_ms(lambda c: setattr(text_panel.query, "value", c), captions)),
        ("image panel: pick + redraw", median_ms(lambda i: setattr(image_panel.picker, "value", i % len(test)),
                                                 range(1, n + 1))),
        ("explorer: select + redraw the map", median_ms(lambda p: setattr(explorer.point, "value", p), points)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}}  median ms")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
