"""Training a dual encoder: the recipe, the loop, validation, checkpoints and resuming.

:class:`TrainConfig` (the recipe) decides what a run learns and is checked when it resumes; :class:`Runtime` only how it
uses the machine. Chapter 09 (:mod:`siamese_utils.chapters.scaling.train`) builds on the same pieces.

Explained in ``notebooks/03_contrastive_training.ipynb``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import CaptionedImages, Collator, ImageDataset, ImageTextDataset, make_loader
from .losses import LOSSES, contrastive_loss
from .metrics import METRIC_KEYS, format_metrics, retrieval_metrics
from .models import DualEncoder, ModelConfig, build_model
from .runtime import (Settings, atomic_write, atomic_write_text, epoch_seed, one_of, positive_int, seed_everything,
                      setting)
from .transforms import CaptionAwareHorizontalFlip, ImageTransformConfig, build_image_transform

__all__ = ["DEFAULT_MODEL", "TrainConfig", "Runtime", "TrainResult", "CheckpointError", "RunState", "ContrastiveStep",
           "prepare_images", "encode_image_tensors", "training_pairs", "decay_groups", "make_optimizer",
           "make_scheduler", "train_one_epoch", "encode_split", "evaluate", "fit", "save_checkpoint", "load_checkpoint",
           "load_model", "load_run", "BATCHES", "NEGATIVE_MAKERS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "siamese-image-text checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Runtime(Settings):
    """How a run uses the machine: nothing here changes what it learns, so a resumed run may change any of it.

    ``fit`` honours the first three; the others need :func:`siamese_utils.chapters.scaling.train.fit_at_scale`.
    """

    num_workers: int = setting(0, "DataLoader worker processes (0: load in the main process)")
    amp: bool = setting(True, "mixed precision (bf16, or fp16 with a gradient scaler) on CUDA; ignored elsewhere")
    eval_batch_size: int = setting(256, "images or captions per batch when encoding for validation")
    images: Literal["memory", "disk", "stream"] = setting(
        "memory", "image pipeline: memory (decode once into RAM), disk (a uint8 cache file, memory-mapped) or "
        "stream (decode in the loader every epoch)", choices=("memory", "disk", "stream"))
    persistent_workers: bool = setting(False, "keep the loader's workers alive across epochs")
    prefetch_factor: int | None = setting(None, "batches each worker loads ahead (default: torch's, 2)")
    channels_last: bool = setting(False, "feed images and convolution weights in NHWC order (tensor cores)")
    compile: bool | str = setting(False, "torch.compile the towers: True for the default backend, or a backend's "
                                          "name such as aot_eager")

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers!r} must be 0 (main process) or more")
        positive_int("eval_batch_size", self.eval_batch_size)
        one_of("images", self.images, ("memory", "disk", "stream"))
        if self.prefetch_factor is not None:
            positive_int("prefetch_factor", self.prefetch_factor)
        for name in ("amp", "persistent_workers", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            raise ValueError(f"compile={self.compile!r}: use False, True (torch.compile's default backend) or a "
                             "backend's name such as 'inductor' or 'aot_eager'")

    def scaled(self) -> list[str]:
        """The settings that need chapter 09's training loop, as ``name=value``; empty for ``fit``'s."""
        core = {f.name for f in fields(self)} - {"num_workers", "amp", "eval_batch_size"}
        return [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                if f.name in core and getattr(self, f.name) != (f.default if f.default is not MISSING else None)]


@dataclass(frozen=True)
class TrainConfig(Settings):
    """The recipe: everything that decides the trained weights, as plain data (stored in checkpoints)."""

    IGNORED = tuple(f.name for f in fields(Runtime))  # older checkpoints stored the runtime settings here

    loss: str = setting("infonce", "the contrastive loss: " + ", ".join(LOSSES), choices=tuple(LOSSES))
    margin: float | None = setting(None, "margin of the hinge and cosine losses (default: the loss's own)")
    hardest_warmup_epochs: int = setting(1, "epochs of the summed hinge loss before 'hardest' takes the "
                                             "hardest negative")
    num_epochs: int = setting(5, "passes over the training captions")
    batch_size: int = setting(128, "pairs per step (under torchrun: the global batch, split over the processes)")
    lr: float = setting(2e-3, "AdamW's learning rate")
    weight_decay: float = setting(1e-4, "AdamW's weight decay (not on biases, norms and the temperature)")
    pretrained_lr: float | None = setting(None, "learning rate of fine-tuned pretrained towers (default: lr)")
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warm-up")
    schedule: Literal["cosine", "constant"] = setting("cosine", "after warm-up: cosine decay to zero, or constant",
                                                       choices=("cosine", "constant"))
    grad_clip: float | None = setting(2.0, "maximum gradient norm (None: no clipping)")
    image_size: int = setting(64, "image side in pixels")
    max_length: int = setting(32, "tokens per caption (longer captions are cut)")
    flip: Literal["swap", "skip", "off"] = setting(
        "swap", "the caption-aware horizontal flip: swap left/right in flipped captions, skip captions that "
        "mention them, or off", choices=("swap", "skip", "off"))
    batches: str = setting("captions", "what a batch holds: shuffled captions; whole images with all their captions; "
                                       "or whole images beside their minimal-pair partners",
                           choices=("captions", "images", "partners"))
    hard_negatives: bool = setting(False, "add each caption's word-swapped negatives to its image's softmax (NegCLIP; "
                                          "infonce only)")
    cache_features: bool | None = setting(None, "compute a frozen image tower's features once (default: "
                                                 "whenever the image tower is frozen)")
    seed: int = setting(0, "seed of the initialisation, the batches and every random draw")

    def __post_init__(self) -> None:
        one_of("loss", self.loss, tuple(LOSSES))
        for name in ("num_epochs", "batch_size", "image_size", "max_length"):
            positive_int(name, getattr(self, name))
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size}: a contrastive loss needs at least 2 pairs per batch")
        for name in ("lr", "pretrained_lr"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and not (isinstance(value, (int, float)) and value > 0
                                                           and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a positive number")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.hardest_warmup_epochs < 0:
            raise ValueError("weight_decay, warmup_epochs and hardest_warmup_epochs must be >= 0")
        one_of("schedule", self.schedule, ("cosine", "constant"))
        one_of("flip", self.flip, ("swap", "skip", "off"))
        one_of("batches", self.batches, ("captions", *BATCHES))
        if self.hard_negatives and self.loss != "infonce":
            raise ValueError(f"hard_negatives join the infonce loss's softmax; loss={self.loss!r} takes none")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be positive, or None to turn clipping off")
        if self.margin is not None and not self.margin >= 0:
            raise ValueError(f"margin={self.margin!r} must be >= 0")


DEFAULT_MODEL = ModelConfig(image_tower="efficientnet_lite0", pretrained=True, freeze_image=True,
                            text_tower="gru", word_dim=128, text_hidden=256)
"""The default model for training on the tiny set: locked-image tuning (LiT).

A frozen, pretrained EfficientNet-Lite0 (its features computed once) and a GRU trained from scratch: a useful model in
well under a minute on two CPU cores. 128-d word vectors keep AdamW's dense update of the 30,522-row embedding table
cheap (at 300 dimensions it takes about a third of each step).
"""


# --------------------------------------------------------------------------- data
def prepare_images(split: CaptionedImages, image_size: int, progress: bool = False) -> torch.Tensor:
    """Decode every image of a split once, resized and normalised (the flip is left to training): ``(N, 3, S, S)``."""
    transform = build_image_transform(ImageTransformConfig(image_size=image_size), train=False)
    dataset = ImageDataset(split, transform, cache_images=False)
    images = [dataset[i]["image"] for i in tqdm(range(len(dataset)), desc=f"decoding {split.name}",
                                                 disable=not progress, leave=False)]
    return torch.stack(images) if images else torch.empty(0, 3, image_size, image_size)


@torch.no_grad()
def encode_image_tensors(fn: Callable[[torch.Tensor], torch.Tensor], images, device: torch.device,
                         batch_size: int = 256) -> torch.Tensor:
    """Apply ``fn`` (an image tower, or a model's ``encode_images``) to ``images`` in batches, on ``device``."""
    out = [fn(images[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def training_pairs(model: DualEncoder, split: CaptionedImages, images, config: TrainConfig, device: torch.device,
                   batch_size: int = 256) -> tuple[ImageTextDataset, bool]:
    """The pairs ``fit`` trains on, and whether they hold a frozen image tower's features instead of pixels.

    ``images``: the split's pixels (:func:`prepare_images`). Unless ``cache_features=False``, a frozen tower's features
    are computed here; pixels get the caption-aware flip, features cannot. The recipe's ``batches`` and
    ``hard_negatives`` ask :data:`BATCHES` and :data:`NEGATIVE_MAKERS`."""
    frozen = model.is_frozen("image")
    if config.cache_features and not frozen:
        raise ValueError("cache_features=True needs a frozen image tower (freeze_image=True in the model config)")
    features = frozen if config.cache_features is None else bool(config.cache_features)
    if features:
        model.image_tower.eval()
        images = encode_image_tensors(model.image_tower, images, device, batch_size)
    flip = None if features else CaptionAwareHorizontalFlip(0.5, config.flip)
    if config.hard_negatives and not NEGATIVE_MAKERS:
        raise ValueError("hard_negatives=True needs a maker of hard-negative captions: `import siamese_utils` "
                         "registers chapter 05's swapped words (siamese_utils.chapters.composition)")
    negatives = NEGATIVE_MAKERS[-1](split) if config.hard_negatives else None
    units = None if config.batches == "captions" else BATCHES[config.batches](split)
    return ImageTextDataset(split, flip, images=images, negatives=negatives, units=units), features


# What ``batches`` may name besides "captions": groups of images batched together (chapter 05 adds "partners").
BATCHES: dict[str, Callable[[CaptionedImages], list[list[int]]]] = {
    "images": lambda data: [[i] for i in range(len(data))]}
# What ``hard_negatives=True`` uses: ``maker(split)`` gives, per caption, captions false of its image (chapter 05).
NEGATIVE_MAKERS: list[Callable[[CaptionedImages], list[list[str]]]] = []


# --------------------------------------------------------------------------- the loop
def decay_groups(params, weight_decay: float, lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW's two parameter groups: weight decay on weight matrices, none on biases, norms and the temperature."""
    params, lr_setting = list(params), ({} if lr is None else {"lr": lr})
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, **lr_setting},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **lr_setting}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases, norms and the temperature (as CLIP).

    With ``config.pretrained_lr``, pretrained towers (``weights`` not "random initialisation") learn at that rate.
    """
    slow: set[int] = set()
    if config.pretrained_lr is not None:
        for name in ("image_tower", "text_tower"):
            tower = getattr(model, name, None)
            if getattr(tower, "weights", "random initialisation") not in ("", "random initialisation"):
                slow.update(id(p) for p in tower.parameters())
    groups = []
    for pretrained, lr in ((False, config.lr), (True, config.pretrained_lr)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in slow) == pretrained]
        if params or not pretrained:
            groups += decay_groups(params, config.weight_decay, lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs``, then cosine decay to zero (or constant), stepped every batch.

    ``config`` is any settings object with ``warmup_epochs``, ``num_epochs`` and ``schedule``.
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


class ContrastiveStep(torch.nn.Module):
    """One training step's forward pass: the embeddings of a batch and the contrastive loss on them. A module
    holding every parameter the loss depends on (for ``DistributedDataParallel``); ``amp``: autocast on CUDA."""

    def __init__(self, model: DualEncoder, config: TrainConfig, amp: bool = True):
        super().__init__()
        self.model, self.config, self.amp = model, config, amp

    def autocast(self, device: torch.device):
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              features: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast(images.device):
            img = self.model.embed_image_features(images) if features else self.model.encode_images(images)
            return img.float(), self.model.encode_texts(input_ids, attention_mask).float()

    def gather(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, image_index: torch.Tensor):
        return img_emb, txt_emb, image_index  # one process: the batch is the whole batch

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: torch.Tensor, features: bool = False, hardest: bool = True,
                generator: torch.Generator | None = None, negative_ids: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None, negative_owner: torch.Tensor | None = None) -> torch.Tensor:
        unique, inverse = torch.unique(image_index, return_inverse=True)
        first = torch.full_like(unique, len(image_index)).scatter_reduce_(
            0, inverse, torch.arange(len(image_index), device=inverse.device), "amin")
        once = (self.config.batches != "captions" and len(unique) < len(image_index)  # whole images: encode each once;
                and torch.equal(images[first][inverse], images))  # caption batches: every row, as 03 does (BatchNorm)
        img_emb, txt_emb = self.embed(images[first] if once else images, input_ids, attention_mask, features)
        img_emb, txt_emb, image_index = self.gather(img_emb[inverse] if once else img_emb, txt_emb, image_index)
        with self.autocast(input_ids.device):  # hard negatives (one process only): captions, encoded as the others
            negatives = None if negative_ids is None else self.model.encode_texts(negative_ids, negative_mask).float()
        return contrastive_loss(self.config.loss, img_emb, txt_emb, image_index, logit_scale=self.model.logit_scale,
                                margin=self.config.margin, hardest=hardest, generator=generator,
                                negatives=negatives, negative_owner=negative_owner)


def train_one_epoch(model: DualEncoder, loader, optimizer, scheduler, config: TrainConfig, epoch: int,
                    device: torch.device, scaler: torch.amp.GradScaler | None = None,
                    features: bool = False, progress: bool = True, step_losses: list[float] | None = None,
                    step: torch.nn.Module | None = None) -> float:
    """One pass over ``loader``; returns the mean training loss per pair.

    ``features``: batches hold cached image-tower features; ``epoch`` (0-based) decides whether ``"hardest"`` is in its
    summed warm-up; ``step_losses``: each step's loss; ``step``: the forward pass (default: :class:`ContrastiveStep`).
    """
    model.train()
    step = step if step is not None else ContrastiveStep(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    hardest = epoch >= config.hardest_warmup_epochs
    negatives = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))  # for the cosine loss
    total, count = 0.0, 0
    # tqdm gets the loader's iterator, not the loader: wrapping the loader itself draws from its shuffling generator,
    # and the batches would differ from a plain `for batch in loader`.
    batches = tqdm(iter(loader), total=len(loader), desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not progress, leave=False)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        loss = step(batch.images, batch.input_ids, batch.attention_mask, batch.image_index, features=features,
                    hardest=hardest, generator=negatives, negative_ids=batch.negative_ids,
                    negative_mask=batch.negative_mask, negative_owner=batch.negative_owner)
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
    """``(img_emb, txt_emb)`` of ``split``, on the CPU; ``images`` or a frozen tower's ``image_features`` save work."""
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
    """Retrieval metrics (R@1/5/10, medr, meanr both ways, rsum) of ``model`` on ``split``."""
    img_emb, txt_emb = encode_split(model, split, tokenizer, device, **encode_options)
    return retrieval_metrics(img_emb, txt_emb, split.txt_to_img)


# --------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A file that is not a checkpoint of this project, or one this version cannot read."""


def save_checkpoint(path: str | os.PathLike, model: DualEncoder, train_config: TrainConfig | None = None,
                    optimizer=None, scheduler=None, scaler=None, epoch: int = 0,
                    history: list[dict[str, float]] | None = None) -> Path:
    """Save everything needed to use ``model`` or train it further, atomically, as plain data (``weights_only``)."""
    if model.config is None:
        raise ValueError("this model has no ModelConfig; build it with build_model(...) so it can be rebuilt")
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_config": model.config.to_dict(),
             "train_config": train_config.to_dict() if train_config is not None else None,
             "model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None,
             "epoch": int(epoch), "history": list(history or [])}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, not ours, or from a newer format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python -m siamese_utils train`")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
        raise CheckpointError(f"{path}: not a file written by torch.save (it starts with {head!r}); pass a model.pt "
                              "written by `python -m siamese_utils train` or save_checkpoint, or the run folder "
                              "holding it.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read it as a checkpoint ({first}). It is corrupt, truncated or not a "
                              "torch file; train again or copy it again.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a siamese_utils checkpoint (found {keys}). If it is a bare state_dict, "
                              "build the model with build_model(config) and call load_state_dict on it.")
    version = state.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this siamese_utils "
                              f"reads (up to {CHECKPOINT_VERSION}); upgrade the package (pip install -U "
                              "siamese-image-text).")
    return state


def _model_from(state: Mapping[str, Any], path, map_location) -> DualEncoder:
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
        raise CheckpointError(f"{path}: its weights do not fit the model it describes "
                              f"({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DualEncoder:
    """The trained :class:`DualEncoder` of a checkpoint (or of a run folder holding ``model.pt``), in eval mode."""
    return _model_from(load_checkpoint(path, map_location), path, map_location)


def load_run(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[DualEncoder, TrainConfig]:
    """The trained model of a checkpoint (or run folder) and the recipe it was trained with.

    Encode with the recipe's ``image_size`` and ``max_length``; every "checkpoint to embeddings" path asks here.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """
    state = load_checkpoint(path, map_location)
    try:
        config = TrainConfig.from_dict(state["train_config"]) if state.get("train_config") else TrainConfig()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its training settings cannot be used ({e})") from None
    return _model_from(state, path, map_location), config


# --------------------------------------------------------------------------- the whole run
@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained model, its history (one row per epoch) and final validation metrics."""

    model: DualEncoder
    history: pd.DataFrame
    val_metrics: dict[str, float]
    checkpoint: Path | None = None


class RunState:
    """What a resumed run restores: optimiser, schedule, gradient scaler, history (files written only if ``write``)."""

    def __init__(self, model: DualEncoder, config: TrainConfig, runtime: Runtime, device: torch.device,
                 steps_per_epoch: int, out_dir: str | os.PathLike | None = None, write: bool = True):
        if out_dir is not None and model.config is None:
            raise ValueError("checkpoints need the model's ModelConfig: build the model with build_model(config)")
        self.model, self.config, self.write = model, config, write
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_scheduler(self.optimizer, config, steps_per_epoch)
        use_scaler = device.type == "cuda" and runtime.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.out = Path(out_dir) if out_dir is not None else None
        self.checkpoint = self.out / "model.pt" if self.out is not None else None
        if self.out is not None and write:
            self.out.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, float]] = []

    def resume(self, device: torch.device) -> int:
        """Restore the last finished epoch from ``out_dir/model.pt``; returns the number of epochs done."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {self.checkpoint or 'out_dir=None'} does not exist")
        state = load_checkpoint(self.checkpoint, device)
        now = {**self.model.config.to_dict(), **self.config.to_dict()}
        then = {**state["model_config"], **TrainConfig.from_dict(state["train_config"] or {}).to_dict()}
        if differ := sorted(k for k in now if then.get(k) != now[k]):
            raise ValueError(f"{self.checkpoint} was trained with another model or recipe ({', '.join(differ)}); resume "
                             "with the settings stored in it (load_run returns them) or start a new run elsewhere")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"]) if self.write else []
        return state["epoch"]

    def end_epoch(self, epoch: int, loss: float, metrics: dict[str, float], seconds: float,
                  log: Callable[[str], None] | None) -> None:
        """Record, log and save epoch ``epoch`` (0-based)."""
        self.history.append({"epoch": epoch + 1, "loss": loss, "temperature": self.model.temperature,
                             "lr": self.optimizer.param_groups[0]["lr"],
                             **{f"val_{k}": v for k, v in metrics.items()}, "seconds": seconds})
        if log is not None:
            log(f"epoch {epoch + 1:>2}/{self.config.num_epochs}  loss {loss:.4f}  temperature "
                f"{self.model.temperature:.4f}  val {format_metrics(metrics)}")
        if self.out is not None and self.write:
            save_checkpoint(self.checkpoint, self.model, self.config, self.optimizer, self.scheduler, self.scaler,
                            epoch + 1, self.history)
            atomic_write_text(self.out / "history.csv", pd.DataFrame(self.history).to_csv(index=False))

    def result(self) -> TrainResult:
        self.model.eval()
        val = {k: self.history[-1][f"val_{k}"] for k in METRIC_KEYS} if self.history else {}
        return TrainResult(self.model, pd.DataFrame(self.history), val, self.checkpoint)


def fit(model: DualEncoder, train_split: CaptionedImages, val_split: CaptionedImages, config: TrainConfig,
        tokenizer, *, runtime: Runtime = Runtime(), device: torch.device | None = None,
        out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] | None = print, stop_after: int | None = None) -> TrainResult:
    """Train ``model`` for ``config.num_epochs`` epochs on one process, validating and checkpointing after each.

    Every epoch's random draws derive from ``(config.seed, epoch)`` alone, so ``resume=True`` (same ``out_dir``)
    continues exactly as the uninterrupted run, whatever the ``runtime``. With ``out_dir``, ``model.pt`` and
    ``history.csv`` are rewritten every epoch. ``stop_after`` ends the run after that many epochs in total (as if
    interrupted); ``log`` receives one line per epoch (``None``: silent)."""
    if runtime.scaled():
        raise ValueError(f"{', '.join(runtime.scaled())}: fit trains on one process with images in memory; use "
                         "siamese_utils.chapters.scaling.train.fit_at_scale (chapter 09) for these settings")
    device = device or next(model.parameters()).device
    model.to(device)
    bs = runtime.eval_batch_size
    train_images = prepare_images(train_split, config.image_size, progress)
    pairs, features = training_pairs(model, train_split, train_images, config, device)  # not bs: recipe only
    val_images = prepare_images(val_split, config.image_size, progress)
    val_inputs = ({"image_features": encode_image_tensors(model.image_tower, val_images, device, bs)} if features
                  else {"images": val_images})
    collate = Collator(tokenizer, config.max_length)
    run = RunState(model, config, runtime, device, math.ceil(len(pairs) / config.batch_size), out_dir)
    start = run.resume(device) if resume else 0
    step = ContrastiveStep(model, config, runtime.amp)
    for epoch in range(start, config.num_epochs if stop_after is None else min(config.num_epochs, stop_after)):
        tick = time.perf_counter()
        seed_everything(epoch_seed(config.seed, epoch))
        pairs.set_epoch_seed(epoch_seed(config.seed, epoch))
        loader = make_loader(pairs, config.batch_size, shuffle=pairs.units is None,
                             seed=epoch_seed(config.seed, epoch),
                             collate_fn=collate, num_workers=runtime.num_workers, persistent_workers=False,
                             pin_memory=device.type == "cuda")
        loss = train_one_epoch(model, loader, run.optimizer, run.scheduler, config, epoch, device, run.scaler,
                               features=features, progress=progress, step=step)
        metrics = evaluate(model, val_split, tokenizer, device, max_length=config.max_length, batch_size=bs,
                           **val_inputs)
        run.end_epoch(epoch, loss, metrics, time.perf_counter() - tick, log)
    return run.result()
