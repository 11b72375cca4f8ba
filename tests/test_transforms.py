"""Image preprocessing: the seed's pipeline, training augmentation, and flips that keep captions true."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from siamese_utils.core.data import load_image, read_dataset
from siamese_utils.datasets.tiny import COLOURS
from siamese_utils.core.transforms import (
    CaptionAwareHorizontalFlip,
    ImageTextTransform,
    ImageTransformConfig,
    build_image_transform,
    denormalize,
)


@pytest.fixture
def photo(rng):
    return Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))


def test_eval_pipeline_is_the_seeds(photo):
    seed = T.Compose(
        [
            T.Resize((224, 224)),
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    ours = build_image_transform(ImageTransformConfig(), train=False)
    assert torch.equal(ours(photo), seed(photo))
    assert ours(photo).shape == (3, 224, 224)


def test_train_pipeline_crops_and_jitters(photo):
    cfg = ImageTransformConfig(image_size=32, crop_scale=(0.5, 1.0), brightness=0.2, contrast=0.2)
    train = build_image_transform(cfg, train=True)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomResizedCrop", "ColorJitter", "ToTensor", "Normalize"]
    torch.manual_seed(0)
    a = train(photo)
    b = train(photo)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    assert [type(t).__name__ for t in build_image_transform(cfg, train=False).transforms] == [
        "Resize", "ToTensor", "Normalize"
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"flip": "mirror"}, "flip='mirror'"),
        ({"flip_p": 1.5}, "flip_p=1.5"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"image_size": 0}, "image_size"),
        ({"brightness": -1}, "jitter"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageTransformConfig(**kwargs)


def test_flip_swaps_the_caption_with_the_pixels(photo):
    flip = CaptionAwareHorizontalFlip(p=1.0, mode="swap")
    img, cap = flip(photo, "a cat left of a dog")
    assert cap == "a cat right of a dog"
    assert np.array_equal(np.asarray(img), np.asarray(photo)[:, ::-1])
    img, cap = flip(photo, "a cat above a dog")
    assert cap == "a cat above a dog" and np.array_equal(np.asarray(img), np.asarray(photo)[:, ::-1])


def test_skip_mode_leaves_left_right_captions_unflipped(photo):
    flip = CaptionAwareHorizontalFlip(p=1.0, mode="skip")
    img, cap = flip(photo, "a cat left of a dog")
    assert cap == "a cat left of a dog" and img is photo
    img, cap = flip(photo, "a cat above a dog")
    assert np.array_equal(np.asarray(img), np.asarray(photo)[:, ::-1])
    off = CaptionAwareHorizontalFlip(p=1.0, mode="off")
    assert off(photo, "a cat left of a dog") == (photo, "a cat left of a dog")
    with pytest.raises(ValueError, match="mode='sideways'"):
        CaptionAwareHorizontalFlip(mode="sideways")


def test_flips_are_seeded_and_independent_of_the_caption(photo):
    flip = CaptionAwareHorizontalFlip(p=0.5)
    original = np.asarray(photo)

    def decisions(caption):
        torch.manual_seed(1)
        return [not np.array_equal(np.asarray(flip(photo, caption)[0]), original) for _ in range(40)]

    left, above = decisions("a cat left of a dog"), decisions("a cat above a dog")
    assert left == above and 5 < sum(left) < 35
    torch.manual_seed(1)
    captions = [flip(photo, "a cat left of a dog")[1] for _ in range(40)]
    assert [c == "a cat right of a dog" for c in captions] == left


def _centroid_x(pixels: np.ndarray, colour: str) -> float:
    mask = np.abs(pixels.astype(int) - COLOURS[colour]).max(axis=-1) <= 2
    return float(np.nonzero(mask)[1].mean())


def test_flipped_captions_are_still_true_on_the_tiny_set(tiny_dir):
    """For left/right scenes: after the flip, the caption's left object is on the left in the pixels."""
    data = read_dataset(tiny_dir).split("val")
    flip = CaptionAwareHorizontalFlip(p=1.0, mode="swap")
    checked = 0
    for r in data:
        scene = r.meta["scene"]
        if scene.get("relation") not in ("left of", "right of"):
            continue
        a, b = scene["objects"]
        img, cap = flip(load_image(r.path), f"a {a['colour']} thing {scene['relation']} a {b['colour']} thing")
        xa, xb = _centroid_x(np.asarray(img), a["colour"]), _centroid_x(np.asarray(img), b["colour"])
        assert (xa < xb) == (" left of " in cap), (r.name, cap)
        checked += 1
    assert checked >= 10


def test_pair_transform_train_and_eval(tiny_dir):
    record = read_dataset(tiny_dir)[0]
    cfg = ImageTransformConfig(image_size=32, flip_p=1.0)
    image = load_image(record.path)
    x, cap = ImageTextTransform(cfg, train=True)(image, "a disc on the left")
    assert x.shape == (3, 32, 32) and cap == "a disc on the right"
    y, cap = ImageTextTransform(cfg, train=False)(image, "a disc on the left")
    assert cap == "a disc on the left" and torch.equal(x, y.flip(-1))


def test_denormalize_inverts_normalize(photo):
    x = build_image_transform(ImageTransformConfig(image_size=16), train=False)(photo)
    back = denormalize(x)
    direct = T.Compose([T.Resize((16, 16)), T.ToTensor()])(photo)
    assert torch.allclose(back, direct, atol=1e-6)
