"""The notebooks as documents: committed executed and in order, the house skeleton, and
what they teach from scratch agreeing with the library. (nbval executes them separately.)"""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["01_preprocessing.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_in_order_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), (
        "outputs must come from one in-order run: python -m siamese_utils refresh-notebooks"
    )
    for c in code:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", _source(c)[:80]
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"stderr (a warning or progress bar) in a stored output: {_source(c)[:80]}"
            )
        assert "execution" not in c.get("metadata", {}), "strip timing metadata (refresh-notebooks does)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_house_skeleton(path):
    cells = _cells(path)
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    number = path.name[:2]
    assert re.match(rf"# {number} · \S", _source(cells[0])), "first line: '# NN · Title'"
    assert "colab.research.google.com/github/" in markdown and f"notebooks/{path.name}" in markdown
    for heading in ("## Summary", "## Exercises", "## References"):
        assert f"\n{heading}" in markdown, heading
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for c in cells:
        if c["cell_type"] == "code":
            ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", _source(c), flags=re.M))  # valid Python, magics aside


def _definitions(path, name):
    """Execute the notebook cell that defines `name` and return the object."""
    for c in _cells(path):
        if c["cell_type"] == "code" and re.search(rf"^def {name}\(", _source(c), re.M):
            namespace = {"torch": torch}
            exec(compile(_source(c), f"{path.name}:{name}", "exec"), namespace)
            return namespace[name]
    raise AssertionError(f"{path.name} no longer defines {name}")


def test_dynamic_padding_taught_in_01_agrees_with_the_collator(tokenizer, tiny_dir):
    from siamese_utils.data import Collator, read_dataset

    pad_token_ids = _definitions(REPO / "notebooks" / "01_preprocessing.ipynb", "pad_token_ids")
    captions = read_dataset(tiny_dir).split("test").captions
    collate = Collator(tokenizer, max_length=512)
    for start in range(0, len(captions), 37):
        chunk = captions[start : start + 37]
        ids, mask = pad_token_ids([tokenizer(c)["input_ids"] for c in chunk], tokenizer.pad_token_id)
        ref = collate.tokenize(chunk)
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
