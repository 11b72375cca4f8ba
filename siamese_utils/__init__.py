"""siamese_utils: the library behind the notebook series on image-text matching
with a two-tower (siamese, dual-encoder) network.

Four parts, and imports point one way only (core <- datasets <- chapters <- tools):

- ``core``: what chapters 01-04 teach, readable on its own in this order:
  ``runtime`` (seeds, devices, atomic writes, settings), ``data`` (datasets on
  disk, the pair dataset, batches, loaders), ``text`` (the offline tokenizer),
  ``transforms`` (preprocessing, the caption-aware flip), ``models`` (the tower
  registry, towers, the dual encoder), ``losses``, ``train`` (the recipe, the
  runtime, the loop, checkpoints), ``metrics`` (Recall@K and ranks) and
  ``search`` (a gallery searched by caption or by image);
- ``datasets``: the tiny synthetic set and the registry of real ones (Flickr8k,
  Flickr30k, COCO) with verified downloads;
- ``chapters``: the later chapters' code (comparisons, reranking, interactive
  widgets, scaling up) and the figures;
- ``tools``: the command line, the notebook runner, ``reproduce`` and course
  assignments.

Each module's docstring names the notebook that explains it. The names the
notebooks use most are importable from here: ``import siamese_utils as su``.
"""

from .core.data import (Batch, CaptionedImages, Collator, DatasetError, ImageDataset, ImageRecord, ImageTextDataset,
                        load_image, make_loader, read_dataset, to_rgb)
from .core.metrics import retrieval_metrics
from .core.models import DualEncoder, ModelConfig, build_model
from .core.runtime import choose_device, seed_everything, seed_worker
from .core.text import load_tokenizer, swap_left_right
from .core.train import DEFAULT_MODEL, Runtime, TrainConfig, encode_split, evaluate, fit, load_model, train_one_epoch
from .core.transforms import (CaptionAwareHorizontalFlip, ImageTextTransform, ImageTransformConfig,
                              build_image_transform, denormalize)

from .chapters.seed import CrossEncoder, SeedLSTMTower, SeedSiameseNetwork  # noqa: E402
from .chapters import composition, towers  # noqa: E402,F401  (register the grid CNN and chapter 06's pretrained towers)

__version__ = "0.1.0"

__all__ = [
    # core.data, core.text, core.transforms (chapter 01)
    "Batch", "CaptionedImages", "Collator", "DatasetError", "ImageDataset", "ImageRecord", "ImageTextDataset",
    "load_image", "make_loader", "read_dataset", "to_rgb", "load_tokenizer", "swap_left_right",
    "CaptionAwareHorizontalFlip", "ImageTextTransform", "ImageTransformConfig", "build_image_transform", "denormalize",
    # core.runtime
    "choose_device", "seed_everything", "seed_worker",
    # core.models and the seed's network (chapter 02)
    "CrossEncoder", "DualEncoder", "ModelConfig", "SeedLSTMTower", "SeedSiameseNetwork", "build_model",
    # core.train and core.metrics (chapters 03-04)
    "DEFAULT_MODEL", "Runtime", "TrainConfig", "encode_split", "evaluate", "fit", "load_model", "train_one_epoch",
    "retrieval_metrics",
]
