"""A pretrained reference row: CLIP zero-shot on the test split, by the series' own retrieval protocol.

Explained in ``notebooks/09_scaling_up.ipynb`` (section 3).

:func:`load_clip` loads ``transformers``' ``CLIPModel`` and ``CLIPProcessor``
(``openai/clip-vit-base-patch32`` by default) when the weights can be had; offline
and without them in the cache, or when asked, it builds :func:`tiny_clip`, a small
*randomly initialised* ``CLIPModel`` from a ``CLIPConfig``, so that the same code
path runs (in the tests and CI) and says so: its ``note`` never lets the two be
confused. :func:`clip_zero_shot` encodes a split's images and captions with either
and scores them with :func:`siamese_utils.core.metrics.retrieval_metrics`, the
protocol every other row of the series is measured by.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.data import CaptionedImages, load_image
from ...core.metrics import retrieval_metrics

__all__ = ["CLIP_NAME", "ClipReference", "tiny_clip", "load_clip", "clip_embeddings", "clip_zero_shot",
           "clip_search"]

CLIP_NAME = "openai/clip-vit-base-patch32"
OFFLINE_VARIABLES = ("SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass
class ClipReference:
    """A CLIP model with its processor, and what it is: ``pretrained`` or not, and a ``note`` that says so.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    model: Any  # transformers.CLIPModel
    processor: Any  # transformers.CLIPProcessor
    name: str
    pretrained: bool
    note: str


def tiny_clip(seed: int = 0, image_size: int = 32, dim: int = 32, tokenizer=None) -> ClipReference:
    """A small, randomly initialised ``CLIPModel`` (2 layers a tower, ``dim`` wide) with a processor, offline.

    It reads captions with the series' BERT WordPiece tokenizer (CLIP's own BPE
    vocabulary would come from the hub) and images at ``image_size`` pixels with
    CLIP's normalisation. Its scores mean nothing: it exists to run the code path.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from ...core.text import load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    towers = {"hidden_size": dim, "intermediate_size": 2 * dim, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**towers, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id},  # pooled at [SEP], as CLIP pools at its end token
        vision_config={**towers, "image_size": image_size, "patch_size": max(1, image_size // 4)},
        projection_dim=dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    note = (f"a small randomly initialised CLIPModel ({sum(p.numel() for p in model.parameters()):,} weights, "
            f"{image_size} px, seed {seed}), not pretrained: it runs the code path, its scores mean nothing")
    return ClipReference(model, processor, "tiny random CLIP", False, note)


def load_clip(name: str = CLIP_NAME, pretrained: bool = True, seed: int = 0) -> ClipReference:
    """``name``'s pretrained CLIP when its weights can be had (cache, or the hub when online), else :func:`tiny_clip`.

    ``pretrained=False`` skips the attempt (the tiny set, CI). Offline
    (``SIAMESE_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) only the
    local cache is read. The ``note`` says which one was loaded and why.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if not pretrained:
        return tiny_clip(seed)
    from transformers import CLIPModel, CLIPProcessor

    offline = any(os.environ.get(v, "") not in ("", "0") for v in OFFLINE_VARIABLES)
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=offline).eval()
        processor = CLIPProcessor.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError) as e:
        tiny = tiny_clip(seed)
        why = "offline and not in the cache" if offline else f"could not be loaded ({type(e).__name__})"
        tiny.note = f"{name} {why}, so: {tiny.note}"
        return tiny
    return ClipReference(model, processor, name, True, f"{name}, pretrained by OpenAI on 400M web pairs, zero-shot")


@torch.no_grad()
def clip_embeddings(clip: ClipReference, split: CaptionedImages, device: torch.device | None = None,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(img_emb, txt_emb)`` of a split under CLIP, L2-normalised float32 arrays, images and captions in order.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    device = device or torch.device("cpu")
    model = clip.model.to(device).eval()
    processor = clip.processor

    def features(output) -> torch.Tensor:  # a tensor (transformers 4), or an output whose pooler_output it is (5)
        emb = output if isinstance(output, torch.Tensor) else output.pooler_output
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    img, txt = [], []
    for start in range(0, len(split), batch_size):
        batch = [load_image(r.path) for r in split.records[start:start + batch_size]]
        pixels = processor.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        img.append(features(model.get_image_features(pixel_values=pixels)))
    captions = split.captions
    for start in range(0, len(captions), batch_size):
        tokens = processor.tokenizer(captions[start:start + batch_size], padding=True, truncation=True,
                                     max_length=77, return_tensors="pt").to(device)
        txt.append(features(model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"])))
    return torch.cat(img).numpy(), torch.cat(txt).numpy()


def clip_zero_shot(clip: ClipReference, split: CaptionedImages, device: torch.device | None = None,
                   batch_size: int = 64) -> dict[str, float]:
    """CLIP's retrieval metrics on ``split`` (R@1/5/10 both ways, medr, meanr, rsum), no training.

    The same protocol and code as every model of the series (:func:`~siamese_utils.core.metrics.retrieval_metrics`).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    img_emb, txt_emb = clip_embeddings(clip, split, device, batch_size)
    return retrieval_metrics(img_emb, txt_emb, split.txt_to_img)


@torch.no_grad()
def clip_search(clip: ClipReference, img_emb: np.ndarray, caption: str, k: int = 5,
                device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best images for ``caption`` among ``img_emb`` (from :func:`clip_embeddings`): indices and scores.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    device = device or torch.device("cpu")
    tokens = clip.processor.tokenizer([caption], padding=True, truncation=True, max_length=77,
                                      return_tensors="pt").to(device)
    output = clip.model.to(device).get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"])
    emb = output if isinstance(output, torch.Tensor) else output.pooler_output
    query = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()[0]
    scores = img_emb @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]
