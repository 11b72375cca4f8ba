"""Training a dual encoder: settings, data preparation, the loop, validation and checkpoints.

The loop itself (:func:`train_one_epoch`) is plain PyTorch and fits on one
screen: batches from a DataLoader, a contrastive loss, AdamW, an optional
warm-up and cosine schedule, gradient clipping, mixed precision on CUDA.
:func:`fit` runs it for a number of epochs with validation, history and a
checkpoint after every epoch, and can resume an interrupted run to exactly the
result an uninterrupted one would have reached.

Explained in ``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..chapters.scaling import distributed
from .data import (IMAGE_PIPELINES, CaptionedImages, Collator, ImageDataset, StreamedImages, build_image_cache,
                   make_loader, shutdown_workers)
from .losses import LOSSES, contrastive_loss
from .metrics import METRIC_KEYS, format_metrics, retrieval_metrics
from .models import DualEncoder, ModelConfig, build_model
from .runtime import seed_everything
from .transforms import CaptionAwareHorizontalFlip, ImageTransformConfig, build_image_transform

__all__ = [
    "DEFAULT_MODEL",
    "TrainConfig",
    "TrainResult",
    "CheckpointError",
    "PairTensors",
    "encode_image_tensors",
    "prepare_images",
    "load_split_images",
    "TrainStep",
    "make_optimizer",
    "make_scheduler",
    "train_one_epoch",
    "encode_split",
    "evaluate",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
]

CHECKPOINT_FORMAT = "siamese-image-text checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TrainConfig:
    """Everything about *how* a dual encoder is trained, as plain data (stored in checkpoints).

    - ``loss``: ``"infonce"``, ``"hinge"``, ``"hardest"`` or ``"cosine"``
      (see :data:`siamese_utils.core.losses.LOSSES`); ``margin`` overrides the hinge
      and cosine losses' own; ``hardest_warmup_epochs``: epochs of the summed
      hinge loss before ``"hardest"`` switches to the hardest negative;
    - ``num_epochs``, ``batch_size``, ``lr``, ``weight_decay`` (AdamW; not
      applied to biases, norms and the temperature); ``pretrained_lr``: the
      learning rate of a pretrained tower's own weights when it is fine-tuned
      (``None``: ``lr`` like every other weight), ``warmup_epochs`` of
      linear warm-up, then ``schedule`` ``"cosine"`` (to zero) or
      ``"constant"``; ``grad_clip``: maximum gradient norm (``None``: off);
    - ``image_size``, ``max_length`` (tokens per caption), ``flip``: the
      caption-aware horizontal flip for training (``"swap"``, ``"skip"`` or
      ``"off"``); ``cache_features``: with a frozen image tower, compute its
      features once (``None``: whenever the image tower is frozen; no flip
      then, since cached features cannot be flipped);
    - ``seed``; ``num_workers`` for the DataLoader; ``amp``: mixed precision
      (used on CUDA only); ``eval_batch_size``;
    - scaling up (``notebooks/08_scaling_up.ipynb``): ``images``, the image
      pipeline (see :data:`siamese_utils.core.data.IMAGE_PIPELINES`): ``"memory"``
      decodes every image once into RAM, ``"disk"`` once into a uint8 cache
      file read per batch, ``"stream"`` in the loader every epoch; all three
      give the same pixels. ``persistent_workers`` keeps the loader's workers
      alive across epochs (one loader reseeded each epoch: the batches are
      unchanged, but a resumed run no longer repeats the random flips of an
      uninterrupted one); ``prefetch_factor``: batches each worker loads
      ahead (``None``: torch's default). ``channels_last`` feeds images (and
      convolution weights) in NHWC memory order, which tensor cores prefer;
      ``compile``: ``torch.compile`` the towers (``True`` for the default
      backend, or a backend's name such as ``"aot_eager"``). Under
      ``torchrun``, ``batch_size`` is the global batch, split evenly across
      the processes, and the loss sees all of it.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """

    loss: str = "infonce"
    margin: float | None = None
    hardest_warmup_epochs: int = 1
    num_epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pretrained_lr: float | None = None
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = 2.0
    image_size: int = 64
    max_length: int = 32
    flip: Literal["swap", "skip", "off"] = "swap"
    cache_features: bool | None = None
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    eval_batch_size: int = 256
    images: Literal["memory", "disk", "stream"] = "memory"
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    channels_last: bool = False
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}. Choose one of: {', '.join(LOSSES)}")
        for name in ("num_epochs", "batch_size", "image_size", "max_length", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size}: a contrastive loss needs at least 2 pairs per batch")
        for name in ("lr", "pretrained_lr"):
            value = getattr(self, name)
            if name == "pretrained_lr" and value is None:
                continue
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
                    and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a positive number")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.hardest_warmup_epochs < 0:
            raise ValueError("weight_decay, warmup_epochs and hardest_warmup_epochs must be >= 0")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule={self.schedule!r}; use 'cosine' or 'constant'")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be positive, or None to turn clipping off")
        if self.margin is not None and not self.margin >= 0:
            raise ValueError(f"margin={self.margin!r} must be >= 0")
        if self.flip not in ("swap", "skip", "off"):
            raise ValueError(f"flip={self.flip!r}; use 'swap', 'skip' or 'off'")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers!r} must be 0 (main process) or more")
        if self.images not in IMAGE_PIPELINES:
            raise ValueError(f"images={self.images!r}; use one of: "
                             + "; ".join(f"{k!r} ({v})" for k, v in IMAGE_PIPELINES.items()))
        if self.prefetch_factor is not None and (not isinstance(self.prefetch_factor, int)
                                                 or isinstance(self.prefetch_factor, bool) or self.prefetch_factor < 1):
            raise ValueError(f"prefetch_factor={self.prefetch_factor!r} must be a positive number of batches per "
                             "worker, or None for torch's default")
        for name in ("persistent_workers", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            raise ValueError(f"compile={self.compile!r}: use False, True (torch.compile's default backend) or a "
                             "backend's name such as 'inductor' or 'aot_eager'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**data)


DEFAULT_MODEL = ModelConfig(image_tower="efficientnet_lite0", pretrained=True, freeze_image=True,
                            text_tower="gru", word_dim=128, text_hidden=256)
"""The default model for training on the tiny set: locked-image tuning (LiT).

A pretrained EfficientNet-Lite0, frozen, so its features are computed once,
and a bidirectional GRU text tower trained from scratch: the configuration
that trains to a useful model in well under a minute on two CPU cores.
Word vectors of 128 dimensions keep AdamW's dense update of the 30,522-row
embedding table cheap: at 300 dimensions it takes about a third of each step.
"""


# --------------------------------------------------------------------------- data


def prepare_images(split: CaptionedImages, image_size: int, progress: bool = False) -> torch.Tensor:
    """Decode every image of a split once and return them resized and normalised: ``(N, 3, S, S)``.

    The deterministic part of the pipeline (resize, to tensor, ImageNet
    normalisation) runs once here instead of once per epoch; the random part
    (the caption-aware flip) is applied to these tensors while training.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    transform = build_image_transform(ImageTransformConfig(image_size=image_size), train=False)
    dataset = ImageDataset(split, transform, cache_images=False)
    images = [dataset[i]["image"] for i in tqdm(range(len(dataset)), desc=f"decoding {split.name}",
                                                 disable=not progress, leave=False)]
    return torch.stack(images) if images else torch.empty(0, 3, image_size, image_size)


class PairTensors(torch.utils.data.Dataset):
    """(image, caption) pairs over images held as one tensor: one item per caption.

    ``images`` holds either pixels ``(N, 3, S, S)`` (then ``flip``, a
    :class:`~siamese_utils.core.transforms.CaptionAwareHorizontalFlip`, may mirror a
    pair and fix its caption) or an image tower's cached features ``(N, F)``.
    Items are what :class:`~siamese_utils.core.data.Collator` batches.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """

    def __init__(self, images: torch.Tensor, captions: list[str], txt_to_img: np.ndarray,
                 flip: CaptionAwareHorizontalFlip | None = None):
        if len(captions) != len(txt_to_img):
            raise ValueError(f"{len(captions)} captions but {len(txt_to_img)} image indices")
        if flip is not None and flip.mode != "off" and images.ndim != 4:
            raise ValueError("cached features cannot be flipped; use flip=None with (N, F) features")
        self.images, self.captions, self.txt_to_img, self.flip = images, captions, txt_to_img, flip

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.txt_to_img[j])
        image, caption = self.images[i], self.captions[j]
        if self.flip is not None:
            image, caption = self.flip(image, caption)
        return {"image": image, "caption": caption, "image_index": i, "caption_index": j}


@torch.no_grad()
def encode_image_tensors(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device,
                         batch_size: int = 256) -> torch.Tensor:
    """Apply ``fn`` (an image tower, or a model's ``encode_images``) to ``images`` in batches, on ``device``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    out = [fn(images[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def load_split_images(split: CaptionedImages, config: TrainConfig, cache_dir: str | os.PathLike | None = None,
                      progress: bool = False):
    """The images of ``split`` as ``config.images`` asks: an ``(N, 3, S, S)`` tensor or a lazy equivalent.

    ``"memory"``: :func:`prepare_images`; ``"disk"``: a
    :class:`~siamese_utils.core.data.DiskImages` over the cache that
    :func:`~siamese_utils.core.data.build_image_cache` keeps in ``cache_dir``
    (built with ``config.num_workers`` processes); ``"stream"``: a
    :class:`~siamese_utils.core.data.StreamedImages`. Indexing any of them gives
    the same normalised pixels.

    Explained in ``notebooks/08_scaling_up.ipynb``.
    """
    if config.images == "disk":
        return build_image_cache(split, config.image_size, cache_dir, num_workers=config.num_workers,
                                 progress=progress)
    if config.images == "stream":
        return StreamedImages(split, config.image_size)
    return prepare_images(split, config.image_size, progress)


def _cache_features(model: DualEncoder, config: TrainConfig) -> bool:
    frozen = model.is_frozen("image")
    if config.cache_features is None:
        return bool(frozen)
    if config.cache_features and not frozen:
        raise ValueError("cache_features=True needs a frozen image tower (freeze_image=True in the model config)")
    return bool(config.cache_features)


# --------------------------------------------------------------------------- the loop


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases, norms and the temperature (as CLIP).

    With ``config.pretrained_lr``, the weights of pretrained towers (those whose
    ``weights`` attribute names where they came from) learn at that rate and
    everything else at ``config.lr``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    slow: set[int] = set()
    if config.pretrained_lr is not None:
        for name in ("image_tower", "text_tower"):
            tower = getattr(model, name, None)
            if getattr(tower, "weights", "random initialisation") not in ("", "random initialisation"):
                slow.update(id(p) for p in tower.parameters())
    groups = []
    for pretrained, lr in ((False, config.lr), (True, config.pretrained_lr)):
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if p.requires_grad and (id(p) in slow) == pretrained:
                (decay if p.ndim >= 2 else no_decay).append(p)
        if pretrained and not (decay or no_decay):
            continue
        groups += [{"params": decay, "weight_decay": config.weight_decay, "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs``, then cosine decay to zero (or constant), stepped every batch.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.num_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant" or total <= warmup:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _compile(fn: Callable, backend: bool | str) -> Callable:
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"compile={backend!r} needs torch.compile (PyTorch 2.0 or newer; this is "
                           f"{torch.__version__}); train without compiling")
    name = "inductor" if backend is True else str(backend)
    from torch import _dynamo

    known = _dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise ValueError(f"compile={backend!r}: torch.compile has no backend {name!r}; use one of {sorted(known)}")
    return torch.compile(fn, backend=name)


class TrainStep(torch.nn.Module):
    """One training step's forward pass, as a module: embeddings of a batch and the loss on the (global) batch.

    Wrapping the model in this module lets ``DistributedDataParallel`` see
    every parameter the loss depends on (the towers *and* the temperature).
    Under a process group the loss is computed on the batch gathered from
    all processes (:func:`siamese_utils.chapters.scaling.distributed.gathered_contrastive_loss`);
    otherwise it is the plain loss of the local batch. With
    ``config.channels_last`` images are passed in NHWC memory order; with
    ``config.compile`` the towers' encoders are compiled.

    Explained in ``notebooks/08_scaling_up.ipynb``.
    """

    def __init__(self, model: DualEncoder, config: TrainConfig):
        super().__init__()
        self.model, self.config = model, config
        encoders = (model.encode_images, model.embed_image_features, model.encode_texts)
        if config.compile:
            encoders = tuple(_compile(fn, config.compile) for fn in encoders)
        self._encoders = encoders
        self._first_call = True

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: torch.Tensor, features: bool = False, hardest: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        encode_images, embed_image_features, encode_texts = self._encoders
        device = images.device
        if self.config.channels_last and not features:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            with _autocast(device, self.config.amp):
                img_emb = embed_image_features(images) if features else encode_images(images)
                txt_emb = encode_texts(input_ids, attention_mask)
        except Exception as e:
            if self.config.compile and self._first_call and _is_compile_error(e):
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RuntimeError(f"torch.compile (compile={self.config.compile!r}) failed on the first batch "
                                   f"({first}); train without compiling (--compile off, compile=False)") from e
            raise
        self._first_call = False
        # Under a process group, the global batch (see siamese_utils.chapters.scaling.distributed.gathered_contrastive_loss).
        img_emb, txt_emb, image_index = distributed.gather_pairs(img_emb.float(), txt_emb.float(), image_index)
        return contrastive_loss(self.config.loss, img_emb, txt_emb, image_index, logit_scale=self.model.logit_scale,
                                margin=self.config.margin, hardest=hardest, generator=generator)


def _is_compile_error(e: Exception) -> bool:
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # pragma: no cover - torch without dynamo cannot compile at all
        return False
    return isinstance(e, TorchDynamoException)


def train_one_epoch(model: DualEncoder, loader, optimizer, scheduler, config: TrainConfig, epoch: int,
                    device: torch.device, scaler: torch.amp.GradScaler | None = None,
                    features: bool = False, progress: bool = True, step_losses: list[float] | None = None,
                    step: torch.nn.Module | None = None) -> float:
    """One pass over ``loader``; returns the mean training loss per pair.

    ``features=True`` when the batches carry cached image-tower features
    instead of pixels. ``epoch`` (0-based) decides whether ``"hardest"`` still
    uses the summed warm-up loss. ``step_losses``, if given, receives the loss
    of every step. ``step`` is the forward pass to run, a :class:`TrainStep`
    of ``model`` (perhaps wrapped in ``DistributedDataParallel``; default: a
    new plain one).

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    model.train()
    step = step if step is not None else TrainStep(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    hardest = epoch >= config.hardest_warmup_epochs
    negatives = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)  # for the cosine loss
    total, count = 0.0, 0
    # tqdm gets the loader's iterator, not the loader: wrapping the loader itself draws from its
    # shuffling generator, and the batches would differ from a plain `for batch in loader`.
    batches = tqdm(iter(loader), total=len(loader), desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not progress, leave=False)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        loss = step(batch.images, batch.input_ids, batch.attention_mask, batch.image_index, features=features,
                    hardest=hardest, generator=negatives)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(batch)
        if step_losses is not None:
            step_losses.append(float(loss.detach()))
        count += len(batch)
    return total / max(count, 1)


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def encode_split(model: DualEncoder, split: CaptionedImages, tokenizer, device: torch.device | None = None,
                 image_size: int = 64, max_length: int = 32, batch_size: int = 256,
                 images: torch.Tensor | None = None, image_features: torch.Tensor | None = None):
    """``(img_emb, txt_emb)`` for every image and every caption of ``split``, on the CPU.

    ``images`` (from :func:`prepare_images`) or ``image_features`` (from a
    frozen tower) skip decoding or the tower.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if image_features is not None:
            img_emb = encode_image_tensors(model.embed_image_features, image_features, device, batch_size)
        else:
            if images is None:
                images = prepare_images(split, image_size)
            img_emb = encode_image_tensors(model.encode_images, images, device, batch_size)
        collate = Collator(tokenizer, max_length)
        captions = split.captions
        txt = []
        for s in range(0, len(captions), batch_size):
            tokens = collate.tokenize(captions[s:s + batch_size])
            txt.append(model.encode_texts(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
                       .float().cpu())
        txt_emb = torch.cat(txt) if txt else torch.empty(0, model.embed_dim)
    finally:
        model.train(was_training)
    return img_emb, txt_emb


def evaluate(model: DualEncoder, split: CaptionedImages, tokenizer, device: torch.device | None = None,
             **encode_options: Any) -> dict[str, float]:
    """Retrieval metrics (R@1/5/10, medr, meanr both ways, rsum) of ``model`` on ``split``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    img_emb, txt_emb = encode_split(model, split, tokenizer, device, **encode_options)
    return retrieval_metrics(img_emb, txt_emb, split.txt_to_img)


# --------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this project, or one this version cannot read.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)  # a run killed while saving keeps the previous file whole


def save_checkpoint(path: str | os.PathLike, model: DualEncoder, train_config: TrainConfig | None = None,
                    optimizer=None, scheduler=None, scaler=None, epoch: int = 0,
                    history: list[dict[str, float]] | None = None) -> Path:
    """Save everything needed to use ``model`` or continue training it, atomically, as plain data.

    Contents: format name and version, the model and training configs as
    dicts, the weights, optimizer / scheduler / gradient-scaler states, the
    number of completed epochs and the history. Loadable with
    ``torch.load(weights_only=True)``.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    if model.config is None:
        raise ValueError("this model has no ModelConfig; build it with build_model(...) so it can be rebuilt")
    path = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "history": list(history or []),
    }
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    Raises :class:`CheckpointError` naming the file when it is missing,
    unreadable, not ours, or from a newer format.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python -m siamese_utils train`")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
        raise CheckpointError(
            f"{path}: not a file written by torch.save (it starts with {head!r}); pass a model.pt written by "
            "`python -m siamese_utils train` or save_checkpoint, or the run folder holding it."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read it as a checkpoint ({first}). It is corrupt, truncated or not a torch file; "
            "train again or copy it again."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a siamese_utils checkpoint (found {keys}). If it is a bare state_dict, build the "
            "model with build_model(config) and call load_state_dict on it."
        )
    version = state.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this siamese_utils reads "
            f"(up to {CHECKPOINT_VERSION}); upgrade the package (pip install -U siamese-image-text)."
        )
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DualEncoder:
    """The trained :class:`DualEncoder` of a checkpoint (or of a run folder holding ``model.pt``), in eval mode.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    state = load_checkpoint(path, map_location)
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model settings cannot be used ({e})") from None
    # The checkpoint holds every weight: build without fetching pretrained image weights.
    model = build_model(ModelConfig.from_dict({**config.to_dict(), "pretrained": False}))
    model.config = config
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()


# --------------------------------------------------------------------------- the whole run


@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained model, its history (one row per epoch) and final validation metrics.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """

    model: DualEncoder
    history: pd.DataFrame
    val_metrics: dict[str, float]
    checkpoint: Path | None = None


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def fit(model: DualEncoder, train_split: CaptionedImages, val_split: CaptionedImages, config: TrainConfig,
        tokenizer, *, device: torch.device | None = None, out_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True, log: Callable[[str], None] | None = print,
        stop_after: int | None = None, cache_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train ``model`` for ``config.num_epochs`` epochs, validating and checkpointing after each.

    Every epoch starts from RNG states derived from ``(config.seed, epoch)``
    only, so a run resumed from the checkpoint of epoch ``e`` (``resume=True``
    with the same ``out_dir``) continues exactly as the uninterrupted run.
    With ``out_dir``, ``model.pt`` (the checkpoint) and ``history.csv`` are
    rewritten after every epoch. ``stop_after`` ends the run early after that
    many epochs in total (as if interrupted). ``log`` receives one line per
    epoch (``None``: silent). ``cache_dir``: where ``images="disk"`` keeps its
    cache (default: :func:`siamese_utils.core.data.default_cache_dir`).

    Under a process group (``torchrun``, see :mod:`siamese_utils.chapters.scaling.distributed`)
    the model is wrapped in ``DistributedDataParallel``, a
    ``DistributedSampler`` reshuffled every epoch gives each process a
    disjoint ``1/N`` of the pairs (``batch_size / N`` per step), the loss is
    computed on the gathered global batch, and only rank 0 validates, logs and
    writes files; the other processes return an empty history.

    Explained in ``notebooks/03_contrastive_training.ipynb`` and ``notebooks/08_scaling_up.ipynb``.
    """
    device = device or next(model.parameters()).device
    if out_dir is not None and model.config is None:
        raise ValueError("checkpoints need the model's ModelConfig: build the model with build_model(config)")
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is the global batch and must divide evenly among the "
                         f"{world} processes; choose a multiple of {world}")
    local_batch = config.batch_size // world
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "model.pt" if out is not None else None
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
    use_features = _cache_features(model, config)

    # Images decoded and resized once (or cached on disk, or decoded as they are used); with a frozen
    # image tower, its features computed once. Rank 0 builds a disk cache while the others wait, then reuse it.
    if not main:
        distributed.barrier()
    train_images = load_split_images(train_split, config, cache_dir, progress and main)
    val_images = load_split_images(val_split, config, cache_dir, progress) if main else None
    if main:
        distributed.barrier()
    train_features = val_features = None
    if use_features:
        model.image_tower.eval()
        train_features = encode_image_tensors(model.image_tower, train_images, device, config.eval_batch_size)
        if main:
            val_features = encode_image_tensors(model.image_tower, val_images, device, config.eval_batch_size)
    flip = None if use_features else CaptionAwareHorizontalFlip(0.5, config.flip)
    dataset = PairTensors(train_features if use_features else train_images, train_split.captions,
                          train_split.txt_to_img, flip)
    collate = Collator(tokenizer, config.max_length)
    sampler = None
    if world > 1:  # drop_last: an equal, disjoint share for every process (at most world-1 pairs left out)
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=config.seed, drop_last=True)
    steps_per_epoch = math.ceil((len(sampler) if sampler is not None else len(dataset)) / local_batch)

    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    history: list[dict[str, float]] = []
    start = 0
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint or 'out_dir=None'} does not exist")
        state = load_checkpoint(checkpoint, device)
        if state["model_config"] != model.config.to_dict() or state["train_config"] != config.to_dict():
            raise ValueError(f"{checkpoint} was trained with other settings; resume with the settings stored in it "
                             "(see config.json there) or start a new run in another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        start, history = state["epoch"], list(state["history"]) if main else []

    step: torch.nn.Module = TrainStep(model, config)
    if world > 1:
        # The temperature is unused by the hinge and cosine losses: DDP must then look for unused parameters.
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.loss != "infonce")

    def loader_for(epoch: int, persistent: bool):
        return make_loader(dataset, local_batch, shuffle=True, seed=_epoch_seed(config.seed, epoch) + rank,
                           collate_fn=collate, num_workers=config.num_workers, pin_memory=device.type == "cuda",
                           persistent_workers=persistent, prefetch_factor=config.prefetch_factor, sampler=sampler)

    persistent = config.persistent_workers and config.num_workers > 0
    loader = loader_for(start, True) if persistent else None
    last = config.num_epochs if stop_after is None else min(config.num_epochs, stop_after)
    try:
        for epoch in range(start, last):
            tick = time.perf_counter()
            seed_everything(_epoch_seed(config.seed, epoch) + rank)
            if sampler is not None:
                sampler.set_epoch(epoch)
            if persistent:  # one loader, its shuffling generator reseeded as a new one would be
                loader.generator.manual_seed(_epoch_seed(config.seed, epoch) + rank)
                if epoch > start:  # a new loader's iterator first draws its workers' base seed: draw it too
                    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
            else:
                loader = loader_for(epoch, False)
            loss = train_one_epoch(model, loader, optimizer, scheduler, config, epoch, device, scaler,
                                   features=use_features, progress=progress and main, step=step)
            if main:
                metrics = evaluate(model, val_split, tokenizer, device, max_length=config.max_length,
                                   batch_size=config.eval_batch_size,
                                   images=None if use_features else val_images, image_features=val_features)
                row = {"epoch": epoch + 1, "loss": loss, "temperature": model.temperature,
                       "lr": optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in metrics.items()},
                       "seconds": time.perf_counter() - tick}
                history.append(row)
                if log is not None:
                    log(f"epoch {epoch + 1:>2}/{config.num_epochs}  loss {loss:.4f}  temperature "
                        f"{model.temperature:.4f}  val {format_metrics(metrics)}")
                if out is not None:
                    save_checkpoint(checkpoint, model, config, optimizer, scheduler, scaler, epoch + 1, history)
                    _atomic_write(out / "history.csv", lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
            distributed.barrier()  # the others wait for rank 0's validation and checkpoint
    finally:
        if persistent:  # shut its workers down now, not whenever the garbage collector finds the loader
            shutdown_workers(getattr(loader, "_iterator", None))
        if config.channels_last:
            model.to(memory_format=torch.contiguous_format)

    val_metrics = {k: history[-1][f"val_{k}"] for k in METRIC_KEYS} if history else {}
    model.eval()
    return TrainResult(model, pd.DataFrame(history), val_metrics, checkpoint)
