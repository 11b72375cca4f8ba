"""Where does the time of `.ci/run` go? Install, the test command, and each test file and notebook.

Clones a commit of this repository into a temporary folder (a fresh clone, as CI
gets), makes a virtual environment there, times the README's set-up command, then
times the README's test command (`python -m pytest`) with `CI` unset, as a
newcomer's shell has it, and reads each test's time from pytest's JUnit XML. Prints
one table: install, the whole test command, and the seconds each file spent
(setup, call and teardown of its tests, summed; with pytest-xdist the files run
side by side, so the sum is larger than the wall time). The browser tests run when
Chromium is installed, as in CI.

    python benchmarks/test_time.py [--ref HEAD] [--ci] [--pytest-args "-n 0"] [--keep DIR] [--json FILE]

``--ci`` sets ``CI=true`` as CI does (commits before the ``SIAMESE_SMOKE`` switch chose
their notebooks' short setting from it; without it they run the full one).

The machine is shared: the 1-minute load average is printed before and after, so
that a reader can judge how much other processes inflated the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, code


def per_file(junit: Path) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname", "")
        # tests.test_cli -> tests/test_cli.py; notebooks.01_preprocessing.ipynb (nbval's) -> notebooks/01_...ipynb
        key = name.removesuffix(".ipynb").replace(".", "/") + (".ipynb" if name.endswith(".ipynb") else ".py")
        seconds[key] += float(case.get("time", 0))
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to clone and time (default: %(default)s)")
    parser.add_argument("--ci", action="store_true", help="run the tests with CI=true, as CI does")
    parser.add_argument("--pytest-args", default="", help="extra arguments for pytest, e.g. '-n 0' (default: none)")
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="test-time-"))
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    subprocess.run(["git", "checkout", "-q", args.ref], cwd=folder, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
                            text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SIAMESE_SMOKE", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    if args.ci:
        env["CI"] = "true"
    load_before = os.getloadavg()[0]

    subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=folder, check=True)
    python = str(folder / ".venv" / "bin" / "python")
    install, code = timed([python, "-m", "pip", "install", "-q", "-e", ".[dev]"], folder, env, folder / "install.log")
    if code:
        sys.exit(f"the set-up command failed; see {folder / 'install.log'}")
    junit = folder / "junit.xml"
    tests, code = timed([python, "-m", "pytest", f"--junitxml={junit}", *shlex.split(args.pytest_args)], folder, env,
                        folder / "pytest.log")
    load_after = os.getloadavg()[0]
    files = per_file(junit)

    print(f"commit {commit}, CI={'true' if args.ci else 'unset'}, pytest {args.pytest_args or '(as in pyproject.toml)'}, "
          f"{os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before, {load_after:.1f} after; pytest exit status {code}")
    print("\n| step | seconds |\n|---|---:|")
    print(f"| set-up command (`pip install -e \".[dev]\"`) | {install:.0f} |")
    print(f"| test command (`python -m pytest`) | {tests:.0f} |")
    print(f"| both | {install + tests:.0f} |")
    print("\n| file | seconds (summed over its tests) |\n|---|---:|")
    for name, seconds in sorted(files.items(), key=lambda kv: -kv[1]):
        print(f"| `{name}` | {seconds:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "install_s": install, "pytest_s": tests, "exit": code,
                                         "load": [load_before, load_after], "files": files}, indent=1))
    print(f"\n(the clone, its install.log, pytest.log and junit.xml: {folder})")


if __name__ == "__main__":
    main()
