"""Seeds and devices: the few lines every notebook's setup cell needs.

Explained in ``notebooks/01_preprocessing.ipynb``.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

__all__ = ["seed_everything", "seed_worker", "epoch_seed", "choose_device", "is_offline", "atomic_write",
           "atomic_write_text", "setting", "settings_help", "Settings", "positive_int", "one_of"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators (CPU and GPUs).

    CPU results are then bit-reproducible at a fixed number of threads; GPU kernels may differ in the last bits.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``: a function of the two alone.

    Every random draw of an epoch starts from it, so a run resumed at epoch ``e`` continues as the uninterrupted one.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    return (seed * 1_000_003 + epoch) % 2**63


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: pass the seed torch gave this worker on to ``random`` and NumPy."""
    random.seed(torch.initial_seed() % 2**32)
    np.random.seed(torch.initial_seed() % 2**32)


def choose_device(prefer: str | None = None) -> torch.device:
    """The device to train on: ``prefer`` if given (or ``$SIAMESE_DEVICE``), else CUDA, MPS or CPU."""
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
    """Whether downloads are off (any of ``SIAMESE_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` is 1).

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, then rename it to ``path`` in one step.

    A process killed while writing leaves the previous ``path`` whole and readers never see half a file; two writers
    never share a temporary file, and on an error it is removed.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text. Explained in ``notebooks/03_contrastive_training.ipynb``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- settings dataclasses
def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A settings field with its help text (the CLI's). Explained in ``notebooks/03_contrastive_training.ipynb``."""
    return field(default=default, metadata={"help": help, **metadata})


def settings_help(cls: type) -> dict[str, str]:
    """``{field: help text}`` of a settings dataclass. Explained in ``notebooks/03_contrastive_training.ipynb``."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def positive_int(name: str, value: Any) -> None:
    """Check that ``value`` is an int >= 1, not a bool. Explained in ``notebooks/03_contrastive_training.ipynb``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def one_of(name: str, value: Any, choices: tuple) -> None:
    """Check that ``value`` is one of ``choices``. Explained in ``notebooks/03_contrastive_training.ipynb``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; use one of {', '.join(map(repr, choices))}")


class Settings:
    """Base of the frozen settings dataclasses: ``to_dict``, and ``from_dict`` that names unknown keys.

    Explained in ``notebooks/03_contrastive_training.ipynb``.
    """

    IGNORED: tuple[str, ...] = ()  # keys that older checkpoints stored here and that now live elsewhere

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(cls.IGNORED))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for {cls.__name__}; known settings: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})
