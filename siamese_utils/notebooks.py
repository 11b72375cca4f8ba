"""Executing the series' notebooks in place, so their stored outputs are one in-order run.

Explained in ``README.md`` (section "Working on the notebooks").
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["execute_notebook", "strip_noise"]

# Metadata that changes on every run without changing the lesson.
_LANGUAGE_INFO_KEEP = ("name", "codemirror_mode", "file_extension", "mimetype", "nbconvert_exporter", "pygments_lexer")


def strip_noise(nb) -> None:
    """Drop per-run metadata (execution timestamps, interpreter version); keep every output."""
    info = nb.metadata.get("language_info")
    if info:
        nb.metadata["language_info"] = {k: v for k, v in info.items() if k in _LANGUAGE_INFO_KEEP}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)


def execute_notebook(path: str | os.PathLike, timeout: int = 1800, kernel_name: str = "python3") -> Path:
    """Run a notebook top to bottom in a fresh kernel (working directory: its folder) and save it.

    The notebook is written only if every cell succeeds; on an error the file on
    disk is left as it was and the error names the failing cell.
    """
    import nbclient
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    env_offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SIAMESE_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env_offline}
    os.environ.update(env_offline)  # the kernel inherits this: the series never downloads
    try:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    strip_noise(nb)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return path
