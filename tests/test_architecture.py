"""The package tree is the architecture: imports flow one way (entry points -> engine -> core),
with no cycle, and every module imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bnrepro

PACKAGE = Path(bnrepro.__file__).parent
MODULES = sorted(
    ".".join(("bnrepro", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)
ENTRY_POINTS = {"bnrepro.train", "bnrepro.plan"}  # the loop and its planner: nothing imports them
COMMANDS = "bnrepro.cli"  # the console scripts: import what each command runs, nothing imports it
UPPER = ("bnrepro.evaluation", "bnrepro.figures")  # above the engine


def imports_of(module: str) -> set[str]:
    """The bnrepro modules that `module` imports anywhere in its file (function bodies too)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    # A package's own ancestors are containers, not dependencies.
    return {m for m in found if m in MODULES and not module.startswith(m + ".")} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_no_import_cycle():
    done, path = set(), []

    def visit(m: str) -> None:
        if m in path:
            cycle = path[path.index(m) :] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        path.append(m)
        for n in sorted(GRAPH[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in MODULES:
        visit(m)


def test_imports_flow_one_way():
    """Entry points -> evaluation/figures -> engine -> core (model, data, checkpoint, tracking,
    distributed, ...): nothing imports the training loop, the engine and the core import nothing
    above them, evaluation imports no figure."""
    for m, deps in GRAPH.items():
        assert COMMANDS not in deps, f"{m} imports the console commands"
        if m == COMMANDS:
            continue
        assert not deps & ENTRY_POINTS, f"{m} imports the training loop"
        if m.startswith("bnrepro.evaluation"):
            assert not any(d.startswith("bnrepro.figures") for d in deps), f"{m} imports figures"
        if not m.startswith(UPPER) and m not in ENTRY_POINTS:
            upper = sorted(d for d in deps if d.startswith(UPPER))
            assert not upper, f"{m} (engine or core) imports {upper}"
        if m != "bnrepro.engine" and not m.startswith(UPPER) and m not in ENTRY_POINTS:
            assert "bnrepro.engine" not in deps, f"core module {m} imports the engine"


def test_every_module_imports_alone():
    """Each module in a process of its own bnrepro state: no module relies on another having
    been imported first (one interpreter, bnrepro's modules dropped between imports)."""
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [k for k in sys.modules if k == 'bnrepro' or k.startswith('bnrepro.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_one_name_one_meaning():
    """No two public functions or classes share a name across modules, except `main` (every
    command's entry point, `main(argv=None)`)."""
    owners: dict[str, list[str]] = {}
    for m in MODULES:
        path = PACKAGE.joinpath(*m.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                owners.setdefault(node.name, []).append(m)
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                assert [a.arg for a in node.args.args] == ["argv"], f"{m}.main(argv=None)"
    shared = {name: ms for name, ms in owners.items() if len(ms) > 1 and name != "main"}
    assert not shared, shared


def test_commands_and_the_package_start_without_torch():
    """`bnrepro-train --help` and tab completion need Hydra and the YAML only (results/startup.md
    has the timings): importing the package or the commands imports neither torch nor timm, and
    bn_inception is still in timm's registry once timm is imported, in either order."""
    code = (
        "import sys, bnrepro, bnrepro.cli\n"
        "assert not {'torch', 'timm'} & set(sys.modules), sorted({'torch', 'timm'} & set(sys.modules))\n"
        "import timm\n"
        "assert timm.is_model('bn_inception')\n"
        "assert timm.create_model('bn_inception', num_classes=3, width_mult=0.125)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    timm_first = "import timm, bnrepro; assert timm.is_model('bn_inception')"
    out = subprocess.run(
        [sys.executable, "-c", timm_first], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
