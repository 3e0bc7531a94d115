"""Extra `raftkv` sub-commands contributed by other distributions (e.g. raftkv-tools).

A distribution adds `raftkv NAME ...` by registering, in the entry-point group `raftkv.commands`,
an object with

    summary: str                                   one line for `raftkv --help`
    run(argv: list[str], options: GlobalOptions) -> int
                                                   the arguments after NAME, the global options
                                                   given before NAME; returns the exit status

raftkv-tools registers `bench`, `logs`, `certs` and `restore-node` (tools/pyproject.toml). A
name that is one of the product's own commands (get, set, del, ls, status, shell,
transfer-leader, snapshot) is ignored; an entry point that fails to load is listed as
unavailable, with the reason, instead of breaking the product's commands.
Without raftkv-tools, `raftkv bench` (or logs, certs) says the command comes with raftkv-tools;
--help then lists only what this installation can run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

ENTRY_POINT_GROUP = "raftkv.commands"


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command name; None where the user gave none."""

    cluster: Path | None = None  # --cluster FILE
    peers: str | None = None  # --peers HOST:PORT,...
    timeout: float | None = None  # --timeout SECONDS (the CLI passes its default, 5, too)
    verbose: bool = False  # -v


@runtime_checkable
class Command(Protocol):
    @property
    def summary(self) -> str: ...

    def run(self, argv: list[str], options: GlobalOptions) -> int: ...


@dataclass(frozen=True)
class UnavailableCommand:
    """An entry point that could not be loaded: `raftkv NAME` says why instead of running."""

    name: str
    distribution: str
    reason: str

    @property
    def summary(self) -> str:
        return f"(unavailable: {self.reason})"

    def run(self, argv: list[str], options: GlobalOptions) -> int:
        print(
            f"raftkv {self.name}: the command from {self.distribution} cannot be loaded: "
            f"{self.reason}",
            file=sys.stderr,
        )
        return 2


@dataclass(frozen=True)
class NotInstalledCommand:
    """A command raftkv-tools would add, asked for where it is not installed: say so."""

    name: str

    @property
    def summary(self) -> str:
        return "(needs raftkv-tools)"

    def run(self, argv: list[str], options: GlobalOptions) -> int:
        print(
            f"raftkv {self.name}: this command comes with raftkv-tools, which is not installed "
            "(in a checkout of raftkv: pip install -e tools, or make venv)",
            file=sys.stderr,
        )
        return 2


# The commands raftkv-tools registers; only used to explain their absence, never to run them.
TOOLS_COMMANDS = ("bench", "certs", "logs", "restore-node")


def discover(reserved: Sequence[str] = ()) -> dict[str, Command]:
    """The commands registered in `raftkv.commands`, by name, in name order."""
    found: dict[str, Command] = {}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if point.name in reserved or point.name in found:
            continue
        distribution = point.dist.name if point.dist is not None else point.value
        try:
            command = point.load()
        except Exception as error:  # a broken plug-in must not break get/set/status/shell
            found[point.name] = UnavailableCommand(point.name, distribution, _reason(error))
            continue
        if not isinstance(command, Command):
            reason = f"{point.value} has no summary and run(argv, options)"
            found[point.name] = UnavailableCommand(point.name, distribution, reason)
            continue
        found[point.name] = command
    return found


def _reason(error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f"the Python module {error.name!r} is not installed"
    return f"{type(error).__name__}: {error}"
