"""Command line: ``python -m siamese_utils COMMAND ...`` (or ``siamese-utils COMMAND``).

Commands:

- ``make-tiny``: write the tiny synthetic dataset (``data/tiny``);
- ``info``: read a dataset folder, print its splits, optionally decode every image;
- ``model``: build a dual encoder from its settings and print its parts, weights and sizes;
- ``train``: train a dual encoder on a dataset folder, with a checkpoint after every epoch;
- ``refresh-notebooks``: re-execute notebooks in place, so stored outputs are one in-order run.

Explained in ``notebooks/01_preprocessing.ipynb`` (data commands) and
``notebooks/02_model_construction.ipynb`` (``model``) and
``notebooks/03_contrastive_training.ipynb`` (``train``).
"""

from __future__ import annotations

import argparse
import json
import os
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


# Settings of `train` that a resumed run must not change; None = not given on the command line.
_TRAIN_FLAGS = {"loss": "loss", "epochs": "num_epochs", "batch_size": "batch_size", "lr": "lr",
                "image_size": "image_size", "seed": "seed", "margin": "margin"}
_MODEL_FLAGS = {"image_encoder": "image_tower", "text_encoder": "text_tower", "embed_dim": "embed_dim",
                "pretrained": "pretrained", "freeze_image": "freeze_image", "freeze_text": "freeze_text",
                "word_dim": "word_dim", "text_hidden": "text_hidden"}
_OFFLINE_IMAGE_WEIGHTS = ("efficientnet_lite0",)


def _writable_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the output folder {out} ({e.strerror or e}); choose another --out") from None


def _train_settings(args: argparse.Namespace, out: Path):
    """The model and training configs of this run: from the flags, or from the run being resumed."""
    from .models import ModelConfig
    from .train import DEFAULT_MODEL, TrainConfig

    given_model = {key: getattr(args, flag) for flag, key in _MODEL_FLAGS.items() if getattr(args, flag) is not None}
    given_train = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.resume:
        stored = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else None
        if stored is None:
            raise ValueError(f"{out / 'config.json'} is missing: nothing to resume there; start a run without --resume")
        if Path(stored["data"]).resolve() != Path(args.data).resolve():
            raise ValueError(f"--data {args.data} is not the dataset of the run being resumed ({stored['data']}, in "
                             f"{out / 'config.json'}); resume with that dataset, or train a new run in another --out")
        model_config = ModelConfig.from_dict(stored["model"])
        train_config = TrainConfig.from_dict(stored["train"])
        for given, config, flags in ((given_model, model_config.to_dict(), _MODEL_FLAGS),
                                     (given_train, train_config.to_dict(), _TRAIN_FLAGS)):
            for key, value in given.items():
                if config[key] != value:
                    flag = "--" + next(f for f, k in flags.items() if k == key).replace("_", "-")
                    raise ValueError(f"{flag} {value} differs from the run being resumed ({config[key]}, in "
                                     f"{out / 'config.json'}); resume without it, or train a new run in another --out")
        return model_config, train_config

    image_tower = given_model.get("image_tower", DEFAULT_MODEL.image_tower)
    pretrained = given_model.get("pretrained", image_tower in _OFFLINE_IMAGE_WEIGHTS)
    # Locked-image tuning by default only where the ImageNet weights are sure to be there (offline packages):
    # a ResNet asked for with --pretrained may fall back to random weights offline, and must not stay frozen.
    freeze_image = given_model.get("freeze_image", pretrained and image_tower in _OFFLINE_IMAGE_WEIGHTS)
    if freeze_image and not pretrained:
        raise ValueError(f"--freeze-image would keep a randomly initialised {image_tower} fixed; "
                         "add --pretrained, or drop --freeze-image")
    model_config = ModelConfig.from_dict({**DEFAULT_MODEL.to_dict(), **given_model, "image_tower": image_tower,
                                          "pretrained": pretrained, "freeze_image": freeze_image})
    train_config = TrainConfig(**given_train, num_workers=args.workers)
    return model_config, train_config


def _train(args: argparse.Namespace) -> int:
    from .metrics import format_metrics
    from .runtime import choose_device, seed_everything
    from .text import load_tokenizer
    from .train import evaluate, fit

    out: Path = args.out
    if args.resume and not (out / "model.pt").is_file():
        raise ValueError(f"--resume: {out / 'model.pt'} does not exist; start the run without --resume")
    if not args.resume and (out / "model.pt").exists():
        raise FileExistsError(f"{out} already holds a run (model.pt); pass --resume to continue it, "
                              "or choose another --out")
    data = read_dataset(args.data)
    splits = {name: data.split(name) for name in ("train", "val", "test")}
    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        raise ValueError(f"{data.source} has no images in the {' and '.join(empty)} split(s); "
                         "train needs train, val and test splits")
    model_config, train_config = _train_settings(args, out)
    _writable_folder(out)
    try:
        device = choose_device(args.device)
    except RuntimeError as e:  # an unknown or unavailable device
        raise ValueError(f"--device {args.device}: {str(e).splitlines()[0]}") from None
    config = {"model": model_config.to_dict(), "train": train_config.to_dict(), "data": str(args.data)}
    if not args.resume:
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    from .models import build_model

    seed_everything(train_config.seed)
    model = build_model(model_config)
    tokenizer = load_tokenizer()
    progress = sys.stderr.isatty()
    print(f"training on {device}: {model_config.image_tower} + {model_config.text_tower}, loss {train_config.loss}, "
          f"{train_config.num_epochs} epochs -> {out}", flush=True)
    try:
        result = fit(model, splits["train"], splits["val"], train_config, tokenizer, device=device, out_dir=out,
                     resume=args.resume, progress=progress, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted; {out / 'model.pt'} holds the last finished epoch: continue with --resume",
              file=sys.stderr)
        return 130
    options = {"image_size": train_config.image_size, "max_length": train_config.max_length,
               "batch_size": train_config.eval_batch_size}
    metrics = {"val": result.val_metrics, "test": evaluate(result.model, splits["test"], tokenizer, device, **options)}
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")
    print(f"test {format_metrics(metrics['test'])}")
    print(f"wrote {out / 'model.pt'}, config.json, history.csv, metrics.json")
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

    from .losses import LOSSES
    from .train import DEFAULT_MODEL, TrainConfig

    p = sub.add_parser("train", help="train a dual encoder; a checkpoint after every epoch",
                       description="Train a dual encoder on a dataset folder. The output folder receives model.pt "
                       "(checkpoint, rewritten every epoch), config.json, history.csv and metrics.json.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (dataset.json or captions.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder for this run")
    p.add_argument("--image-encoder", choices=list(IMAGE_TOWERS), default=None,
                   help=f"image tower (default: {DEFAULT_MODEL.image_tower})")
    p.add_argument("--text-encoder", choices=list(TEXT_TOWERS), default=None,
                   help=f"text tower (default: {DEFAULT_MODEL.text_tower})")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet weights for the image tower (default: on for efficientnet_lite0, which has them "
                   "offline)")
    p.add_argument("--freeze-image", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the image tower fixed and cache its features (default: on for efficientnet_lite0 "
                   "with its ImageNet weights)")
    p.add_argument("--freeze-text", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the text tower fixed (default: off)")
    p.add_argument("--loss", choices=list(LOSSES), default=None, help=f"(default: {TrainConfig.loss})")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"(default: {TrainConfig.num_epochs})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"(default: {TrainConfig.batch_size})")
    p.add_argument("--lr", type=positive_float, default=None, help=f"peak learning rate (default: {TrainConfig.lr})")
    p.add_argument("--margin", type=float, default=None, help="margin of the hinge (0.2) or cosine (0.3) loss")
    p.add_argument("--embed-dim", type=positive_int, default=None, help=f"shared space (default: {DEFAULT_MODEL.embed_dim})")
    p.add_argument("--word-dim", type=positive_int, default=None,
                   help="word-vector size of recurrent text towers (default: 300 for GRUs, 768 for seed_lstm)")
    p.add_argument("--text-hidden", type=positive_int, default=None,
                   help=f"hidden size of recurrent text towers (default: {DEFAULT_MODEL.text_hidden})")
    p.add_argument("--image-size", type=positive_int, default=None, help=f"pixels (default: {TrainConfig.image_size})")
    p.add_argument("--seed", type=int, default=None, help=f"(default: {TrainConfig.seed})")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("refresh-notebooks", help="re-execute notebooks in place (default: notebooks/NN_*.ipynb)")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: all, in order)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=_refresh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, FileExistsError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
