"""The committed stubs in raftkv/rpc/ must be exactly what `make proto` generates from proto/."""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["raftkv_pb2.py", "raftkv_pb2.pyi", "raftkv_pb2_grpc.py", "raftkv_pb2_grpc.pyi"]
# mypy-protobuf's protoc plugins, installed next to this interpreter (as `make proto` uses them).
PLUGINS = Path(sys.executable).parent


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    shutil.copy(ROOT / "proto" / "raftkv.proto", tmp_path / "raftkv.proto")
    status = protoc.main(
        [
            "protoc",
            f"--plugin=protoc-gen-mypy={PLUGINS / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={PLUGINS / 'protoc-gen-mypy_grpc'}",
            f"-Iraftkv/rpc={tmp_path}",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_grpc_out=generate_concrete_servicer_stubs:{tmp_path}",
            str(tmp_path / "raftkv.proto"),
        ]
    )
    assert status == 0
    for name in GENERATED:
        fresh = tmp_path / "raftkv" / "rpc" / name
        committed = ROOT / "raftkv" / "rpc" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"raftkv/rpc/{name} is stale: run `make proto` and commit the result"
        )
