"""The architecture's rules, checked: who may import Ray, fsspec and torch; no import cycles;
modules and functions of a readable size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "raymerge"
MODULES = sorted(PKG.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (absolute names; ``top_level_only``: not inside functions or
    ``if TYPE_CHECKING`` blocks, i.e. what importing the module itself loads)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                if top_level_only:
                    for orelse in child.orelse:
                        visit(ast.Module(body=[orelse], type_ignores=[]), inner)
                    continue
            if isinstance(child, ast.Import) and not (top_level_only and nested):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not (top_level_only and nested):
                if child.module and child.level == 0:
                    found.add(child.module)
                    found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_only_execution_imports_ray():
    offenders = [
        module_name(p)
        for p in MODULES
        if "ray" in roots(imports(p)) and not module_name(p).startswith("raymerge.execution")
    ]
    assert offenders == []


def test_only_io_and_storage_import_fsspec_or_boto():
    allowed = ("raymerge.io", "raymerge.storage")
    storage_libs = {"fsspec", "s3fs", "boto3", "botocore", "aiobotocore"}
    offenders = [
        module_name(p)
        for p in MODULES
        if storage_libs & roots(imports(p)) and not module_name(p).startswith(allowed)
    ]
    assert offenders == []


def test_no_import_cycles():
    """Module-level imports between raymerge modules form no cycle (imports inside functions
    are deferred on purpose and do not count)."""
    names = {module_name(p): p for p in MODULES}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps = set()
        for imp in imports(path, top_level_only=True):
            while imp and imp not in names:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):
                deps.add(imp)
        graph[name] = deps
    seen: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in seen:
                walk(dep, stack + [dep])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            walk(node, [node])
    assert cycles == []


def test_modules_and_functions_stay_readable():
    """No module over ~400 lines; no function over ~80 unless its docstring says why
    ("Long because ...")."""
    long_modules = [
        (module_name(p), n) for p in MODULES if (n := len(p.read_text().splitlines())) > 400
    ]
    long_functions = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if n > MAX_FUNCTION_LINES and "Long because" not in doc:
                    long_functions.append((module_name(p), node.name, n))
    assert long_modules == []
    assert long_functions == []


def loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_driver_imports_no_torch():
    """Planning and scheduling never import torch (1-2 s of every run's fixed cost)."""
    mods = loaded_after(
        "import raymerge.cli, raymerge.pipeline, raymerge.plan, raymerge.config, "
        "raymerge.verify; from raymerge.config import load_config; "
        "load_config({'merge_method': 'ties', 'base_model': 'b', 'models': "
        "[{'model': 'm', 'parameters': {'weight': 1, 'density': 0.5}}]})"
    )
    assert "torch" not in mods
    assert "ray" not in mods  # imported only when a run goes to Ray (not for local runs)


def test_verify_and_the_cli_load_no_ray():
    """``raymerge verify`` (and the CLI before a subcommand runs) start without Ray."""
    mods = loaded_after("import raymerge, raymerge.cli, raymerge.verify, raymerge.cli.verify")
    assert not {"ray", "torch"} & mods


def test_planning_a_real_checkpoint_imports_no_torch(family):
    """Header parsing, validation and planning of real files stay torch-free too."""
    base, ft1, ft2 = family
    cfg = repr(
        {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 1, "density": 0.5}},
                {"model": ft2, "parameters": {"weight": 1}},
            ],
        }
    )
    mods = loaded_after(
        "from raymerge.config import load_config; from raymerge.options import RunOptions; "
        "from raymerge.pipeline import build_plan; "
        f"plan, _ = build_plan(load_config({cfg}), RunOptions()); assert plan.jobs"
    )
    assert "torch" not in mods


@pytest.mark.parametrize(
    "module",
    [
        "raymerge.methods",
        "raymerge.plan",
        "raymerge.params",
        "raymerge.config",
        "raymerge.io.header",
        "raymerge.zipit.matching",
        "raymerge.zipit.stats",
        "raymerge.zipit.spaces",
        "raymerge.zipit.apply",
        "raymerge.execution.schedule",
    ],
)
def test_pure_modules_import_no_io_or_scheduling(module):
    mods = loaded_after(f"import {module}")
    assert not {"ray", "fsspec", "s3fs", "boto3", "botocore"} & mods, module
