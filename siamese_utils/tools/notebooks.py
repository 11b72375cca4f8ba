"""Executing the series' notebooks: in place, so their stored outputs are one in-order run, or as
copies elsewhere, with parameters injected, as ``reproduce`` does; and holding their text to those
outputs (``claim`` in a cell, ``unbacked_numbers`` over a whole notebook).

Explained in ``README.md`` (sections "Working on the notebooks" and "Reproducing the results").
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Mapping

from nbclient.exceptions import CellExecutionError

from ..core.runtime import atomic_write

__all__ = ["execute_notebook", "strip_noise", "run_notebook", "NotebookFailure", "inject_parameters",
           "parameter_names", "OFFLINE_ENV", "SMOKE_VARIABLE", "claim",
           "unbacked_numbers", "UnbackedNumber"]

# Metadata that changes on every run without changing the lesson.
_LANGUAGE_INFO_KEEP = ("name", "codemirror_mode", "file_extension", "mimetype", "nbconvert_exporter", "pygments_lexer")

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SIAMESE_OFFLINE": "1"}
"""Set in every kernel these functions start: the series never downloads."""

SMOKE_VARIABLE = "SIAMESE_SMOKE"
"""``SIAMESE_SMOKE=1`` selects every notebook's short setting (``SMOKE`` in its ``parameters`` cell).

The test run sets it (``conftest.py``), so ``python -m pytest`` never waits for a
full run whatever the shell exports; ``reproduce --smoke`` sets it in its kernels;
``refresh-notebooks`` removes it, since the committed notebooks show the full setting.
"""


def claim(holds: bool, sentence: str, *, checked: bool = True) -> None:
    """Check a sentence of a chapter's text against the result it describes: ``claim(gap < 0.05, "...")``.

    A rerun whose result no longer supports the sentence fails here, instead of leaving the text wrong.
    ``checked=False`` skips the check, for a short setting whose numbers the text does not describe.

    Explained in ``README.md`` (section "Working on the notebooks").
    """
    if checked and not holds:
        raise AssertionError(f"the text says {sentence!r}, and this run's result does not support it: "
                             "correct the text, or find out what changed")


# --------------------------------------------------------------------------- numbers in the text, and the outputs

@dataclass(frozen=True)
class UnbackedNumber:
    """A result-like number of a notebook's markdown that no stored output shows (see :func:`unbacked_numbers`).

    Explained in ``README.md`` (section "Working on the notebooks").
    """

    number: str      # as written, unit or % sign included: "25.2 ms", "74 %"
    sentence: str    # the sentence, list item or table row it stands in, on one line
    cell_index: int  # the markdown cell's position in the notebook, from 0

    def __str__(self) -> str:
        return f"(cell {self.cell_index + 1}) {self.number}: {self.sentence}"


_TIME_UNIT = (r"(?:ms|µs|ns|min|mins|sec|secs|milliseconds?|microseconds?|seconds?|minutes?|hours?"
              r"|(?<= )(?:s|h))(?![\w])")
# A number as written: thousands separated by commas ("30,522") or not; a sign; decimals.
_NUMBER = r"[-−+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)*"
# A percentage followed by "interval", "confidence" or "CI" is a confidence level, a setting rather than a result.
_MARKDOWN_NUMBER = re.compile(rf"(?<![\w.@/^_\\-])(?P<n>{_NUMBER})(?!\d)(?:(?P<pct> ?%)"
                              rf"(?!\s*(?:confidence|interval|CI)\b)|(?P<level> ?%)|(?P<unit> ?{_TIME_UNIT}))?")
# Every number an output prints, versions aside ("0.1.0" is no number): 1,024 · 0.070 · 1e-06.
_OUTPUT_NUMBER = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\.?\d)")

_FENCED = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_HIDDEN = re.compile(r"<!--.*?-->|<img\b[^>]*>", re.S)
_INLINE = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|``.+?``|`[^`\n]+`|\\\(.+?\\\)|\\\[.+?\\\]", re.S)
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)|<https?://[^>]*>|https?://\S+")
_CITATION = re.compile(r"et al\.|\bpublished\b|\breported by\b|\barXiv\b|\b\d{4}\.\d{4,5}(?:v\d+)?\b"
                       r"|\([^()]*\b(?:19|20)\d\d[a-z]?\b[^()]*\)|\]\(https?://", re.I)
_REFERENCES = re.compile(r"^#{1,2}\s+(references|bibliography|further reading)\b", re.I | re.M)
_HEADING = re.compile(r"^#{1,2}\s", re.M)
_UNIT_START = re.compile(r"^ {0,3}(?:[-*+]\s|\d+\.\s|\||#|>)")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z*_(\[`\"“])")
_ABBREVIATION = re.compile(r"(?:\bet al|\be\.g|\bi\.e|\bcf|\bvs|\bFig|\bEq|\bNo|\b[A-Z])\.$")
_TAG = re.compile(r"<[^>]+>")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _output_texts(nb) -> Iterator[str]:
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "stream":
                yield _text(out.get("text", ""))
            for kind in ("text/plain", "text/markdown", "text/html"):
                if kind in out.get("data", {}):
                    text = _text(out["data"][kind])
                    yield _TAG.sub(" ", text) if kind == "text/html" else text


def _units(markdown: str) -> Iterator[str]:
    # The sentences of a markdown cell; a list item, table row, heading or quote starts a unit of its own.
    blocks: list[list[str]] = []
    for line in markdown.splitlines():
        if not line.strip():
            blocks.append([])
        elif _UNIT_START.match(line) or not blocks or (blocks[-1] and blocks[-1][0].lstrip().startswith("|")):
            blocks.append([line])
        else:
            blocks[-1].append(line)
    for block in blocks:
        pieces = _SENTENCE_END.split(" ".join(s.strip() for s in block))
        sentence = ""
        for piece in pieces:
            sentence = f"{sentence} {piece}" if sentence else piece
            if not _ABBREVIATION.search(sentence):
                yield sentence
                sentence = ""
        if sentence:
            yield sentence


def _value(written: str) -> Decimal:
    # "−1,024.50" -> Decimal("1024.5"): the magnitude, compared by value (97.0 == 97).
    return abs(Decimal(written.lstrip("-−+").replace(",", "")))


def unbacked_numbers(nb) -> list[UnbackedNumber]:
    """The result-like numbers of a notebook's markdown that none of its stored outputs shows.

    ``nb`` is a notebook (as read by ``nbformat`` or ``json``) or the path of one. The rule, kept
    simple so that a writer can predict it:

    - *Result-like* is a number with a decimal point (``0.48``), with a ``%`` sign (``97 %``), or with a
      unit of time (``25 ms``, ``3 s``, ``2 min``, ``1 h``, and the words ``seconds``, ``minutes``,
      ``hours``, ``milliseconds``). Counts, sizes and years (``600 images``, ``64 px``, ``2021``) are not,
      nor is a confidence level (``a 95 % interval``, ``95 % confidence``, ``95 % CI``), nor a version with
      two dots or more (``3.11.2``; write a shorter one between backquotes, as code: `ipywidgets 7.7`).
    - It is *backed* when some number in the notebook's stored outputs (``stream``, ``text/plain``,
      ``text/html`` with its tags removed, ``text/markdown``; any cell) has the same value, compared as
      numbers: signs and thousands separators are ignored (``1,024`` is ``1024``, ``−0.02`` is ``0.02``),
      trailing zeros too (``97.0`` backs ``97 %``), and a percentage may be printed as a fraction
      (``0.438`` backs ``43.8 %``). Rounding is not: to quote ``0.48``, print ``0.48``.
    - A figure *from the literature* is exempt: the sentence (or list item, or table row) it stands in
      cites its source, with ``et al.``, a year in parentheses (``(Zhai et al., 2022)``, ``(2021)``),
      ``published``, ``reported by``, an arXiv id, or a link to a web page (``[text](https://...)``); so is
      everything under a ``# References`` or ``## References`` heading.
    - Code and formulas are not results: fenced code blocks, inline code (between backquotes:
      `margin=0.3`) and LaTeX (``$1 - 0.3$``, ``$$...$$``) are skipped, and so are link targets and HTML
      comments. Write an illustrative constant there (``a gap of $0.1$``), never a measured one.

    A sentence may state a result in words ("about twice as fast"); this rule does not see those, and
    :func:`claim` checks them in the cell that prints the result. Returns the numbers in the order they
    appear, each with its sentence and cell. Explained in ``README.md`` (section "Working on the notebooks").
    """
    if isinstance(nb, (str, os.PathLike)):
        nb = json.loads(Path(nb).read_text(encoding="utf-8"))
    printed = {_value(m.group()) for text in _output_texts(nb) for m in _OUTPUT_NUMBER.finditer(text)}

    found: list[UnbackedNumber] = []
    in_references = False
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "markdown":
            continue
        source = _HIDDEN.sub(" ", _FENCED.sub(" ", _text(cell.get("source", ""))))
        for unit in _units(source):
            if _HEADING.match(unit):
                in_references = bool(_REFERENCES.match(unit))
            if in_references or _CITATION.search(unit):
                continue
            for m in _MARKDOWN_NUMBER.finditer(_LINK_TARGET.sub("]", _INLINE.sub(" ", unit))):
                written = m.group("n")
                if written.count(".") > 1 or not ("." in written or m.group("pct") or m.group("unit")):
                    continue
                value = _value(written)
                if value in printed or (m.group("pct") and value / 100 in printed):
                    continue
                found.append(UnbackedNumber(m.group().strip(), " ".join(unit.split()), index))
    return found


def strip_noise(nb) -> None:
    """Drop per-run metadata (execution timestamps, interpreter version, widget state); keep every output.

    The state of ipywidgets (notebook 08's panels, with every thumbnail they
    show) would add about a megabyte per run; each panel draws a static
    snapshot of itself into the outputs instead. Without its state a stored
    widget view points at a model no reader has (JupyterLab, VS Code and Colab
    then print "Error displaying widget: model not found"), so each output
    keeps only its other forms, the ``text/plain`` line that says what the
    panel was; an output with nothing else is dropped.

    Explained in ``README.md`` (section "Working on the notebooks").
    """
    nb.metadata.pop("widgets", None)
    info = nb.metadata.get("language_info")
    if info:
        nb.metadata["language_info"] = {k: v for k, v in info.items() if k in _LANGUAGE_INFO_KEEP}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.get("cell_type") == "code" and "outputs" in cell:
            cell.outputs = [out for out in cell.outputs if _without_widget_views(out)]


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _without_widget_views(output) -> bool:
    # Remove the widget view from a display_data / execute_result output; False when nothing else is left.
    data = output.get("data")
    if not data or _WIDGET_VIEW not in data:
        return True
    del data[_WIDGET_VIEW]
    return bool(data)


@contextlib.contextmanager
def environment_changes(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (a string) or remove (``None``) environment variables for the ``with`` block, then restore them.

    Explained in ``README.md``.
    """
    # The kernel inherits this process's environment: set (or, for None, remove) variables for its start.
    def apply(variables: Mapping[str, str | None]) -> None:
        for k, v in variables.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    saved = {k: os.environ.get(k) for k in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(saved)


class NotebookFailure(CellExecutionError):
    """A notebook stopped: which cell (its position and ``In [n]`` number) and the error's first line.

    ``str()`` of it is the cell's traceback, as nbclient's ``CellExecutionError``
    (which it is); :attr:`summary` is the one line that names notebook, cell and error.

    Explained in ``README.md`` (section "Reproducing the results").
    """

    def __init__(self, path: str | os.PathLike, cell_index: int | None, execution_count: int | None,
                 first_line: str, details: str = ""):
        ename, _, evalue = first_line.partition(": ")
        super().__init__(details or first_line, ename, evalue)
        self.path, self.cell_index, self.execution_count = Path(path), cell_index, execution_count
        self.first_line = first_line

    def __reduce__(self):
        return type(self), (self.path, self.cell_index, self.execution_count, self.first_line, self.traceback)

    @property
    def summary(self) -> str:
        """``notebooks/03_x.ipynb failed at In [5] (cell 12): ValueError: ...``"""
        return f"{self.path} failed {self.where}: {self.first_line}"

    @property
    def where(self) -> str:
        """``at In [5] (cell 12)``: the cell as Jupyter numbers it, and its position (from 1) in the file."""
        if self.cell_index is None:
            return "before its first cell"
        number = f"In [{self.execution_count}] " if self.execution_count else ""
        return f"at {number}(cell {self.cell_index + 1})"


def _execute(nb, path: Path, timeout: int, kernel_name: str, env: Mapping[str, str | None]) -> None:
    # Run ``nb`` (read from ``path``) in a fresh kernel whose working directory is ``path``'s folder;
    # raise NotebookFailure naming the cell that stopped it.
    import nbclient

    current: dict[str, Any] = {"index": None}

    def on_cell_start(cell, cell_index, **_):
        current["index"] = cell_index

    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(path.parent)}},
        record_timing=False, on_cell_start=on_cell_start,
    )
    with environment_changes({**OFFLINE_ENV, **env}):
        try:
            client.execute()
        except CellExecutionError as e:
            index = current["index"]
            raise NotebookFailure(path, index, nb.cells[index].get("execution_count"), f"{e.ename}: {e.evalue}",
                                  str(e)) from None
        except Exception as e:  # a cell past its timeout, a kernel that died or never started
            index = current["index"]
            count = nb.cells[index].get("execution_count") if index is not None else None
            first = (str(e).strip().splitlines() or [""])[0]
            raise NotebookFailure(path, index, count, f"{type(e).__name__}: {first}", str(e)) from None


def execute_notebook(path: str | os.PathLike, timeout: int = 1800, kernel_name: str = "python3") -> Path:
    """Run a notebook top to bottom in a fresh kernel (working directory: its folder) and save it.

    The kernel runs the full setting (:data:`SMOKE_VARIABLE` removed from its
    environment), the one the committed notebooks show.

    The notebook is written only if every cell succeeds; on an error the file on
    disk is left as it was and a :class:`NotebookFailure` names the failing cell.

    Explained in ``README.md`` (section "Working on the notebooks").
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    _execute(nb, path, timeout, kernel_name, {SMOKE_VARIABLE: None})
    strip_noise(nb)
    atomic_write(path, lambda tmp: nbformat.write(nb, tmp))
    return path


def _parameters_cell(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    return None


def parameter_names(nb) -> set[str]:
    """The names the notebook's ``parameters`` cell assigns (empty without such a cell).

    Explained in ``README.md`` (section "Reproducing the results").
    """
    index = _parameters_cell(nb)
    if index is None:
        return set()
    names: set[str] = set()
    for node in ast.walk(ast.parse(nb.cells[index].source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def inject_parameters(nb, parameters: Mapping[str, Any], name: str = "the notebook") -> None:
    """Insert a cell assigning ``parameters`` right after the cell tagged ``parameters``.

    The new cell is tagged ``injected-parameters`` (papermill's convention), so
    its values override the defaults while everything after them, the lesson
    included, runs unchanged. ``name`` is what the error says when the
    notebook has no ``parameters`` cell.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    import nbformat

    index = _parameters_cell(nb)
    if index is None:
        raise ValueError(f"{name} has no cell tagged 'parameters' to inject {', '.join(parameters)} after; "
                         "tag the cell that holds its knobs, or run it without -p")
    lines = ["# Parameters injected by `python -m siamese_utils reproduce -p NAME=VALUE`"]
    lines += [f"{key} = {value!r}" for key, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    cell.pop("id", None)
    if nb.nbformat_minor >= 5 or "id" in nb.cells[index]:
        cell["id"] = f"injected-parameters-{index}"
    nb.cells.insert(index + 1, cell)


def run_notebook(path: str | os.PathLike, output: str | os.PathLike, *, parameters: Mapping[str, Any] | None = None,
                 env: Mapping[str, str | None] | None = None, timeout: int = 1800,
                 kernel_name: str = "python3") -> tuple[float, NotebookFailure | None]:
    """Execute a copy of the notebook at ``path`` and save it to ``output``; ``path`` is never written.

    The kernel's working directory is ``path``'s folder, so the notebook's
    relative paths hold; ``env`` sets (or, with ``None``, removes) variables in
    its environment; ``parameters`` are injected (:func:`inject_parameters`).
    Every stored output is cleared first, so the copy shows only this run, and
    it is saved whether or not a cell fails. Returns the seconds taken and the
    :class:`NotebookFailure`, or ``None`` when every cell ran.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    import time

    import nbformat

    path, output = Path(path), Path(output)
    nb = nbformat.read(path, as_version=4)
    if parameters:
        inject_parameters(nb, parameters, str(path))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.perf_counter()
    failure = None
    try:
        _execute(nb, path, timeout, kernel_name, env or {})
    except NotebookFailure as e:
        failure = e
    seconds = time.perf_counter() - start
    strip_noise(nb)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return seconds, failure
