"""The seed's fused ``SiameseNetwork``, as the blog post wrote it: kept to show why it cannot retrieve.

It fuses an image and a caption into one vector, so a caption cannot be
embedded without an image and nothing can be indexed or searched; the dual
encoder of :mod:`siamese_utils.core.models` is what replaces it.

Explained in ``notebooks/02_model_construction.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models import PAD_ID, seed_image_branch
from ..core.text import BERT_UNCASED_VOCAB_SIZE

__all__ = ["SeedSiameseNetwork"]


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
