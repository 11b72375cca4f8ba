"""The seed's pieces: its fused ``SiameseNetwork`` as the blog post wrote it, kept to show why it cannot retrieve,
its two branches as towers of a dual encoder, and the pair scorer it was closest to.

The fused network turns an image and a caption into one vector, so a caption cannot be embedded without an image
and nothing can be indexed or searched; the dual encoder of :mod:`siamese_utils.core.models` is what replaces it.
:class:`SeedCNN` and :class:`SeedLSTMTower` are its branches, fixed, registered as the towers ``seed_cnn`` and
``seed_lstm``; :class:`CrossEncoder` scores a pair, as the fused network tried to.

Explained in ``notebooks/02_model_construction.ipynb``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models import PAD_ID, ImageTower, Tower, register_tower, right_padded_lengths, run_packed
from ..core.text import BERT_UNCASED_VOCAB_SIZE

__all__ = ["SeedSiameseNetwork", "seed_image_branch", "SeedCNN", "SeedLSTMTower", "CrossEncoder"]


def seed_image_branch() -> nn.Sequential:
    """The seed's image branch: two 3x3 convolutions (64, 128 channels), pooled to a 7x7 grid (:class:`SeedCNN`)."""
    return nn.Sequential(nn.Conv2d(3, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((7, 7)))


class SeedCNN(ImageTower):
    """The seed's image branch as a feature extractor: 6,272 features per image, whatever the input size."""

    out_dim = 128 * 7 * 7

    def __init__(self) -> None:
        super().__init__()
        self.layers = seed_image_branch()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).flatten(1)


class SeedLSTMTower(nn.Module):
    """The seed's text branch, fixed: an embedding layer in front, read at the last *real* token.

    Token ids -> ``nn.Embedding`` (768-d, as the seed's LSTM expects) -> LSTM over packed sequences -> final state.
    """

    def __init__(self, vocab_size: int = BERT_UNCASED_VOCAB_SIZE, word_dim: int = 768, hidden_dim: int = 512):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.out_dim = hidden_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = right_padded_lengths(attention_mask)
        _, (h_n, _) = run_packed(self.lstm, self.embedding(input_ids), lengths)
        return h_n[-1]


def _seed_cnn(pretrained: bool) -> SeedCNN:
    if pretrained:
        warnings.warn("seed_cnn has no pretrained weights; it is randomly initialised", stacklevel=3)
    return SeedCNN()


class CrossEncoder(nn.Module):
    """What the seed's fused network was closest to, named for what it is: a pair scorer.

    Projected image and text features are fused as ``[u, v, u * v]`` and scored by an MLP: one logit per pair
    (``match_probability``: its sigmoid). N x M pairs take N x M passes: it reranks a dual encoder's top-k.
    """

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, hidden_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_proj = nn.Linear(image_tower.out_dim, hidden_dim)
        self.text_proj = nn.Linear(text_tower.out_dim, hidden_dim)
        self.head = nn.Sequential(nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden_dim, 1))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Match logits ``(B,)`` for the pairs (images[i], caption i)."""
        u = self.image_proj(self.image_tower(images))
        v = self.text_proj(self.text_tower(input_ids, attention_mask))
        return self.head(torch.cat([u, v, u * v], dim=-1)).squeeze(-1)

    def match_probability(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``sigmoid(logits)``: the probability that each caption describes its image."""
        return torch.sigmoid(self(images, input_ids, attention_mask))


register_tower("image", "seed_cnn", Tower(lambda pretrained: _seed_cnn(pretrained),
                                          "the seed's two-convolution CNN (random)"))
register_tower("text", "seed_lstm", Tower(lambda **kw: SeedLSTMTower(kw["vocab_size"], kw["word_dim"] or 768,
                                                                     kw["hidden_dim"]),
                                          "the seed's LSTM with an embedding layer, read at the last real token"))


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
    """

    def __init__(self, embedding_dim: int = 768, vocab_size: int = BERT_UNCASED_VOCAB_SIZE):
        super().__init__()
        self.image_branch = seed_image_branch()
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
