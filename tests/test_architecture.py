"""The package tree is the architecture: imports flow one way (commands -> entry points ->
evaluation/figures -> engine/builders -> core), with no cycle, and every module imports on its own;
one owner for each fact: the run folder's file names (checkpoint.py), the Hydra apps and the exits
(cli.py)."""

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
ENGINE = {"bnrepro.engine", "bnrepro.builders"}  # how tensors run, what a run is built from
# Formatting only (markdown tables, number formats): a leaf of the core, so that the plan, the
# ensemble and the report write the same numbers without pulling torch into the report.
TABLES = "bnrepro.figures.tables"


def source(module: str) -> str:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def _main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` - a command's shim (python -m ...), not a dependency."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and getattr(node.test.left, "id", None) == "__name__"
    )


def nodes(module: str):
    """Every AST node of a module, outside its `if __name__ == "__main__":` block."""
    stack = [ast.parse(source(module))]
    while stack:
        node = stack.pop()
        yield node
        stack += [child for child in ast.iter_child_nodes(node) if not _main_block(child)]


def imports_of(module: str) -> set[str]:
    """The bnrepro modules that `module` imports anywhere in its file (function bodies too)."""
    found = set()
    for node in nodes(module):
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


def level(module: str) -> int:
    """0 core, 1 engine/builders, 2 evaluation/figures, 3 entry points, 4 commands."""
    if module == TABLES:
        return 0
    if module in ENGINE:
        return 1
    if module.startswith(UPPER):
        return 2
    return 3 if module in ENTRY_POINTS else 4 if module == COMMANDS else 0


def test_imports_flow_one_way():
    """Commands -> entry points -> evaluation/figures -> engine/builders -> core: nothing imports
    the console commands or the training loop, no module imports one above its level, evaluation
    imports no figure but the tables (a leaf), the engine imports no builder."""
    for m, deps in GRAPH.items():
        assert COMMANDS not in deps, f"{m} imports the console commands"
        if m != COMMANDS:
            assert not deps & ENTRY_POINTS, f"{m} imports the training loop"
        above = sorted(d for d in deps if level(d) > level(m))
        assert not above, f"{m} imports {above}, above its level"
        if m.startswith("bnrepro.evaluation"):
            figures = [d for d in deps if d.startswith("bnrepro.figures") and d != TABLES]
            assert not figures, f"{m} imports {figures}"
    # the tables print every score with its interval: stats.py, itself a leaf (no torch)
    assert GRAPH[TABLES] <= {"bnrepro.paper", "bnrepro.stats"}, GRAPH[TABLES]
    assert not GRAPH["bnrepro.stats"], GRAPH["bnrepro.stats"]
    assert "bnrepro.builders" not in GRAPH["bnrepro.engine"]


def test_only_checkpoint_py_spells_the_run_folders_file_names():
    """checkpoint.RunFolder owns every file name of a run folder (best.pt, ckpt_*.pt,
    checkpoints/, metrics.jsonl, ...): no other module builds a path from one."""
    names = {"best.pt", "checkpoints", "metrics.jsonl", "summary.json", "config.yaml",
             "overrides.yaml", "train.log", "ckpt_", "ckpt_*.pt"}  # fmt: skip
    for m in MODULES:
        if m == "bnrepro.checkpoint":
            continue
        spelled = {n.value for n in nodes(m) if isinstance(n, ast.Constant) and n.value in names}
        assert not spelled, f"{m} spells {sorted(spelled)}: ask checkpoint.RunFolder"


def test_one_hydra_main_and_one_place_that_exits():
    """cli.py alone defines @hydra.main apps and ends the process (sys.exit, SystemExit): every
    other module raises, and the one error path turns it into one line and an exit status."""
    for m in MODULES:
        for node in nodes(m):
            if isinstance(node, ast.FunctionDef):
                for d in node.decorator_list:
                    name = ast.unparse(d.func if isinstance(d, ast.Call) else d)
                    assert name != "hydra.main" or m == COMMANDS, f"{m}.{node.name} is a Hydra app"
            exits = (
                isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit")
            ) or (isinstance(node, ast.Raise) and "SystemExit" in ast.unparse(node.exc or node))
            assert not exits or m in (COMMANDS, "bnrepro.errors"), f"{m} exits: {ast.unparse(node)}"


def test_the_report_imports_no_torch():
    """bnrepro-report draws from run folders: importing it (and the tables it shares with the
    ensemble and the plan) loads neither torch, timm nor Hydra."""
    code = (
        "import sys, bnrepro.figures.report, bnrepro.figures.tables\n"
        "heavy = {'torch', 'timm', 'hydra'} & set(sys.modules)\n"
        "assert not heavy, sorted(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


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
        for node in ast.parse(source(m)).body:
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
