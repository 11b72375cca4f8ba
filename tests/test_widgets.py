"""The search panels, driven as a reader would: set a widget's value, read what the panel shows."""

import datetime
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siamese_utils.core.data import read_dataset
from siamese_utils.core.models import ModelConfig, build_model
from siamese_utils.core.search import Gallery
from siamese_utils.chapters.widgets import (EmbeddingExplorer, ImageSearchPanel, SearchPanel, TextSearchPanel, check_query,
                                   read_upload, seen_token_ids, word_importance)

SIZE = 16


@pytest.fixture(scope="module")
def data(small_tiny):
    return read_dataset(small_tiny)


@pytest.fixture(scope="module")
def gallery(data, tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8)
    return Gallery(build_model(config).eval(), data.split("test"), tokenizer, image_size=SIZE)


@pytest.fixture(scope="module")
def seen(data, tokenizer):
    return seen_token_ids(data.split("train").captions, tokenizer)


@pytest.fixture(scope="module")
def oracle(data, tokenizer):
    """A gallery whose image embeddings are the embeddings of each image's first caption.

    A first caption typed as a query then finds its own image with score 1, whatever the weights: the
    panel's top result is known in advance.
    """
    torch.manual_seed(1)
    config = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8)
    g = Gallery(build_model(config).eval(), data.split("test"), tokenizer, image_size=SIZE)
    first = [g.split.txt_to_img.tolist().index(i) for i in range(len(g.split))]
    g.img_emb = g.txt_emb[first].clone()
    return g


def png_bytes(color=(10, 200, 30), size=(20, 14), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def upload_value(name, content):
    """A FileUpload value as ipywidgets 8 holds it (a tuple of dicts)."""
    return ({"name": name, "type": "", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)


def upload(widget, name, content):
    """Do what the browser does when a file is chosen in a FileUpload widget."""
    import ipywidgets

    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        widget.value = upload_value(name, content)
    else:  # ipywidgets 7 (Colab): a read-only dict, filled by the widget from the browser's data
        widget.set_trait("value", {name: {"metadata": {"name": name, "size": len(content)}, "content": content}})


def visible_text(html):
    return re.sub(r"<[^>]+>", " ", html)


# ----------------------------------------------------------------------------- query checks


def test_seen_token_ids_are_the_training_captions_word_pieces(data, tokenizer, seen):
    captions = data.split("train").captions
    ids = {i for c in captions for i in tokenizer(c, add_special_tokens=False)["input_ids"]}
    assert seen == ids
    assert tokenizer.cls_token_id not in seen and tokenizer.sep_token_id not in seen
    assert tokenizer.convert_tokens_to_ids("red") in seen
    assert tokenizer.convert_tokens_to_ids("pink") not in seen


def test_an_empty_query_asks_for_text(tokenizer, seen):
    for query in ("", "   ", "\n"):
        check = check_query(query, tokenizer, seen)
        assert check.empty
        assert check.messages() == ["Type a caption to search for, for example “a blue square above a red circle”."]
    with pytest.raises(TypeError, match="must be a string"):
        check_query(None, tokenizer)


def test_unseen_words_are_named_and_explained(tokenizer, seen):
    check = check_query("a pink star above a red circle", tokenizer, seen)
    assert check.words == ("a", "pink", "star", "above", "a", "red", "circle")
    assert check.unseen == ("pink", "star") and check.unknown == () and check.cut == ()
    (note,) = check.messages()
    assert note.startswith("“pink”, “star” never occur in the training captions")
    assert "random vectors" in note and "rests on the other words" in note
    # Without the training vocabulary nothing counts as unseen; a pretrained tower gets its own wording.
    assert check_query("a pink star", tokenizer).unseen == ()
    pretrained = check_query("a pink square", tokenizer, seen, pretrained_text=True)
    assert pretrained.unseen == ("pink",) and "pretrained text tower knows" in pretrained.messages()[0]


@pytest.mark.parametrize("text_tower, knows_words", [("minilm", True), ("bert-base-uncased", True), ("gru", False),
                                                      ("bow", False), ("seed_lstm", False)])
def test_the_panel_asks_the_tower_registry_whether_word_vectors_were_pretrained(text_tower, knows_words):
    """A BERT model's user must not be told that its word vectors are untrained (a list of names once said so)."""
    from types import SimpleNamespace

    from siamese_utils.core.models import TEXT_TOWERS
    from siamese_utils.chapters.widgets import _is_pretrained_text

    assert TEXT_TOWERS[text_tower].pretrained_words is knows_words
    assert _is_pretrained_text(SimpleNamespace(config=SimpleNamespace(text_tower=text_tower))) is knows_words


def test_a_word_is_unseen_when_any_of_its_pieces_is(tokenizer, seen):
    assert tokenizer.tokenize("redish")[0] == "red"  # red + ##ish: the first piece is seen
    check = check_query("a redish square", tokenizer, seen)
    assert check.unseen == ("redish",)


def test_a_query_of_unseen_words_only_says_the_results_mean_nothing(tokenizer, seen):
    (note,) = check_query("zebra giraffe", tokenizer, seen).messages()
    assert note.startswith("None of the words of this query occurs in the training captions")
    assert "rests on the other words" not in note


def test_unknown_and_cut_off_words_are_reported(tokenizer, seen):
    check = check_query("a red ✈ square", tokenizer, seen)
    assert check.unknown == ("✈",) and check.unseen == ()
    assert any("[UNK]" in m for m in check.messages())
    long = "a red square " * 6 + "and a green triangle"
    cut = check_query(long, tokenizer, seen, max_length=12)
    assert cut.cut[-2:] == ("green", "triangle") and cut.max_length == 12
    assert any("longer than 12 tokens" in m and "“triangle”" in m for m in cut.messages())
    assert check_query("a red square", tokenizer, seen).messages() == []


# ----------------------------------------------------------------------------- why this match


def test_word_importance_is_the_score_change_of_dropping_each_word(gallery):
    caption = "a small red square above a blue circle"
    why = word_importance(gallery, caption, 2)
    words = caption.split()
    assert why.words["word"].tolist() == words and why.image == 2
    img = gallery.img_emb[2]
    assert why.score == pytest.approx(float(gallery.encode_text(caption) @ img), abs=1e-5)
    for k, row in why.words.iterrows():
        shorter = " ".join(words[:k] + words[k + 1:])
        assert row["without"] == pytest.approx(float(gallery.encode_text(shorter) @ img), abs=1e-5)
        assert row["change"] == pytest.approx(why.score - row["without"], abs=1e-12)
        assert caption[row["start"]:row["end"]] == row["word"]


def test_word_importance_drops_a_word_of_several_pieces_whole(gallery, tokenizer):
    caption = "a redish square"
    assert len(tokenizer.tokenize(caption)) == 4
    why = word_importance(gallery, caption, 0)
    assert why.words["word"].tolist() == ["a", "redish", "square"]
    img = gallery.img_emb[0]
    assert why.words["without"][1] == pytest.approx(float(gallery.encode_text("a square") @ img), abs=1e-5)


def test_word_importance_takes_an_image_instead_of_an_index(gallery):
    image = Image.open(gallery.split.records[1].path)
    by_image = word_importance(gallery, "a red circle", image)
    by_index = word_importance(gallery, "a red circle", 1)
    assert by_image.image is None
    np.testing.assert_allclose(by_image.words["change"], by_index.words["change"], atol=1e-5)
    with pytest.raises(ValueError, match="empty caption"):
        word_importance(gallery, "  ", 0)


def test_highlighted_words_escape_html_and_mark_unseen_words(gallery):
    why = word_importance(gallery, "a <b>red</b> & pink square", 0)
    page = why.to_html(unseen=("pink",))
    assert "<b>" not in page and "&lt;" in page and "&amp;" in page
    assert page.count("rgba(") == len(why.words)
    assert "underline dotted" in page and page.count("underline dotted") == 1
    for change in why.words["change"]:
        assert f"{change:+.3f}" in page


# ----------------------------------------------------------------------------- uploads


def test_read_upload_understands_ipywidgets_8_and_7():
    content = png_bytes()
    name, image = read_upload(upload_value("green.png", content))
    assert name == "green.png" and image.size == (20, 14) and image.mode == "RGB"
    name7, image7 = read_upload({"green.png": {"metadata": {"name": "green.png"}, "content": content}})
    assert name7 == "green.png" and np.array_equal(np.asarray(image7), np.asarray(image))
    rgba = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(rgba, format="PNG")
    assert read_upload(upload_value("clear.png", rgba.getvalue()))[1].getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("content", [b"not an image at all", png_bytes()[:40], b""])
def test_a_file_that_is_not_an_image_is_named_in_a_clear_error(content):
    with pytest.raises(ValueError, match=r"“notes.png” is not an image Pillow can read .*upload a PNG, JPEG"):
        read_upload(upload_value("notes.png", content))
    with pytest.raises(ValueError, match="no file was uploaded"):
        read_upload(())


# ----------------------------------------------------------------------------- caption -> images


def test_typing_a_dataset_caption_finds_its_image_first(oracle):
    panel = TextSearchPanel(oracle, k=3)
    split = oracle.split
    for i in (0, 5, 11):
        caption = split.records[i].captions[0]
        panel.query.value = caption
        top = panel.results.iloc[0]
        assert int(top["image"]) == i and bool(top["match"]) and top["score"] == pytest.approx(1.0, abs=1e-5)
        shown = visible_text(panel.results_view.value).split()
        assert shown[:4] == ["#1", "·", f"{top['score']:.3f}", "✓"]
        assert split.records[i].name in shown


def test_the_panel_shows_what_the_gallery_finds(gallery):
    panel = TextSearchPanel(gallery)
    caption = gallery.split.captions[7]
    panel.query.value = caption
    expected = gallery.search_text(caption, 5)
    assert panel.results.equals(expected)
    assert panel.results_view.value.count("<img ") == 5
    assert panel.results_view.value.count("✓") == int(expected["match"].sum())
    panel.k.value = 2
    assert len(panel.results) == 2 and panel.results_view.value.count("<img ") == 2
    # Why this match: the first result by default, any other on request.
    assert panel.why.value == int(expected["image"][0])
    assert "".join(panel.importance.words["word"]) == "".join(caption.split())  # every word, punctuation too
    panel.why.value = int(panel.results["image"][1])
    assert panel.importance.image == int(panel.results["image"][1])
    assert panel.importance.to_html() == panel.why_view.value


def test_an_empty_query_clears_the_results_and_asks_for_text(gallery, seen):
    panel = TextSearchPanel(gallery, seen, query="a red circle")
    assert len(panel.results) == 5 and panel.notes.value == ""
    panel.query.value = "   "
    assert panel.results.empty and panel.results_view.value == "" and panel.why_view.value == ""
    assert "Type a caption to search for" in panel.notes.value
    assert panel.snapshot() == []


def test_unseen_words_are_explained_in_the_panel(gallery, data):
    panel = TextSearchPanel(gallery, data.split("train").captions)  # captions or token ids
    panel.query.value = "a pink star above a red circle"
    notes = visible_text(panel.notes.value)
    assert "“pink”, “star” never occur in the training captions" in notes
    assert len(panel.results) == 5  # explained, and searched all the same
    assert panel.why_view.value.count("underline dotted") == 2


def test_text_snapshot_draws_the_results_and_the_word_bars(gallery):
    import matplotlib.pyplot as plt

    panel = TextSearchPanel(gallery, query="a big blue square", k=4)
    retrieval, bars = panel.snapshot()
    assert len(retrieval.axes) == 1 + 4
    assert len(bars.axes[0].patches) == len(panel.importance.words)
    plt.close("all")


# ----------------------------------------------------------------------------- image -> captions


def test_picking_an_image_lists_its_best_captions(gallery):
    panel = ImageSearchPanel(gallery, k=5)
    panel.picker.value = 4
    expected = gallery.search_image(4, 5)
    assert panel.results.equals(expected)
    assert panel.results_view.value.count("<tr") == 1 + 5
    assert panel.results_view.value.count("✓") == int(expected["match"].sum())
    panel.k.value = 3
    assert len(panel.results) == 3


def test_an_uploaded_image_becomes_the_query(gallery):
    panel = ImageSearchPanel(gallery)
    content = png_bytes(color=(214, 39, 40), size=(16, 16))
    upload(panel.upload, "mine.png", content)
    assert panel.query_name == "mine.png" and panel.notes.value == ""
    expected = gallery.search_image(Image.open(io.BytesIO(content)), 5)
    assert panel.results["caption_index"].tolist() == expected["caption_index"].tolist()
    assert not panel.results["match"].any()  # an outside image has no true captions
    assert "uploaded: mine.png" in panel.query_view.value


def test_uploading_a_file_that_is_not_an_image_explains_and_keeps_the_results(gallery):
    panel = ImageSearchPanel(gallery, image=2)
    before = panel.results.copy()
    upload(panel.upload, "notes.txt", b"shopping list")
    assert "“notes.txt” is not an image Pillow can read" in panel.notes.value
    assert panel.results.equals(before) and panel.query_name == gallery.split.records[2].name
    panel.picker.value = 3  # picking an image clears the note
    assert panel.notes.value == "" and panel.results.equals(gallery.search_image(3, 5))


def test_a_bad_start_image_is_refused(gallery):
    with pytest.raises(ValueError, match="outside the test split"):
        ImageSearchPanel(gallery, image=len(gallery.split))


# ----------------------------------------------------------------------------- the explorer


def test_the_explorer_lists_partners_with_their_ranks(gallery):
    explorer = EmbeddingExplorer(gallery)
    sim = gallery.img_emb @ gallery.txt_emb.T
    owner = gallery.split.txt_to_img
    explorer.point.value = ("image", 3)
    table = explorer.partners()
    assert table["caption"].tolist() == np.flatnonzero(owner == 3).tolist()
    for j, rank in zip(table["caption"], table["rank"]):
        assert rank == 1 + int((sim[3] > sim[3, j]).sum())  # no exact ties among random-model scores
    explorer.point.value = ("caption", 8)
    (row,) = explorer.partners().itertuples()
    assert row.image == owner[8] and row.rank == 1 + int((sim[:, 8] > sim[owner[8], 8]).sum())
    assert f"ranked #{row.rank}" in explorer.detail.value


def test_the_map_has_a_point_with_a_tooltip_for_every_image_and_caption(gallery):
    explorer = EmbeddingExplorer(gallery, point=("caption", 0))
    svg = explorer.map_view.value
    n, m = len(gallery.split), len(gallery.split.captions)
    assert svg.count("<image ") == n and svg.count("<title>caption ") == m and svg.count("<title>image ") == n
    assert svg.count("<line ") == 1  # the selected caption joined to its image
    explorer.point.value = ("image", 0)
    assert explorer.map_view.value.count("<line ") == int((gallery.split.txt_to_img == 0).sum())
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', explorer.map_view.value)]
    assert min(xs) >= 0 and max(xs) <= explorer.size


# ----------------------------------------------------------------------------- the whole panel


def test_the_panel_shows_as_a_widget_with_a_short_text_form(gallery, seen):
    import matplotlib.pyplot as plt

    panel = SearchPanel(gallery, seen, query="a red circle")
    bundle = panel._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == panel.widget.model_id and view["version_major"] == 2
    assert bundle["text/plain"].startswith("SearchPanel over the test split (12 images, 60 captions)")
    assert "base64" not in bundle["text/plain"]
    assert [panel.widget.get_title(i) for i in range(3)] == ["Caption → images", "Image → captions", "Shared space"]
    assert len(panel.snapshot()) == 2 + 1 + 1
    plt.close("all")


def test_show_displays_the_panel_and_its_snapshots(gallery, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    panel = TextSearchPanel(gallery, query="a green square")
    panel.show()
    assert shown[0] is panel and len(shown) == 3


def test_an_image_from_code_is_searched_like_an_upload(gallery):
    panel = ImageSearchPanel(gallery)
    drawing = Image.new("RGB", (16, 16), (31, 90, 200))
    panel.use_image(drawing, "drawing.png")
    assert panel.query_name == "drawing.png"
    assert panel.results.equals(gallery.search_image(drawing, 5))
    with pytest.raises(TypeError, match="PIL image"):
        panel.use_image(np.zeros((4, 4, 3)))


def test_the_explorer_draws_at_most_max_images_and_their_captions(gallery):
    explorer = EmbeddingExplorer(gallery, max_images=5)
    svg = explorer.map_view.value
    owner = gallery.split.txt_to_img
    assert svg.count("<image ") == 5 and svg.count("<title>caption ") == int((owner < 5).sum())
    assert len(explorer.point.options) == 5 + int((owner < 5).sum())
    explorer.point.value = ("image", 4)
    sim = gallery.img_emb[4] @ gallery.txt_emb[owner < 5].T  # ranks among the captions drawn
    for j, rank in zip(explorer.partners()["caption"], explorer.partners()["rank"]):
        assert rank == 1 + int((sim > sim[j]).sum())


def test_executed_notebooks_keep_no_widget_state():
    import json

    import nbformat

    from siamese_utils.tools.notebooks import strip_noise

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    strip_noise(nb)
    assert "widgets" not in nb.metadata and "execution" not in nb.cells[0].metadata
    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in notebooks:
        assert "widgets" not in json.loads(path.read_text(encoding="utf-8"))["metadata"], path.name
