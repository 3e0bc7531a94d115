"""The core must stay sans-I/O: no sockets, files, threads, clocks or processes
(docs/design.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "raftkv" / "core"
FORBIDDEN = {
    "asyncio",
    "grpc",
    "socket",
    "threading",
    "multiprocessing",
    "time",
    "os",
    "io",
    "subprocess",
    "select",
    "selectors",
    "signal",
    "pathlib",
    "shutil",
    "datetime",
    "logging",
    "secrets",
    "uuid",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert files, f"no core modules found under {CORE}"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{path.name} imports I/O modules {sorted(bad)}"


def test_core_calls_no_builtin_open_or_print() -> None:
    for path in core_files():
        tree = ast.parse(path.read_text())
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not calls & {"open", "print", "input", "exec", "eval"}, path.name


def test_detector_catches_an_io_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom time import monotonic\nfrom . import messages\n")
    assert imported_modules(sample) == {"os", "time"}
