"""`strip_noise`: what an executed notebook keeps. A widget view is stored only with the widget state it
points to, so no reader is shown "Error displaying widget: model not found" (the browser test,
`test_browser.py`, looks for that text in JupyterLab)."""

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from siamese_utils.tools.notebooks import strip_noise

REPO = Path(__file__).resolve().parents[1]
VIEW = "application/vnd.jupyter.widget-view+json"


def _view(model_id="abc"):
    return {"version_major": 2, "version_minor": 0, "model_id": model_id}


def test_widget_views_without_their_state_keep_only_their_text_form():
    panel = new_output("display_data", data={VIEW: _view(), "text/plain": "TextSearchPanel over 100 images"})
    result = new_output("execute_result", data={VIEW: _view("def"), "text/plain": "SearchPanel over ..."},
                        execution_count=3)
    bare = new_output("display_data", data={VIEW: _view("ghi")})
    figure = new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    stream = new_output("stream", name="stdout", text="hello\n")
    nb = new_notebook(cells=[new_code_cell("panel.show()", outputs=[panel, figure, stream, bare]),
                             new_code_cell("SearchPanel(gallery)", outputs=[result], execution_count=3)])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}

    strip_noise(nb)

    first, second = nb.cells[0].outputs, nb.cells[1].outputs
    assert [dict(o.data) for o in first if "data" in o] == [{"text/plain": "TextSearchPanel over 100 images"},
                                                          dict(figure.data)]
    assert [o.output_type for o in first] == ["display_data", "display_data", "stream"]  # the bare view is gone
    assert dict(second[0].data) == {"text/plain": "SearchPanel over ..."} and second[0].execution_count == 3
    assert "widgets" not in nb.metadata
    nbformat.validate(nb)


def test_the_committed_notebooks_store_no_widget_view_without_its_state():
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        stored = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        models = set(stored.get("state", {}))
        for i, cell in enumerate(nb["cells"]):
            for output in cell.get("outputs", []):
                view = output.get("data", {}).get(VIEW)
                assert view is None or view["model_id"] in models, (
                    f"{path.name}, cell {i + 1}: a widget view whose state is not stored; "
                    "run strip_noise (siamese_utils.tools.notebooks) on the notebook")
