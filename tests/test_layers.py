"""The house's structure: imports run one way, and only the command line prints."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

#: lab's layers, each importing only itself and those before it.
#: The analyst's two fronts come last: the command line and the notebook workbench.
LAYERS = ["errors", "core", "contract", "node", "registry", "queries", "runtime", "workbench", "cli"]


def _modules(folder: str) -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted((ROOT / folder).rglob("*.py"))}


def _imported(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _layer(path: Path) -> str:
    part = path.relative_to(ROOT / "lab").parts[0]
    return part.removesuffix(".py")


def test_lab_never_imports_the_flower_apps() -> None:
    offenders = {
        str(p.relative_to(ROOT)): m
        for p, t in _modules("lab").items()
        for m in _imported(t)
        if m.split(".")[0] == "federation"
    }
    assert offenders == {}


def test_each_layer_of_lab_imports_only_the_layers_before_it() -> None:
    upward = []
    for path, tree in _modules("lab").items():
        here = _layer(path)
        if here not in LAYERS:
            continue
        for module in _imported(tree):
            parts = module.split(".")
            if parts[0] != "lab" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if LAYERS.index(parts[1]) > LAYERS.index(here):
                upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert upward == []


def test_only_the_command_line_prints_or_draws() -> None:
    found = []
    for path, tree in _modules("lab").items():
        if _layer(path) == "cli":
            continue
        if any(m.split(".")[0] in ("typer", "rich") for m in _imported(tree)):
            found.append(f"{path.relative_to(ROOT)} imports typer or rich")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} prints")
    assert found == []


def test_the_command_line_starts_without_pytorch_or_mlflow() -> None:
    """`lab --help`, `lab agreement check` and the start of `lab demo` need neither library: they
    cost every command about 2 s of imports before it did anything."""
    code = "import sys, lab.cli; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def test_every_environment_variable_of_the_lab_is_named_in_one_registry() -> None:
    """lab.core.environ names each with its default and use; no other code spells one out (docs may)."""
    import re

    from lab.core.environ import VARIABLES

    spelled = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("lab", "federation")
        for path, tree in _modules(folder).items()
        if path != ROOT / "lab" / "core" / "environ.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for name in [node.value]
        if re.fullmatch(r"LAB_[A-Z_]+", node.value)
    ]
    assert spelled == []
    names = [variable.name for variable in VARIABLES]
    assert len(names) == len(set(names)) and all(n.startswith(("LAB_", "MLFLOW_")) for n in names)
