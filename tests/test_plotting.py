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


def test_plot_matrices_draws_one_titled_heatmap_per_matrix_centred_when_symmetric():
    from siamese_utils.plotting import plot_matrices

    fig = plot_matrices({"a": torch.tensor([[1.0, -3.0], [0.5, 0.0]]), "b": np.eye(3)}, title="forces",
                        cmap="RdBu", symmetric=True)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == ["a", "b"] and fig._suptitle.get_text() == "forces"
    assert heatmaps[0].images[0].get_clim() == (-3.0, 3.0)  # zero in the middle of the colour scale
    assert heatmaps[1].images[0].get_array().shape == (3, 3)
    assert heatmaps[0].get_xlabel() == "caption j" and heatmaps[0].get_ylabel() == "image i"


def test_plot_curves_draws_each_curve_and_reference_line():
    from siamese_utils.plotting import plot_curves

    fig = plot_curves({"one": [3, 2, 1], "two": [1, 1]}, title="loss", logy=True, hlines={"margin": 0.4})
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["one", "two", "margin"] and ax.get_yscale() == "log" and ax.get_title() == "loss"
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]  # steps counted from 1


def test_plot_history_shows_loss_temperature_and_recall_per_epoch():
    import pandas as pd

    from siamese_utils.metrics import METRIC_KEYS
    from siamese_utils.plotting import plot_history

    history = pd.DataFrame([{"epoch": e, "loss": 3.0 / e, "temperature": 0.07 - 0.001 * e,
                             **{f"val_{k}": 10.0 * e for k in METRIC_KEYS}} for e in (1, 2, 3)])
    fig = plot_history(history, title="run")
    loss, temperature, recall = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "temperature", "validation recall"]
    assert list(loss.get_lines()[0].get_ydata()) == [3.0, 1.5, 1.0]
    assert len(recall.get_lines()) == 6 and recall.get_ylabel() == "R@K (%)"
