"""The environment of every test run, whatever the shell exports.

Loaded by pytest before it collects anything (it sits at the root), so it also
holds for ``python -m pytest notebooks/03_contrastive_training.ipynb``; the
kernels that nbval starts for the notebooks inherit these variables.
"""

import atexit
import os
import shutil
import tempfile

import pytest

# Offline: nothing may reach a model hub. Set before transformers or huggingface_hub
# are imported anywhere, since they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["SIAMESE_OFFLINE"] = "1"  # torchvision's ImageNet weights: the local cache only
# Every notebook's short setting (SMOKE in its parameters cell): a test run never waits for a
# full one, with or without CI=true in the environment.
os.environ["SIAMESE_SMOKE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# What the notebooks train goes to a folder of this test run, never to the repository's runs/ (where a reader's
# full-setting runs would otherwise be reused by the tests, or overwritten by short ones).
if "SIAMESE_RUNS" not in os.environ:
    os.environ["SIAMESE_RUNS"] = tempfile.mkdtemp(prefix="siamese-test-runs-")
    atexit.register(shutil.rmtree, os.environ["SIAMESE_RUNS"], ignore_errors=True)

# Under pytest-xdist (pyproject's addopts: -n auto), each worker gets its share of the cores, for torch in the
# worker and in the notebook kernels it starts: two thread pools that fight over one core slow each other
# down by far more than they gain.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = os.environ["SIAMESE_THREADS"] = _threads

# Under pytest-xdist, every test file and notebook is one unit that stays on one worker, in order (a notebook's
# cells share its kernel; a module's fixtures are built once), and the notebooks that reuse a model another one
# trains form one unit with it, so that they never train it side by side: chapter 03's model
# (SIAMESE_RUNS/03_contrastive_training) and chapter 05's default (SIAMESE_RUNS/05_composition/default). Chapter 07
# uses both; its short setting trains its own two, so it needs neither chain.
_CHAINS = {"notebooks 03, 04": ("03_contrastive_training", "04_evaluation"),
           "notebooks 05, 08": ("05_composition", "08_interactive_search")}


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1].removesuffix(".ipynb")
    return next((unit for unit, names in _CHAINS.items() if name in names), path)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist, nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        """xdist's loadscope, with a whole file (or chapter 03's chain of notebooks) as the scope."""

        def _split_scope(self, nodeid: str) -> str:  # the one method xdist's own loadfile mode overrides
            return _unit(nodeid)

    return ByFile(config, log)
