"""Figures: the helpers draw what they are given, titled and labelled, and refuse mismatched input."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_utils.core.data import read_dataset  # noqa: E402
from siamese_utils.chapters.plotting import plot_caption_lengths, plot_similarity, show_pairs  # noqa: E402


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
    with pytest.raises(ValueError, match=r"txt_to_img has shape \(2,\) for 3 columns of sim"):
        plot_similarity(sim, txt_to_img=[0, 1])
    with pytest.raises(ValueError, match="2-D"):
        plot_similarity(np.zeros(3))


def test_plot_matrices_draws_one_titled_heatmap_per_matrix_centred_when_symmetric():
    from siamese_utils.chapters.plotting import plot_matrices

    fig = plot_matrices({"a": torch.tensor([[1.0, -3.0], [0.5, 0.0]]), "b": np.eye(3)}, title="forces",
                        cmap="RdBu", symmetric=True)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == ["a", "b"] and fig._suptitle.get_text() == "forces"
    assert heatmaps[0].images[0].get_clim() == (-3.0, 3.0)  # zero in the middle of the colour scale
    assert heatmaps[1].images[0].get_array().shape == (3, 3)
    assert heatmaps[0].get_xlabel() == "caption j" and heatmaps[0].get_ylabel() == "image i"


def test_plot_curves_draws_each_curve_and_reference_line():
    from siamese_utils.chapters.plotting import plot_curves

    fig = plot_curves({"one": [3, 2, 1], "two": [1, 1]}, title="loss", logy=True, hlines={"margin": 0.4})
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["one", "two", "margin"] and ax.get_yscale() == "log" and ax.get_title() == "loss"
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]  # steps counted from 1


def test_plot_history_shows_loss_temperature_and_recall_per_epoch():
    import pandas as pd

    from siamese_utils.core.metrics import METRIC_KEYS
    from siamese_utils.chapters.plotting import plot_history

    history = pd.DataFrame([{"epoch": e, "loss": 3.0 / e, "temperature": 0.07 - 0.001 * e,
                             **{f"val_{k}": 10.0 * e for k in METRIC_KEYS}} for e in (1, 2, 3)])
    fig = plot_history(history, title="run")
    loss, temperature, recall = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "temperature", "validation recall"]
    assert list(loss.get_lines()[0].get_ydata()) == [3.0, 1.5, 1.0]
    assert len(recall.get_lines()) == 6 and recall.get_ylabel() == "R@K (%)"


def _green_cells(fig):
    """Result cells framed in green: image axes by their spines, caption cells by their text box's edge."""
    from matplotlib.colors import to_rgba

    from siamese_utils.chapters.plotting import _CORRECT

    green = to_rgba(_CORRECT)
    count = 0
    for ax in fig.axes:
        if ax.images and to_rgba(ax.spines["top"].get_edgecolor()) == green:
            count += 1
        count += sum(1 for t in ax.texts if t.get_bbox_patch() is not None
                     and to_rgba(t.get_bbox_patch().get_edgecolor()) == green)
    return count


def test_plot_retrieval_text_to_image_marks_the_right_images():
    from siamese_utils.chapters.plotting import plot_retrieval

    images = [Image.new("RGB", (8, 8), (255, 0, 0)), torch.zeros(3, 8, 8), np.zeros((8, 8, 3), dtype=np.uint8)]
    correct = [[False, True, False], [True, False]]
    fig = plot_retrieval(["a red square", "a black square"], [images, images[1:]],
                         scores=[[0.62, 0.5, 0.1], torch.tensor([0.9, 0.2])], correct=correct, title="t2i")
    assert fig._suptitle.get_text() == "t2i" and len(fig.axes) == 2 * (1 + 3)
    assert sum(len(ax.images) for ax in fig.axes) == 5  # the padded cell stays empty
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1:4] == ["#1 · 0.62", "#2 · 0.50 ✓", "#3 · 0.10"] and titles[5] == "#1 · 0.90 ✓"
    assert sum("✓" in t for t in titles) == _green_cells(fig) == 2
    # A normalised all-zero tensor is ImageNet's mean colour once denormalised.
    assert np.allclose(fig.axes[2].images[0].get_array()[0, 0], [0.485, 0.456, 0.406], atol=1e-6)
    assert "Text → image" in plot_retrieval(["a"], [images[:1]])._suptitle.get_text()


def test_plot_retrieval_image_to_text_boxes_the_right_captions():
    from siamese_utils.chapters.plotting import plot_retrieval

    queries = [torch.zeros(3, 8, 8), Image.new("RGB", (8, 8))]
    results = [["a cat on a mat", "a dog"], ["a long caption that has to be wrapped over lines", "x", "y"]]
    fig = plot_retrieval(queries, results, scores=[[0.3, 0.2], [0.5, 0.4, 0.1]],
                         correct=[[True, False], [False, False, True]])
    assert len(fig.axes) == 2 * 4 and "Image → text" in fig._suptitle.get_text()
    assert [len(ax.images) for ax in fig.axes[::4]] == [1, 1]  # the query images
    shown = [t.get_text().replace("\n", " ") for ax in fig.axes for t in ax.texts]
    assert shown == [c for row in results for c in row]
    assert sum("✓" in ax.get_title() for ax in fig.axes) == _green_cells(fig) == 2
    assert _green_cells(plot_retrieval(queries, results)) == 0


def test_plot_retrieval_refuses_mismatched_input():
    from siamese_utils.chapters.plotting import plot_retrieval

    image = np.zeros((4, 4, 3))
    with pytest.raises(ValueError, match="2 queries but results has 1 rows"):
        plot_retrieval(["a", "b"], [[image]])
    with pytest.raises(ValueError, match="scores\\[0\\] has 1 entries but results\\[0\\] has 2"):
        plot_retrieval(["a"], [[image, image]], scores=[[0.1]])
    with pytest.raises(ValueError, match="results has 1 rows but correct has 2"):
        plot_retrieval(["a"], [[image]], correct=[[True], [False]])
    with pytest.raises(ValueError, match="at least one query"):
        plot_retrieval([], [])
    with pytest.raises(ValueError, match="results\\[0\\]\\[0\\] should be a caption"):
        plot_retrieval([image], [[image]])
    with pytest.raises(ValueError, match="mixes captions and images"):
        plot_retrieval(["a", image], [[image], ["b"]])


def test_plot_score_distributions_counts_each_kind_of_pair():
    from siamese_utils.chapters.plotting import plot_score_distributions

    sim = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.2, 0.3, 0.7, 0.95], [0.1, 0.85, 0.2, 0.3]])
    fig = plot_score_distributions(sim, [0, 0, 1, 1], bins=10, title="scores")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_title() == "scores"
    assert ax.get_xlabel() == "cosine similarity" and ax.get_ylabel() == "density"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "matching pairs (4), median 0.85"  # 0.9, 0.8, 0.7, 0.95
    assert labels[1] == "non-matching pairs (8), median 0.20"
    assert labels[2] == "hardest negative per caption (4), median 0.25"  # 0.2, 0.85, 0.2, 0.3
    medians = sorted(line.get_xdata()[0] for line in ax.get_lines())
    np.testing.assert_allclose(medians, [0.2, 0.25, 0.85], rtol=1e-6)
    assert any("25.0 % of captions" in t.get_text() for t in ax.texts)  # caption 1: 0.85 beats 0.8
    with pytest.raises(ValueError, match=r"txt_to_img has shape \(3,\) for 4 columns of sim"):
        plot_score_distributions(sim, [0, 0, 1])
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        plot_score_distributions(sim, [0, 0, 1, 3])
    with pytest.raises(ValueError, match="2-D"):
        plot_score_distributions(np.zeros(3), [0, 0, 0])


def test_plot_rank_histogram_bars_add_up_and_recall_matches_the_ranks():
    from siamese_utils.chapters.plotting import plot_rank_histogram

    i2t = np.array([0, 0, 1, 4, 9, 30])
    t2i = torch.tensor([0, 2, 5, 5, 12, 0, 1, 3])
    fig = plot_rank_histogram(i2t, t2i, title="ranks")
    bars, recall = fig.axes
    assert len(fig.axes) == 2 and fig._suptitle.get_text() == "ranks"
    assert [t.get_text() for t in bars.get_xticklabels()] == ["1", "2", "3–5", "6–10", "11–20", "21–50"]
    for container in bars.containers:
        assert sum(p.get_height() for p in container) == pytest.approx(100)
    assert [p.get_height() for p in bars.containers[0]] == pytest.approx([200 / 6, 100 / 6, 100 / 6, 100 / 6, 0,
                                                                          100 / 6])
    assert recall.get_xscale() == "log" and recall.get_ylabel() and bars.get_ylabel()
    for line, ranks in zip(recall.get_lines(), (i2t, t2i.numpy())):
        k, r = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        for K in (1, 5, 10):
            assert r[k == K][0] == pytest.approx(100 * np.mean(ranks < K))
    assert [t.get_text() for t in recall.get_legend().get_texts()] == ["image → text (6 queries)",
                                                                       "text → image (8 queries)"]
    with pytest.raises(ValueError, match="t2i_ranks has shape \\(2, 2\\)"):
        plot_rank_histogram(i2t, np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="i2t_ranks holds negative ranks"):
        plot_rank_histogram([-1, 0], [0])


def test_pca_2d_matches_an_eigendecomposition_and_fixes_signs():
    from siamese_utils.chapters.plotting import pca_2d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 2.0
    coords, explained = pca_2d(torch.as_tensor(x, dtype=torch.float32))
    assert coords.shape == (40, 2) and coords.dtype == np.float64 and explained.shape == (2,)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(coords), np.abs(centred @ top), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(explained, values[::-1][:2] / values.sum(), rtol=1e-5)
    assert explained.sum() <= 1 and explained[0] >= explained[1]

    coords64, _ = pca_2d(x)
    perm = rng.permutation(40)
    np.testing.assert_allclose(pca_2d(x[perm])[0], coords64[perm], atol=1e-10)  # row order changes nothing
    np.testing.assert_allclose(pca_2d(-x)[0], -coords64, atol=1e-10)  # same axes, so the points mirror
    with pytest.raises(ValueError, match="at least 2 rows"):
        pca_2d(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        pca_2d(np.zeros(5))


def test_plot_embedding_map_colours_by_image_and_joins_captions_to_images():
    from matplotlib.collections import LineCollection
    from matplotlib.offsetbox import AnnotationBbox

    from siamese_utils.chapters.plotting import plot_embedding_map

    rng = np.random.default_rng(1)
    img = torch.as_tensor(rng.normal(size=(3, 8)))
    owner = [0, 0, 1, 1, 2, 2, 2]
    txt = img[owner] + 0.1 * torch.as_tensor(rng.normal(size=(7, 8)))
    images = [Image.new("RGB", (64, 64), (255, 0, 0)), torch.zeros(3, 32, 32), np.zeros((16, 16, 3), np.uint8)]
    fig = plot_embedding_map(img, txt, owner, images=images, title="map")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_title() == "map"
    assert ax.get_xlabel().startswith("PC 1 (") and ax.get_xlabel().endswith("% of variance)")
    assert ax.get_ylabel().startswith("PC 2 (")
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["images (3)", "captions (7)"]
    captions, squares = ax.collections[1:3]
    assert len(captions.get_offsets()) == 7 and len(squares.get_offsets()) == 3
    np.testing.assert_allclose(captions.get_facecolors()[:, :3], squares.get_facecolors()[owner, :3])
    lines = next(c for c in ax.collections if isinstance(c, LineCollection))
    assert len(lines.get_segments()) == 7
    assert sum(isinstance(a, AnnotationBbox) for a in ax.artists) == 3

    many = plot_embedding_map(rng.normal(size=(25, 4)), rng.normal(size=(25, 4)), np.arange(25))
    captions, squares = many.axes[0].collections[1:3]
    assert len({tuple(c) for c in squares.get_facecolors()}) == 1  # too many images to tell apart by colour
    with pytest.raises(ValueError, match=r"txt_to_img has shape \(6,\) for 7 rows of txt_emb"):
        plot_embedding_map(img, txt, owner[:6])
    with pytest.raises(ValueError, match="img_emb has 3 rows but 2 images"):
        plot_embedding_map(img, txt, owner, images=images[:2])
    with pytest.raises(ValueError, match="img_emb has 8 dimensions and txt_emb 4"):
        plot_embedding_map(img, txt[:, :4], owner)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_plot_word_importance_draws_one_signed_bar_per_word_and_hatches_unseen_words():
    import pandas as pd

    from siamese_utils.chapters.plotting import plot_word_importance
    from siamese_utils.chapters.widgets import WordImportance

    words = pd.DataFrame({"word": ["a", "pink", "square"], "start": [0, 2, 7], "end": [1, 6, 13],
                          "without": [0.5, 0.6, 0.2], "change": [0.0, -0.1, 0.3]})
    fig = plot_word_importance(WordImportance("a pink square", 3, 0.5, words), unseen=("pink",))
    ax = fig.axes[0]
    bars = ax.patches
    assert [round(b.get_width(), 6) for b in bars] == [0.0, -0.1, 0.3]
    assert [b.get_hatch() for b in bars] == [None, "///", None]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "pink  (unseen)", "square"]
    assert "a pink square" in ax.get_title() and "0.500" in ax.get_title()
    assert bars[1].get_facecolor()[:3] == matplotlib.colors.to_rgb("tab:blue")
    assert bars[2].get_facecolor()[:3] == matplotlib.colors.to_rgb("tab:red")
    with pytest.raises(ValueError, match="no words"):
        plot_word_importance(WordImportance("", None, 0.0, words.iloc[:0]))
    matplotlib.pyplot.close("all")


def test_plot_history_ticks_every_epoch_of_a_short_run_and_fewer_of_a_long_one():
    """A tick per epoch up to 15 epochs; beyond, a few whole-epoch ticks that do not overlap."""
    import pandas as pd

    from siamese_utils.core.metrics import METRIC_KEYS
    from siamese_utils.chapters.plotting import plot_history

    def history(n):
        return pd.DataFrame([{"epoch": e, "loss": 1.0 / e, "temperature": 0.07,
                              **{f"val_{k}": 50.0 for k in METRIC_KEYS}} for e in range(1, n + 1)])

    assert list(plot_history(history(5), title="short").axes[0].get_xticks()) == [1, 2, 3, 4, 5]
    for ax in plot_history(history(30), title="long").axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 30]
        assert 3 <= len(ticks) <= 10 and all(float(t).is_integer() for t in ticks)
