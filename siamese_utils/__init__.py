"""siamese_utils: the library behind the notebook series on image-text matching
with a two-tower (siamese, dual-encoder) network.

Each public function and class names, in its docstring, the notebook that
explains it. The modules follow the stages of the series:

- ``data``: datasets on disk (Karpathy's ``dataset.json``, CSV), robust image
  loading, PyTorch datasets, batches and loaders, image pipelines for large sets;
- ``datasets``: the registry of real datasets (Flickr8k, Flickr30k, COCO), verified
  resumable downloads, safe extraction, ``load_dataset``;
- ``tiny``: the tiny synthetic dataset shipped in ``data/tiny``;
- ``transforms``: image preprocessing and caption-aware augmentation;
- ``text``: the offline BERT WordPiece tokenizer and caption helpers;
- ``models``: the seed's fused network, image and text towers, the dual
  encoder and the cross-encoder;
- ``losses``: contrastive losses (cosine embedding, hinge triplet, InfoNCE);
- ``metrics``: Recall@K and ranks for image-text retrieval, COCO 1K folds, chance level;
- ``search``: a split encoded once and searched by caption or by image;
- ``index``: exact and approximate (FAISS) nearest-neighbour search over
  galleries too big for one score matrix;
- ``rerank``: two-stage retrieval, a cross-encoder reranking a dual encoder's
  top-k, trained on hard negatives mined from it;
- ``widgets``: interactive search panels (ipywidgets) with static snapshots;
- ``train``: the training loop, validation, checkpoints and resuming;
- ``distributed``: training on several processes with torchrun, contrastive
  losses on the gathered global batch;
- ``grid``: controlled comparisons, one factor at a time, several seeds, one CSV;
- ``plotting``: figures;
- ``runtime``: seeds, devices and offline mode;
- ``notebooks``, ``reproduce``, ``assignments``: executing the notebooks in
  place or as a checked reproduction, and course assignments made from them.
"""

from .core.data import (
    Batch,
    CaptionedImages,
    Collator,
    DatasetError,
    ImageDataset,
    ImageRecord,
    ImageTextDataset,
    load_image,
    to_rgb,
    make_loader,
    read_dataset,
)
from .core.metrics import retrieval_metrics
from .core.models import CrossEncoder, DualEncoder, ModelConfig, SeedLSTMTower, build_model
from .core.runtime import choose_device, seed_everything, seed_worker
from .core.text import load_tokenizer, swap_left_right
from .core.train import DEFAULT_MODEL, Runtime, TrainConfig, encode_split, evaluate, fit, load_model, train_one_epoch
from .core.transforms import (CaptionAwareHorizontalFlip, ImageTextTransform, ImageTransformConfig,
                              build_image_transform, denormalize)

from .chapters import towers  # noqa: E402,F401  (registers chapter 05's pretrained towers)
from .chapters.seed import SeedSiameseNetwork  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "denormalize",
    "CaptionAwareHorizontalFlip",
    "train_one_epoch",
    "Runtime",
    "encode_split",
    "evaluate",
    "SeedLSTMTower",
    "to_rgb",
    "DEFAULT_MODEL",
    "Batch",
    "CaptionedImages",
    "Collator",
    "CrossEncoder",
    "DatasetError",
    "DualEncoder",
    "ImageDataset",
    "ImageRecord",
    "ImageTextDataset",
    "ImageTextTransform",
    "ImageTransformConfig",
    "ModelConfig",
    "SeedSiameseNetwork",
    "TrainConfig",
    "build_image_transform",
    "build_model",
    "choose_device",
    "fit",
    "load_image",
    "load_model",
    "load_tokenizer",
    "make_loader",
    "read_dataset",
    "retrieval_metrics",
    "seed_everything",
    "seed_worker",
    "swap_left_right",
]
