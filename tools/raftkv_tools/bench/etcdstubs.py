"""Current Python stubs for etcd's v3 gRPC API (KV, Maintenance), generated at set-up time.

The `etcd3` PyPI package (0.12.0) ships stubs generated for protobuf 3 that do not import under
protobuf ≥ 4, but each `etcdrpc/*_pb2.py` embeds its file descriptor as a latin-1 string literal
(`serialized_pb=_b('…')`). We read those literals with `ast` (nothing of etcd3 is imported),
rename the files into a private package `etcdbench_stubs/`, write a FileDescriptorSet and let
`grpc_tools.protoc --descriptor_set_in=…` generate stubs for the protobuf/grpcio installed here.
The output goes to a cache directory (default ~/.cache/raftkv-bench/etcd-stubs), never into the
repository; it is regenerated when the etcd3 or grpcio-tools version changes.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

PACKAGE = "etcdbench_stubs"
FILES = ("kv", "auth", "rpc")  # dependency order
ENV_CACHE = "RAFTKV_BENCH_CACHE"


class StubsError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get(ENV_CACHE)
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "raftkv-bench"


def _etcd3_source(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution("etcd3")
    except importlib.metadata.PackageNotFoundError:
        raise StubsError(
            "the etcd3 package (the source of etcd's descriptors) is not installed: "
            "run `make bench-deps` (pip install -e 'tools[bench]')"
        ) from None
    path = Path(str(dist.locate_file(f"etcd3/etcdrpc/{name}_pb2.py")))
    if not path.is_file():
        raise StubsError(f"etcd3 is installed but {path} is missing")
    return path


def _embedded_descriptor(path: Path) -> descriptor_pb2.FileDescriptorProto:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.keyword) or node.arg != "serialized_pb":
            continue
        value = node.value
        if isinstance(value, ast.Call) and value.args:  # _b('…')
            value = value.args[0]
        literal = ast.literal_eval(value)
        raw = literal.encode("latin-1") if isinstance(literal, str) else bytes(literal)
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        return proto
    raise StubsError(f"no serialized_pb=… descriptor in {path}")


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """etcd's kv/auth/rpc descriptors, renamed into `etcdbench_stubs/`."""
    renamed = {f"{name}.proto": f"{PACKAGE}/{name}.proto" for name in FILES}
    result = descriptor_pb2.FileDescriptorSet()
    for name in FILES:
        proto = _embedded_descriptor(_etcd3_source(name))
        proto.name = renamed[proto.name]
        dependencies = [renamed.get(dep, dep) for dep in proto.dependency]
        del proto.dependency[:]
        proto.dependency.extend(dependencies)
        result.file.append(proto)
    return result


def _version_tag() -> str:
    versions = []
    for dist in ("etcd3", "grpcio-tools", "protobuf"):
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    return ";".join(versions)


def generate(root: Path | None = None) -> Path:
    """Generate the stubs (if not already there for these versions); returns the sys.path entry."""
    root = (root or cache_root()) / "etcd-stubs"
    tag_file = root / PACKAGE / "VERSIONS"
    tag = _version_tag()
    if tag_file.is_file() and tag_file.read_text() == tag:
        return root
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise StubsError(
            "grpcio-tools is needed to generate etcd stubs: `make bench-deps`"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch_name:
        scratch = Path(scratch_name)
        set_path = scratch / "etcd.pb"
        set_path.write_bytes(descriptor_set().SerializeToString())
        out = scratch / "out"
        out.mkdir()
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={set_path}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *(f"{PACKAGE}/{name}.proto" for name in FILES),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StubsError(f"protoc failed: {done.stderr.strip()}")
        (out / PACKAGE / "__init__.py").write_text("")
        (out / PACKAGE / "VERSIONS").write_text(tag)
        final = root / PACKAGE
        if final.exists():
            shutil.rmtree(final)
        (out / PACKAGE).rename(final)
    return root


def load() -> tuple[ModuleType, ModuleType]:
    """(rpc_pb2, rpc_pb2_grpc) for etcd's API, generating them first if needed."""
    path = str(generate())
    if path not in sys.path:
        sys.path.insert(0, path)
    rpc_pb2 = importlib.import_module(f"{PACKAGE}.rpc_pb2")
    rpc_pb2_grpc = importlib.import_module(f"{PACKAGE}.rpc_pb2_grpc")
    return rpc_pb2, rpc_pb2_grpc


if __name__ == "__main__":
    print(generate())
