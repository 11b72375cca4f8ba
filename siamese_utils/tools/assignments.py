"""Course assignments from the series' notebooks: student versions and an autograder, generated.

The notebooks themselves mark their exercises, with nbgrader's conventions, so that one copy of each
notebook serves readers, CI and instructors:

- a *solution cell* (cell metadata ``nbgrader.solution: true``) holds the code students write between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``; its signature and docstring stay visible;
- the *test cell* after it (``nbgrader.grade: true``, ``locked: true``, ``points: N``) checks that code with
  ``assert``\\ s whose messages say what is wrong and what to check; lines between ``### BEGIN HIDDEN TESTS``
  and ``### END HIDDEN TESTS`` are checks for grading only;
- a markdown cell tagged ``instructors-only`` (the paragraph that tells instructors about all this) is left
  out of the student version.

:func:`write_assignments` writes ``release/`` (the student notebooks: each solution replaced by
``# YOUR CODE HERE`` and ``raise NotImplementedError()``, hidden checks removed, every output cleared),
``autograder/`` (every test cell, hidden checks included, by grade id) and a ``README.md``, byte for byte
the same on every run. :func:`grade` runs a submission with its test cells restored from the autograder,
so that a student cannot weaken them, and scores each exercise.

Explained in ``README.md`` (section "Course assignments").
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .notebooks import OFFLINE_ENV, environment_changes

__all__ = [
    "AssignmentError", "Exercise", "find_exercises", "student_version", "write_assignments",
    "ExerciseResult", "GradeReport", "grade", "format_report",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")  # nbgrader's stub for Python
INSTRUCTORS_ONLY = "instructors-only"  # the tag of cells left out of the student version
AUTOGRADER_FORMAT = "siamese-utils-autograder/1"
DEFAULT_TIMEOUT = 600  # seconds per cell when grading

_GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # what nbgrader accepts
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class AssignmentError(ValueError):
    """A source notebook, an output folder or a submission that cannot be used; the message says which and why.

    Explained in ``README.md`` (section "Course assignments").
    """


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: a solution cell and the test cell after it, by their nbgrader grade ids.

    ``writes`` names what students write (``masked_mean``, ``AttentionPool.forward``);
    ``defines`` the names the solution cell defines; ``tests`` is the test cell's
    source with its hidden checks.

    Explained in ``README.md`` (section "Course assignments").
    """

    notebook: str
    grade_id: str
    solution_id: str
    points: float
    writes: tuple[str, ...]
    defines: tuple[str, ...]
    tests: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "writes": list(self.writes), "defines": list(self.defines)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Exercise:
        return cls(d["notebook"], d["grade_id"], d["solution_id"], d["points"], tuple(d["writes"]),
                   tuple(d["defines"]), d["tests"])


# --------------------------------------------------------------------------- reading the markers

def _cell_label(where: str, index: int, cell) -> str:
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:47] + "..."
    return f"{where}, cell {index + 1} ({first!r})" if first else f"{where}, cell {index + 1}"


def _regions(source: str, begin: str, end: str, label: str) -> list[tuple[int, int]]:
    """The (begin, end) line numbers (from 0) of each region; unmatched or nested markers raise."""
    regions, start = [], None
    for n, line in enumerate(source.split("\n")):
        text = line.strip()
        if text == begin:
            if start is not None:
                raise AssignmentError(f"{label}, line {n + 1}: {begin} inside the region opened on line {start + 1}; "
                                      f"close that one with {end} first")
            start = n
        elif text == end:
            if start is None:
                raise AssignmentError(f"{label}, line {n + 1}: {end} without a {begin} before it; add {begin} "
                                      "above the region, or delete this line")
            regions.append((start, n))
            start = None
    if start is not None:
        raise AssignmentError(f"{label}, line {start + 1}: {begin} has no {end} after it; add {end} "
                              "below the region's last line")
    return regions


def _check_marker_lines(cell, label: str) -> None:
    """nbgrader takes any line that contains a marker's words for the marker, in any cell: allow exact markers only."""
    markers = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN)
    for n, line in enumerate(cell.source.split("\n")):
        phrase = next((m[4:] for m in markers if m[4:] in line), None)
        if phrase is None:
            continue
        if cell.cell_type != "code":
            raise AssignmentError(f"{label}, line {n + 1}: mentions {phrase!r}, which nbgrader takes for a marker in "
                                  "any cell; reword it (for example \"solution markers\")")
        if line.strip() not in markers:
            raise AssignmentError(f"{label}, line {n + 1}: {line.strip()!r} looks like a marker (nbgrader takes any "
                                  f"line containing {phrase!r} for one); write it alone on its line, exactly "
                                  f"'### {phrase}'")


def _parse(source: str, label: str) -> ast.Module:
    try:
        return ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", source, flags=re.M))  # IPython magics aside
    except SyntaxError as e:
        raise AssignmentError(f"{label}, line {e.lineno}: not valid Python ({e.msg}); fix the cell") from None


def _defined_names(tree: ast.Module) -> tuple[str, ...]:
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.ClassDef))]
    if not names:
        names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)]
    return tuple(dict.fromkeys(names))


def _enclosing(tree: ast.Module, line: int) -> str:
    """The qualified name of the innermost function or class around 1-based ``line`` ("" at top level)."""
    best = ""

    def visit(node, prefix):
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}" if prefix else child.name
                if child.lineno <= line <= (child.end_lineno or child.lineno):
                    best = name
                visit(child, name)
            else:
                visit(child, prefix)

    visit(tree, "")
    return best


def find_exercises(nb, where: str = "the notebook") -> list[Exercise]:
    """The graded exercises of a source notebook, in order; its markers and cell metadata are checked.

    Every solution cell needs its answer between ``### BEGIN SOLUTION`` and
    ``### END SOLUTION`` and one test cell after it, before the next solution
    cell. Markers outside such cells, unmatched or nested markers, and grade ids
    that nbgrader would refuse raise :class:`AssignmentError` naming the cell and
    the line. ``where`` names the notebook in those messages.

    Explained in ``README.md`` (section "Course assignments").
    """
    name = Path(where).name
    exercises: list[Exercise] = []
    pending = None  # (label, solution grade id, writes, defines) of a solution cell waiting for its test cell
    seen: dict[str, str] = {}
    for index, cell in enumerate(nb.cells):
        label = _cell_label(where, index, cell)
        meta = cell.get("metadata", {}).get("nbgrader", {})
        is_solution, is_test = bool(meta.get("solution")), bool(meta.get("grade"))
        _check_marker_lines(cell, label)
        if cell.cell_type != "code":
            if is_solution or is_test:
                raise AssignmentError(f"{label}: a {cell.cell_type} cell marked as a solution or test cell; only "
                                      "code cells can be graded here: remove its nbgrader metadata")
            continue
        solutions = _regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, label)
        hidden = _regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, label)
        if solutions and not is_solution:
            raise AssignmentError(f"{label}: has {BEGIN_SOLUTION} but is not a solution cell; add the cell metadata "
                                  '{"nbgrader": {"solution": true, "grade": false, "grade_id": ...}}')
        if hidden and not is_test:
            raise AssignmentError(f"{label}: has {BEGIN_HIDDEN} but is not a test cell; hidden checks belong in the "
                                  'locked test cell ({"nbgrader": {"grade": true, "locked": true, ...}})')
        if not (is_solution or is_test):
            continue
        if is_solution and is_test:
            raise AssignmentError(f"{label}: marked both as a solution and as a test cell; put the solution and its "
                                  "checks in two cells")
        grade_id = meta.get("grade_id")
        if not isinstance(grade_id, str) or not _GRADE_ID.match(grade_id):
            raise AssignmentError(f"{label}: grade_id {grade_id!r} is missing or not made of letters, digits, _ and -; "
                                  "give the cell a grade_id such as 'masked_mean'")
        if grade_id in seen:
            raise AssignmentError(f"{label}: grade_id {grade_id!r} is already used by {seen[grade_id]}; grade ids "
                                  "must be unique")
        seen[grade_id] = label
        tree = _parse(cell.source, label)
        if is_solution:
            if not solutions:
                raise AssignmentError(f"{label}: a solution cell without {BEGIN_SOLUTION} ... {END_SOLUTION}; mark "
                                      "the lines students write, so that signatures and docstrings stay")
            if pending is not None:
                raise AssignmentError(f"{pending[0]}: solution cell {pending[1]!r} has no test cell after it; add a "
                                      "locked test cell before the next solution cell")
            writes = tuple(dict.fromkeys(_enclosing(tree, start + 1) or "the cell" for start, _ in solutions))
            pending = (label, grade_id, writes, _defined_names(tree))
        else:
            if pending is None:
                raise AssignmentError(f"{label}: test cell {grade_id!r} has no solution cell before it (or a "
                                      "second test cell for the same one); merge it into the test cell above")
            points = meta.get("points")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or not points > 0:
                raise AssignmentError(f"{label}: test cell {grade_id!r} has points {points!r}; give it a positive "
                                      "number of points")
            if not meta.get("locked"):
                raise AssignmentError(f"{label}: test cell {grade_id!r} is not locked; set \"locked\": true, so "
                                      "that nbgrader keeps students from editing it")
            exercises.append(Exercise(name, grade_id, pending[1], points, pending[2], pending[3], cell.source))
            pending = None
    if pending is not None:
        raise AssignmentError(f"{pending[0]}: solution cell {pending[1]!r} has no test cell after it; add a locked "
                              "test cell after it")
    return exercises


# --------------------------------------------------------------------------- student versions

def _replace_regions(source: str, regions: list[tuple[int, int]], stub: Sequence[str]) -> str:
    lines = source.split("\n")
    out, previous = [], 0
    for start, end in regions:
        out += lines[previous:start]
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        out += [indent + s for s in stub]
        previous = end + 1
    return "\n".join(out + lines[previous:])


def _student_note(exercises: list[Exercise]) -> str:
    names = ", ".join(f"`{w}`" for e in exercises for w in e.writes)
    total = _number(sum(e.points for e in exercises))
    return (f"**Assignment.** Write your code where a cell says `# YOUR CODE HERE`, in place of the "
            f"`raise NotImplementedError()` line under it: {names}. The locked cell after each one checks your code "
            f"({total} points in all); grading runs the same checks and a few more. Before handing the notebook in, "
            "restart the kernel and run every cell.")


def student_version(nb, where: str = "the notebook"):
    """The student copy of a source notebook: solutions stubbed, hidden checks removed, outputs cleared.

    Each solution region becomes nbgrader's stub (``# YOUR CODE HERE`` and
    ``raise NotImplementedError()``) at the region's indentation; every output
    and execution count is cleared, since the stored outputs came from the
    solutions; graded cells are made undeletable and test cells read-only, as
    nbgrader does; cells tagged ``instructors-only`` are left out, and a note
    after the title says what to write.

    Explained in ``README.md`` (section "Course assignments").
    """
    import nbformat

    exercises = find_exercises(nb, where)
    if not exercises:
        raise AssignmentError(f"{where} has no exercises (no solution cell with {BEGIN_SOLUTION}); name a notebook "
                              "that has some")
    student = copy.deepcopy(nb)
    student.cells = [c for c in student.cells if INSTRUCTORS_ONLY not in c.get("metadata", {}).get("tags", [])]
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        meta = cell.metadata.get("nbgrader", {})
        label = _cell_label(where, index, cell)
        if meta.get("solution"):
            cell.source = _replace_regions(cell.source, _regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, label),
                                           CODE_STUB)
            cell.metadata["deletable"] = False
        elif meta.get("grade"):
            cell.source = _replace_regions(cell.source, _regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, label), ())
            cell.metadata["deletable"] = False
            cell.metadata["editable"] = False
    note = nbformat.v4.new_markdown_cell(_student_note(exercises))
    note["id"] = "assignment-note"
    student.cells.insert(1, note)
    try:
        nbformat.validate(student)
    except nbformat.ValidationError as e:  # pragma: no cover - a source notebook nbformat reads is valid
        raise AssignmentError(f"the student version of {where} is not a valid notebook: {e.message}") from None
    return student


# --------------------------------------------------------------------------- writing a course folder

def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _read_notebook(path: Path, role: str):
    import nbformat

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AssignmentError(f"{path}: no such file; give the path of {role}") from None
    except IsADirectoryError:
        raise AssignmentError(f"{path} is a folder; give the path of {role} (an .ipynb file)") from None
    except UnicodeDecodeError:
        raise AssignmentError(f"{path}: not a notebook (not UTF-8 text); give {role} (an .ipynb file)") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise AssignmentError(f"{path}: not a notebook (not valid JSON: {e.msg}, line {e.lineno}); give {role} "
                              "(an .ipynb file)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise AssignmentError(f"{path}: not a Jupyter notebook (JSON without a list of cells); give {role}")
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as e:  # nbformat's own errors differ between versions
        raise AssignmentError(f"{path}: not a notebook nbformat can read ({str(e).splitlines()[0]})") from None


def _course_readme(sets: list[tuple[str, list[Exercise]]]) -> str:
    rows = [f"| `{name}` | `{', '.join(e.writes)}` | `{e.grade_id}` | {_number(e.points)} |"
            for name, exercises in sets for e in exercises]
    total = _number(sum(e.points for _, exercises in sets for e in exercises))
    return "\n".join([
        "# Course assignments: image-text matching with a two-tower network",
        "",
        "Generated by `python -m siamese_utils assignments` from the notebooks of the series; do not edit these",
        "files by hand: change the notebooks and generate them again.",
        "",
        "- `release/`: the notebooks to hand out. Where students write code, a cell says `# YOUR CODE HERE` above",
        "  `raise NotImplementedError()`; the locked cell after it checks their code. Outputs are cleared.",
        "- `autograder/`: every exercise's checks, including the hidden ones, by grade id. Keep this folder from",
        "  students.",
        "",
        "## Exercises",
        "",
        "| Notebook | Students write | Grade id | Points |",
        "|---|---|---|---|",
        *rows,
        f"| | | total | {total} |",
        "",
        "## Grading a submission",
        "",
        "```bash",
        "python -m siamese_utils assignments --grade SUBMISSION.ipynb --autograder THIS_FOLDER",
        "```",
        "",
        "runs the submission in a fresh kernel, with its test cells restored from `autograder/` (so edited checks",
        "count for nothing), in a scratch folder (a training run goes there, not into `runs/`). It prints each",
        "exercise as passed, failed with the check's message, not implemented yet, or stopped by an error in an",
        "earlier cell, then the points; the exit status is 0 only when every check passes. `--quick` runs only",
        "the setup cell, the `parameters` cell and each exercise's two cells: seconds instead of a whole",
        "notebook's training. `--json` prints the result as JSON. Set `SIAMESE_SMOKE=1` to grade with the notebooks' short",
        "settings.",
        "",
        "## With nbgrader",
        "",
        "The notebooks of the series carry nbgrader's cell metadata and markers, so `nbgrader generate_assignment`",
        "accepts them as they are; this folder is for courses that do without nbgrader.",
        "",
    ])


def _default_sources() -> list[Path]:
    candidates = sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    sources = [p for p in candidates if find_exercises(_read_notebook(p, "a notebook"), str(p))]
    if not sources:
        raise AssignmentError("no notebooks given, and no notebooks/NN_*.ipynb here has exercises (solution "
                              f"cells with {BEGIN_SOLUTION}); run from the repository root or name the notebooks")
    return sources


def _render(sources: Sequence[Path]) -> dict[str, bytes]:
    """Every file of a course folder, by relative path; raises before anything is written."""
    import nbformat

    files: dict[str, bytes] = {}
    sets: list[tuple[str, list[Exercise]]] = []
    owners: dict[str, str] = {}
    for path in sources:
        path = Path(path)
        if path.name in (name for name, _ in sets):
            raise AssignmentError(f"{path}: a notebook named {path.name} is already given; each name once")
        nb = _read_notebook(path, "a source notebook")
        student = student_version(nb, str(path))
        exercises = find_exercises(nb, str(path))
        for e in exercises:
            for gid in (e.grade_id, e.solution_id):
                if gid in owners:
                    raise AssignmentError(f"{path}: grade_id {gid!r} is also used in {owners[gid]}; grade ids must be "
                                          "unique across the notebooks handed out together")
                owners[gid] = path.name
        sets.append((path.name, exercises))
        text = nbformat.writes(student)
        files[f"release/{path.name}"] = (text if text.endswith("\n") else text + "\n").encode("utf-8")
        autograder = {"format": AUTOGRADER_FORMAT, "notebook": path.name,
                      "exercises": [e.to_dict() for e in exercises]}
        files[f"autograder/{path.stem}.json"] = (json.dumps(autograder, indent=1, sort_keys=True, ensure_ascii=False)
                                                 + "\n").encode("utf-8")
    files["README.md"] = _course_readme(sets).encode("utf-8")
    return files


def write_assignments(out: str | os.PathLike, notebooks: Sequence[str | os.PathLike] | None = None,
                      overwrite: bool = False) -> list[Path]:
    """Write the student notebooks (``release/``), the autograder (``autograder/``) and ``README.md`` to ``out``.

    ``notebooks`` defaults to every ``notebooks/NN_*.ipynb`` with exercises. The
    output is byte for byte the same for the same notebooks. A folder that is
    not empty is refused unless ``overwrite``; then ``release/``,
    ``autograder/`` and ``README.md`` are replaced and nothing else is touched.
    Every source is read and checked before anything is written, and the old
    files are restored if writing fails. Returns the files written.

    Explained in ``README.md`` (section "Course assignments").
    """
    out = Path(out)
    sources = [Path(p) for p in notebooks] if notebooks else _default_sources()
    files = _render(sources)
    if out.exists() and not out.is_dir():
        raise AssignmentError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AssignmentError(f"--out {out} is not empty; pass --overwrite to replace its release/, autograder/ and "
                              "README.md, or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".assignments-", dir=out))
    except OSError as e:
        raise AssignmentError(f"cannot write to {out} ({e.strerror or e}); choose another --out") from None
    backup = staging / "previous"
    moved: list[str] = []
    try:
        new = staging / "new"
        for relative, data in sorted(files.items()):
            target = new / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        backup.mkdir()
        for top in ("release", "autograder", "README.md"):
            if (out / top).exists() or (out / top).is_symlink():
                os.replace(out / top, backup / top)
            moved.append(top)
            os.replace(new / top, out / top)
    except OSError as e:
        for top in reversed(moved):  # put back what was there before
            with contextlib.suppress(OSError):
                if (out / top).is_dir():
                    shutil.rmtree(out / top)
                elif (out / top).exists():
                    (out / top).unlink()
                if (backup / top).exists():
                    os.replace(backup / top, out / top)
        shutil.rmtree(staging, ignore_errors=True)
        raise AssignmentError(f"cannot write to {out} ({e.strerror or e}); nothing there was changed") from None
    shutil.rmtree(staging, ignore_errors=True)
    return [out / relative for relative in sorted(files)]


# --------------------------------------------------------------------------- grading

@dataclass
class ExerciseResult:
    """How one exercise fared: ``status`` is ``passed``, ``failed``, ``not implemented`` or ``error``.

    Explained in ``README.md`` (section "Course assignments").
    """

    grade_id: str
    writes: tuple[str, ...]
    points: float
    score: float
    status: str
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "writes": list(self.writes)}


@dataclass
class GradeReport:
    """The results of one submission, exercise by exercise; ``passed`` when every check passed.

    Explained in ``README.md`` (section "Course assignments").
    """

    submission: str
    autograder: str
    mode: str
    results: list[ExerciseResult] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def passed(self) -> bool:
        return all(r.status == "passed" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"submission": self.submission, "autograder": self.autograder, "mode": self.mode,
                "score": self.score, "max_score": self.max_score, "passed": self.passed,
                "exercises": [r.to_dict() for r in self.results]}


def _load_exercise_sets(autograder: Path) -> list[tuple[str, list[Exercise]]]:
    """(source, exercises) of every autograder file or source notebook at ``autograder``."""
    if autograder.is_dir():
        folder = autograder / "autograder" if (autograder / "autograder").is_dir() else autograder
        paths = sorted(folder.glob("*.json")) + sorted(folder.glob("*.ipynb"))
    elif autograder.is_file():
        paths = [autograder]
    else:
        raise AssignmentError(f"--autograder {autograder}: no such file or folder; give the folder written by "
                              "`assignments --out`, or the source notebooks' folder")
    sets = []
    for path in paths:
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("format") != AUTOGRADER_FORMAT:
                    raise KeyError("format")
                sets.append((str(path), [Exercise.from_dict(d) for d in data["exercises"]]))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise AssignmentError(f"{path}: not an autograder file written by `assignments --out`; generate the "
                                      "folder again") from None
        else:
            exercises = find_exercises(_read_notebook(path, "a source notebook"), str(path))
            if exercises:
                sets.append((str(path), exercises))
    if not sets:
        raise AssignmentError(f"--autograder {autograder} holds no exercises; give the folder written by "
                              "`assignments --out`, or the source notebooks' folder")
    return sets


def _graded_cells(nb) -> dict[str, list[int]]:
    cells: dict[str, list[int]] = {}
    for index, cell in enumerate(nb.cells):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if isinstance(grade_id, str) and cell.cell_type == "code":
            cells.setdefault(grade_id, []).append(index)
    return cells


def _match(nb, path: Path, sets: list[tuple[str, list[Exercise]]], autograder: Path):
    """The exercises that belong to this submission, and where their cells are in it."""
    cells = _graded_cells(nb)
    chosen = next(((source, ex) for source, ex in sets if ex[0].notebook == path.name), None)
    if chosen is None:  # a renamed file: the notebook whose graded cells are there
        chosen = next(((source, ex) for source, ex in sets
                       if any(e.grade_id in cells or e.solution_id in cells for e in ex)), None)
    if chosen is None:
        raise AssignmentError(f"{path}: none of the notebooks in {autograder} has this notebook's graded cells; "
                              "grade a notebook from the handed-out release/, or point --autograder at its folder")
    source, exercises = chosen
    positions = {}
    for e in exercises:
        for gid, role in ((e.solution_id, f"where you write {', '.join(e.writes)}"),
                          (e.grade_id, f"the checks of {', '.join(e.writes)}")):
            found = cells.get(gid, [])
            if not found:
                raise AssignmentError(f"{path}: the graded cell {gid!r} ({role}) is missing; copy your code into "
                                      "a fresh copy of the handed-out notebook, whose graded cells are all there")
            if len(found) > 1:
                raise AssignmentError(f"{path}: the graded cell {gid!r} ({role}) appears {len(found)} times (cells "
                                      f"{', '.join(str(i + 1) for i in found)}); delete the copies")
        positions[e.grade_id] = (cells[e.solution_id][0], cells[e.grade_id][0])
    return source, exercises, positions


def _series_root() -> Path:
    for candidate in (os.environ.get("SIAMESE_REPO"), Path(__file__).resolve().parents[1], Path.cwd()):
        if candidate and (Path(candidate) / "data" / "tiny").is_dir():
            return Path(candidate).resolve()
    return Path.cwd()


@dataclass
class _Outcome:
    ran: bool
    ename: str = ""
    evalue: str = ""
    traceback: str = ""

    @property
    def error(self) -> bool:
        return bool(self.ename)


@contextlib.contextmanager
def _kernel(workdir: Path, timeout: int) -> Iterator[Callable[[Any], _Outcome]]:
    """A fresh kernel in ``workdir``, offline, its runs folder inside ``workdir``; yields ``run(cell)``."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                     interrupt_on_timeout=True, record_timing=False,
                                     resources={"metadata": {"path": str(workdir)}})
    env = {**OFFLINE_ENV, "SIAMESE_RUNS": str(workdir / "runs"),
           "SIAMESE_REPO": os.environ.get("SIAMESE_REPO") or str(_series_root())}
    dead = []

    def run(cell) -> _Outcome:
        if dead:
            return _Outcome(False)
        cell = copy.deepcopy(cell)
        cell.outputs, cell.execution_count = [], None
        nb.cells.append(cell)
        try:
            client.execute_cell(cell, len(nb.cells) - 1)
        except nbclient.exceptions.DeadKernelError:
            dead.append(True)
            return _Outcome(True, "DeadKernelError", "the kernel died (out of memory, or a crash) in this cell")
        error = next((o for o in cell.outputs if o.output_type == "error"), None)
        if error is None:
            return _Outcome(True)
        return _Outcome(True, error.ename, error.evalue, _ANSI.sub("", "\n".join(error.traceback)))

    with environment_changes(env):
        try:
            with client.setup_kernel():
                yield run
        except Exception as e:
            if type(e).__name__ == "NoSuchKernel":
                raise AssignmentError("no Jupyter kernel named python3 to grade with; install one: "
                                      "python -m pip install ipykernel") from None
            raise


def _assertion_message(outcome: _Outcome) -> str:
    if outcome.evalue.strip():
        return outcome.evalue.strip()
    arrow = [line for line in outcome.traceback.splitlines() if line.lstrip().startswith("---->")]
    line = arrow[-1].split("---->", 1)[1].strip() if arrow else ""
    return f"a check failed: {line}" if line else "a check failed (an assert without a message)"


def _judge(exercise: Exercise, solution: _Outcome, test: _Outcome, earlier: tuple[int, _Outcome] | None,
           timeout: int) -> ExerciseResult:
    """Passed, failed, not implemented or error, from the outcomes of the exercise's two cells."""
    writes = ", ".join(exercise.writes)
    defines = ", ".join(exercise.defines)

    def result(status: str, message: str = "") -> ExerciseResult:
        score = exercise.points if status == "passed" else 0
        return ExerciseResult(exercise.grade_id, exercise.writes, exercise.points, score, status, message)

    where = writes if writes == defines or not defines else f"{writes} (the cell defining {defines})"
    if not test.ran:
        return result("error", "not run: the kernel died in an earlier cell")
    if not test.error:
        return result("passed")
    if "NotImplementedError" in (solution.ename, test.ename):
        return result("not implemented",
                      f"replace `raise NotImplementedError()` in {where} with your code")
    if test.ename == "KeyboardInterrupt":
        return result("error", f"the checks did not finish within {timeout} s and were stopped; look for a loop "
                      f"that never ends in {writes}")
    if solution.error:
        return result("error", f"the cell where you write {writes} failed: {solution.ename}: {solution.evalue}; "
                      "fix it so that it runs")
    if test.ename == "AssertionError":
        return result("failed", _assertion_message(test))
    message = f"{test.ename}: {test.evalue}"
    if earlier is not None:
        index, outcome = earlier
        message += f" (an earlier cell failed first: cell {index + 1}, {outcome.ename}: {outcome.evalue})"
    return result("error", message)


def _plan(cells, exercises: list[Exercise], positions: dict[str, tuple[int, int]], quick: bool) -> list[int]:
    """The cells to run, by position: every code cell, or (quick) the setup cells (every code cell up to the
    ``parameters`` cell: the Colab cell, the imports; the first code cell without one), the ``parameters``
    cell and each exercise's solution and test cells."""
    code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
    if not quick:
        return code
    parameters = next((i for i in code if "parameters" in cells[i].get("metadata", {}).get("tags", [])), None)
    setup = [i for i in code if i <= parameters] if parameters is not None else code[:1]
    graded = {i for pair in positions.values() for i in pair}
    order = [i for i in setup if i not in graded]
    return order + [i for e in exercises for i in positions[e.grade_id]]


def grade(submission: str | os.PathLike, autograder: str | os.PathLike | None = None, quick: bool = False,
          timeout: int = DEFAULT_TIMEOUT) -> GradeReport:
    """Grade a student's notebook: run it with its test cells restored, and score each exercise.

    ``autograder`` is the folder written by :func:`write_assignments` (or its
    ``autograder/``), or a folder of source notebooks (default:
    ``notebooks``). The test cells of the submission are replaced by the
    autograder's, hidden checks included. The notebook runs in a fresh kernel
    in a scratch folder, offline, with ``SIAMESE_RUNS`` inside it, so nothing in
    the repository is written. ``quick`` runs only the setup cells (the code
    cells before the ``parameters`` cell), that cell and each exercise's two cells.
    A file that is not a notebook, or lacks a graded cell, raises
    :class:`AssignmentError` naming it.

    Explained in ``README.md`` (section "Course assignments").
    """
    path = Path(submission)
    nb = _read_notebook(path, "the submitted notebook")
    autograder = Path(autograder) if autograder is not None else Path("notebooks")
    source, exercises, positions = _match(nb, path, _load_exercise_sets(autograder), autograder)
    cells = copy.deepcopy(nb.cells)
    for e in exercises:
        cells[positions[e.grade_id][1]].source = e.tests
    order = _plan(cells, exercises, positions, quick)
    report = GradeReport(str(path), source, "quick" if quick else "full")
    with tempfile.TemporaryDirectory(prefix="siamese-grade-") as tmp:
        with _kernel(Path(tmp), timeout) as run:
            outcomes = {i: run(cells[i]) for i in order}
    tests = {positions[e.grade_id][1] for e in exercises}  # a failed check does not break the next exercise
    for e in exercises:
        solution_at, test_at = positions[e.grade_id]
        earlier = next(((i, outcomes[i]) for i in order if i < test_at and i not in tests and outcomes[i].error),
                       None)
        report.results.append(_judge(e, outcomes[solution_at], outcomes[test_at], earlier, timeout))
    return report


def format_report(report: GradeReport) -> str:
    """The report as the command line prints it: one line per exercise, then the points.

    Explained in ``README.md`` (section "Course assignments").
    """
    mode = ("quick: the setup and parameters cells, then each exercise's cells" if report.mode == "quick"
            else "every cell")
    lines = [f"{report.submission}: graded with {report.autograder} ({mode})"]
    width = max((len(r.grade_id) for r in report.results), default=0)
    for r in report.results:
        points = f"{_number(r.score)}/{_number(r.points)}"
        status = "not implemented yet" if r.status == "not implemented" else r.status
        detail = f": {r.message}" if r.message else ""
        lines.append(f"  {r.grade_id:<{width}}  {points:>5}  {status}{detail}")
    lines.append(f"score {_number(report.score)}/{_number(report.max_score)}"
                 + ("" if report.passed else f" ({sum(r.status != 'passed' for r in report.results)} of "
                    f"{len(report.results)} exercises not passed)"))
    return "\n".join(lines)
