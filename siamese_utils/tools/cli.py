"""Command line: ``python -m siamese_utils COMMAND ...`` (or ``siamese-utils COMMAND``).

Commands:

- ``make-tiny``: write the tiny synthetic dataset (``data/tiny``);
- ``info``: read a dataset folder, print its splits, optionally decode every image;
- ``download``: fetch Flickr8k, Flickr30k or COCO with Karpathy's splits, verified, into ``data/NAME``
  (``--from-hub``: Flickr8k or Flickr30k from the Hugging Face hub);
- ``model``: build a dual encoder from its settings and print its parts, weights and sizes;
- ``train``: train a dual encoder on a dataset folder, with a checkpoint after every epoch;
- ``evaluate``: retrieval metrics of a trained model on one split (a table, or JSON);
- ``search``: the best images for a caption, or the best captions for an image;
- ``assignments``: write the student notebooks and their autograder, or grade a submission;
- ``refresh-notebooks``: re-execute notebooks in place, so stored outputs are one in-order run;
- ``reproduce``: execute every notebook on a copy, evaluate what they train, compare, write a report;
- ``grid``: chapter 06's comparison of losses and towers, several seeds per variant, results in one CSV.

The settings flags of ``model``, ``train`` and ``grid`` are made from the fields of
:class:`~siamese_utils.core.models.ModelConfig`, :class:`~siamese_utils.core.train.TrainConfig`
and :class:`~siamese_utils.core.train.Runtime`: ``--num-epochs`` sets ``num_epochs``,
with the field's type, choices and help text.

Explained in ``notebooks/01_preprocessing.ipynb`` (data commands) and
``notebooks/02_model_construction.ipynb`` (``model``) and
``notebooks/03_contrastive_training.ipynb`` (``train``) and
``notebooks/04_evaluation.ipynb`` (``evaluate``, ``search``) and ``README.md``
(``assignments``, ``refresh-notebooks``, ``reproduce``) and
``notebooks/06_losses_and_encoders.ipynb`` (``grid``).
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from pathlib import Path

from ..core.data import DatasetError, read_dataset
from ..datasets.tiny import TinyConfig, write_tiny_dataset


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


def _download(args: argparse.Namespace) -> int:
    from ..datasets.registry import DATASETS, DownloadError, UnsafeArchiveError, download, registry_table

    if args.list:
        print(registry_table().to_string())
        return 0
    if args.name is None:
        raise ValueError(f"give a dataset NAME or --list; known: {', '.join(DATASETS)}")
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        if args.from_hub:
            from ..datasets.hub import hub_source, import_from_hub

            if args.mirror:
                raise ValueError("--mirror applies to published archives, not to --from-hub; drop one of them")
            out = import_from_hub(hub_source(args.name), args.root, progress=progress)
        else:
            out = download(args.name, args.root, mirror=args.mirror, progress=progress)
    except (DownloadError, UnsafeArchiveError) as e:  # the download failed: exit 1, unlike bad input (2)
        print(f"error: {e}", file=sys.stderr)
        return 1
    data = read_dataset(out, check_files=False)
    print(f"{out}: {len(data)} images, {data.num_captions} captions")
    print(data.summary().to_string())
    return 0


def _model(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..core.models import ModelConfig, build_model

    model = build_model(ModelConfig(**_given(args, ModelConfig)))
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


def _threads(flag: int | None, fallback: int | None) -> int | None:
    """Torch threads for a command: ``--threads``, else ``$SIAMESE_THREADS``, else ``fallback``."""
    text = os.environ.get("SIAMESE_THREADS", "")
    if flag is not None or not text:
        return flag if flag is not None else fallback
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"SIAMESE_THREADS={text!r} is not a positive whole number; fix it, or pass --threads N")
    return int(text)


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


# --------------------------------------------------------------------------- flags made from the settings dataclasses
#
# Every field of ModelConfig, TrainConfig and Runtime is one flag: `--` and the field's name with `-` for `_`,
# its type, choices and help taken from the field. A flag that is not given leaves its field out of the parsed
# namespace (argparse.SUPPRESS), so `_given` returns exactly what was typed: the rest comes from the command's
# defaults, or on `train --resume` from the run's config.json.


def _flag(name: str) -> str:
    """The flag of a settings field: ``num_epochs`` -> ``--num-epochs``."""
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    """A default as --help shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


class _Deprecated(argparse.Action):
    """An old spelling of a flag: still accepted for one release, hidden from --help, one line on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _compile_backend(text: str) -> bool | str:
    """``--compile BACKEND``: a torch.compile backend's name, or off / on."""
    lowered = text.strip().lower()
    if lowered in ("off", "false", "no", "0"):
        return False
    if lowered in ("on", "true", "yes", "1", "default"):
        return True
    import torch

    known = torch.compiler.list_backends(exclude_tags=())
    if text not in known:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch.compile backend; use one of {', '.join(known)}")
    return text


def _converter(cls: type, name: str, base: type, optional: bool):
    """The argparse ``type`` of a number field: ``base(text)`` (or None for 'none'), checked by ``cls`` itself."""

    def convert(text: str):
        value = None if optional and text.strip().lower() == "none" else base(text)
        try:
            cls(**{name: value})  # the dataclass's own checks (the other fields at their defaults)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    convert.__name__ = base.__name__ + (" or none" if optional else "")  # argparse: "invalid int value: 'x'"
    return convert


def _flag_options(cls: type, f, hint) -> dict:
    """``add_argument`` options of the field ``f`` of ``cls`` from its type: action or type, choices, metavar."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if union else (hint,)
    kinds = [k for k in members if k is not type(None)]
    optional = len(kinds) < len(members)  # `X | None`: a value, or 'none'
    if set(kinds) == {bool, str}:  # Runtime.compile: off, on or a backend's name
        return dict(nargs="?", const=True, type=_compile_backend, metavar="BACKEND")
    if kinds == [bool]:
        return dict(action=argparse.BooleanOptionalAction)
    if "choices" in f.metadata:
        return dict(choices=list(f.metadata["choices"]))
    if "registry" in f.metadata:  # a tower's name: the towers registered when the parser is built
        from ..core.models import IMAGE_TOWERS, TEXT_TOWERS

        return dict(choices=list({"image": IMAGE_TOWERS, "text": TEXT_TOWERS}[f.metadata["registry"]]))
    if kinds in ([int], [float], [str]):
        metavar = {int: "N", float: "X", str: "NAME"}[kinds[0]]
        return dict(type=_converter(cls, f.name, kinds[0], optional), metavar=metavar + ("|none" if optional else ""))
    raise TypeError(f"no command-line flag for {cls.__name__}.{f.name}: {hint}")


def _add_settings(group, cls: type, *, only: tuple[str, ...] | None = None, defaults=None, default_text=None,
                  renamed=None) -> None:
    """One flag per field of the settings dataclass ``cls`` (or per field named in ``only``) in ``group``.

    The help is the field's help and "(default: ...)": ``default_text[field]`` where a sentence says it best,
    else ``defaults[field]`` (the command's defaults) or the field's own. ``renamed`` maps a field to its old
    flags: accepted, hidden from --help, each use printing "OLD is deprecated; use NEW" on stderr.
    """
    hints = typing.get_type_hints(cls)
    defaults, default_text, renamed = defaults or {}, default_text or {}, renamed or {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        options = _flag_options(cls, f, hints[f.name])
        text = f.metadata.get("help", "")
        default = defaults.get(f.name, f.default)
        if f.name in default_text or default != f.default or "(default:" not in text:
            shown = default_text.get(f.name, _shown(default))
            text = re.sub(r"\s*\(default: [^)]*\)", "", text) + f" (default: {shown})"
        group.add_argument(_flag(f.name), dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"),
                           **options)
        for old in renamed.get(f.name, ()):
            if "action" in options:
                raise TypeError(f"{old}: an old spelling of an on/off flag ({_flag(f.name)}) is not supported")
            group.add_argument(old, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                               action=_Deprecated, new=_flag(f.name), **options)


def _given(args: argparse.Namespace, cls: type) -> dict:
    """The fields of ``cls`` given on the command line, ``{field: value}``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


# --------------------------------------------------------------------------- train, evaluate, search

_GRID_DEFAULTS = {"num_epochs": 2}  # grid: short runs, the same for every variant


def _writable_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the output folder {out} ({e.strerror or e}); choose another --out") from None


RECIPES = {
    "composition": "the tiny set's default: a grid CNN from scratch + GRU, whole images per batch, swapped-word "
                   "hard negatives (chapter 05; under 3 minutes on 2 CPU cores)",
    "locked-image": "frozen ImageNet EfficientNet-Lite0 + GRU (chapter 03's fast comparison, and the start for "
                    "real photographs)",
}


class TrainSettings(typing.NamedTuple):
    recipe: str  # the --recipe it starts from, resolved ("composition", "locked-image")
    model: typing.Any  # ModelConfig
    train: typing.Any  # TrainConfig
    runtime: typing.Any  # Runtime


def _recipe(name: str, data_path: Path) -> tuple[str, typing.Any, typing.Any]:
    """``(name, ModelConfig, TrainConfig)`` of a recipe; "auto": composition for the tiny set, else locked-image."""
    from ..chapters.composition import COMPOSITION_MODEL, COMPOSITION_TRAIN
    from ..core.train import DEFAULT_MODEL, TrainConfig
    from ..datasets.tiny import judge

    if name == "auto":
        try:
            tiny = judge(read_dataset(data_path, check_files=False).split("train")) is not None
        except (OSError, ValueError):  # unreadable data fails later, with its own message
            tiny = False
        name = "composition" if tiny else "locked-image"
    return (name, COMPOSITION_MODEL, COMPOSITION_TRAIN) if name == "composition" else (name, DEFAULT_MODEL,
                                                                                       TrainConfig())


def train_settings(args: argparse.Namespace, out: Path) -> TrainSettings:
    """The recipe's name, model config, recipe and runtime of this run: from the flags, or from the run being resumed.

    Flags change the chosen ``--recipe``'s settings. On --resume the model and recipe are the stored ones (a flag
    that differs is refused); the runtime is the stored one with the runtime flags given applied.
    """
    from ..core.models import IMAGE_TOWERS, ModelConfig
    from ..core.train import Runtime, TrainConfig

    given_model, given_train, given_runtime = (_given(args, cls) for cls in (ModelConfig, TrainConfig, Runtime))
    if args.resume:
        path = out / "config.json"
        stored = json.loads(path.read_text()) if path.is_file() else None
        if stored is None:
            raise ValueError(f"{path} is missing: nothing to resume there; start a run without --resume")
        if Path(stored["data"]).resolve() != Path(args.data).resolve():
            raise ValueError(f"--data {args.data} is not the dataset of the run being resumed ({stored['data']}, in "
                             f"{path}); resume with that dataset, or train a new run in another --out")
        model_config = ModelConfig.from_dict(stored["model"])
        train_config = TrainConfig.from_dict(stored["train"])  # older config.json kept the runtime in "train"
        runtime_keys = {f.name for f in dataclasses.fields(Runtime)}
        stored_runtime = stored.get("runtime", {k: v for k, v in stored["train"].items() if k in runtime_keys})
        for given, config in ((given_model, model_config.to_dict()), (given_train, train_config.to_dict())):
            for key, value in given.items():
                if config[key] != value:
                    raise ValueError(f"{_flag(key)} {_shown(value)} differs from the run being resumed "
                                     f"({_shown(config[key])}, in {path}); resume without it, or train a new run "
                                     "in another --out")
        return TrainSettings(stored.get("recipe", "as stored"), model_config, train_config,
                             Runtime.from_dict({**stored_runtime, **given_runtime}))

    recipe, base_model, base_train = _recipe(args.recipe, args.data)
    image_tower = given_model.get("image_tower", base_model.image_tower)
    pretrained = given_model.get("pretrained", IMAGE_TOWERS[image_tower].offline)
    # Locked-image tuning by default only where the ImageNet weights are sure to be there (offline packages):
    # a ResNet asked for with --pretrained may fall back to random weights offline, and must not stay frozen.
    freeze_image = given_model.get("freeze_image", pretrained and IMAGE_TOWERS[image_tower].offline)
    if freeze_image and not pretrained:
        raise ValueError(f"--freeze-image would keep a randomly initialised {image_tower} fixed; "
                         "add --pretrained, or drop --freeze-image")
    model_config = ModelConfig.from_dict({**base_model.to_dict(), **given_model, "image_tower": image_tower,
                                          "pretrained": pretrained, "freeze_image": freeze_image})
    return TrainSettings(recipe, model_config, TrainConfig.from_dict({**base_train.to_dict(), **given_train}),
                         Runtime(**given_runtime))


def _train(args: argparse.Namespace) -> int:
    from ..chapters.scaling.distributed import process_group
    from ..chapters.scaling.train import fit_at_scale
    from ..core.metrics import format_metrics
    from ..core.runtime import atomic_write_text, seed_everything
    from ..core.text import load_tokenizer
    from ..core.train import evaluate

    import torch

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
    recipe, model_config, train_config, runtime = train_settings(args, out)
    threads = _threads(args.threads, fallback=None)
    if threads:
        torch.set_num_threads(threads)
    device = _device(args.device)
    # Under torchrun: one process per GPU (or several CPU processes); rank 0 alone writes and prints.
    with process_group(device) as ctx:
        device, main = ctx.device, ctx.is_main
        if main:
            _writable_folder(out)
        if not args.resume and main:  # a resumed run keeps the config.json it was started with
            config = {"recipe": recipe, "model": model_config.to_dict(), "train": train_config.to_dict(),
                      "runtime": runtime.to_dict(), "data": str(args.data), "threads": torch.get_num_threads()}
            atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")

        from ..core.models import build_model

        seed_everything(train_config.seed)
        model = build_model(model_config)
        tokenizer = load_tokenizer()
        progress = sys.stderr.isatty()
        if main:
            workers = f", {ctx.world_size} processes ({ctx.backend})" if ctx.world_size > 1 else ""
            n = torch.get_num_threads()
            cpu = f" ({n} CPU thread{'s' if n > 1 else ''})" if device.type == "cpu" else ""
            print(f"training on {device}{cpu}{workers}: recipe {recipe}, {model_config.image_tower} + "
                  f"{model_config.text_tower}, loss {train_config.loss}, {train_config.num_epochs} epochs -> {out}",
                  flush=True)
        try:
            result = fit_at_scale(model, splits["train"], splits["val"], train_config, tokenizer, runtime=runtime,
                                  device=device, out_dir=out, resume=args.resume, progress=progress,
                                  log=lambda line: print(line, flush=True), cache_dir=args.cache_dir)
        except KeyboardInterrupt:
            if main:
                print(f"interrupted; {out / 'model.pt'} holds the last finished epoch: continue with --resume",
                      file=sys.stderr)
            return 130
        if not main:
            return 0
        options = {"image_size": train_config.image_size, "max_length": train_config.max_length,
                   "batch_size": runtime.eval_batch_size}
        metrics = {"val": result.val_metrics,
                   "test": evaluate(result.model, splits["test"], tokenizer, device, **options)}
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"test {format_metrics(metrics['test'])}")
        print(f"wrote {out / 'model.pt'}, config.json, history.csv, metrics.json")
        return 0


def _device(name: str | None):
    from ..core.runtime import choose_device

    try:
        return choose_device(name)
    except RuntimeError as e:  # an unknown or unavailable device
        raise ValueError(f"--device {name}: {str(e).splitlines()[0]}") from None


def _read_split(data_dir: Path, name: str):
    data = read_dataset(data_dir)
    split = data.split(name)
    if len(split) == 0:
        raise ValueError(f"{data.source} has no images in the {name} split; choose another --split")
    return split


def _evaluate(args: argparse.Namespace) -> int:
    from ..core.metrics import retrieval_metrics
    from ..core.search import Gallery
    from ..core.text import load_tokenizer
    from ..core.train import load_checkpoint

    load_checkpoint(args.checkpoint)  # a missing or broken checkpoint fails here, before the data is read
    split = _read_split(args.data, args.split)
    if len(split) % args.folds:
        raise ValueError(f"--folds {args.folds}: the {args.split} split has {len(split)} images, which do not split "
                         f"into {args.folds} equal folds; choose a number of folds that divides {len(split)}")
    device = _device(args.device)
    # Encoded at the checkpoint's stored settings, as `train` encodes its test split: metrics.json is reproduced.
    gallery = Gallery.from_checkpoint(args.checkpoint, split, load_tokenizer(), device)
    metrics = retrieval_metrics(gallery.img_emb, gallery.txt_emb, split.txt_to_img, folds=args.folds)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    per_fold = f", averaged over {args.folds} folds of {len(split) // args.folds} images" if args.folds > 1 else ""
    print(f"{args.checkpoint}: {args.split} split of {split.source} ({len(split)} images, "
          f"{split.num_captions} captions{per_fold})")
    print(f"{'':<12}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>7}{'meanr':>8}")
    for label, d in (("image->text", "i2t"), ("text->image", "t2i")):
        recalls = "".join(f"{metrics[f'{d}_r{k}']:>7.1f}" for k in (1, 5, 10))
        print(f"{label:<12}{recalls}{metrics[f'{d}_medr']:>7.1f}{metrics[f'{d}_meanr']:>8.2f}")
    print(f"rsum {metrics['rsum']:.1f}")
    return 0


def _check_image(path: Path) -> None:
    """An image query that cannot be read fails here, in one line, before the split is encoded."""
    from ..core.data import load_image

    if not path.is_file():
        raise ValueError(f"{path}: no such image file; check the path")
    try:
        load_image(path)
    except DatasetError:
        raise ValueError(f"{path}: not an image Pillow can read (or a truncated one); "
                         "give the path of a PNG, JPEG or other image file") from None


def _search(args: argparse.Namespace) -> int:
    from ..core.search import Gallery
    from ..core.text import load_tokenizer

    if args.k < 1:
        raise ValueError(f"-k {args.k}: ask for at least 1 result")
    if args.image is None and not args.caption.strip():
        raise ValueError("the caption is empty: give a caption to search for, or --image PATH")
    if args.image is not None:
        _check_image(args.image)
    split = _read_split(args.data, args.split)
    device = _device(args.device)
    gallery = Gallery.from_checkpoint(args.checkpoint, split, load_tokenizer(), device)
    if args.image is None:
        found = gallery.search_text(args.caption, args.k)
        print(f"top {len(found)} of {len(split)} {args.split} images for \"{args.caption.strip()}\":")
        rows = [(r.rank, r.score, r.filename, r.caption, r.match) for r in found.itertuples()]
        header, mark = ("filename", "first caption"), "* = an image this caption belongs to"
        own = any(args.caption.strip() in r.captions for r in split)
        missing = f"(no image this caption belongs to is in the top {args.k})"
    else:
        found = gallery.search_image(args.image, args.k)
        print(f"top {len(found)} of {split.num_captions} {args.split} captions for the image {args.image}:")
        rows = [(r.rank, r.score, split[r.image].name, r.caption, r.match) for r in found.itertuples()]
        header, mark = ("image", "caption"), "* = a caption of this image"
        own = args.image.resolve() in {r.path.resolve() for r in split.records}
        missing = f"(none of this image's captions is in the top {args.k})"
    width = max(len(header[0]), *(len(r[2]) for r in rows))
    print(f"rank  score  {header[0]:<{width}}  {header[1]}")
    for rank, score, name, text, match in rows:
        print(f"{rank:>4}  {score:.3f}  {name:<{width}}  {text}{'  *' if match else ''}")
    if own:
        print(mark if any(r[4] for r in rows) else missing)
    return 0


def _assignments(args: argparse.Namespace) -> int:
    from .assignments import format_report, grade, write_assignments

    if args.grade is not None:
        if args.notebooks or args.overwrite:
            given = "the notebooks " + " ".join(map(str, args.notebooks)) if args.notebooks else "--overwrite"
            raise ValueError(f"--grade takes one submission and no {given}; to generate, use --out DIR instead")
        report = grade(args.grade, autograder=args.autograder, quick=args.quick, timeout=args.timeout)
        print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
        return 0 if report.passed else 1
    for flag, value in (("--autograder", args.autograder), ("--quick", args.quick), ("--json", args.json)):
        if value:
            raise ValueError(f"{flag} applies to --grade SUBMISSION.ipynb only, not to --out")
    written = write_assignments(args.out, args.notebooks or None, overwrite=args.overwrite)
    notebooks = [p for p in written if p.parent.name == "release"]
    print(f"wrote {args.out}: {len(notebooks)} student notebooks in release/, their checks in autograder/, README.md")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from .notebooks import execute_notebook

    paths = args.notebooks or sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("error: no notebooks given, and none match notebooks/NN_*.ipynb here", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    from .notebooks import SMOKE_VARIABLE

    print(f"full setting ({SMOKE_VARIABLE} unset in the kernels), as the committed notebooks show", flush=True)
    for path in paths:
        print(f"executing {path} ...", flush=True)
        try:
            execute_notebook(path, timeout=args.timeout)
        except CellExecutionError as e:
            print(f"error: {path} failed; the file was left as it was.\n{e}", file=sys.stderr)
            return 1
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import parse_parameters, reproduce

    return reproduce(args.notebooks or None, args.out, smoke=args.smoke, data=args.data,
                     parameters=parse_parameters(args.parameters), threads=args.threads, device=args.device,
                     timeout=args.timeout, expected=None if args.no_compare else args.expected,
                     update_expected=args.update_expected, keep_going=args.keep_going)


def _grid(args: argparse.Namespace) -> int:
    import torch

    from ..chapters.comparisons import commenter_grid, format_summary, run_grid, summarize_grid
    from ..core.text import load_tokenizer
    from ..core.train import TrainConfig

    grid = commenter_grid(train=TrainConfig(**{**_GRID_DEFAULTS, **_given(args, TrainConfig)}))
    if args.list:
        for v in grid:
            print(f"{v.name:<32} {v.factor:<12} {v.about}")
        return 0
    if args.only:
        known = {v.name: v for v in grid}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise ValueError(f"--only {', '.join(map(repr, unknown))}: no such variant; "
                             f"see --list for the names ({', '.join(known)})")
        grid = [known[n] for n in args.only]
    if args.data is None:
        raise ValueError("--data DIR is needed to run the grid (or --list to see it)")
    torch.set_num_threads(_threads(args.threads, fallback=2))
    data = read_dataset(args.data)
    splits = [data.split(name) for name in ("train", "val", "test")]
    empty = [name for name, split in zip(("train", "val", "test"), splits) if len(split) == 0]
    if empty:
        raise ValueError(f"{data.source} has no images in the {' and '.join(empty)} split(s); the grid needs all three")
    results = run_grid(grid, *splits, load_tokenizer(), seeds=args.seeds, out=args.out,
                       device=_device(args.device), train_images=args.train_images)
    print(format_summary(summarize_grid(results)).to_string())
    print(f"one row per run in {args.out}")
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

    p = sub.add_parser("download", help="fetch a real dataset (Flickr8k, Flickr30k, COCO) into ROOT/NAME, verified",
                       description="Fetch a dataset with Karpathy's splits into ROOT/NAME: archives in ROOT/downloads "
                       "(resumed if interrupted, checked against published sizes and checksums), extracted safely. "
                       "Flickr8k and Flickr30k are handed out after a request form: the command prints the steps; "
                       "with --from-hub it streams them from the Hugging Face hub instead (needs the datasets "
                       "package: pip install -e \".[hub]\"), resumably. Exit 0 on success, 1 if a download or check "
                       "fails, 2 for bad input, a set to request, no datasets package or no hub.")
    p.add_argument("name", nargs="?", metavar="NAME", help="tiny, flickr8k, flickr30k or coco (see --list)")
    p.add_argument("--list", action="store_true", help="list the datasets: images per split, sizes, access")
    p.add_argument("--root", type=Path, default=Path("data"), help="folder of datasets (default: data)")
    p.add_argument("--mirror", metavar="URL", help="fetch every file as URL/FILENAME instead of its published address")
    p.add_argument("--from-hub", action="store_true",
                   help="flickr8k or flickr30k: stream them from the Hugging Face hub (jxie/flickr8k, "
                   "nlphuji/flickr30k) into the same layout, no request form")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_download)

    from ..core.models import ModelConfig
    from ..core.train import DEFAULT_MODEL, Runtime, TrainConfig

    p = sub.add_parser("model", help="build a dual encoder and print its parts, weights and sizes")
    _add_settings(p, ModelConfig)
    p.add_argument("--image-size", type=positive_int, default=64, metavar="N",
                   help="pixels of the probe batch (default: %(default)s)")
    p.set_defaults(func=_model)

    p = sub.add_parser("train", help="train a dual encoder; a checkpoint after every epoch",
                       description="Train a dual encoder on a dataset folder. The output folder receives model.pt "
                       "(checkpoint, rewritten every epoch), config.json, history.csv and metrics.json. --resume "
                       "continues the run in --out with the model and recipe stored there; runtime flags may change.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (dataset.json or captions.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder for this run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--recipe", choices=["auto", *RECIPES], default="auto",
                   help="the model and recipe the flags below start from: " + "; ".join(
                       f"{k}: {v}" for k, v in RECIPES.items()) + " (default: auto, composition for the tiny set "
                   "and locked-image for other data)")
    _add_settings(p.add_argument_group("model"), ModelConfig, default_text={
                  **{f.name: "the recipe's" for f in dataclasses.fields(ModelConfig)},
                  "pretrained": "on for efficientnet_lite0, which has them offline",
                  "freeze_image": "on for efficientnet_lite0 with its ImageNet weights"},
                  renamed={"image_tower": ("--image-encoder",), "text_tower": ("--text-encoder",)})
    _add_settings(p.add_argument_group("recipe (stored in the checkpoint, checked on --resume)"), TrainConfig,
                  default_text={name: "the recipe's" for name in ("batches", "num_epochs", "batch_size")},
                  renamed={"num_epochs": ("--epochs",)})
    group = p.add_argument_group("runtime (may change on --resume)")
    _add_settings(group, Runtime, renamed={"num_workers": ("--workers",)})
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="folder of the --images disk cache (default: $SIAMESE_CACHE_DIR or ~/.cache/siamese_utils)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="torch CPU threads (default: $SIAMESE_THREADS, else torch's choice). A CPU run repeats to "
                       "the bit at a fixed count; between counts the composition model's results differ")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="retrieval metrics of a trained model on one split",
                       description="Evaluate a trained dual encoder on one split of a dataset: Recall@1/5/10, median "
                       "and mean rank, image->text and text->image, and rsum. Images and captions are encoded with "
                       "the settings stored in the checkpoint, as `train` does for metrics.json.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT",
                   help="a run folder written by `train` (holding model.pt) or a checkpoint file")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (dataset.json or captions.csv)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="(default: %(default)s)")
    p.add_argument("--folds", type=positive_int, default=1,
                   help="average the metrics over this many equal folds of the images, e.g. 5 for COCO's 1K test "
                   "protocol (default: %(default)s, the whole split)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (the keys of metrics.json)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("search", help="the best images for a caption, or the best captions for an image",
                       description="Search one split of a dataset with a trained dual encoder: give a caption to "
                       "list the images that match it best, or --image PATH to list the captions that describe "
                       "that image best. A '*' marks the true matches when the query comes from the dataset.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT",
                   help="a run folder written by `train` (holding model.pt) or a checkpoint file")
    p.add_argument("caption", nargs="?", default=None, metavar="CAPTION",
                   help="the caption to search images for (quote it)")
    p.add_argument("--image", type=Path, default=None, help="an image file to search captions for, instead")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (dataset.json or captions.csv)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test",
                   help="the split to search in (default: %(default)s)")
    p.add_argument("-k", type=int, default=5, help="number of results (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.set_defaults(func=_search, search_parser=p)

    p = sub.add_parser("assignments", help="write the student notebooks and their autograder, or grade one",
                       description="With --out DIR: write DIR/release/ (the student versions of the notebooks: "
                       "solutions replaced by `raise NotImplementedError()`, hidden checks removed, outputs cleared), "
                       "DIR/autograder/ (every exercise's checks) and DIR/README.md, the same bytes on every run. "
                       "With --grade SUBMISSION.ipynb: run a student's notebook with its checks restored and score "
                       "each exercise; exit status 0 when every check passes, 1 when one does not, 2 for bad input.")
    p.add_argument("notebooks", nargs="*", type=Path,
                   help="source notebooks for --out (default: every notebooks/NN_*.ipynb with exercises)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="folder to write release/, autograder/ and README.md to")
    mode.add_argument("--grade", type=Path, default=None, metavar="SUBMISSION", help="a student's notebook to grade")
    p.add_argument("--overwrite", action="store_true",
                   help="replace release/, autograder/ and README.md in a folder that is not empty")
    p.add_argument("--autograder", type=Path, default=None, metavar="DIR",
                   help="for --grade: the folder written by --out, or a folder of source notebooks "
                   "(default: notebooks)")
    p.add_argument("--quick", action="store_true",
                   help="for --grade: run only the setup cell, the parameters cell and each exercise's cells")
    p.add_argument("--json", action="store_true", help="for --grade: print the result as JSON")
    p.add_argument("--timeout", type=positive_int, default=600, metavar="SECONDS",
                   help="for --grade: seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=_assignments)

    p = sub.add_parser("refresh-notebooks", help="re-execute notebooks in place, in their full setting "
                       "(default: notebooks/NN_*.ipynb)")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: all, in order)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=_refresh)

    p = sub.add_parser("reproduce", help="run every notebook on a copy, evaluate, compare, write REPORT.md",
                       description="Execute the notebooks in order as copies (the originals are never written), "
                       "evaluate the run folders they train, compare the metrics with the expected ones and write "
                       "OUT/REPORT.md: environment, each notebook's time and status, key metrics, figures. Exit "
                       "status: 0 all as expected, 1 a notebook failed, 2 bad input, 3 metrics differ or are missing.")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: notebooks/NN_*.ipynb, in order)")
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="folder for REPORT.md, results.json, notebooks/, figures/ and runs/ (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="the notebooks' short setting, the one python -m pytest runs (SIAMESE_SMOKE=1 in the kernels)")
    p.add_argument("--data", type=Path, default=Path("data/tiny"),
                   help="dataset folder, for the notebooks ($SIAMESE_DATA) and the evaluation (default: %(default)s)")
    p.add_argument("-p", "--parameter", dest="parameters", action="append", default=[], metavar="NAME=VALUE",
                   help="inject a parameter (a Python literal) after the parameters cell of every notebook that "
                   "sets NAME; repeatable")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads ($SIAMESE_THREADS; default: that variable, else 2)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds allowed per cell (default: %(default)s)")
    p.add_argument("--expected", type=Path, default=Path("results/expected.json"),
                   help="the expected metrics and their tolerances (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-compare", action="store_true", help="do not compare with the expected metrics")
    g.add_argument("--update-expected", action="store_true",
                   help="record this run's metrics in --expected for its setting instead of comparing")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after one fails")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("grid", help="the losses x towers comparison: each variant with several seeds, one CSV",
                       description="Train and test every variant of chapter 06's comparison (one factor varied "
                                   "around the default) with each seed; one row per run is appended to --out as "
                                   "it finishes, and runs already there with the same settings are reused.")
    p.add_argument("--data", type=Path, help="dataset folder (e.g. data/tiny)")
    p.add_argument("--out", type=Path, default=Path("runs") / "grid.csv", help="results CSV (default: runs/grid.csv)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    _add_settings(p, TrainConfig, only=("num_epochs", "image_size"), defaults=_GRID_DEFAULTS,
                  renamed={"num_epochs": ("--epochs",)})
    p.add_argument("--train-images", type=positive_int, default=None,
                   help="train on the first N training images only (default: all)")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run these variants only (names from --list)")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: $SIAMESE_THREADS, else 2)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.set_defaults(func=_grid)
    return parser


def _search_query(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Settle `search`'s query; returns the arguments still unrecognised.

    argparse fills the optional positional CAPTION together with RUN_OR_CHECKPOINT, so in
    ``search RUN --data DIR "a caption"`` the caption arrives among the unrecognised arguments.
    """
    if args.caption is None and extra and not extra[0].startswith("-"):
        args.caption = extra.pop(0)
    words = [s for s in extra if not s.startswith("-")]
    if args.caption is not None and words:
        args.search_parser.error(f"unrecognized arguments: {' '.join(extra)} (quote a caption of several words)")
    if args.caption is None and args.image is None:
        args.search_parser.error("give a caption to search images for, or --image PATH to search captions")
    if args.caption is not None and args.image is not None:
        args.search_parser.error("give a caption or --image PATH, not both")
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "search":
        extra = _search_query(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (DatasetError, FileExistsError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
