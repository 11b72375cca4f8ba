"""Figures: the helpers draw what they are given, titled and labelled, and refuse mismatched input."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_utils.data import read_dataset  # noqa: E402
from siamese_utils.plotting import plot_caption_lengths, show_pairs  # noqa: E402


def test_show_pairs_accepts_pil_tensors_and_arrays():
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), torch.zeros(3, 8, 8), np.zeros((8, 8, 3), dtype=np.uint8)]
    fig = show_pairs(images, ["a", "b", "c"], ncols=2, title="t")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3 and [ax.get_title() for ax in shown] == ["a", "b", "c"]
    assert fig._suptitle.get_text() == "t"
    # A normalised all-zero tensor is ImageNet's mean colour once denormalised.
    assert np.allclose(shown[1].images[0].get_array()[0, 0], [0.485, 0.456, 0.406], atol=1e-6)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        show_pairs(images, ["a", "b"])


def test_caption_length_histogram_marks_each_cut():
    fig = plot_caption_lengths([5, 6, 6, 9, 12], max_length=(6, 10), title="lengths")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["max_length=6: 40.0% truncated", "max_length=10: 20.0% truncated"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "lengths"


def test_to_frame_has_one_row_per_caption(tiny_dir):
    val = read_dataset(tiny_dir).split("val")
    frame = val.to_frame()
    assert len(frame) == 500 and list(frame.columns) == ["image", "name", "split", "caption"]
    assert frame["image"].tolist() == val.txt_to_img.tolist() and frame["caption"].tolist() == val.captions
