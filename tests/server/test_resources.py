"""The node's descriptors (raftkv/server/resources.py): the spare reserve.

What the reserve is for, a storage that keeps saving with no descriptor left, is tested with
the storage (tests/server/test_storage.py) and against a real node (tests/process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftkv.server.resources import RESERVED_DESCRIPTORS, DescriptorReserve


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
