"""The `raftkv` command's extra sub-commands: found in the entry-point group `raftkv.commands`
(raftkv/client/commands.py), listed by --help, given the global options, and reported clearly
when they cannot run."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from raftkv.client import cli, commands
from raftkv.client.commands import GlobalOptions, UnavailableCommand

PRODUCT = ("get", "set", "del", "ls", "status", "shell")


@dataclass
class Recorder:
    summary: str = "a recording command"
    calls: list[tuple[list[str], GlobalOptions]] = field(default_factory=list)

    def run(self, argv: list[str], options: GlobalOptions) -> int:
        self.calls.append((argv, options))
        return 7


@dataclass
class NeedsAMissingModule:
    summary: str = "needs a module that is not installed"

    def run(self, argv: list[str], options: GlobalOptions) -> int:
        import raftkv_test_module_that_does_not_exist  # type: ignore[import-not-found]  # noqa: F401

        return 0


def use_commands(monkeypatch: pytest.MonkeyPatch, found: dict[str, commands.Command]) -> None:
    monkeypatch.setattr(cli, "discover", lambda reserved=(): found)


def test_an_extra_command_gets_its_arguments_untouched_and_the_global_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    use_commands(monkeypatch, {"record": recorder})
    argv = ["--cluster", "c.json", "--timeout", "2", "-v", "record", "x", "--flag", "-h", "--", "y"]
    assert cli.main(argv) == 7
    [(arguments, options)] = recorder.calls
    assert arguments == ["x", "--flag", "-h", "--", "y"]
    assert options == GlobalOptions(cluster=Path("c.json"), peers=None, timeout=2.0, verbose=True)


def test_help_lists_the_product_and_the_extra_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_commands(monkeypatch, {"record": Recorder()})
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (*PRODUCT, "record"):
        assert f"    {name} " in out, name
    assert "a recording command" in out


def test_unknown_arguments_of_a_product_command_are_still_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_commands(monkeypatch, {"record": Recorder()})
    assert cli.main(["get", "a", "b"]) == cli.ExitCode.USAGE
    assert "unrecognized arguments: b" in capsys.readouterr().err


def test_a_missing_module_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_commands(monkeypatch, {"needy": NeedsAMissingModule()})
    assert cli.main(["needy"]) == cli.ExitCode.USAGE
    err = capsys.readouterr().err
    assert "raftkv needy:" in err and "raftkv_test_module_that_does_not_exist" in err
    assert "Traceback" not in err


def test_discover_skips_product_names_and_reports_entry_points_that_do_not_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = commands.ENTRY_POINT_GROUP
    points = [
        EntryPoint("get", "tests.client.test_cli_commands:RECORDER", group),
        EntryPoint("record", "tests.client.test_cli_commands:RECORDER", group),
        EntryPoint("broken", "raftkv_test_module_that_does_not_exist:X", group),
        EntryPoint("shapeless", "tests.client.test_cli_commands:PRODUCT", group),
    ]
    monkeypatch.setattr(commands, "entry_points", lambda group: points)
    found = commands.discover(reserved=PRODUCT)
    assert sorted(found) == ["broken", "record", "shapeless"]
    assert found["record"] is RECORDER
    broken = found["broken"]
    assert isinstance(broken, UnavailableCommand)
    assert "'raftkv_test_module_that_does_not_exist' is not installed" in broken.summary
    assert broken.run([], GlobalOptions()) == 2
    assert isinstance(found["shapeless"], UnavailableCommand)


RECORDER = Recorder()


def test_the_installed_tools_register_bench_logs_and_certs() -> None:
    """With raftkv-tools installed (make venv), its commands are there, in `--help` too."""
    pytest.importorskip("raftkv_tools", reason="raftkv-tools is not installed (make venv)")
    found = commands.discover(reserved=PRODUCT)
    assert {"bench", "logs", "certs"} <= set(found)
    assert not any(isinstance(c, UnavailableCommand) for c in found.values())
    shown = subprocess.run(
        [sys.executable, "-m", "raftkv", "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    for name in (*PRODUCT, "bench", "logs", "certs"):
        assert f"    {name} " in shown.stdout, name


def test_a_global_cluster_reaches_a_tool_command(tmp_path: Path) -> None:
    """`raftkv --cluster FILE certs ...` is `raftkv certs --cluster FILE ...`."""
    pytest.importorskip("raftkv_tools", reason="raftkv-tools is not installed (make venv)")
    missing = tmp_path / "no-such-cluster.json"
    result = subprocess.run(
        [sys.executable, "-m", "raftkv", "--cluster", str(missing), "certs", "--out", "tls"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tools_command_without_the_tools_says_where_it_comes_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_commands(monkeypatch, {})
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert "    bench " not in listed and "    certs " not in listed and "    logs " not in listed
    assert cli.main(["--timeout", "3", "bench", "--against", "etcd"]) == cli.ExitCode.USAGE
    err = capsys.readouterr().err
    assert "raftkv bench: this command comes with raftkv-tools, which is not installed" in err
