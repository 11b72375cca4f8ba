"""The repository keeps its promises: the README's commands are CI's, the environment file agrees
with pyproject.toml, and every public name points to the notebook that explains it."""

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = 'python -m pip install -e ".[dev]"'
RUN = "jupyter lab notebooks/"
TEST = "python -m pytest"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_readme_quick_start_is_exactly_three_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks and blocks[0].strip().splitlines() == [SETUP, RUN, TEST]


def test_ci_runs_the_readme_commands_in_a_fresh_environment():
    lines = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "python3 -m venv .venv" in lines
    assert lines.index(SETUP) < lines.index(TEST)
    assert "set -euo pipefail" in lines


def _requirement_names(reqs):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_environment_file_agrees_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = _requirement_names(project["dependencies"])
    env = (REPO / "environment.yml").read_text()
    conda_names = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
    listed = set(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)", env, re.M))
    assert {conda_names.get(d, d) for d in deps} <= listed
    assert "conda-forge" in env and "defaults" not in env
    for line in env.splitlines():
        if line.strip().startswith("- "):
            assert "#" in line, f"every dependency line says why: {line!r}"
    # The same lower bounds in both files.
    for req in project["dependencies"]:
        if ">=" in req:
            name, bound = req.split(">=")
            name = conda_names.get(name.strip(), name.strip())
            assert f"{name}>={bound.split()[0].strip(chr(34))}" in env, req
    assert re.search(r"-e \.\[dev\]", env)


def test_nothing_excludes_what_colab_ships():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in reqs:
        assert "<" not in req and "==" not in req, f"no upper bounds or exact pins: {req}"
    bounds = {r.split(">=")[0]: r.split(">=")[1] for r in project["dependencies"] if ">=" in r}
    colab = {"torch": "2.11", "torchvision": "0.26", "transformers": "5.15", "ipywidgets": "7.7.1"}
    for name, version in colab.items():
        if name in bounds:
            assert tuple(map(int, bounds[name].split("."))) <= tuple(map(int, version.split("."))), name
    assert project["requires-python"] == ">=3.10"
    assert "siamese-image-text[pretrained]" in project["optional-dependencies"]["dev"]


def _library_modules() -> list[str]:
    import pkgutil

    import siamese_utils

    return sorted(m.name.removeprefix("siamese_utils.") for m in pkgutil.walk_packages(siamese_utils.__path__, "siamese_utils.")
                  if not m.ispkg and not m.name.endswith("__main__"))


MODULES = _library_modules()


@pytest.mark.parametrize("module", MODULES)
def test_public_names_point_to_their_chapter(module):
    mod = importlib.import_module(f"siamese_utils.{module}")
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        refs = re.findall(r"notebooks/(\d\d_\w+\.ipynb)|(README\.md)", doc + (mod.__doc__ or ""))
        assert refs, f"siamese_utils.{module}.{name}: its docstring should name the notebook that explains it"
        for notebook, readme in refs:
            assert (REPO / "notebooks" / notebook).exists() if notebook else (REPO / readme).exists()


def test_package_exports():
    import siamese_utils

    for name in siamese_utils.__all__:
        assert hasattr(siamese_utils, name)
    assert siamese_utils.__version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_no_clutter_committed():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for f in files:
        assert " " not in f and ".ipynb_checkpoints" not in f and "__pycache__" not in f, f
        assert not f.endswith((".pt", ".pth", ".ckpt")), f
