"""Course assignments: student versions generated from the notebooks' own markers, the same bytes on every
run and valid, giving nothing away; an autograder whose checks pass on the notebooks' solutions and fail,
with a message a student can act on, on a missing or wrong one; clear errors that lose nothing."""

import ast
import copy
import json
import math
import re
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siamese_utils.tools import assignments as A
from siamese_utils.tools.cli import main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOURCES = [p for p in NOTEBOOKS  # the notebooks with exercises: a solution cell in nbgrader's metadata
           if any(c["metadata"].get("nbgrader", {}).get("solution") for c in json.loads(p.read_text())["cells"])]

# What each notebook asks students to write: grade id of the checks -> what they write.
EXPECTED = {
    "01_preprocessing.ipynb": {"pad_token_ids_tests": ("pad_token_ids",)},
    "02_model_construction.ipynb": {"masked_mean_tests": ("masked_mean",),
                                    "attention_pool_tests": ("AttentionPool.forward",)},
    "03_contrastive_training.ipynb": {"hinge_loss_tests": ("hinge_loss",), "info_nce_tests": ("info_nce",)},
    "04_evaluation.ipynb": {"ranks_by_sorting_tests": ("ranks_by_sorting",),
                            "metrics_from_ranks_tests": ("metrics_from_ranks",)},
}

# A plausible wrong answer per exercise (the region's body, unindented) and what the failure must say.
WRONG = {
    "pad_token_ids": ("ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sequences], batch_first=True)\n"
                      "return ids, torch.ones_like(ids)", "attention_mask should be 1 on real tokens and 0 on padding"),
    "masked_mean": ("return hidden.mean(dim=1)", "masked_mean should ignore padded positions"),
    "attention_pool": ("scores = self.score(torch.tanh(self.proj(hidden))).squeeze(-1)\n"
                       "weights = scores.softmax(dim=1)\n"
                       "return torch.einsum('bt,bth->bh', weights, hidden), weights",
                       "padded tokens should get weight 0"),
    "hinge_loss": ("positive = sim.diagonal()\n"
                   "cost_txt = (margin + sim - positive[:, None]).clamp(min=0).fill_diagonal_(0)\n"
                   "cost_img = (margin + sim - positive[None, :]).clamp(min=0).fill_diagonal_(0)\n"
                   "if hardest:\n"
                   "    return (cost_txt.max(dim=1).values + cost_img.max(dim=0).values).mean()\n"
                   "return (cost_txt.sum(dim=1) + cost_img.sum(dim=0)).mean()",
                   "set the costs to 0 where same is True"),
    "info_nce": ("logits = logit_scale.exp().clamp(max=100) * sim\n"
                 "logits = logits.masked_fill(same & ~torch.eye(len(sim), dtype=torch.bool), float('-inf'))\n"
                 "return F.cross_entropy(logits, torch.arange(len(sim)))",
                 "average the cross-entropy over the rows (image -> caption) and over the columns"),
    "ranks_by_sorting": ("m = len(txt_to_img)\n"
                         "i2t = [min(p for p, j in enumerate(sorted(range(m), key=lambda j: -sim[i][j]))\n"
                         "            if txt_to_img[j] == i) for i in range(len(sim))]\n"
                         "t2i = [sorted(range(len(sim)), key=lambda i: -sim[i][j]).index(txt_to_img[j])\n"
                         "       for j in range(len(txt_to_img))]\n"
                         "return np.array(i2t), np.array(t2i)",
                         "a caption of another image with an equal score goes first"),
    "metrics_from_ranks": ("out = {}\n"
                           "for d, r in (('i2t', i2t), ('t2i', t2i)):\n"
                           "    for k in (1, 5, 10):\n"
                           "        out[f'{d}_r{k}'] = np.mean(r < k)\n"
                           "    out[f'{d}_medr'] = np.floor(np.median(r)) + 1\n"
                           "    out[f'{d}_meanr'] = np.mean(r) + 1\n"
                           "out['rsum'] = sum(out[f'{d}_r{k}'] for d in ('i2t', 't2i') for k in (1, 5, 10))\n"
                           "return out", "R@K is the percentage (0 to 100) of ranks below K"),
}


def _read(path):
    return nbformat.read(path, as_version=4)


def _graded(nb, key):
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get(key)}


def _region_bodies(source):
    """The lines between each BEGIN/END SOLUTION pair of a source cell."""
    lines = source.split("\n")
    return [lines[a + 1:b] for a, b in A._regions(source, A.BEGIN_SOLUTION, A.END_SOLUTION, "test")]


def _with_bodies(student_source, bodies):
    """Put ``bodies`` (lists of lines, or unindented text) where the student version has its stubs."""
    lines, out, k = student_source.split("\n"), [], 0
    i = 0
    while i < len(lines):
        if lines[i].strip() == A.CODE_STUB[0] and i + 1 < len(lines) and lines[i + 1].strip() == A.CODE_STUB[1]:
            body = bodies[k]
            if isinstance(body, str):
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                body = textwrap.indent(body, indent).split("\n")
            out += body
            k, i = k + 1, i + 2
        else:
            out.append(lines[i])
            i += 1
    assert k == len(bodies), "every stub filled"
    return "\n".join(out)


def _filled(release_nb, source_nb):
    """The student notebook with every solution filled in from the source notebook."""
    nb = nbformat.from_dict(json.loads(json.dumps(release_nb)))
    source = _graded(source_nb, "solution")
    for grade_id, cell in _graded(nb, "solution").items():
        cell.source = _with_bodies(cell.source, _region_bodies(source[grade_id].source))
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "course"
    A.write_assignments(out, SOURCES)
    return out


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the exercises in the notebooks

def test_every_notebook_marks_its_exercises():
    found = {p.name: {e.grade_id: e.writes for e in A.find_exercises(_read(p), str(p))} for p in SOURCES}
    assert found == EXPECTED
    for path in SOURCES:
        for e in A.find_exercises(_read(path), str(path)):
            assert e.points > 0 and A.BEGIN_HIDDEN in e.tests, f"{path.name} {e.grade_id}: points and hidden checks"


def _names(source, ctx):
    tree = ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", source, flags=re.M))
    scoped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.comprehension) for n in ast.walk(node.target)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx) and id(n) not in scoped}
    if ctx is ast.Store:
        names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_checks_change_nothing_the_lesson_uses(path):
    """A test cell binds no name another cell uses, leaves the global random state alone and runs fast."""
    import time

    from siamese_utils.core import losses
    from siamese_utils.core import models
    from siamese_utils.core.metrics import retrieval_metrics, retrieval_ranks

    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    lesson = [c for c in code if not c.metadata.get("nbgrader", {}).get("grade")]
    used = set().union(*(_names(c.source, ast.Load) | _names(c.source, ast.Store) for c in lesson))
    solutions = _graded(nb, "solution")
    for e in A.find_exercises(nb, str(path)):
        clash = _names(e.tests, ast.Store) & used
        assert not clash, f"{path.name} {e.grade_id} rebinds {sorted(clash)}, which the lesson uses"
        namespace = {"torch": torch, "F": F, "nn": nn, "np": np, "math": math, "models": models, "losses": losses,
                     "retrieval_ranks": retrieval_ranks, "retrieval_metrics": retrieval_metrics}
        state = torch.random.get_rng_state()
        start = time.perf_counter()
        exec(compile(solutions[e.solution_id].source, f"{path.name}:{e.solution_id}", "exec"), namespace)
        exec(compile(e.tests, f"{path.name}:{e.grade_id}", "exec"), namespace)
        assert time.perf_counter() - start < 2, f"{path.name} {e.grade_id}: checks should take well under a second"
        assert torch.equal(torch.random.get_rng_state(), state), f"{path.name} {e.grade_id} drew from the global RNG"


# --------------------------------------------------------------------------- generation

def test_generation_is_deterministic(course, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the default: every notebooks/NN_*.ipynb with exercises
    assert main(["assignments", "--out", str(tmp_path / "again")]) == 0
    assert "4 student notebooks" in capsys.readouterr().out
    first, second = _files(course), _files(tmp_path / "again")
    assert sorted(first) == ["README.md"] + [f"autograder/{p.stem}.json" for p in SOURCES] + \
        [f"release/{p.name}" for p in SOURCES]
    assert first == second


def test_release_notebooks_are_valid_and_give_nothing_away(course):
    for path in SOURCES:
        source, release = _read(path), _read(course / "release" / path.name)
        nbformat.validate(release)
        text = json.dumps(release.cells)
        for marker in (A.BEGIN_SOLUTION, A.END_SOLUTION, A.BEGIN_HIDDEN, A.END_HIDDEN, A.INSTRUCTORS_ONLY):
            assert marker not in text, f"{path.name}: {marker} left in the student version"
        for cell in release.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: stale outputs"
                ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", cell.source, flags=re.M))
        released = "\n".join(c.source for c in release.cells)
        for grade_id, cell in _graded(source, "solution").items():
            for line in (line.strip() for body in _region_bodies(cell.source) for line in body):
                assert not line or line not in released, f"{path.name} {grade_id}: solution line {line!r} leaked"
            student = _graded(release, "solution")[grade_id]
            head, marker_line = cell.source.split(A.BEGIN_SOLUTION)[0].rsplit("\n", 1)
            indent = marker_line  # the spaces before the marker
            assert student.source.startswith(head + "\n") and \
                f"\n{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()" in student.source, \
                f"{path.name} {grade_id}: signature and docstring kept, the stub at the solution's indentation"
            assert student.metadata["deletable"] is False
        for e in A.find_exercises(source, str(path)):
            tests = _graded(release, "grade")[e.grade_id]
            before, rest = e.tests.split(A.BEGIN_HIDDEN)
            hidden, after = rest.split(A.END_HIDDEN)
            assert tests.source == before + after[1:], f"{path.name} {e.grade_id}: the visible checks, unchanged"
            for line in hidden.strip().splitlines():
                assert line in before + after or line not in released, f"{path.name}: hidden check {line!r} leaked"
            assert tests.metadata["editable"] is False and tests.metadata["nbgrader"]["locked"] is True
        assert "`# YOUR CODE HERE`" in release.cells[1].source, "the note to students follows the title"


def test_autograder_holds_every_check(course):
    readme = (course / "README.md").read_text()
    for path in SOURCES:
        data = json.loads((course / "autograder" / f"{path.stem}.json").read_text())
        assert data["notebook"] == path.name
        assert [e["tests"] for e in data["exercises"]] == [e.tests for e in A.find_exercises(_read(path), str(path))]
        for e in data["exercises"]:
            assert f"`{e['grade_id']}`" in readme
    assert "--grade SUBMISSION.ipynb" in readme


# --------------------------------------------------------------------------- the checks, run as grading runs them

@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_checks_pass_filled_and_fail_unfilled_or_wrong(path, course, tmp_path):
    """Quick grading's cells, in one kernel: each exercise unfilled, then wrong, then filled from the source."""
    release = _read(course / "release" / path.name)
    filled = _filled(release, _read(path))
    sets = A._load_exercise_sets(course)
    _, exercises, positions = A._match(release, course / "release" / path.name, sets, course)
    order = A._plan(release.cells, exercises, positions, quick=True)
    prefix = [i for i in order if i not in {j for pair in positions.values() for j in pair}]
    parameters = next(i for i, c in enumerate(release.cells) if "parameters" in c.metadata.get("tags", []))
    assert prefix == [i for i, c in enumerate(release.cells[:parameters + 1]) if c.cell_type == "code"], (
        "the setup cells (Colab, imports) and the parameters cell")
    results = {}
    with A._kernel(tmp_path, timeout=120) as run:
        for i in prefix:
            assert not run(release.cells[i]).error
        for variant in ("unfilled", "wrong", "filled"):
            for e in exercises:
                solution_at, test_at = positions[e.grade_id]
                cell = copy.deepcopy((filled if variant == "filled" else release).cells[solution_at])
                if variant == "wrong":
                    cell.source = _with_bodies(cell.source, [WRONG[e.solution_id][0]])
                test = copy.deepcopy(release.cells[test_at])
                test.source = e.tests
                results[variant, e.grade_id] = A._judge(e, run(cell), run(test), None, 120)
    for e in exercises:
        unfilled, wrong, good = (results[v, e.grade_id] for v in ("unfilled", "wrong", "filled"))
        assert (unfilled.status, unfilled.score) == ("not implemented", 0)
        assert f"replace `raise NotImplementedError()` in {e.writes[0]}" in unfilled.message
        assert wrong.status == "failed" and WRONG[e.solution_id][1] in wrong.message, wrong.message
        assert (good.status, good.score, good.message) == ("passed", e.points, ""), good.message


# --------------------------------------------------------------------------- grading a whole notebook (a small one)

def _fixture_source(path):
    """A small source notebook in the series' layout: setup, parameters, two exercises, a cell using them."""
    def code(source, **nbgrader):
        cell = nbformat.v4.new_code_cell(textwrap.dedent(source).strip())
        if nbgrader:
            cell.metadata["nbgrader"] = {"schema_version": 3, "task": False, **nbgrader}
        return cell

    solution = {"grade": False, "solution": True, "locked": False}
    tests = {"grade": True, "solution": False, "locked": True}
    cells = [
        nbformat.v4.new_markdown_cell("# 99 · A fixture"),
        code("import math"),
        code("N = 4", ),
        code('''
            def square(x):
                """x times x."""
                ### BEGIN SOLUTION
                return x * x
                ### END SOLUTION
            ''', grade_id="square", **solution),
        code('''
            assert square(3) == 9, f"square(3) should be 9, not {square(3)}"
            ### BEGIN HIDDEN TESTS
            assert square(-2) == 4, f"square(-2) should be 4, not {square(-2)}: negative numbers too"
            ### END HIDDEN TESTS
            ''', grade_id="square_tests", points=1, **tests),
        code('''
            def hypotenuse(a, b):
                """The long side of a right triangle."""
                ### BEGIN SOLUTION
                return math.sqrt(square(a) + square(b))
                ### END SOLUTION
            ''', grade_id="hypotenuse", **solution),
        code('''
            assert hypotenuse(3, 4) == 5, f"hypotenuse(3, 4) should be 5, not {hypotenuse(3, 4)}"
            ''', grade_id="hypotenuse_tests", points=2, **tests),
        code("[hypotenuse(n, n) for n in range(N)]"),
    ]
    cells[2].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                        "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.fixture
def small_course(tmp_path):
    source = _fixture_source(tmp_path / "99_fixture.ipynb")
    A.write_assignments(tmp_path / "course", [source])
    return tmp_path / "course", _read(tmp_path / "course" / "release" / source.name), _read(source)


def test_grading_a_whole_notebook(small_course, tmp_path, capsys):
    course, release, source = small_course

    # Unfilled: nothing implemented; the last cell's error does not hide that.
    nbformat.write(release, tmp_path / "unfilled.ipynb")
    assert main(["assignments", "--grade", str(tmp_path / "unfilled.ipynb"), "--autograder", str(course)]) == 1
    printed = capsys.readouterr().out
    assert "not implemented yet: replace `raise NotImplementedError()` in square with your code" in printed
    assert "score 0/3" in printed

    # Filled from the source: every check passes, exit status 0.
    nbformat.write(_filled(release, source), tmp_path / "filled.ipynb")
    assert main(["assignments", "--grade", str(tmp_path / "filled.ipynb"), "--autograder", str(course),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["score"], report["max_score"], report["passed"], report["mode"]) == (3, 3, True, "full")

    # Right on the visible check only, the visible check removed, and an error in a cell of the student's own:
    # the hidden check fails, the restored check still runs, and the error is named.
    mixed = _filled(release, source)
    cells = _graded(mixed, "solution")
    cells["square"].source = cells["square"].source.replace("return x * x", "return x * abs(x)")
    _graded(mixed, "grade")["square_tests"].source = "pass"
    mixed.cells.insert(5, nbformat.v4.new_code_cell("helper = 1 / 0"))
    cells["hypotenuse"].source = cells["hypotenuse"].source.replace("return math.sqrt", "return helper + math.sqrt")
    nbformat.write(mixed, tmp_path / "mixed.ipynb")
    report = A.grade(tmp_path / "mixed.ipynb", course)
    by_id = {r.grade_id: r for r in report.results}
    assert by_id["square_tests"].status == "failed"
    assert by_id["square_tests"].message == "square(-2) should be 4, not -4: negative numbers too"
    assert by_id["hypotenuse_tests"].status == "error"
    assert "NameError" in by_id["hypotenuse_tests"].message
    assert "an earlier cell failed first: cell 6, ZeroDivisionError" in by_id["hypotenuse_tests"].message
    assert (report.score, report.passed) == (0, False)
    assert re.search(r"\n  square_tests +0/1  failed: square\(-2\) should be 4", A.format_report(report))


def test_quick_grading_runs_only_the_exercises(small_course, tmp_path):
    course, release, source = small_course
    nb = _filled(release, source)
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('a slow training cell')"))
    nbformat.write(nb, tmp_path / "renamed.ipynb")  # a renamed file is matched by its graded cells
    report = A.grade(tmp_path / "renamed.ipynb", course / "autograder", quick=True)
    assert report.passed and report.mode == "quick" and report.score == 3
    assert report.autograder.endswith("99_fixture.json")


# --------------------------------------------------------------------------- bad input: clear errors, nothing lost

def test_a_bad_submission_is_one_line_naming_the_file(small_course, tmp_path, capsys):
    course, release, _ = small_course
    not_json = tmp_path / "essay.ipynb"
    not_json.write_text("Dear professor, ...")
    no_cells = tmp_path / "data.ipynb"
    no_cells.write_text('{"answer": 42}')
    missing = _read(course / "release" / "99_fixture.ipynb")
    missing.cells = [c for c in missing.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "hypotenuse_tests"]
    nbformat.write(missing, tmp_path / "missing.ipynb")
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(other, tmp_path / "other.ipynb")
    for path, message in ((not_json, "not a notebook (not valid JSON"), (no_cells, "not a Jupyter notebook"),
                          (tmp_path / "missing.ipynb", "the graded cell 'hypotenuse_tests' (the checks of hypotenuse) "
                                                       "is missing"),
                          (tmp_path / "other.ipynb", "none of the notebooks in"),
                          (tmp_path / "absent.ipynb", "no such file")):
        assert main(["assignments", "--grade", str(path), "--autograder", str(course)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}") and message in err and err.count("\n") == 1, err


def _source_with(tmp_path, edit):
    path = _fixture_source(tmp_path / "99_fixture.ipynb")
    nb = _read(path)
    edit(nb)
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda nb: setattr(nb.cells[3], "source", nb.cells[3].source.replace("    ### END SOLUTION", "")),
     "cell 4 ('def square(x):'), line 3: ### BEGIN SOLUTION has no ### END SOLUTION after it"),
    (lambda nb: setattr(nb.cells[3], "source", nb.cells[3].source.replace("    ### BEGIN SOLUTION\n", "")),
     "line 4: ### END SOLUTION without a ### BEGIN SOLUTION before it"),
    (lambda nb: setattr(nb.cells[3], "source", nb.cells[3].source.replace("return x * x",
                                                                          "### BEGIN SOLUTION\n    return x * x")),
     "### BEGIN SOLUTION inside the region opened on line 3"),
    (lambda nb: setattr(nb.cells[7], "source", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"),
     "has ### BEGIN SOLUTION but is not a solution cell"),
    (lambda nb: setattr(nb.cells[3], "source", nb.cells[3].source.replace("### BEGIN SOLUTION", "## BEGIN SOLUTION")),
     "'## BEGIN SOLUTION' looks like a marker (nbgrader takes any line containing 'BEGIN SOLUTION' for one); "
     "write it alone on its line, exactly '### BEGIN SOLUTION'"),
    (lambda nb: setattr(nb.cells[0], "source", "# 99 · A fixture\n\nThe code between `### BEGIN SOLUTION` and ..."),
     "cell 1 ('# 99 · A fixture'), line 3: mentions 'BEGIN SOLUTION', which nbgrader takes for a marker"),
    (lambda nb: nb.cells.pop(4), "solution cell 'square' has no test cell after it"),
    (lambda nb: nb.cells[6].metadata["nbgrader"].update(grade_id="square_tests"),
     "grade_id 'square_tests' is already used"),
], ids=["no-end", "no-begin", "nested", "not-a-solution-cell", "misspelt", "in-markdown", "no-test-cell",
        "duplicate-id"])
def test_bad_markers_name_the_cell_and_lose_nothing(tmp_path, capsys, edit, message):
    source = _source_with(tmp_path, edit)
    out = tmp_path / "course"
    (out / "release").mkdir(parents=True)
    (out / "release" / "kept.ipynb").write_text("from an earlier run")
    assert main(["assignments", "--out", str(out), "--overwrite", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source}, ") and message in err and err.count("\n") == 1, err
    assert _files(out) == {"release/kept.ipynb": b"from an earlier run"}


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path, capsys):
    source = _fixture_source(tmp_path / "99_fixture.ipynb")
    out = tmp_path / "course"
    out.mkdir()
    (out / "grades.csv").write_text("alice,3\n")
    assert main(["assignments", "--out", str(out), str(source)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert _files(out) == {"grades.csv": b"alice,3\n"}
    (out / "release").mkdir()
    (out / "release" / "00_stale.ipynb").write_text("{}")
    assert main(["assignments", "--out", str(out), "--overwrite", str(source)]) == 0
    assert sorted(_files(out)) == ["README.md", "autograder/99_fixture.json", "grades.csv", "release/99_fixture.ipynb"]
    (tmp_path / "a_file").write_text("")
    assert main(["assignments", "--out", str(tmp_path / "a_file"), str(source)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--grade", "x.ipynb", "--overwrite"], "--grade takes one submission and no --overwrite; to generate, use "
                                            "--out DIR instead"),
    (["--out", "x", "--quick"], "--quick applies to --grade SUBMISSION.ipynb only, not to --out"),
    (["--out", "x", "--json"], "--json applies to --grade SUBMISSION.ipynb only, not to --out"),
])
def test_flags_of_the_other_mode_are_refused(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["assignments", *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_one_mode_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["assignments"])
    assert e.value.code == 2 and "one of the arguments --out --grade is required" in capsys.readouterr().err
