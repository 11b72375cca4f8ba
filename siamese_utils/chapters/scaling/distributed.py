"""Training on several processes (GPUs, or CPU processes) with ``torchrun``: the process group,
and contrastive losses over the *global* batch.

``torchrun --nproc_per_node N -m siamese_utils train ...`` starts N copies of
the program and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_from_env` joins them into one process group (NCCL on CUDA, Gloo on
the CPU); :func:`siamese_utils.core.train.fit` then wraps the model in
``DistributedDataParallel`` and gives each process a disjoint share of every
epoch.

A contrastive loss is only as good as its negatives. Each process sees ``B``
pairs; computed locally, every anchor would be compared with ``B - 1``
negatives. :func:`gathered_contrastive_loss` first gathers the embeddings of
all ``N`` processes (``torch.distributed.nn.functional.all_gather``, which
passes gradients back to the process each slice came from), so every anchor
meets ``N * B - 1`` negatives, as in CLIP and open_clip.

The gradient scale works out exactly. Every process computes the same global
loss ``L``. The backward of the differentiable all-gather *sums* the gradient
that each process's copy of ``L`` sends to a slice, so the process that owns
slice ``r`` receives ``N * dL/de_r``; ``DistributedDataParallel`` then
*averages* the parameter gradients over the ``N`` processes, which divides by
``N`` again. The result is ``dL/dtheta`` of the single-process loss on the
concatenated batch (``tests/test_distributed.py`` checks this to 1e-6).

Explained in ``notebooks/09_scaling_up.ipynb``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from ...core.losses import contrastive_loss

__all__ = [
    "DistributedContext",
    "init_from_env",
    "process_group",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "barrier",
    "all_gather_with_grad",
    "gather_pairs",
    "gathered_contrastive_loss",
]

ENV_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine, its device.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name}={text!r} is not a number; start the processes with "
                         "torchrun, which sets it") from None
    if value < 0:
        raise ValueError(f"the environment variable {name}={value} is negative; start the processes with torchrun")
    return value


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or stay a single process.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is started and the
    context is rank 0 of 1 on ``device``. Otherwise ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` must be set (torchrun sets them); the
    backend is NCCL when ``device`` is CUDA (each process on GPU
    ``LOCAL_RANK``) and Gloo on the CPU. Raises ``ValueError`` naming a missing
    or bad variable.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return DistributedContext(device=device)
    missing = [v for v in ENV_VARIABLES if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; start the "
                         "processes with torchrun (e.g. torchrun --nproc_per_node 2 -m siamese_utils train ...)")
    world, rank_, local = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank_ >= world:
        raise ValueError(f"RANK={rank_} must be below WORLD_SIZE={world}")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local}, but this machine has {torch.cuda.device_count()} GPU(s); start "
                             "at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank_, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank_, world, local, device, backend)


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[DistributedContext]:
    """``with process_group(device) as ctx:`` :func:`init_from_env`, and ``destroy_process_group`` on the way out.

    The group is destroyed whether the block finishes or raises, so no process
    is left waiting for the others.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    ctx = init_from_env(device)
    try:
        yield ctx
    finally:
        if ctx.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group of more than one process is running.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that evaluates, logs and writes files.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for without a process group).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if is_distributed():
        dist.barrier()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every process) from all processes, in rank order, keeping gradients.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward
    returns to each process the summed gradient of its own slice. Without a
    process group, ``tensor`` itself.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # newer torch points to a private replacement; this one is public and tested
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(tensor.contiguous()), dim=0)


def _all_gather_plain(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gathered_contrastive_loss(name: str, img_emb: torch.Tensor, txt_emb: torch.Tensor,
                              image_index: torch.Tensor | None = None, **options) -> torch.Tensor:
    """:func:`siamese_utils.core.losses.contrastive_loss` on the global batch gathered from every process.

    Embeddings are gathered with gradients (:func:`all_gather_with_grad`),
    ``image_index`` without (captions of one image on two processes are still
    recognised as the same image, not as negatives). Every process gets the
    same loss; under ``DistributedDataParallel`` the averaged gradients equal
    those of the single-process loss on the concatenated batch. Every process
    must pass batches of the same size. Without a process group this is
    ``contrastive_loss`` itself.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return contrastive_loss(name, *gather_pairs(img_emb, txt_emb, image_index), **options)


def gather_pairs(img_emb: torch.Tensor, txt_emb: torch.Tensor, image_index: torch.Tensor | None = None):
    """``(img_emb, txt_emb, image_index)`` of the global batch, in rank order; embeddings keep their gradients.

    What :func:`gathered_contrastive_loss` feeds to the loss. Raises
    ``ValueError`` when the processes' batch sizes differ. Without a process
    group, the arguments themselves.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if not is_distributed():
        return img_emb, txt_emb, image_index
    sizes = _all_gather_plain(torch.tensor([img_emb.shape[0]], device=img_emb.device))
    if bool((sizes != sizes[0]).any()):
        raise ValueError(f"batch sizes differ between processes ({sizes.tolist()}); gathering needs equal batches "
                         "(use a DistributedSampler and the same batch size on every process)")
    all_index = _all_gather_plain(image_index) if image_index is not None else None
    return all_gather_with_grad(img_emb), all_gather_with_grad(txt_emb), all_index
