"""Gallery: a split encoded once and searched both ways, with deterministic ranking and clear errors."""

import pytest
import torch

from siamese_utils.core.data import load_image, read_dataset
from siamese_utils.core.models import ModelConfig, build_model
from siamese_utils.core.search import Gallery
from siamese_utils.core.train import TrainConfig, encode_split, save_checkpoint

SIZE = 16  # small_tiny's images


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def split(small_tiny):
    return read_dataset(small_tiny).split("test")


@pytest.fixture(scope="module")
def gallery(model, split, tokenizer):
    return Gallery(model, split, tokenizer, image_size=SIZE)


def brute_force(scores):
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def test_gallery_holds_the_embeddings_of_encode_split(gallery, model, split, tokenizer):
    img_emb, txt_emb = encode_split(model, split, tokenizer, image_size=SIZE)
    assert torch.equal(gallery.img_emb, img_emb) and torch.equal(gallery.txt_emb, txt_emb)
    assert gallery.img_emb.shape == (len(split), 16) and gallery.txt_emb.shape == (split.num_captions, 16)
    assert gallery.img_emb.device.type == "cpu" and not gallery.model.training


def test_search_text_is_a_brute_force_ranking_of_cosine_scores(gallery, split):
    query = "a small red circle"
    found = gallery.search_text(query, k=4)
    scores = gallery.img_emb @ gallery.encode_text(query)
    expected = brute_force(scores)[:4]
    assert list(found.columns) == ["rank", "image", "score", "filename", "caption", "match"]
    assert found["rank"].tolist() == [1, 2, 3, 4]
    assert found["image"].tolist() == expected
    assert found["score"].tolist() == pytest.approx([float(scores[i]) for i in expected])
    assert found["filename"].tolist() == [split[i].name for i in expected]
    assert found["caption"].tolist() == [split[i].captions[0] for i in expected]
    assert torch.linalg.vector_norm(gallery.encode_text(query)).item() == pytest.approx(1.0)


def test_k_larger_than_the_gallery_returns_all_of_it(gallery, split):
    assert len(gallery.search_text("a blue square", k=1000)) == len(split)
    assert len(gallery.search_image(0, k=10_000)) == split.num_captions


def test_exact_ties_go_to_the_lower_index(model, split, tokenizer):
    g = Gallery(model, split, tokenizer, image_size=SIZE)
    g.img_emb = g.img_emb[[5]].repeat(len(split), 1)  # every image the same
    assert g.search_text("anything at all", k=len(split))["image"].tolist() == list(range(len(split)))
    query = g.encode_text("a red circle")
    g.img_emb = (-query).repeat(len(split), 1)
    g.img_emb[[9, 2, 7]] = query  # three equal best scores, then nine equal worst ones
    found = g.search_text("a red circle", k=len(split))
    assert found["image"].tolist() == [2, 7, 9] + [i for i in range(len(split)) if i not in (2, 7, 9)]
    assert found["score"].tolist()[:4] == pytest.approx([1.0, 1.0, 1.0, -1.0])


def test_match_marks_the_images_a_dataset_caption_belongs_to(gallery, split):
    caption = split[3].captions[1]
    found = gallery.search_text(caption, k=len(split))
    owners = {i for i, r in enumerate(split) if caption in r.captions}
    assert 3 in owners
    assert set(found.loc[found["match"], "image"]) == owners
    assert not gallery.search_text(caption + " with a hat", k=len(split))["match"].any()
    assert set(gallery.search_text(f"  {caption} ", k=len(split)).query("match")["image"]) == owners


def test_search_image_by_index_and_by_path_agree_and_mark_the_true_captions(gallery, split):
    by_index = gallery.search_image(4, k=15)
    by_path = gallery.search_image(split[4].path, k=15)
    assert list(by_index.columns) == ["rank", "caption_index", "score", "caption", "image", "match"]
    assert by_index["caption_index"].tolist() == by_path["caption_index"].tolist()
    assert by_index["score"].tolist() == pytest.approx(by_path["score"].tolist(), abs=1e-5)
    assert by_index["match"].tolist() == (by_index["image"] == 4).tolist() == by_path["match"].tolist()
    assert by_index["caption"].tolist() == [split.captions[j] for j in by_index["caption_index"]]
    scores = gallery.txt_emb @ gallery.img_emb[4]
    assert by_index["caption_index"].tolist() == brute_force(scores)[:15]
    everything = gallery.search_image(str(split[4].path), k=split.num_captions)
    assert everything["match"].sum() == len(split[4].captions)
    # A NumPy integer (as pandas hands them out) is an index too.
    import numpy as np

    assert gallery.search_image(np.int64(4), k=15).equals(by_index)
    # A PIL image (or a file outside the split) has no known captions.
    assert not gallery.search_image(load_image(split[4].path), k=5)["match"].any()


def test_encode_image_preprocesses_as_prepare_images(gallery, split):
    for i in (0, 7):
        from_pil = gallery.encode_image(load_image(split[i].path))
        assert torch.allclose(from_pil, gallery.img_emb[i], atol=1e-5)
        assert torch.allclose(gallery.encode_image(split[i].path), gallery.img_emb[i], atol=1e-5)
        assert torch.equal(gallery.encode_image(i), gallery.img_emb[i])
    rgba = load_image(split[2].path).convert("RGBA")
    assert torch.allclose(gallery.encode_image(rgba), gallery.img_emb[2], atol=1e-5)


def test_from_checkpoint_uses_the_stored_settings(model, split, tokenizer, gallery, tmp_path):
    save_checkpoint(tmp_path / "model.pt", model, TrainConfig(image_size=SIZE, max_length=12))
    g = Gallery.from_checkpoint(tmp_path, split, tokenizer)  # a run folder holding model.pt
    assert (g.image_size, g.max_length) == (SIZE, 12)
    assert torch.allclose(g.img_emb, gallery.img_emb, atol=1e-6)
    save_checkpoint(tmp_path / "bare.pt", model)  # no training settings: TrainConfig's defaults
    bare = Gallery.from_checkpoint(tmp_path / "bare.pt", split, tokenizer)
    assert (bare.image_size, bare.max_length) == (TrainConfig.image_size, TrainConfig.max_length)


@pytest.mark.parametrize("caption", ["", "   \n"])
def test_an_empty_caption_is_refused(gallery, caption):
    with pytest.raises(ValueError, match="give a caption to search for"):
        gallery.search_text(caption)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "5"])
def test_k_must_be_a_positive_int(gallery, k):
    with pytest.raises(ValueError, match="positive whole number"):
        gallery.search_text("a red circle", k=k)
    with pytest.raises(ValueError, match="positive whole number"):
        gallery.search_image(0, k=k)


def test_unreadable_images_are_named(gallery, tmp_path, split):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(ValueError, match=f"{missing}: no such image file"):
        gallery.search_image(missing)
    fake = tmp_path / "notes.png"
    fake.write_text("not pixels")
    with pytest.raises(ValueError, match=f"{fake}: not an image Pillow can read"):
        gallery.encode_image(str(fake))
    with pytest.raises(ValueError, match=r"image index 12 is outside the test split \(0 to 11\)"):
        gallery.search_image(len(split))
    with pytest.raises(ValueError, match="outside"):
        gallery.encode_image(-1)
    with pytest.raises(TypeError, match="PIL image, a file path or an index"):
        gallery.encode_image(2.0)


def test_an_empty_split_is_refused(model, small_tiny, tokenizer):
    empty = read_dataset(small_tiny).split("test")[:0]
    with pytest.raises(ValueError, match="has no images to search; choose another split"):
        Gallery(model, empty, tokenizer)
