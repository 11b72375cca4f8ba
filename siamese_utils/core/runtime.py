"""Seeds and devices: the few lines every notebook's setup cell needs.

Explained in ``notebooks/01_preprocessing.ipynb``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "seed_worker", "choose_device", "is_offline"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators (CPU and GPUs).

    CPU results are then bit-reproducible at a fixed number of threads; GPU
    kernels may still differ in the last bits from run to run.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: derive each worker's Python and NumPy seeds.

    torch seeds each worker from the loader's generator (``base_seed +
    worker_id``); this passes that seed on to ``random`` and NumPy, which torch
    does not touch.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def choose_device(prefer: str | None = None) -> torch.device:
    """The device to train on: ``prefer`` if given (or ``$SIAMESE_DEVICE``), else CUDA, MPS or CPU.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    name = prefer or os.environ.get("SIAMESE_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available here; use 'cpu'")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {name!r} was asked for, but MPS is not available here; use 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


OFFLINE_VARIABLES = ("SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    """Whether downloads are off: ``SIAMESE_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to 1.

    Code that could fetch weights (torchvision's ImageNet checkpoints, the
    hub's BERT) then uses local copies only and never opens a connection.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)
