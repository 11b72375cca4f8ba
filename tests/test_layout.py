"""The library's layout keeps its promises: a core readable on its own, imports that point one way, no private
names crossing modules, no reach into torch's internals."""

import ast
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "siamese_utils"
PARTS = ("core", "datasets", "chapters", "tools")
# What each part may import from the library: the core nothing outside itself, each later part the earlier ones.
ALLOWED = {"core": {"core"}, "datasets": {"core", "datasets"}, "chapters": {"core", "datasets", "chapters"},
           "tools": set(PARTS)}
CORE_LINE_BUDGET = 2500  # lines of siamese_utils/core/*.py, docstrings included
FIT_LINE_BUDGET = 60  # lines of core fit's body, its docstring left out


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 and rel[0] in PARTS else None


def _library_imports(path: Path):
    """(imported module as a dotted name under siamese_utils, imported names) for every import of the library."""
    package = ["siamese_utils", *path.relative_to(PACKAGE).parent.parts]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "siamese_utils" or module.startswith("siamese_utils."):
                yield node.lineno, module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("siamese_utils"):
                    yield node.lineno, alias.name, []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_from_the_later_parts_to_the_earlier(path):
    part = _part(path)
    if part is None:  # the package's __init__ and __main__ gather everything
        return
    for line, module, names in _library_imports(path):
        target = module.split(".")[1] if "." in module else None
        if target is None:  # `from siamese_utils.chapters import x` style imports name the part in `module`
            continue
        assert target in ALLOWED[part], (f"{path.relative_to(PACKAGE)}:{line} imports {module}: the {part} part "
                                         f"may import only from {sorted(ALLOWED[part])}")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_module(path):
    for line, module, names in _library_imports(path):
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{path.relative_to(PACKAGE)}:{line} imports private {private} from {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_reach_into_torch_internals(path):
    """No import of torch's private modules, and no private attribute read except a module's own.

    ``obj._x`` is allowed where this module itself sets ``self._x`` (a class reading the state of another
    instance of itself); anything else (``loader._iterator``, ``gallery._index`` from another module) is not.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
           and isinstance(n.value, ast.Name) and n.value.id == "self"}
    own |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            names += [a.name for a in node.names] if isinstance(node, ast.ImportFrom) and node.module == "torch" else []
            assert not any(n.startswith("torch._") or n.startswith("_") and node.module == "torch" for n in names), \
                f"{path.relative_to(PACKAGE)}:{node.lineno} imports a private part of torch"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls") or node.attr in own
            assert mine, (f"{path.relative_to(PACKAGE)}:{node.lineno} reads the private attribute .{node.attr} of "
                         f"another object")


def test_the_core_fits_the_line_budget():
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (PACKAGE / "core").glob("*.py"))
    assert lines <= CORE_LINE_BUDGET, f"siamese_utils/core holds {lines} lines (budget {CORE_LINE_BUDGET})"


def test_fit_reads_on_one_screen():
    from siamese_utils.core.train import fit

    source = inspect.getsource(fit)
    body = ast.parse(source).body[0].body
    first = body[1] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body[0]
    lines = body[-1].end_lineno - first.lineno + 1
    assert lines <= FIT_LINE_BUDGET, f"fit's body is {lines} lines (budget {FIT_LINE_BUDGET})"


def test_the_core_runs_without_the_other_parts():
    """Importing the core alone (a fresh interpreter, the other parts unimportable) works."""
    import subprocess
    import sys

    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[:2] in (['siamese_utils', p] for p in ('datasets', 'chapters', 'tools')):\n"
            "            raise ImportError(name + ' is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import types, pathlib\n"
            "pkg = types.ModuleType('siamese_utils'); pkg.__path__ = [str(pathlib.Path(%r))]\n"
            "sys.modules['siamese_utils'] = pkg\n"
            "from siamese_utils.core import data, losses, metrics, models, runtime, search, text, train, transforms\n"
            "print('core alone: ok')\n") % str(PACKAGE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "core alone: ok" in out.stdout, out.stderr[-2000:]
