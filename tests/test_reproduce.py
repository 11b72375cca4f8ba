"""`reproduce`: every notebook executed as a copy, in order; the report; the comparison with the
expected metrics; exit codes. Small notebooks written here stand in for the series, whose full run
is too long for CI (nbval executes the real ones, each once, in their short setting)."""

import importlib
import inspect
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from siamese_utils.tools.cli import main
from siamese_utils.core.metrics import METRIC_KEYS
from siamese_utils.tools.notebooks import inject_parameters, parameter_names
from siamese_utils.tools.reproduce import EXIT_DIFFERENT, EXIT_FAILED, compare_metrics, load_expected, parse_parameters

REPO = Path(__file__).resolve().parents[1]
EXPECTED = REPO / "results" / "expected.json"
SMALL_FLAGS = ["--image-tower", "seed_cnn", "--embed-dim", "16", "--word-dim", "8", "--text-hidden", "8",
               "--image-size", "16", "--batch-size", "16"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _notebook(path: Path, *sources: str, parameters: str | None = None) -> Path:
    """A notebook: a title, then ``sources`` as code cells, ``parameters`` (tagged) after the first of them."""
    cells = [new_code_cell(s) for s in sources]
    if parameters is not None:
        tagged = new_code_cell(parameters)
        tagged.metadata["tags"] = ["parameters"]
        cells.insert(1, tagged)
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), *cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _reproduce(*args, capsys=None):
    code = main(["reproduce", *map(str, args)])
    captured = capsys.readouterr() if capsys else None
    return code, captured


@pytest.fixture(scope="module")
def trained(small_tiny, tmp_path_factory):
    """A small `train` run: the run folder a notebook of the series would leave behind."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data", str(small_tiny), "--out", str(out), "--num-epochs", "1", *SMALL_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Two passing notebooks: one copies a run folder into $SIAMESE_RUNS, one draws a figure."""
    folder = tmp_path_factory.mktemp("series") / "notebooks"
    _notebook(folder / "01_copy_run.ipynb",
              "import os, shutil\nfrom pathlib import Path",
              "shutil.copytree(SOURCE, Path(os.environ['SIAMESE_RUNS']) / RUN_NAME)",
              "print(os.environ.get('SIAMESE_SMOKE'), os.environ['SIAMESE_THREADS'], os.environ['HF_HUB_OFFLINE'], "
              "Path.cwd().name, Path(os.environ['SIAMESE_DATA']).name)",
              parameters="SOURCE = None\nRUN_NAME = 'copied'")
    _notebook(folder / "02_figure.ipynb",
              "import matplotlib.pyplot as plt",
              "fig, ax = plt.subplots(figsize=(SIZE, SIZE))\nax.plot([0, 1])\nax.set_title('a line');",
              parameters="SIZE = 2")
    return folder


def test_reproduce_runs_copies_records_and_compares(series, trained, small_tiny, tmp_path, capsys):
    threads = str(torch.get_num_threads())  # the thread count `train` evaluated its run at, in this process
    originals = {p: p.read_bytes() for p in series.iterdir()}
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"note": "test", "split": "test", "tolerance": {k: 0 for k in METRIC_KEYS}}))
    out = tmp_path / "results"
    args = [*sorted(series.glob("*.ipynb")), "--out", out, "--data", small_tiny, "--smoke", "--threads", threads,
            "-p", f"SOURCE={str(trained)!r}", "-p", "SIZE=3", "--expected", expected]
    code, captured = _reproduce(*args, "--update-expected", capsys=capsys)
    assert code == 0, captured.err
    assert {p: p.read_bytes() for p in series.iterdir()} == originals  # the originals are never written

    # The executed copies: parameters injected right after the parameters cell of the notebooks that set them.
    copy = nbformat.read(out / "notebooks" / "01_copy_run.ipynb", as_version=4)
    assert copy.cells[3].metadata["tags"] == ["injected-parameters"]
    assert f"SOURCE = {str(trained)!r}" in copy.cells[3].source and "SIZE" not in copy.cells[3].source
    printed = copy.cells[-1].outputs[0]["text"].split()
    assert printed == ["1", threads, "1", series.name, small_tiny.name]  # SIAMESE_SMOKE, threads, offline, cwd, data
    figure_nb = nbformat.read(out / "notebooks" / "02_figure.ipynb", as_version=4)
    assert "SIZE = 3" in figure_nb.cells[3].source and [c.execution_count for c in figure_nb.cells[1:]] == [1, 2, 3, 4]

    # The run folder went to OUT/runs, and its evaluation is exactly `train`'s and `evaluate --json`'s.
    stored = json.loads((trained / "metrics.json").read_text())["test"]
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["copied"]["test"] == stored
    assert results["metrics"]["copied"]["metrics.json"]["test"] == stored
    assert main(["evaluate", str(out / "runs" / "copied"), "--data", str(small_tiny), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stored
    assert json.loads(expected.read_text())["settings"]["smoke"]["runs"] == {"copied": stored}

    # The figure, extracted under a stable name and shown in the report.
    figures = sorted((out / "figures").iterdir())
    assert [f.name for f in figures] == ["02_figure-04.png"] and figures[0].read_bytes().startswith(PNG_MAGIC)
    report = (out / "REPORT.md").read_text()
    assert "](figures/02_figure-04.png)" in report
    for needed in ("## Environment", "| Python |", f"| torch | {torch.__version__.split('+')[0]}", "| Device |",
                   "| Torch threads |", "| Git commit |", "## Key metrics", "| copied |", "--smoke"):
        assert needed in report, needed
    assert re.search(r"\| `\S*01_copy_run.ipynb` \| ok \| \d+\.\d s \|", report)
    assert "Recorded as the expected metrics of the smoke setting" in report

    # The same reproduction compared with what it recorded: all agree.
    code, captured = _reproduce(*args, capsys=capsys)
    assert code == 0, captured.err
    assert f"All {len(METRIC_KEYS)} metrics of 1 run(s) agree" in (out / "REPORT.md").read_text()

    # An expected value off by more than its tolerance, and a run that was not produced: both named, with numbers.
    record = json.loads(expected.read_text())
    record["tolerance"]["i2t_r1"] = 1.0
    record["settings"]["smoke"]["runs"]["copied"]["i2t_r1"] += 5
    record["settings"]["smoke"]["runs"]["ghost"] = {"rsum": 100.0}
    expected.write_text(json.dumps(record))
    code, captured = _reproduce(series / "01_copy_run.ipynb", "--out", out, "--data", small_tiny, "--smoke",
                                "--threads", threads, "-p", f"SOURCE={str(trained)!r}", "--expected", expected,
                                capsys=capsys)  # 01 alone: the copied run, no figure
    assert code == EXIT_DIFFERENT
    assert captured.err.startswith(f"error: 2 metric(s) differ from {expected} (smoke)")
    got = stored["i2t_r1"]
    assert re.search(rf"copied/i2t_r1 +expected +{re.escape(f'{got + 5:.6g}')} +got +{re.escape(f'{got:.6g}')} "
                     r"+difference +-5 +tolerance 1 +\(differs\)", captured.err)
    assert re.search(r"ghost/rsum +expected +100 +got +— .*\(missing: expected, but not produced\)", captured.err)
    report = (out / "REPORT.md").read_text()
    assert "**2 metric(s) differ**" in report
    assert f"| copied | i2t_r1 | {got + 5:.6g} | {got:.6g} | -5 | 1 | differs |" in report
    assert "| ghost | rsum | 100 | — | — | 0 | missing: expected, but not produced |" in report
    assert not (out / "figures").exists()  # each run replaces the last one's figures


def test_a_failing_notebook_is_named_with_its_cell_and_stops_the_run(small_tiny, tmp_path, capsys):
    folder = tmp_path / "notebooks"
    _notebook(folder / "01_fine.ipynb", "x = 1", parameters="N = 1")
    _notebook(folder / "02_broken.ipynb", "a = 1", "b = 2", "1 / 0", "c = 3", parameters="N = 1")
    _notebook(folder / "03_later.ipynb", "print('later')", parameters="N = 1")
    out = tmp_path / "out"
    code, captured = _reproduce(*sorted(folder.iterdir()), "--out", out, "--data", small_tiny, "--no-compare",
                                capsys=capsys)
    assert code == EXIT_FAILED
    assert captured.err.startswith(f"error: {folder / '02_broken.ipynb'} failed at In [4] (cell 5): "
                                   "ZeroDivisionError: division by zero")  # In [4]: the parameters cell is In [2]
    report = (out / "REPORT.md").read_text()
    assert "1 notebook(s) failed" in report
    assert "| **failed** at In [4] (cell 5): ZeroDivisionError: division by zero |" in report
    assert re.search(r"03_later.ipynb` \| not run \(an earlier notebook failed\)", report)
    broken = nbformat.read(out / "notebooks" / "02_broken.ipynb", as_version=4)
    assert broken.cells[4].outputs[0]["output_type"] == "error" and broken.cells[5].execution_count is None
    assert not (out / "notebooks" / "03_later.ipynb").exists()
    assert json.loads((out / "results.json").read_text())["notebooks"][1]["execution_count"] == 4

    # --keep-going runs the rest, and still exits with the failure.
    code, captured = _reproduce(*sorted(folder.iterdir()), "--out", out, "--data", small_tiny, "--no-compare",
                                "--keep-going", capsys=capsys)
    assert code == EXIT_FAILED and "02_broken.ipynb failed at In [4]" in captured.err
    assert nbformat.read(out / "notebooks" / "03_later.ipynb", as_version=4).cells[1].outputs[0]["text"] == "later\n"


def test_a_cell_past_its_timeout_is_a_failure_too(small_tiny, tmp_path, capsys):
    slow = _notebook(tmp_path / "nb" / "01_slow.ipynb", "x = 1", "import time\ntime.sleep(30)")
    code, captured = _reproduce(slow, "--out", tmp_path / "out", "--data", small_tiny, "--no-compare", "--timeout", 2,
                                capsys=capsys)
    assert code == EXIT_FAILED
    assert captured.err.startswith(f"error: {slow} failed at In [2] (cell 3): CellTimeoutError: ")


def test_bad_input_is_one_line_and_runs_nothing(series, small_tiny, tmp_path, capsys):
    bare = _notebook(tmp_path / "nb" / "09_bare.ipynb", "x = 1")
    out = tmp_path / "out"
    first = series / "01_copy_run.ipynb"
    cases = [
        ([first, bare, "-p", "SOURCE=1", "--no-compare"], f"{bare} has no cell tagged 'parameters'"),
        ([first, "-p", "EPOCS=3", "--no-compare"],
         "-p EPOCS: no parameters cell of these notebooks sets it; they set RUN_NAME, SOURCE"),
        ([first, "-p", "RUN_NAME=copied", "--no-compare"], "is not a Python literal"),
        ([first, "-p", "3=1", "--no-compare"], "write NAME=VALUE"),
        ([tmp_path / "missing.ipynb", "--no-compare"], "missing.ipynb does not exist"),
        ([first, "--expected", tmp_path / "none.json"],
         "none.json does not exist: pass --expected FILE, or --no-compare"),
        ([first, "--no-compare", "--data", tmp_path], "dataset.json"),
    ]
    for argv, message in cases:
        code, captured = _reproduce("--out", out, "--data", small_tiny, *argv, capsys=capsys)
        assert code == 2, argv
        assert captured.err.startswith("error: ") and message in captured.err, (argv, captured.err)
        assert len(captured.err.strip().splitlines()) == 1 and not out.exists(), argv

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"tolerance": {k: 0 for k in METRIC_KEYS}, "settings": {"smoke": {"runs": {}}}}))
    code, captured = _reproduce(first, "--out", out, "--data", small_tiny, "--expected", partial, capsys=capsys)
    assert code == 2 and "has no expected metrics for the full setting" in captured.err

    # A folder reproduce did not write is never emptied.
    (out / "runs" / "mine").mkdir(parents=True)
    code, captured = _reproduce(first, "--out", out, "--data", small_tiny, "--no-compare", capsys=capsys)
    assert code == 2 and "not written by reproduce; choose another --out" in captured.err
    assert (out / "runs" / "mine").is_dir()


def test_compare_metrics_match_mismatch_and_missing():
    tolerance = dict.fromkeys(METRIC_KEYS, 0.5)
    expected = {"run": {"i2t_r1": 10.0, "rsum": 100.0}, "gone": {"t2i_r1": 1.0}}
    got = {"run": {"i2t_r1": 10.5, "rsum": 98.0, "t2i_r5": 3.0}, "new": {"i2t_r1": 2.0}}
    rows = {(d.run, d.metric): d for d in compare_metrics(got, expected, tolerance)}
    assert set(rows) == {("run", "i2t_r1"), ("run", "rsum"), ("gone", "t2i_r1"), ("new", "i2t_r1")}
    assert rows["run", "i2t_r1"].ok and rows["run", "i2t_r1"].why == "within tolerance"  # a difference at the tolerance
    assert not rows["run", "rsum"].ok and rows["run", "rsum"].difference == -2.0
    assert not rows["gone", "t2i_r1"].ok and rows["gone", "t2i_r1"].got is None
    assert rows["new", "i2t_r1"].why == "not in the expected file" and not rows["new", "i2t_r1"].ok


def test_parameters_are_literals_injected_after_the_parameters_cell(tmp_path):
    assert parse_parameters(["NUM_EPOCHS=3", "LR = 1e-3", "NAME='gru'", "SIZES=(1, 2)"]) == {
        "NUM_EPOCHS": 3, "LR": 0.001, "NAME": "gru", "SIZES": (1, 2)}
    nb = nbformat.read(_notebook(tmp_path / "n.ipynb", "import os", "y = N * 2", parameters="N = 1\nM: int = 2"),
                       as_version=4)
    assert parameter_names(nb) == {"N", "M"}
    inject_parameters(nb, {"N": 21})
    assert [c.metadata.get("tags") for c in nb.cells[2:4]] == [["parameters"], ["injected-parameters"]]
    scope: dict = {}
    for cell in nb.cells[1:]:
        exec(cell.source, scope)
    assert scope["y"] == 42
    nbformat.validate(nb)


def test_expected_metrics_are_well_formed_and_name_what_the_notebooks_produce():
    notebooks = "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    record = json.loads(EXPECTED.read_text(encoding="utf-8"))
    assert "SIAMESE_THREADS=1 and 2" in record["note"] and record["split"] == "test"
    for setting in ("smoke", "full"):
        runs, tolerance = load_expected(EXPECTED, setting)
        assert runs and set(tolerance) == set(METRIC_KEYS)
        measured = record["settings"][setting]["measured_with"]
        assert measured["device"] == "cpu" and measured["threads"] >= 1
        for run, metrics in runs.items():
            assert list(metrics) == list(METRIC_KEYS), run  # what retrieval_metrics returns, in its order
            # each part of the folder's path is a string in some notebook ("05_composition" / "default")
            assert all(f'\\"{part}\\"' in notebooks for part in run.split("/")), f"no notebook writes the run folder {run}"
            assert 0 <= metrics["i2t_r1"] <= metrics["i2t_r5"] <= metrics["i2t_r10"] <= 100
            assert metrics["rsum"] == pytest.approx(sum(metrics[k] for k in METRIC_KEYS if re.search(r"_r\d+$", k)))
    assert record["settings"]["smoke"]["runs"] != record["settings"]["full"]["runs"]


def test_refresh_notebooks_runs_the_full_setting_even_under_the_tests(tmp_path, capsys):
    """The committed notebooks show the full setting: refresh-notebooks removes SIAMESE_SMOKE from its kernel."""
    assert os.environ.get("SIAMESE_SMOKE") == "1"  # the test run's short setting (conftest.py)
    path = _notebook(tmp_path / "probe.ipynb", "import os\nprint(os.environ.get('SIAMESE_SMOKE'))")
    assert main(["refresh-notebooks", str(path)]) == 0
    assert "full setting (SIAMESE_SMOKE unset in the kernels)" in capsys.readouterr().out
    assert nbformat.read(path, as_version=4).cells[1].outputs[0]["text"] == "None\n"


def test_public_names_point_to_the_readme():
    for module in ("tools.reproduce", "tools.notebooks"):
        mod = importlib.import_module(f"siamese_utils.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert 'README.md`` (section' in (inspect.getdoc(obj) or ""), f"siamese_utils.{module}.{name}"
