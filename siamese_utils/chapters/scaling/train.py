"""Training at scale: chapter 03's ``fit``, rebuilt from the same pieces for several GPUs and large image sets.

:func:`fit_at_scale` trains exactly as :func:`siamese_utils.core.train.fit` does
(same recipe, same epoch seeds, same checkpoints, same history; on one process
with images in memory the two agree bit for bit) and adds what only changes
speed, all of it a :class:`~siamese_utils.core.train.Runtime` setting:

- the image pipelines of :mod:`siamese_utils.chapters.scaling.pipelines`
  (``images="disk"`` or ``"stream"``), built by rank 0 while the others wait;
- loader workers kept alive across epochs (``persistent_workers``) and
  ``prefetch_factor``;
- ``channels_last`` and ``torch.compile`` (:class:`TrainStep`);
- under ``torchrun``, ``DistributedDataParallel``: a ``DistributedSampler``
  gives each process a disjoint ``1/N`` of every epoch (``batch_size / N`` per
  step), the loss sees the gathered global batch
  (:mod:`siamese_utils.chapters.scaling.distributed`), and only rank 0
  validates, logs and writes.

Explained in ``notebooks/09_scaling_up.ipynb``.
"""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Callable

import torch

from ...core.data import CaptionedImages, Collator, make_loader
from ...core.models import DualEncoder
from ...core.runtime import epoch_seed, seed_everything
from ...core.train import (ContrastiveStep, Runtime, RunState, TrainConfig, TrainResult, encode_image_tensors,
                           evaluate, train_one_epoch, training_pairs)
from . import distributed
from .pipelines import load_split_images

__all__ = ["TrainStep", "fit_at_scale"]


def _compile(fn: Callable, backend: bool | str) -> Callable:
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"compile={backend!r} needs torch.compile (PyTorch 2.0 or newer; this is "
                           f"{torch.__version__}); train without compiling")
    name = "inductor" if backend is True else str(backend)
    known = torch.compiler.list_backends(exclude_tags=())
    if name not in known:
        raise ValueError(f"compile={backend!r}: torch.compile has no backend {name!r}; use one of {sorted(known)}")
    return torch.compile(fn, backend=name)


def _is_compile_error(e: Exception) -> bool:
    # torch.compile's own failures (a backend that cannot build, a graph it cannot trace) come from torch._dynamo.
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))


class TrainStep(ContrastiveStep):
    """Chapter 03's training step with channels-last images, compiled towers and the gathered global batch.

    Under a process group the loss is computed on the batch gathered from all
    processes (:func:`siamese_utils.chapters.scaling.distributed.gather_pairs`);
    otherwise it is the plain loss of the local batch. With
    ``runtime.channels_last`` images are passed in NHWC memory order; with
    ``runtime.compile`` the towers' encoders are compiled, and a compiler that
    fails on the first batch says so and how to train without it.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    def __init__(self, model: DualEncoder, config: TrainConfig, runtime: Runtime):
        super().__init__(model, config, runtime.amp)
        self.runtime = runtime
        encoders = (model.encode_images, model.embed_image_features, model.encode_texts)
        if runtime.compile:
            encoders = tuple(_compile(fn, runtime.compile) for fn in encoders)
        self.encoders = encoders
        self.first_call = True

    def embed(self, images, input_ids, attention_mask, features):
        encode_images, embed_image_features, encode_texts = self.encoders
        if self.runtime.channels_last and not features:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            with self.autocast(images.device):
                img = embed_image_features(images) if features else encode_images(images)
                txt = encode_texts(input_ids, attention_mask)
        except Exception as e:
            if self.runtime.compile and self.first_call and _is_compile_error(e):
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RuntimeError(f"torch.compile (compile={self.runtime.compile!r}) failed on the first batch "
                                   f"({first}); train without compiling (--compile off, compile=False)") from e
            raise
        self.first_call = False
        return img.float(), txt.float()

    def gather(self, img_emb, txt_emb, image_index):
        return distributed.gather_pairs(img_emb, txt_emb, image_index)


def fit_at_scale(model: DualEncoder, train_split: CaptionedImages, val_split: CaptionedImages, config: TrainConfig,
                 tokenizer, *, runtime: Runtime = Runtime(), device: torch.device | None = None,
                 out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = print, stop_after: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> TrainResult:
    """:func:`~siamese_utils.core.train.fit` with every :class:`~siamese_utils.core.train.Runtime` setting, on one or N processes.

    Arguments as ``fit``'s; ``cache_dir`` is where ``images="disk"`` keeps its
    cache (default: :func:`~siamese_utils.chapters.scaling.pipelines.default_cache_dir`).
    Under a process group the processes other than rank 0 return an empty
    history.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    device = device or next(model.parameters()).device
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is the global batch and must divide evenly among the "
                         f"{world} processes; choose a multiple of {world}")
    if world > 1 and (config.batches != "captions" or config.hard_negatives):
        raise ValueError(f"batches={config.batches!r} and hard_negatives={config.hard_negatives} build each batch "
                         "whole on one process; under torchrun use batches='captions' and hard_negatives=False")
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    bs = runtime.eval_batch_size
    if not main:  # rank 0 builds a disk cache while the others wait, then they reuse it
        distributed.barrier()
    train_images = load_split_images(train_split, config.image_size, runtime, cache_dir, progress and main)
    val_images = load_split_images(val_split, config.image_size, runtime, cache_dir, progress) if main else None
    if main:
        distributed.barrier()
    pairs, features = training_pairs(model, train_split, train_images, config, device)  # bs is runtime, not recipe
    val_inputs = {}
    if main:
        val_inputs = ({"image_features": encode_image_tensors(model.image_tower, val_images, device, bs)}
                      if features else {"images": val_images})
    sampler = None
    if world > 1:  # drop_last: an equal, disjoint share for every process (at most world-1 pairs left out)
        sampler = torch.utils.data.DistributedSampler(pairs, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=config.seed, drop_last=True)
    local_batch = config.batch_size // world
    run = RunState(model, config, runtime, device, math.ceil(len(sampler if sampler is not None else pairs) / local_batch), out_dir, main)
    start = run.resume(device) if resume else 0
    step: torch.nn.Module = TrainStep(model, config, runtime)
    if world > 1:  # the temperature is unused by the hinge and cosine losses: DDP must look for unused parameters
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda"
                                                         else None, find_unused_parameters=config.loss != "infonce")
    persistent = runtime.persistent_workers and runtime.num_workers > 0
    loader = None
    try:
        for epoch in range(start, config.num_epochs if stop_after is None else min(config.num_epochs, stop_after)):
            tick, seed = time.perf_counter(), epoch_seed(config.seed, epoch)
            seed_everything(seed + rank)
            pairs.set_epoch_seed(seed)
            if sampler is not None:
                sampler.set_epoch(epoch)
            if loader is None or not persistent:
                loader = make_loader(pairs, local_batch, shuffle=pairs.units is None, seed=seed + rank,
                                     collate_fn=Collator(tokenizer, config.max_length),
                                     num_workers=runtime.num_workers, pin_memory=device.type == "cuda",
                                     persistent_workers=persistent, prefetch_factor=runtime.prefetch_factor,
                                     sampler=sampler)
            else:  # one loader, its shuffling generator reseeded as a new loader's would be
                loader.generator.manual_seed(seed + rank)
                torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # a new one's worker seed
            loss = train_one_epoch(model, loader, run.optimizer, run.scheduler, config, epoch, device, run.scaler,
                                   features=features, progress=progress and main, step=step)
            if main:
                metrics = evaluate(model, val_split, tokenizer, device, max_length=config.max_length, batch_size=bs,
                                   **val_inputs)
                run.end_epoch(epoch, loss, metrics, time.perf_counter() - tick, log)
            distributed.barrier()  # the others wait for rank 0's validation and checkpoint
    finally:
        del loader  # a persistent loader's workers stop now, not whenever the garbage collector finds them
        gc.collect()
        if runtime.channels_last:
            model.to(memory_format=torch.contiguous_format)
    return run.result()
