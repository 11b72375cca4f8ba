"""How long does a newcomer wait? Notebook 01 to its end, notebook 03 to its first retrieval result.

Runs copies of the notebooks as a reader does (the full setting: ``SIAMESE_SMOKE``
unset), each in a fresh kernel, offline, with ``SIAMESE_RUNS`` in a temporary
folder so that nothing already trained is reused, and reads the time each cell
finished from nbclient's timing metadata. Reports, per notebook, the seconds
from the kernel's start to the end of the notebook, and to the end of the first
cell whose output shows Recall@K (a line with ``R@1``), the first moment a
reader sees the model retrieve. The figures go into the README's Quick start.

    python benchmarks/first_result.py [--threads 2] [NOTEBOOK ...]

The 1-minute load average is printed before and after: other processes on the
cores inflate every figure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path

import nbclient
import nbformat

from siamese_utils.tools.notebooks import OFFLINE_ENV, SMOKE_VARIABLE

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [REPO / "notebooks" / "01_preprocessing.ipynb", REPO / "notebooks" / "03_contrastive_training.ipynb"]


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for k, v in out.get("data", {}).items() if k in ("text/plain", "text/html"))
    return "".join(parts)


def time_notebook(path: Path, threads: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    runs = tempfile.mkdtemp(prefix="first-result-runs-")
    saved = dict(os.environ)
    os.environ.pop(SMOKE_VARIABLE, None)
    os.environ.update({**OFFLINE_ENV, "SIAMESE_RUNS": runs, "SIAMESE_THREADS": str(threads)})
    os.environ.pop("MPLBACKEND", None)
    try:
        start = datetime.datetime.now(datetime.timezone.utc)
        nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3", record_timing=True,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    ends = [_time(c.metadata["execution"]["shell.execute_reply"]) for c in code]
    first = next(((i, e) for i, (c, e) in enumerate(zip(code, ends)) if "R@1" in _text(c)), None)
    return {"notebook": path.name, "total_s": (ends[-1] - start).total_seconds(),
            "first_recall_s": None if first is None else (first[1] - start).total_seconds(),
            "first_recall_cell": None if first is None else first[0] + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=DEFAULT, help="notebooks (default: 01 and 03)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the kernels (default: %(default)s)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.threads} torch threads, load average {os.getloadavg()[0]:.1f} at the start")
    rows = [time_notebook(p, args.threads) for p in args.notebooks]
    print("\n| notebook | whole notebook (s) | first Recall@K printed (s, after code cell) |\n|---|---:|---:|")
    for r in rows:
        first = "none" if r["first_recall_s"] is None else f"{r['first_recall_s']:.0f} (cell {r['first_recall_cell']})"
        print(f"| {r['notebook']} | {r['total_s']:.0f} | {first} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
