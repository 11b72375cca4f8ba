"""Search a split both ways with a trained dual encoder: captions -> images and images -> captions.

Scores are dot products of unit vectors (cosine similarity); exact ties go to the lower index, so results repeat.

Explained in ``notebooks/04_evaluation.ipynb``.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from .data import CaptionedImages, Collator, DatasetError, load_image, to_rgb
from .models import DualEncoder
from .train import encode_split, load_run
from .transforms import ImageTransformConfig, build_image_transform

__all__ = ["Gallery"]

ImageQuery = Image.Image | str | os.PathLike | int  # a PIL image, an image file's path, or an index in the split


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r}: ask for a positive whole number of results (k >= 1)")
    return k


class Gallery:
    """A split encoded once, searched by caption (:meth:`search_text`) or by image (:meth:`search_image`).

    ``img_emb`` ``(N, D)``, ``txt_emb`` ``(M, D)``: unit embeddings on the CPU. ``images``
    (:func:`~siamese_utils.core.train.prepare_images`) skips decoding the split again.
    """

    def __init__(self, model: DualEncoder, split: CaptionedImages, tokenizer, device: torch.device | str | None = None,
                 image_size: int = 64, max_length: int = 32, batch_size: int = 256,
                 images: torch.Tensor | None = None):
        if len(split) == 0:
            raise ValueError(f"the {split.name!r} split of {split.source} has no images to search; "
                             "choose another split")
        self.model = model.eval()
        self.split, self.tokenizer = split, tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.image_size, self.max_length = image_size, max_length
        self.img_emb, self.txt_emb = encode_split(model, split, tokenizer, self.device, image_size=image_size,
                                                  max_length=max_length, batch_size=batch_size, images=images)
        self.txt_to_img = split.txt_to_img
        self._transform = build_image_transform(ImageTransformConfig(image_size=image_size), train=False)
        self._paths: dict[Path, int] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, split: CaptionedImages, tokenizer=None,
                        device: torch.device | str | None = None) -> Gallery:
        """A gallery of ``split`` encoded by a checkpoint's model, at the image size and caption length it trained with.

        ``tokenizer`` defaults to :func:`~siamese_utils.core.text.load_tokenizer`.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        model, config = load_run(path, map_location=device)
        if tokenizer is None:
            from .text import load_tokenizer
            tokenizer = load_tokenizer()
        return cls(model, split, tokenizer, device, image_size=config.image_size, max_length=config.max_length)

    @torch.no_grad()
    def encode_text(self, caption: str) -> torch.Tensor:
        """The unit embedding ``(D,)`` of one caption, on the CPU."""
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"empty caption {caption!r}: give a caption to search for")
        tokens = Collator(self.tokenizer, self.max_length).tokenize([caption.strip()])
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        return self.model.encode_texts(ids, mask).float().cpu()[0]

    def check_index(self, i: int) -> int:
        """``i`` if it is an image index of the split, else a ``ValueError`` giving the valid range."""
        if not 0 <= i < len(self.split):
            raise ValueError(f"image index {i} is outside the {self.split.name} split (0 to {len(self.split) - 1})")
        return i

    @torch.no_grad()
    def encode_image(self, image: ImageQuery) -> torch.Tensor:
        """The unit embedding ``(D,)`` of a PIL image, an image file, or (index) an image of the split."""
        if isinstance(image, numbers.Integral) and not isinstance(image, bool):
            return self.img_emb[self.check_index(int(image))].clone()
        if isinstance(image, (str, os.PathLike)):
            image = self._read(Path(image))
        if not isinstance(image, Image.Image):
            raise TypeError("image must be a PIL image, a file path or an index into the split, "
                            f"not {type(image).__name__}")
        pixels = self._transform(to_rgb(image))[None].to(self.device)
        return self.model.encode_images(pixels).float().cpu()[0]

    @staticmethod
    def _read(path: Path) -> Image.Image:
        if not path.is_file():
            raise ValueError(f"{path}: no such image file; check the path")
        try:
            return load_image(path)
        except DatasetError:
            raise ValueError(f"{path}: not an image Pillow can read (or a truncated one); "
                             "give the path of a PNG, JPEG or other image file") from None

    @staticmethod
    def _top(scores: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        values, order = torch.sort(scores, descending=True, stable=True)  # exact ties: lower index first
        return order[:k].tolist(), values[:k].tolist()

    def search_text(self, caption: str, k: int = 5) -> pd.DataFrame:
        """The ``k`` images that best match ``caption``, best first.

        Columns: ``rank`` (from 1), ``image`` (index in the split), ``score``, ``filename``, ``caption`` (the image's
        first) and ``match`` (``caption`` is, word for word, one of the image's).
        """
        _check_k(k)
        query = self.encode_text(caption)
        order, scores = self._top(self.img_emb @ query, k)
        text = caption.strip()
        records = self.split.records
        return pd.DataFrame({"rank": range(1, len(order) + 1), "image": order, "score": scores,
                             "filename": [records[i].name for i in order],
                             "caption": [records[i].captions[0] for i in order],
                             "match": [text in records[i].captions for i in order]})

    def _own_image(self, image: ImageQuery) -> int | None:
        if isinstance(image, numbers.Integral) and not isinstance(image, bool):
            return int(image)
        if isinstance(image, (str, os.PathLike)):
            if self._paths is None:
                self._paths = {r.path.resolve(): i for i, r in enumerate(self.split.records)}
            return self._paths.get(Path(image).resolve())
        return None

    def search_image(self, image: ImageQuery, k: int = 5) -> pd.DataFrame:
        """The ``k`` captions that best describe ``image`` (PIL image, file path or index), best first.

        Columns: ``rank`` (from 1), ``caption_index`` (in ``split.captions``), ``score``, ``caption``, ``image`` (its
        image's index) and ``match`` (it belongs to the query image, if an index or one of the split's files).
        """
        _check_k(k)
        query = self.encode_image(image)
        own = self._own_image(image)
        order, scores = self._top(self.txt_emb @ query, k)
        captions = self.split.captions
        owners = [int(self.txt_to_img[j]) for j in order]
        return pd.DataFrame({"rank": range(1, len(order) + 1), "caption_index": order, "score": scores,
                             "caption": [captions[j] for j in order], "image": owners,
                             "match": [own is not None and i == own for i in owners]})
