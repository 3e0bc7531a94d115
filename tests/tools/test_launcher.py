"""raftkv_tools.launcher: output file, environment, session and prefix of spawned processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raftkv_tools.launcher import spawn

REPORT = (
    "import os, sys; "
    "print(os.environ.get('LAUNCH_TEST'), os.getpgid(0) == os.getpid(), os.getcwd(), "
    "sys.stdin.read() == '', flush=True); "
    "print('to stderr', file=sys.stderr)"
)


def run(out: Path, **options: object) -> list[str]:
    process = spawn([sys.executable, "-c", REPORT], output=out, **options)  # type: ignore[arg-type]
    assert process.wait(20) == 0
    return out.read_text().splitlines()


def test_output_env_cwd_and_a_session_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "p.out"
    lines = run(out, env={"LAUNCH_TEST": "x"}, cwd=tmp_path, new_session=True)
    assert lines == [f"x True {tmp_path} True", "to stderr"]


def test_appends_by_default_truncates_on_request_inherits_env_and_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "p.out"
    out.write_text("before\n")
    monkeypatch.delenv("LAUNCH_TEST", raising=False)
    lines = run(out)
    assert lines == ["before", f"None False {Path.cwd()} True", "to stderr"]
    assert run(out, truncate=True) == [f"None False {Path.cwd()} True", "to stderr"]


def test_a_prefix_wraps_the_command(tmp_path: Path) -> None:
    out = tmp_path / "p.out"
    lines = run(out, prefix=["env", "LAUNCH_TEST=wrapped"])
    assert lines[0].startswith("wrapped ")
