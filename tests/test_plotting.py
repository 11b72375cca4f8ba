"""Figures: the helpers draw what they are given, titled and labelled, and refuse mismatched input."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_utils.data import read_dataset  # noqa: E402
from siamese_utils.plotting import plot_caption_lengths, plot_similarity, show_pairs  # noqa: E402


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


def test_similarity_heatmap_shows_values_thumbnails_and_true_pairs():
    sim = torch.tensor([[0.9, -0.2, 0.1], [0.0, 0.5, -0.7]])
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), torch.zeros(3, 8, 8)]
    fig = plot_similarity(sim, images, ["a cat", "a dog", "a red thing"], txt_to_img=[0, 1, 1], title="sim")
    ax = fig.axes[0]
    assert ax.get_title() == "sim" and ax.get_xlabel() == "captions" and ax.get_ylabel() == "images"
    assert len(ax.images) == 1 + 2  # the heatmap and one thumbnail per image
    np.testing.assert_allclose(ax.images[0].get_array(), sim.numpy())
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in sim.flatten().tolist())
    outlined = sorted((p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches)
    assert outlined == [(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)]  # (caption, image) of each true pair
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a cat", "a dog", "a red thing"]


def test_similarity_heatmap_refuses_mismatched_input():
    sim = np.zeros((2, 3))
    with pytest.raises(ValueError, match="2 rows \\(images\\) but 3 images"):
        plot_similarity(sim, images=[np.zeros((4, 4, 3))] * 3)
    with pytest.raises(ValueError, match="3 columns \\(captions\\) but 2 captions"):
        plot_similarity(sim, captions=["a", "b"])
    with pytest.raises(ValueError, match="txt_to_img has 2 entries"):
        plot_similarity(sim, txt_to_img=[0, 1])
    with pytest.raises(ValueError, match="2-D"):
        plot_similarity(np.zeros(3))
