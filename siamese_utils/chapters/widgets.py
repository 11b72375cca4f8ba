"""Play with a trained dual encoder: a search panel both ways, "why this match", and a map of the shared space.

The panels are ipywidgets (8 in JupyterLab, 7.7 in Google Colab) over a
:class:`~siamese_utils.core.search.Gallery`, which encodes its split once; a query
then costs one pass through one tower and a matrix product, and the page is
redrawn from cached thumbnails. Every panel also draws itself as a static
matplotlib figure (``snapshot``), so a notebook executed without a browser
(CI, nbval, papermill, GitHub's viewer) still shows what the panel showed.

The logic lives in plain functions that the panels call and the tests check
without a browser: :func:`check_query` (words the model has never seen),
:func:`word_importance` (which words a match rests on).

Explained in ``notebooks/08_interactive_search.ipynb``.
"""

from __future__ import annotations

import abc
import base64
import html
import io
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from ..core.data import load_image, to_rgb
from ..core.models import TEXT_TOWERS
from ..core.search import Gallery

__all__ = [
    "seen_token_ids",
    "QueryCheck",
    "check_query",
    "WordImportance",
    "word_importance",
    "read_upload",
    "TextSearchPanel",
    "ImageSearchPanel",
    "EmbeddingExplorer",
    "SearchPanel",
]

_MATCH = "#1a9850"  # the green of plotting.plot_retrieval's ground-truth frames
_SUPPORT, _OPPOSE = (214, 39, 40), (31, 119, 180)  # red: the word holds the match up; blue: it pulls it down


def _widgets():
    try:
        import ipywidgets
    except ImportError:  # pragma: no cover - ipywidgets is a dependency of the package
        raise ImportError("the search panels need ipywidgets: pip install ipywidgets") from None
    return ipywidgets


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- queries


def seen_token_ids(captions: Iterable[str], tokenizer, batch_size: int = 1024) -> frozenset[int]:
    """The token ids that occur in ``captions`` (the training captions): the words a model has learned.

    A text tower trained from scratch has a learned vector only for these ids;
    every other row of its embedding is still at its random starting value.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """
    captions = list(captions)
    seen: set[int] = set()
    for start in range(0, len(captions), batch_size):
        for ids in tokenizer(captions[start:start + batch_size], add_special_tokens=False)["input_ids"]:
            seen.update(ids)
    return frozenset(seen)


@dataclass(frozen=True)
class QueryCheck:
    """What a query's words mean to the model, as :func:`check_query` found it.

    ``words`` are the query's words as the tokenizer splits them (punctuation
    is a word of its own); ``unseen`` those with a piece that no training
    caption contains; ``unknown`` those the tokenizer turns into ``[UNK]``;
    ``cut`` those past ``max_length`` tokens, which truncation drops.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    query: str
    words: tuple[str, ...]
    unseen: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    max_length: int = 32
    pretrained_text: bool = False

    @property
    def empty(self) -> bool:
        return not self.words

    def messages(self) -> list[str]:
        """Plain-language notes for the reader, most important first; empty when there is nothing to say."""
        if self.empty:
            return ["Type a caption to search for, for example “a blue square above a red circle”."]
        notes = []
        quoted = lambda words: ", ".join(f"“{w}”" for w in words)  # noqa: E731
        if self.unseen:
            every = len(self.unseen) + len(self.unknown) >= len(self.words)
            head = (f"None of the words of this query occurs in the training captions ({quoted(self.unseen)}), "
                    "so the results mean nothing. " if every else
                    f"{quoted(self.unseen)} never occur{'s' if len(self.unseen) == 1 else ''} in the training "
                    "captions, so the model has never learned what "
                    f"{'it looks' if len(self.unseen) == 1 else 'they look'} like. ")
            why = ("The pretrained text tower knows the words, but this model was never shown images of them."
                   if self.pretrained_text else
                   "The text tower learned its word vectors from the training captions alone, so "
                   f"{'this one is' if len(self.unseen) == 1 else 'these are'} still the random vectors it "
                   "started with: noise, not meaning.")
            notes.append(head + why + ("" if every else " The ranking rests on the other words."))
        if self.unknown:
            notes.append(f"{quoted(self.unknown)} {'is' if len(self.unknown) == 1 else 'are'} not in the "
                         "tokenizer's vocabulary and became [UNK].")
        if self.cut:
            notes.append(f"The query is longer than {self.max_length} tokens; the model reads no further, so "
                         f"{quoted(self.cut)} {'was' if len(self.cut) == 1 else 'were'} ignored.")
        return notes


def _word_spans(tokenizer, text: str, max_length: int | None):
    """``(input_ids, word_of_position, [(start, end), ...])`` of ``text``; special tokens have word ``None``."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("word-level analysis needs a fast (Rust) tokenizer with word_ids(); "
                        "load it with siamese_utils.load_tokenizer()")
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    enc = tokenizer(text, return_offsets_mapping=True, **kwargs)
    words = enc.word_ids()
    spans: dict[int, list[int]] = {}
    for w, (start, end) in zip(words, enc["offset_mapping"]):
        if w is not None:
            span = spans.setdefault(w, [start, end])
            span[1] = end
    return list(enc["input_ids"]), words, [tuple(spans[w]) for w in sorted(spans)]


def check_query(caption: str, tokenizer, seen: Iterable[int] | None = None, max_length: int = 32,
                pretrained_text: bool = False) -> QueryCheck:
    """Check a free-form query before searching: empty, unseen words, unknown words, words cut off.

    ``seen`` holds the token ids of the training captions
    (:func:`seen_token_ids`); without it no word counts as unseen.
    ``pretrained_text`` words the note for a text tower that knew words
    before training.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """
    if not isinstance(caption, str):
        raise TypeError(f"the query must be a string, not {type(caption).__name__}")
    text = caption.strip()
    if not text:
        return QueryCheck(caption, (), max_length=max_length, pretrained_text=pretrained_text)
    ids, word_of, spans = _word_spans(tokenizer, text, None)
    seen = None if seen is None else frozenset(seen)
    special = set(getattr(tokenizer, "all_special_ids", []))
    unk = getattr(tokenizer, "unk_token_id", None)
    unseen, unknown, cut = set(), set(), set()
    for pos, (i, w) in enumerate(zip(ids, word_of)):
        if w is None:
            continue
        if pos >= max_length - 1:  # the last kept position holds [SEP]
            cut.add(w)
        elif i == unk:
            unknown.add(w)
        elif seen is not None and i not in seen and i not in special:
            unseen.add(w)
    words = tuple(text[s:e] for s, e in spans)
    pick = lambda found: tuple(dict.fromkeys(words[w] for w in sorted(found)))  # noqa: E731  (ordered, unique)
    return QueryCheck(caption, words, pick(unseen), pick(unknown), pick(cut), max_length, pretrained_text)


# --------------------------------------------------------------------------- why this match


@dataclass(frozen=True)
class WordImportance:
    """How much one caption-image score rests on each word, from :func:`word_importance`.

    ``score`` is the cosine similarity of the whole caption with the image;
    ``words`` has one row per word the model reads: ``word``, ``start`` and
    ``end`` (its characters in ``caption``), ``without`` (the score with the
    word dropped) and ``change`` (``score - without``: positive when the word
    supports the match, negative when it speaks against it).

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    caption: str
    image: int | None
    score: float
    words: pd.DataFrame = field(repr=False)

    def to_html(self, unseen: Sequence[str] = ()) -> str:
        """The caption with each word highlighted: red supports the match, blue speaks against it.

        The shade grows with the size of the change, which is also written
        under the word; ``unseen`` words get a dotted underline.
        """
        changes = self.words["change"].to_numpy(dtype=float)
        scale = max(float(np.abs(changes).max()) if len(changes) else 0.0, 1e-6)
        pieces, last = [], 0
        for row in self.words.itertuples(index=False):
            pieces.append(_e(self.caption[last:row.start]))
            rgb = _SUPPORT if row.change >= 0 else _OPPOSE
            alpha = 0.12 + 0.68 * abs(row.change) / scale
            underline = "text-decoration:underline dotted;" if row.word in unseen else ""
            pieces.append(
                f'<span title="without it: {row.without:.3f} ({row.change:+.3f})" style="display:inline-block;'
                f"text-align:center;margin:0 1px;padding:1px 3px;border-radius:3px;{underline}"
                f'background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})">{_e(row.word)}'
                f'<br><span style="font-size:9px;color:#444">{row.change:+.3f}</span></span>'
            )
            last = row.end
        pieces.append(_e(self.caption[last:]))
        return (f'<div style="font-size:15px;line-height:2.1">{"".join(pieces)}</div>'
                f'<div style="font-size:11px;color:#555">score {self.score:.3f} · under each word: how much the '
                'score drops without it (<span style="color:#d62728">red</span>: the word supports this match, '
                '<span style="color:#1f77b4">blue</span>: it speaks against it)</div>')


@torch.no_grad()
def word_importance(gallery: Gallery, caption: str, image) -> WordImportance:
    """Drop one word at a time from ``caption`` and measure how its score with ``image`` changes.

    ``image`` is an index into the gallery's split, a PIL image or an image
    file. A word split into several word pieces is dropped whole. All the
    shortened captions go through the text tower as one batch.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """
    text = caption.strip() if isinstance(caption, str) else caption
    if not isinstance(text, str) or not text:
        raise ValueError(f"empty caption {caption!r}: give a caption to explain")
    ids, word_of, spans = _word_spans(gallery.tokenizer, text, gallery.max_length)
    img = gallery.encode_image(image)
    n_words = len(spans)
    variants = [ids] + [[i for i, w in zip(ids, word_of) if w != drop] for drop in range(n_words)]
    longest = max(len(v) for v in variants)
    pad = gallery.tokenizer.pad_token_id or 0
    input_ids = torch.full((len(variants), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(variants), longest), dtype=torch.long)
    for r, v in enumerate(variants):
        input_ids[r, :len(v)] = torch.tensor(v)
        mask[r, :len(v)] = 1
    model = gallery.model
    txt = model.encode_texts(input_ids.to(gallery.device), mask.to(gallery.device)).float().cpu()
    scores = (txt @ img).double().numpy()
    table = pd.DataFrame({
        "word": [text[s:e] for s, e in spans],
        "start": [s for s, _ in spans],
        "end": [e for _, e in spans],
        "without": scores[1:],
        "change": scores[0] - scores[1:],
    })
    index = int(image) if isinstance(image, (int, np.integer)) and not isinstance(image, bool) else None
    return WordImportance(text, index, float(scores[0]), table)


# --------------------------------------------------------------------------- uploads and thumbnails


def read_upload(value) -> tuple[str, Image.Image]:
    """The first file of a ``FileUpload`` value as ``(name, RGB image)``, for ipywidgets 8 and 7.7.

    ipywidgets 8 holds a tuple of dicts with ``name`` and ``content``;
    ipywidgets 7 a dict ``{name: {"content": bytes, ...}}``. A file Pillow
    cannot read raises ``ValueError`` naming it.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """
    if isinstance(value, dict):
        files = [(name, f.get("content", b"")) for name, f in value.items()]
    else:
        files = [(f.get("name", "upload"), f.get("content", b"")) for f in value or ()]
    if not files:
        raise ValueError("no file was uploaded; choose an image file (PNG, JPEG, ...)")
    name, content = files[-1]
    try:
        with Image.open(io.BytesIO(bytes(content))) as im:
            im.load()
            return name, to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = str(e).split(" <_io")[0]  # Pillow names a BytesIO object; the file name says more
        raise ValueError(f"“{name}” is not an image Pillow can read ({reason}); upload a PNG, JPEG or other "
                         "image file") from None


def _png_b64(image: Image.Image, size: int | None = None) -> str:
    image = to_rgb(image)
    if size and max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbnails:
    """Each image of a split as a base64 PNG, read from disk once, on first use."""

    def __init__(self, split, size: int = 96):
        self.split, self.size = split, size
        self._cache: dict[int, str] = {}

    def __getitem__(self, i: int) -> str:
        if i not in self._cache:
            self._cache[i] = _png_b64(load_image(self.split.records[i].path), self.size)
        return self._cache[i]

    def pil(self, i: int) -> Image.Image:
        return to_rgb(load_image(self.split.records[i].path))


def _img_tag(b64: str, px: int, title: str = "", border: str = "1px solid #bbb") -> str:
    return (f'<img src="data:image/png;base64,{b64}" width="{px}" height="{px}" title="{_e(title)}" '
            f'style="image-rendering:pixelated;border:{border};border-radius:3px">')


def _notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<div style="background:#fff4e5;border-left:4px solid #ff7f0e;padding:4px 8px;'
                   f'margin:2px 0;font-size:13px">{_e(n)}</div>' for n in notes)


def _is_pretrained_text(model) -> bool:
    # The tower registry says which text towers knew words before training on our captions.
    tower = TEXT_TOWERS.get(getattr(getattr(model, "config", None), "text_tower", None))
    return bool(tower and tower.pretrained_words)


class _Panel(abc.ABC):
    """What every panel shares: its ipywidgets container, and a short text form for viewers without widgets."""

    widget = None

    def _summary(self) -> str:
        return f"{type(self).__name__}: open the notebook in JupyterLab or Colab to use it"

    def _repr_mimebundle_(self, include=None, exclude=None):
        # Built by hand, so that ipywidgets 7 and 8 give the same output and the text form stays short
        # (a widget's own repr would spell out every thumbnail).
        return {
            "text/plain": self._summary(),
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": self.widget.model_id,
            },
        }

    def show(self) -> None:
        """Display the live panel, then a static snapshot of what it shows now (for readers without widgets)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        display(self)
        for fig in self.snapshot():
            display(fig)
            plt.close(fig)

    @abc.abstractmethod
    def snapshot(self) -> list:
        """Matplotlib figures of what the panel shows now."""


# --------------------------------------------------------------------------- caption -> images


class TextSearchPanel(_Panel):
    """Type a caption, get the top-``k`` images with their scores, and see which words each match rests on.

    ``seen`` is the set of token ids of the training captions
    (:func:`seen_token_ids`, or pass the training captions themselves);
    unseen, unknown and cut-off words are explained above the results. A
    green frame and ✓ mark the image a dataset caption belongs to. Pick a
    result under *why this match* to highlight the words that hold it up.
    Widgets: ``query`` (Text), ``k`` (IntSlider), ``notes``, ``results_view``,
    ``why`` (Dropdown) and ``why_view`` (HTML). ``results`` holds the current
    results as :meth:`Gallery.search_text` returns them.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    def __init__(self, gallery: Gallery, seen: Iterable[int] | Iterable[str] | None = None, k: int = 5,
                 query: str = "", thumbnails: _Thumbnails | None = None):
        w = _widgets()
        self.gallery = gallery
        self.seen = _as_seen(seen, gallery.tokenizer)
        self.thumbs = thumbnails or _Thumbnails(gallery.split)
        self.results = pd.DataFrame(columns=["rank", "image", "score", "filename", "caption", "match"])
        self.check = check_query("", gallery.tokenizer)
        self.importance: WordImportance | None = None
        self._quiet = False
        self.query = w.Text(value=query, placeholder="a blue square above a red circle", description="Caption",
                            continuous_update=False, layout=w.Layout(width="95%"))
        self.k = w.IntSlider(value=k, min=1, max=min(20, len(gallery.split)), description="k",
                             continuous_update=False)
        self.notes = w.HTML()
        self.results_view = w.HTML()
        self.why = w.Dropdown(options=[], description="Why #", layout=w.Layout(width="45%"))
        self.why_view = w.HTML()
        self._search()
        self.query.observe(self._search, names="value")
        self.k.observe(self._search, names="value")
        self.why.observe(self._explain, names="value")
        self.widget = w.VBox([
            w.HTML("<b>Caption → images.</b> Type a caption and press Enter."),
            self.query, self.k, self.notes, self.results_view,
            w.HTML("<b>Why this match?</b> Each word is dropped in turn; the score falls without the words "
                   "that hold the match up."),
            self.why, self.why_view,
        ])

    def _summary(self) -> str:
        return (f"TextSearchPanel over {len(self.gallery.split)} images; query {self.query.value!r}: "
                "open the notebook in JupyterLab or Colab to use it")

    def _search(self, change=None) -> None:
        self.check = check_query(self.query.value, self.gallery.tokenizer, self.seen, self.gallery.max_length,
                                 _is_pretrained_text(self.gallery.model))
        self.notes.value = _notes_html(self.check.messages())
        if self.check.empty:
            self.results = self.results.iloc[:0]
            self.results_view.value = ""
            self.why.options, self.why_view.value, self.importance = [], "", None
            return
        self.results = self.gallery.search_text(self.query.value, self.k.value)
        self.results_view.value = self._grid()
        previous = self.why.value
        options = [(f"{r.rank} · {r.filename}", int(r.image)) for r in self.results.itertuples()]
        self._quiet = True  # new options fire the dropdown's observer; explain once, below
        try:
            self.why.options = options
            self.why.value = previous if previous in dict(options).values() else options[0][1]
        finally:
            self._quiet = False
        self._explain()

    def _grid(self) -> str:
        cards = []
        for r in self.results.itertuples():
            hit = bool(r.match)
            border = f"3px solid {_MATCH}" if hit else "1px solid #bbb"
            label = f"#{r.rank} · {r.score:.3f}" + (" ✓" if hit else "")
            cards.append(
                f'<div style="text-align:center;font-size:12px;width:104px">'
                f"{_img_tag(self.thumbs[int(r.image)], 96, r.caption, border)}<br>"
                f'<span style="color:{_MATCH if hit else "#000"};font-weight:{"bold" if hit else "normal"}">'
                f'{_e(label)}</span><br><span style="color:#777;font-size:10px">{_e(r.filename)}</span></div>'
            )
        return f'<div style="display:flex;flex-wrap:wrap;gap:6px">{"".join(cards)}</div>'

    def _explain(self, change=None) -> None:
        if self._quiet:
            return
        if self.why.value is None or self.check.empty:
            self.importance, self.why_view.value = None, ""
            return
        self.importance = word_importance(self.gallery, self.query.value, int(self.why.value))
        self.why_view.value = self.importance.to_html(self.check.unseen)

    def snapshot(self) -> list:
        """The current results as :func:`~siamese_utils.chapters.plotting.plot_retrieval` draws them, and the word bars."""
        from .plotting import plot_retrieval, plot_word_importance

        if self.check.empty or self.results.empty:
            return []
        res = self.results
        figs = [plot_retrieval([self.query.value.strip()], [[self.thumbs.pil(int(i)) for i in res["image"]]],
                               [res["score"].tolist()], [res["match"].tolist()],
                               title="Caption → images, as the panel shows them")]
        if self.importance is not None:
            rank = int(res.index[res["image"] == self.importance.image][0]) + 1
            figs.append(plot_word_importance(self.importance, unseen=self.check.unseen,
                                             title=f"Why result #{rank} matches"))
        return figs


def _as_seen(seen, tokenizer) -> frozenset[int] | None:
    if seen is None:
        return None
    items = list(seen)
    if items and isinstance(items[0], str):
        return seen_token_ids(items, tokenizer)
    return frozenset(int(i) for i in items)


# --------------------------------------------------------------------------- image -> captions


class ImageSearchPanel(_Panel):
    """Pick an image of the split (or upload one) and get the top-``k`` captions with their scores.

    The captions of the picked image are marked ✓. An uploaded file becomes
    the query until another image is picked; a file that is not an image is
    explained and the last results stay. Widgets: ``picker`` (Dropdown),
    ``upload`` (FileUpload), ``k`` (IntSlider), ``notes``, ``query_view``,
    ``results_view``; ``results`` holds the current results as
    :meth:`Gallery.search_image` returns them.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    def __init__(self, gallery: Gallery, k: int = 5, image: int = 0, thumbnails: _Thumbnails | None = None):
        w = _widgets()
        self.gallery = gallery
        self.thumbs = thumbnails or _Thumbnails(gallery.split)
        records = gallery.split.records
        self.picker = w.Dropdown(options=[(f"{i}: {r.name} — {r.captions[0]}", i) for i, r in enumerate(records)],
                                 value=gallery.check_index(image), description="Image", layout=w.Layout(width="95%"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload an image")
        self.k = w.IntSlider(value=k, min=1, max=min(20, len(gallery.split.captions)), description="k",
                             continuous_update=False)
        self.notes = w.HTML()
        self.query_view = w.HTML()
        self.results_view = w.HTML()
        self.query_image: Image.Image | int = self.picker.value
        self.query_name = records[self.picker.value].name
        self.picker.observe(self._pick, names="value")
        self.upload.observe(self._upload, names="value")
        self.k.observe(self._search, names="value")
        self.widget = w.VBox([
            w.HTML("<b>Image → captions.</b> Pick an image of the split, or upload your own."),
            w.HBox([self.picker]), w.HBox([self.upload, self.k]), self.notes,
            w.HBox([self.query_view, self.results_view]),
        ])
        self._search()

    def _summary(self) -> str:
        return (f"ImageSearchPanel over {len(self.gallery.split.captions)} captions; query {self.query_name}: "
                "open the notebook in JupyterLab or Colab to use it")

    def _pick(self, change=None) -> None:
        self.query_image, self.query_name = self.picker.value, self.gallery.split.records[self.picker.value].name
        self.notes.value = ""
        self._search()

    def _upload(self, change=None) -> None:
        try:
            name, image = read_upload(self.upload.value)
        except ValueError as e:
            self.notes.value = _notes_html([str(e)])
            return
        self.use_image(image, name)

    def use_image(self, image: Image.Image, name: str = "your image") -> None:
        """Search with an image from outside the split, as an upload does (from code, or a drawing of your own)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image, not {type(image).__name__}")
        self.query_image, self.query_name = to_rgb(image), name
        self.notes.value = ""
        self._search()

    def _search(self, change=None) -> None:
        self.results = self.gallery.search_image(self.query_image, self.k.value)
        if isinstance(self.query_image, Image.Image):
            b64, title = _png_b64(self.query_image, 96), f"uploaded: {self.query_name}"
        else:
            b64, title = self.thumbs[self.query_image], self.query_name
        self.query_view.value = (f'<div style="text-align:center;font-size:11px;margin-right:12px">'
                                 f'{_img_tag(b64, 128, title, "2px solid #1f77b4")}<br>{_e(title)}</div>')
        rows = []
        for r in self.results.itertuples():
            hit = bool(r.match)
            style = f"background:#eaf5ea;color:{_MATCH};font-weight:bold" if hit else ""
            rows.append(f'<tr style="{style}"><td>#{r.rank}</td><td>{r.score:.3f}</td>'
                        f'<td style="text-align:left">{_e(r.caption)}</td><td>{"✓" if hit else ""}</td></tr>')
        self.results_view.value = ('<table style="font-size:13px;border-collapse:collapse">'
                                   "<tr><th>rank</th><th>score</th><th>caption</th><th></th></tr>"
                                   f'{"".join(rows)}</table>')

    def snapshot(self) -> list:
        """The current results as :func:`~siamese_utils.chapters.plotting.plot_retrieval` draws them."""
        from .plotting import plot_retrieval

        query = self.query_image if isinstance(self.query_image, Image.Image) else self.thumbs.pil(self.query_image)
        res = self.results
        return [plot_retrieval([query], [res["caption"].tolist()], [res["score"].tolist()], [res["match"].tolist()],
                               title="Image → captions, as the panel shows them")]


# --------------------------------------------------------------------------- the shared space


class EmbeddingExplorer(_Panel):
    """Images and captions of a split on a 2-D map of the shared space (PCA of both together).

    Hover over a point to read its caption or see its image's name and first
    caption; pick an image or a caption in ``point`` to ring it, join it to its
    partners and list where they rank. Points are ``("image", i)`` or
    ``("caption", j)``. Only the first ``max_images`` images and their
    captions are drawn (a map of thousands is unreadable, and heavy to send
    to the browser); ranks are among those.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    def __init__(self, gallery: Gallery, point: tuple[str, int] = ("image", 0), size: int = 520,
                 max_images: int = 300, thumbnails: _Thumbnails | None = None):
        from .plotting import pca_2d

        w = _widgets()
        self.gallery, self.size = gallery, size
        self.thumbs = thumbnails or _Thumbnails(gallery.split, size=32)
        self.n = min(len(gallery.split), max_images)
        self.owner = np.asarray(gallery.txt_to_img)
        m = int(np.searchsorted(self.owner, self.n))  # captions are numbered in image order
        self.owner = self.owner[:m]
        img, txt = gallery.img_emb[:self.n], gallery.txt_emb[:m]
        self.img_emb, self.txt_emb = img, txt
        coords, self.explained = pca_2d(torch.cat([img, txt]))
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        span = float(max(hi - lo)) or 1.0
        pad = 24
        xy = (coords - lo) / span * (size - 2 * pad) + pad
        xy[:, 1] = size - xy[:, 1]  # SVG's y axis points down
        self.img_xy, self.txt_xy = xy[:self.n], xy[self.n:]
        self.sim = img @ txt.T  # (N, M): small for a split one browses by hand
        split = gallery.split
        options = [(f"image {i}: {split.records[i].name}", ("image", i)) for i in range(self.n)]
        options += [(f"caption {j}: {split.captions[j]}", ("caption", j)) for j in range(m)]
        self.point = w.Dropdown(options=options, value=point, description="Point", layout=w.Layout(width="95%"))
        self.map_view = w.HTML()
        self.detail = w.HTML(layout=w.Layout(width="40%"))
        self.point.observe(self._draw, names="value")
        self.widget = w.VBox([
            w.HTML("<b>The shared space.</b> Squares are images, dots captions; hover to read them, pick one "
                   "below to see its partners."),
            self.point, w.HBox([self.map_view, self.detail]),
        ])
        self._draw()

    def _summary(self) -> str:
        return (f"EmbeddingExplorer of {self.n} images and {len(self.txt_xy)} captions: "
                "open the notebook in JupyterLab or Colab to use it")

    def partners(self) -> pd.DataFrame:
        """The selected point's partners (an image's captions, or a caption's image) and where they rank."""
        kind, i = self.point.value
        owner = self.owner
        if kind == "image":
            mine = [int(j) for j in np.flatnonzero(owner == i)]
            order = torch.argsort(self.sim[i], descending=True, stable=True).tolist()
            rank = {j: order.index(j) + 1 for j in mine}
            return pd.DataFrame({"caption": mine, "text": [self.gallery.split.captions[j] for j in mine],
                                 "rank": [rank[j] for j in mine], "score": [float(self.sim[i, j]) for j in mine]})
        image = int(owner[i])
        order = torch.argsort(self.sim[:, i], descending=True, stable=True).tolist()
        return pd.DataFrame({"image": [image], "filename": [self.gallery.split.records[image].name],
                             "rank": [order.index(image) + 1], "score": [float(self.sim[image, i])]})

    def _draw(self, change=None) -> None:
        kind, sel = self.point.value
        owner = self.owner.tolist()
        split = self.gallery.split
        lines, rings = [], []
        if kind == "image":
            targets = [j for j, o in enumerate(owner) if o == sel]
            lines = [(self.img_xy[sel], self.txt_xy[j]) for j in targets]
            rings.append((self.img_xy[sel], 14))
        else:
            lines = [(self.txt_xy[sel], self.img_xy[owner[sel]])]
            rings.append((self.txt_xy[sel], 7))
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.size}" height="{self.size}" '
                 f'style="background:white;border:1px solid #ccc">']
        for j, (x, y) in enumerate(self.txt_xy):
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#ff7f0e" fill-opacity="0.6">'
                         f"<title>caption {j}: {_e(split.captions[j])}</title></circle>")
        for (x0, y0), (x1, y1) in lines:
            parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#d62728" '
                         'stroke-width="1.5"/>')
        for i, (x, y) in enumerate(self.img_xy):
            r = split.records[i]
            parts.append(f'<image href="data:image/png;base64,{self.thumbs[i]}" x="{x - 9:.1f}" y="{y - 9:.1f}" '
                         f'width="18" height="18" style="image-rendering:pixelated"><title>image {i}: {_e(r.name)} — '
                         f"{_e(r.captions[0])}</title></image>")
        for (x, y), radius in rings:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="none" stroke="#d62728" '
                         'stroke-width="2.5"/>')
        parts.append("</svg>")
        self.map_view.value = "".join(parts)
        table = self.partners()
        if kind == "image":
            items = "".join(f"<li>{_e(t)} <span style='color:#555'>(ranked #{rk} for this image)</span></li>"
                            for t, rk in zip(table["text"], table["rank"]))
            self.detail.value = (f"{_img_tag(self.thumbs[sel], 96, split.records[sel].name)}"
                                 f"<div style='font-size:12px'><b>image {sel}</b>: {_e(split.records[sel].name)}"
                                 f"<ul>{items}</ul></div>")
        else:
            row = table.iloc[0]
            self.detail.value = (f"<div style='font-size:12px'><b>caption {sel}</b>: {_e(split.captions[sel])}"
                                 f"<br>its image, ranked #{row['rank']} for this caption:</div>"
                                 f"{_img_tag(self.thumbs[int(row['image'])], 96, row['filename'])}")

    def snapshot(self) -> list:
        """The map as :func:`~siamese_utils.chapters.plotting.plot_embedding_map` draws it, the selection ringed."""
        from .plotting import plot_embedding_map, pca_2d

        g = self.gallery
        fig = plot_embedding_map(self.img_emb, self.txt_emb, self.owner,
                                 title="The shared space, as the explorer shows it (PCA)")
        ax = fig.axes[0]
        coords, _ = pca_2d(torch.cat([self.img_emb, self.txt_emb]))
        kind, sel = self.point.value
        owner = self.owner.tolist()
        if kind == "image":
            centre, others = coords[sel], [coords[self.n + j] for j, o in enumerate(owner) if o == sel]
            label = f"image {sel}: {g.split.records[sel].name}"
        else:
            centre, others = coords[self.n + sel], [coords[owner[sel]]]
            label = f"caption {sel}: {g.split.captions[sel]}"
        for p in others:
            ax.plot([centre[0], p[0]], [centre[1], p[1]], color="tab:red", linewidth=1.5, zorder=5)
        ring = ax.scatter([centre[0]], [centre[1]], s=260, facecolors="none", edgecolors="tab:red", linewidths=2.5,
                          zorder=6)
        legend = ax.get_legend()
        handles = list(getattr(legend, "legend_handles", None) or legend.legendHandles)  # matplotlib < 3.7
        labels = [t.get_text() for t in legend.get_texts()]
        ax.legend(handles + [ring], labels + [textwrap.shorten(label, 48)], fontsize=8, loc="best")
        return [fig]


# --------------------------------------------------------------------------- all of it


class SearchPanel(_Panel):
    """The three panels in tabs: caption → images, image → captions, and the map of the shared space.

    ``seen``: the training captions (or their token ids), for the notes on
    unseen words. ``text``, ``image`` and ``explorer`` are the three panels.

    Explained in ``notebooks/08_interactive_search.ipynb``.
    """

    def __init__(self, gallery: Gallery, seen: Iterable[int] | Iterable[str] | None = None, k: int = 5,
                 query: str = ""):
        w = _widgets()
        self.gallery = gallery
        thumbs = _Thumbnails(gallery.split)
        self.text = TextSearchPanel(gallery, seen, k=k, query=query, thumbnails=thumbs)
        self.image = ImageSearchPanel(gallery, k=k, thumbnails=thumbs)
        self.explorer = EmbeddingExplorer(gallery)
        self.widget = w.Tab(children=[self.text.widget, self.image.widget, self.explorer.widget])
        for i, title in enumerate(("Caption → images", "Image → captions", "Shared space")):
            self.widget.set_title(i, title)

    def _summary(self) -> str:
        return (f"SearchPanel over the {self.gallery.split.name} split ({len(self.gallery.split)} images, "
                f"{len(self.gallery.split.captions)} captions): open the notebook in JupyterLab or Colab to use it")

    def snapshot(self) -> list:
        """The snapshots of the three panels, in tab order."""
        return self.text.snapshot() + self.image.snapshot() + self.explorer.snapshot()
