"""infra/wheelhouse.py: a reproducible project wheel, and a directory synced to exactly what the
nodes need (so Ansible's copy is idempotent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import wheelhouse

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_project_wheel_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = wheelhouse.build_project_wheel(REPO_ROOT, tmp_path / "a")
    second = wheelhouse.build_project_wheel(REPO_ROOT, tmp_path / "b")
    name, version, dependencies, packages = wheelhouse.project_metadata(REPO_ROOT)
    assert first.name == f"{name}-{version}-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    assert dependencies and packages == ["raftkv"]


def test_sync_writes_what_changed_and_removes_what_is_stale(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.whl").write_text("a")
    (source / "requirements.txt").write_text("raftkv==1\n")
    out = tmp_path / "out"
    wanted = {p.name: p for p in source.iterdir()}
    assert wheelhouse.sync(out, wanted, set()) == ["wrote a.whl", "wrote requirements.txt"]
    assert wheelhouse.sync(out, wanted, set()) == []
    (out / "old.whl").write_text("old")
    (out / "kept.whl").write_text("dependency from an earlier download")
    (source / "a.whl").write_text("a2")
    assert wheelhouse.sync(out, wanted, {"kept.whl"}) == ["wrote a.whl", "removed old.whl"]
    assert sorted(p.name for p in out.iterdir()) == ["a.whl", "kept.whl", "requirements.txt"]
