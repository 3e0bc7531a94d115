"""Start local processes: raftkv nodes (from a raftkv.server.launch.NodeLaunch) and the other
servers the tools run (etcd, PySyncObj, the delay proxy).

    process = spawn_node(spec, output=root / "node-0.out", new_session=True)
    process = spawn_node(spec, prefix=["ip", "netns", "exec", "ns0"])   # or faketime, setpriv …

One place that knows how: stdin from /dev/null, stdout and stderr into one file (appended to,
or truncated with `truncate=True`; inherited when there is no file), the caller's environment
with `env` laid over it, and, with `new_session=True`, a session (and process group) of its own
so that a Ctrl-C or a closed terminal does not reach it. `prefix` runs the command under a
wrapper (network namespace, faketime, setpriv, strace).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from raftkv.server.launch import PYTHON_MODULE, NodeLaunch

__all__ = ["spawn", "spawn_node"]


def spawn(
    command: Sequence[str],
    *,
    output: Path | None = None,
    truncate: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `prefix + command`; see the module's docstring."""
    environment = None if env is None else {**os.environ, **env}
    argv = [*prefix, *command]
    if output is None:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
            start_new_session=new_session,
        )
    with output.open("wb" if truncate else "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=new_session,
        )


def spawn_node(
    spec: NodeLaunch,
    *,
    program: Sequence[str] = PYTHON_MODULE,
    output: Path | None = None,
    truncate: bool = False,
    cwd: Path | None = None,
    new_session: bool = False,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start the node `spec` describes (`program`: how to run raftkv.server.main), with
    `spec.env` over this process's environment."""
    return spawn(
        spec.command(program),
        output=output,
        truncate=truncate,
        env=dict(spec.env) if spec.env else None,
        cwd=cwd,
        new_session=new_session,
        prefix=prefix,
    )
