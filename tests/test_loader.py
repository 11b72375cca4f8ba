"""Batches: dynamic padding checked against the tokenizer, seeded loaders, workers."""

import pytest
import torch

from siamese_utils.core.data import Batch, Collator, ImageDataset, ImageTextDataset, make_loader, read_dataset
from siamese_utils.core.runtime import choose_device, seed_everything
from siamese_utils.core.transforms import ImageTextTransform, ImageTransformConfig, build_image_transform


@pytest.fixture(scope="module")
def val(tiny_dir):
    return read_dataset(tiny_dir).split("val")


@pytest.fixture(scope="module")
def train_ds(tiny_dir):
    cfg = ImageTransformConfig(image_size=32, crop_scale=(0.8, 1.0))
    return ImageTextDataset(read_dataset(tiny_dir).split("train"), ImageTextTransform(cfg, train=True))


def test_collate_pads_to_the_longest_caption_in_the_batch(val, tokenizer):
    ds = ImageTextDataset(val, ImageTextTransform(ImageTransformConfig(image_size=32), train=False))
    items = [ds[j] for j in (0, 1, 17, 230)]
    batch = Collator(tokenizer)(items)
    captions = [it["caption"] for it in items]
    lengths = [len(tokenizer(c)["input_ids"]) for c in captions]
    assert batch.input_ids.shape == (4, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    # The same as the library's own padding.
    ref = tokenizer(captions, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, ref["input_ids"]) and torch.equal(batch.attention_mask, ref["attention_mask"])
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert batch.images.shape == (4, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.image_index.tolist() == [0, 0, 3, 46] and batch.caption_index.tolist() == [0, 1, 17, 230]
    assert batch.captions == captions and len(batch) == 4


def test_collate_truncates_at_max_length(tokenizer):
    collate = Collator(tokenizer, max_length=6)
    items = [{"image": torch.zeros(3, 2, 2), "caption": c, "image_index": 0, "caption_index": i}
             for i, c in enumerate(["a small red circle to the left of a big blue square", "a disc"])]
    batch = collate(items)
    assert batch.input_ids.shape == (2, 6)
    assert batch.input_ids[0].tolist() == [101, 1037, 2235, 2417, 4418, 102]  # [SEP] kept at the end


def test_same_seed_same_batches_other_seed_other_order(train_ds, tokenizer):
    def first_batches(seed):
        seed_everything(seed)  # augmentations draw from torch's generator in the main process
        loader = make_loader(train_ds, 16, shuffle=True, seed=seed, collate_fn=Collator(tokenizer))
        out = []
        for batch, _ in zip(loader, range(3)):
            out.append(batch)
        return out

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and x.captions == y.captions
        assert torch.equal(x.input_ids, y.input_ids)
    assert a[0].caption_index.tolist() != c[0].caption_index.tolist()


def test_workers_are_seeded(train_ds, tokenizer):
    def run():
        loader = make_loader(train_ds, 32, shuffle=True, seed=5, collate_fn=Collator(tokenizer), num_workers=2)
        return [(b.caption_index.tolist(), b.captions, b.images.sum().item()) for b, _ in zip(loader, range(4))]

    assert run() == run()


def test_loader_rejects_bad_settings(train_ds):
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        make_loader(train_ds, 0, shuffle=True)
    with pytest.raises(ValueError, match="num_workers must be 0"):
        make_loader(train_ds, 4, shuffle=True, num_workers=-1)


def test_image_dataset_for_a_gallery(val):
    ds = ImageDataset(val, build_image_transform(ImageTransformConfig(image_size=24), train=False))
    loader = make_loader(ds, 64, shuffle=False)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [64, 36]
    assert torch.equal(torch.cat([b["image_index"] for b in batches]), torch.arange(100))


def test_batch_moves_to_a_device(val, tokenizer):
    ds = ImageTextDataset(val, ImageTextTransform(ImageTransformConfig(image_size=8), train=False))
    batch = Collator(tokenizer)([ds[0], ds[1]])
    moved = batch.to(choose_device("cpu"))
    assert isinstance(moved, Batch) and moved.input_ids.device.type == "cpu" and moved.captions == batch.captions
    if torch.cuda.is_available():
        assert batch.pin_memory().images.is_pinned()


def test_choose_device(monkeypatch):
    assert choose_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("SIAMESE_DEVICE", "cpu")
    assert choose_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available here"):
            choose_device("cuda")


@pytest.mark.parametrize("variable", ["SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_follows_any_of_the_usual_variables(monkeypatch, variable):
    from siamese_utils.core.runtime import is_offline

    for v in ("SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    assert not is_offline()
    monkeypatch.setenv(variable, "0")
    assert not is_offline()
    monkeypatch.setenv(variable, "1")
    assert is_offline()
