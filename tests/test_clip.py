"""CLIP zero-shot as a reference row (siamese_utils.chapters.scaling.clip): the series' protocol, offline, said plainly."""

import numpy as np
import pytest
import torch

from siamese_utils.chapters.scaling import clip as clip_module
from siamese_utils.chapters.scaling.clip import clip_embeddings, clip_search, clip_zero_shot, load_clip, tiny_clip
from siamese_utils.core.metrics import METRIC_KEYS, retrieval_metrics


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_clip(seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def split(small_tiny):
    from siamese_utils import read_dataset

    return read_dataset(small_tiny).split("test")


def test_zero_shot_is_the_series_protocol_on_clip_embeddings(tiny, split):
    img_emb, txt_emb = clip_embeddings(tiny, split, batch_size=5)
    assert img_emb.shape == (len(split), 32) and txt_emb.shape == (split.num_captions, 32)
    np.testing.assert_allclose(np.linalg.norm(img_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt_emb, axis=1), 1, atol=1e-5)
    metrics = clip_zero_shot(tiny, split, batch_size=7)  # batching changes nothing
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics == pytest.approx(retrieval_metrics(img_emb, txt_emb, split.txt_to_img))


def test_a_clip_that_sees_the_answer_scores_100(tiny, split):
    """Image features from the image's 8 × 8 thumbnail, a caption's from its image's: every R@1 is 100."""
    tok = tiny.processor.tokenizer
    colours = np.stack([np.asarray(clip_module.load_image(r.path).resize((8, 8)), dtype=np.float32).ravel()
                        for r in split])
    colours -= colours.mean(0)
    colour_of = {tok.decode(tok(c)["input_ids"], skip_special_tokens=True): colours[i]
                 for i, r in enumerate(split) for c in r.captions}
    done = []

    class Seer:
        def to(self, device):
            return self

        def eval(self):
            return self

        def get_image_features(self, pixel_values):
            start = len(done)
            done.extend(range(len(pixel_values)))
            return torch.tensor(colours[start:len(done)])

        def get_text_features(self, input_ids, attention_mask):
            return torch.tensor(np.stack([colour_of[w] for w in tok.batch_decode(input_ids, skip_special_tokens=True)]))

    metrics = clip_zero_shot(clip_module.ClipReference(Seer(), tiny.processor, "seer", False, "test"), split,
                             batch_size=4)
    assert metrics["i2t_r1"] == 100 and metrics["t2i_r1"] == 100


def test_search_scores_one_caption_as_the_batch_does(tiny, split):
    img_emb, txt_emb = clip_embeddings(tiny, split)
    j = 3
    ids, scores = clip_search(tiny, img_emb, split.captions[j], k=4)
    expected = img_emb @ txt_emb[j]
    assert list(ids) == list(np.argsort(-expected, kind="stable")[:4])
    np.testing.assert_allclose(scores, expected[ids], atol=1e-5)


def test_the_tiny_clip_is_seeded_and_says_it_is_random(tokenizer, split):
    a, b = tiny_clip(seed=1, tokenizer=tokenizer), tiny_clip(seed=1, tokenizer=tokenizer)
    assert not a.pretrained and "randomly initialised" in a.note and "not pretrained" in a.note
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    state = torch.random.get_rng_state()
    tiny_clip(seed=2, tokenizer=tokenizer)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left as it was


def test_offline_without_the_weights_falls_back_and_says_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip("openai/clip-vit-base-patch32-not-cached")
    assert not clip.pretrained and clip.note.startswith("openai/clip-vit-base-patch32-not-cached offline and not "
                                                        "in the cache, so: a small randomly initialised CLIPModel")


def test_pretrained_false_does_not_look_for_weights(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", refuse)
    assert not load_clip(pretrained=False).pretrained
