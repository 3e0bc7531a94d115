"""infra/wheelhouse.py: a reproducible project wheel, and a directory synced to exactly what the
nodes need (so Ansible's copy is idempotent)."""

from __future__ import annotations

import re
import zipfile
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


PEER_IMPORT = re.compile(r"^\s*(import|from)\s+(pysyncobj|syncobj|etcd3|etcd)\b", re.MULTILINE)


def test_the_wheel_for_the_nodes_holds_the_product_and_no_tool(tmp_path: Path) -> None:
    """What Ansible copies to the VMs: raftkv (core, server, rpc, client), not the benchmark, its
    PySyncObj and etcd peers or any other tool of raftkv-tools, and no top-level `client`."""
    pytest.importorskip("setuptools")
    wheel = wheelhouse.build_project_wheel(REPO_ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
        metadata = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA")
        )
        scripts = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    packages = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"raftkv"}
    for wanted in (
        "raftkv/__main__.py",
        "raftkv/core/node.py",
        "raftkv/server/main.py",
        "raftkv/rpc/raftkv_pb2.py",
        "raftkv/client/cli.py",
        "raftkv/client/library.py",
    ):
        assert wanted in names
    for name in names:
        lowered = name.lower()
        assert not lowered.startswith(("raftkv/bench/", "raftkv_tools/", "client/")), name
        assert "syncobj" not in lowered and "etcd" not in lowered, name
        assert not name.startswith("raftkv/") or Path(name).stem not in {
            "bench",
            "localcluster",
            "logreview",
            "logreview_plot",
            "certs",
            "delayproxy",
        }, name
    for name, text in sources.items():
        assert not PEER_IMPORT.search(text), f"{name} imports a benchmark peer"
        assert "raftkv_tools" not in text, f"{name} refers to raftkv-tools"
    requirements = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requirements and all(
        r.split("=")[0].strip() in {"grpcio", "immutables", "protobuf", "sortedcontainers"}
        for r in requirements
    ), requirements
    assert "Provides-Extra: bench" not in metadata
    assert "raftkv = raftkv.client.cli:main" in scripts
    assert "raftkv.commands" not in scripts


def test_the_wheelhouse_downloads_only_the_products_runtime_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("setuptools")
    asked: list[list[str]] = []

    def download(dependencies: list[str], python: str, platforms: list[str], into: Path) -> None:
        asked.append(list(dependencies))

    monkeypatch.setattr(wheelhouse, "download_dependencies", download)
    out = tmp_path / "wheelhouse"
    wheelhouse.build(out, REPO_ROOT, "3.11", ["manylinux2014_x86_64"])
    name, version, dependencies, _ = wheelhouse.project_metadata(REPO_ROOT)
    assert asked == [dependencies]
    assert sorted(d.split("==")[0] for d in dependencies) == [
        "grpcio",
        "immutables",
        "protobuf",
        "sortedcontainers",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        ".wheelhouse-stamp",
        f"{name}-{version}-py3-none-any.whl",
        "requirements.txt",
    ]
    assert (out / "requirements.txt").read_text() == f"{name}=={version}\n"


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
