"""Command line: ``python -m siamese_utils COMMAND ...`` (or ``siamese-utils COMMAND``).

Commands:

- ``make-tiny``: write the tiny synthetic dataset (``data/tiny``);
- ``info``: read a dataset folder, print its splits, optionally decode every image;
- ``model``: build a dual encoder from its settings and print its parts, weights and sizes;
- ``refresh-notebooks``: re-execute notebooks in place, so stored outputs are one in-order run.

Explained in ``notebooks/01_preprocessing.ipynb`` (data commands) and
``notebooks/02_model_construction.ipynb`` (``model``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DatasetError, read_dataset
from .tiny import TinyConfig, write_tiny_dataset


def _make_tiny(args: argparse.Namespace) -> int:
    config = TinyConfig(
        seed=args.seed,
        image_size=args.image_size,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
    )
    out = write_tiny_dataset(args.out, config, overwrite=args.overwrite)
    data = read_dataset(out)
    print(f"wrote {out}: {len(data)} images, {data.num_captions} captions (seed {args.seed})")
    return 0


def _info(args: argparse.Namespace) -> int:
    data = read_dataset(args.data)
    print(f"{data.source}: {len(data)} images, {data.num_captions} captions")
    print(data.summary().to_string())
    if args.check_images:
        data.check_images(progress=sys.stderr.isatty())
        print(f"all {len(data)} images decode")
    return 0


def _model(args: argparse.Namespace) -> int:
    import pandas as pd

    from .models import ModelConfig, build_model

    config = ModelConfig(
        image_tower=args.image_tower,
        text_tower=args.text_tower,
        pretrained=args.pretrained,
        embed_dim=args.embed_dim,
        projection=args.projection,
        freeze_image=args.freeze_image,
        freeze_text=args.freeze_text,
    )
    model = build_model(config)
    table = model.describe(image_size=args.image_size)
    for column in ("parameters", "trainable"):
        table[column] = table[column].map("{:,}".format)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.to_string())
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from .notebooks import execute_notebook

    paths = args.notebooks or sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("error: no notebooks given, and none match notebooks/NN_*.ipynb here", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    for path in paths:
        print(f"executing {path} ...", flush=True)
        try:
            execute_notebook(path, timeout=args.timeout)
        except CellExecutionError as e:
            print(f"error: {path} failed; the file was left as it was.\n{e}", file=sys.stderr)
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m siamese_utils",
        description="Image-text matching with a two-tower network: data and model tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-tiny", help="write the tiny synthetic dataset")
    p.add_argument("--out", type=Path, default=Path("data/tiny"), help="folder to write (default: data/tiny)")
    p.add_argument("--seed", type=int, default=TinyConfig.seed, help="random seed (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=TinyConfig.image_size, help="pixels (default: %(default)s)")
    for split in ("train", "val", "test"):
        default = getattr(TinyConfig, f"num_{split}")
        p.add_argument(f"--num-{split}", type=int, default=default, help=f"{split} images (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the folder if it exists")
    p.set_defaults(func=_make_tiny)

    p = sub.add_parser("info", help="read a dataset and print its splits")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (dataset.json or captions.csv)")
    p.add_argument("--check-images", action="store_true", help="also decode every image")
    p.set_defaults(func=_info)

    from .models import IMAGE_TOWERS, TEXT_TOWERS, ModelConfig

    p = sub.add_parser("model", help="build a dual encoder and print its parts, weights and sizes")
    p.add_argument("--image-tower", choices=list(IMAGE_TOWERS), default=ModelConfig.image_tower,
                   help="(default: %(default)s)")
    p.add_argument("--text-tower", choices=list(TEXT_TOWERS), default=ModelConfig.text_tower,
                   help="(default: %(default)s)")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights for the image tower where offered")
    p.add_argument("--embed-dim", type=int, default=ModelConfig.embed_dim, help="shared space (default: %(default)s)")
    p.add_argument("--projection", choices=["linear", "mlp"], default=ModelConfig.projection,
                   help="(default: %(default)s)")
    p.add_argument("--freeze-image", action="store_true", help="keep the image tower fixed (locked-image tuning)")
    p.add_argument("--freeze-text", action="store_true", help="keep the text tower fixed")
    p.add_argument("--image-size", type=int, default=64, help="pixels of the probe batch (default: %(default)s)")
    p.set_defaults(func=_model)

    p = sub.add_parser("refresh-notebooks", help="re-execute notebooks in place (default: notebooks/NN_*.ipynb)")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: all, in order)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=_refresh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
