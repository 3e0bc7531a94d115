"""The tools' `raftkv` sub-commands (entry-point group `raftkv.commands`) and console scripts.

Each command imports its implementation only when it runs, so `raftkv --help` stays fast and a
missing optional dependency (matplotlib for --plot, pysyncobj/etcd3 for
bench's peers) is reported as such when the command that needs it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from raftkv.client.commands import GlobalOptions

EXIT_USAGE = 2


@dataclass(frozen=True)
class ToolCommand:
    name: str
    summary: str
    module: str  # its `main(argv) -> int` runs the command
    extra: str  # the raftkv-tools extra that installs its optional dependencies
    takes_cluster: bool = False  # accepts --cluster FILE (a global --cluster is passed on)

    def run(self, argv: list[str], options: GlobalOptions) -> int:
        arguments = list(argv)
        if options.peers is not None:
            print(
                f"raftkv {self.name}: --peers is not accepted here; use --cluster FILE",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if options.cluster is not None:
            if not self.takes_cluster:
                print(f"raftkv {self.name}: takes no --cluster", file=sys.stderr)
                return EXIT_USAGE
            if "--cluster" not in arguments:
                arguments = ["--cluster", str(options.cluster), *arguments]
        try:
            main: Callable[[list[str]], int] = importlib.import_module(self.module).main
            return main(arguments)
        except ModuleNotFoundError as error:
            if error.name is None or error.name.split(".")[0] in ("raftkv", "raftkv_tools"):
                raise
            print(
                f"raftkv {self.name}: needs the Python module {error.name!r}, which is not "
                f"installed; install it with: pip install 'raftkv-tools[{self.extra}]' "
                f"(in a checkout: pip install -e 'tools[{self.extra}]')",
                file=sys.stderr,
            )
            return EXIT_USAGE


BENCH = ToolCommand(
    "bench",
    "benchmark a cluster, optionally against etcd and PySyncObj (raftkv bench --help)",
    "raftkv_tools.bench",
    "bench",
    takes_cluster=True,
)
LOGS = ToolCommand(
    "logs",
    "review gathered dump files: raftkv logs review DIR [--plot FILE.png]",
    "raftkv_tools.logreview",
    "deploy",
)
CERTS = ToolCommand(
    "certs",
    "make a CA and per-node TLS certificates (raftkv certs --help)",
    "raftkv_tools.certs",
    "deploy",
    takes_cluster=True,
)
RESTORE_NODE = ToolCommand(
    "restore-node",
    "give a node whose disk was lost a copy of the leader's log (raftkv restore-node --help)",
    "raftkv_tools.restore",
    "",
    takes_cluster=True,
)
CLUSTER = ToolCommand(
    "cluster",
    "a local cluster in the background: up, down, status, clean",
    "raftkv_tools.localcluster",
    "",
)
DELAYPROXY = ToolCommand(
    "delayproxy", "a TCP proxy that adds one-way delay", "raftkv_tools.delayproxy", ""
)


def _script(command: ToolCommand) -> Callable[[], int]:
    def script() -> int:
        return command.run(sys.argv[1:], GlobalOptions())

    return script


bench_script = _script(BENCH)
logs_script = _script(LOGS)
certs_script = _script(CERTS)
restore_node_script = _script(RESTORE_NODE)
cluster_script = _script(CLUSTER)
delayproxy_script = _script(DELAYPROXY)
