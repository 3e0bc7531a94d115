"""The node's descriptors (raftkv/server/resources.py): the raised limit and the spare reserve.

What the reserve is for, a storage that keeps saving with no descriptor left, is tested with
the storage (tests/server/test_storage.py) and against a real node (tests/process).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raftkv.server.resources import RESERVED_DESCRIPTORS, DescriptorReserve

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 64:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    child = textwrap.dedent(
        """
        import resource
        from raftkv.server.resources import raise_descriptor_limit
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        print(*raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)
        print(*raise_descriptor_limit())  # again: nothing left to raise
        """
    )
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
    )
    first, second = result.stdout.splitlines()
    if hard == resource.RLIM_INFINITY:  # not on Linux: left as it was
        assert (first, second) == ("64 64 False", "64 64")
    else:
        assert (first, second) == (f"64 {hard} True", f"{hard} {hard}")


def test_an_open_that_fails_for_another_reason_gives_up_no_spare(tmp_path: Path) -> None:
    reserve = DescriptorReserve()
    try:
        assert reserve.spares == RESERVED_DESCRIPTORS
        with pytest.raises(FileNotFoundError):
            reserve.open(tmp_path / "missing", os.O_RDONLY)
        assert reserve.spares == RESERVED_DESCRIPTORS
        with reserve.opened(tmp_path / "file", os.O_WRONLY | os.O_CREAT) as fd:
            os.write(fd, b"x")
        assert (tmp_path / "file").read_bytes() == b"x"
        assert reserve.spares == RESERVED_DESCRIPTORS
    finally:
        reserve.close()
        reserve.close()
    assert reserve.spares == 0
