"""How to start a `raftkv-node`: a typed spec of its start-up and the one function that turns it
into the command line that raftkv.server.main parses.

    spec = NodeLaunch(2, cluster=Path("cluster/cluster.json"), data_dir=Path("cluster/data"),
                      profile="fast", quiet=True)
    spec.command()        # [sys.executable, "-m", "raftkv.server.main", "--id", "2", ...]
    shlex.join(spec.command(CONSOLE_SCRIPT))   # "raftkv-node --id 2 ..." for a remote shell

It lives beside main.py, the parser it mirrors; tests/server/test_launch.py checks that every
flag this module emits is one that parser accepts, with the meaning given here. Starting a
local process (output file, process group, environment) is tooling: launcher.py in tools/.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from raftkv.cluster import INITIAL_CLUSTER_STATES
from raftkv.core.config import ReadMode, SnapshotPolicy
from raftkv.core.node import SAFE, UnsafeSwitches
from raftkv.server.seams import (
    ALLOW_UNSAFE_FLAG,
    FAILPOINT_ENV,
    INSECURE_PEERS_FLAG,
    NO_FSYNC_FLAG,
    clock_rate_from,
    seams_in_effect,
    session_rules_from,
    unsafe_flag,
)
from raftkv.tls import TlsFiles

__all__ = [
    "CONSOLE_SCRIPT",
    "NODE_MODULE",
    "PYTHON_MODULE",
    "NodeLaunch",
    "TlsFiles",
    "unsafe_flag",
]

NODE_MODULE = "raftkv.server.main"
# The node run by this interpreter (what a checkout or a test uses) ...
PYTHON_MODULE: tuple[str, ...] = (sys.executable, "-m", NODE_MODULE)
# ... or by the console script installed with the package (what a host's unit runs).
CONSOLE_SCRIPT: tuple[str, ...] = ("raftkv-node",)


@dataclass(frozen=True)
class NodeLaunch:
    """One node's start-up, as raftkv.server.main understands it.

    Give `cluster` (a description file) or `peers` (host:port of every node, ids 0..n-1).
    Fields left at None are not passed, so the node uses its default (or the description's).
    `tls` (with `client_cert_auth`) is the client listener's TLS; `certs` (a `raftkv certs`
    folder) or `peer_tls` are the peers' mutual TLS, which a description's `peer_certs` can
    also give; `insecure_peers` is the test seam that runs peers without it. `chrony_conf` is
    the chrony configuration the start-up check of the time service reads.
    `unsafe` and `fsync=False` are the test-only negative controls. `extra_args` go on the
    command line verbatim, after everything else (a caller's own pass-through arguments).
    `env` is added to the process's environment (e.g. RAFTKV_CLOCK_RATE, RAFTKV_FAILPOINT,
    LD_PRELOAD for libfaketime); it is not part of the command line.

    Test seams (raftkv/server/seams.py: `unsafe`, `fsync=False`, an `--unsafe-*` flag in
    `extra_args`, RAFTKV_CLOCK_RATE other than 1, RAFTKV_FAILPOINT or
    RAFTKV_TEST_SESSION_LIFETIME_MS in `env`) need
    `allow_unsafe=True`, which passes --allow-unsafe; without it the spec is refused here, as
    the node would refuse it.
    """

    node_id: int
    cluster: Path | None = None
    peers: Sequence[str] = ()
    data_dir: Path | None = None
    profile: str | None = None
    read_mode: ReadMode | str | None = None
    lease: float | None = None
    max_drift: float | None = None
    listen: str | None = None
    peer_listen: str | None = None
    tls: TlsFiles | None = None
    client_cert_auth: bool = False
    certs: Path | None = None
    peer_tls: TlsFiles | None = None
    insecure_peers: bool = False
    cluster_id: str | None = None
    # "new" or "existing" (--initial-cluster-state); None: the description's, else new.
    initial_cluster_state: str | None = None
    quiet: bool = False
    chrony_conf: Path | None = None
    # --snapshot-entries, --snapshot-bytes, --trailing-entries (None: the node's defaults).
    snapshots: SnapshotPolicy | None = None
    unsafe: UnsafeSwitches = SAFE
    fsync: bool = True
    allow_unsafe: bool = False
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if (self.cluster is None) == (not self.peers):
            raise ValueError("a node needs exactly one of cluster= and peers=")
        if self.read_mode is not None:
            ReadMode(self.read_mode)  # ValueError for a mode the node does not know
        states = INITIAL_CLUSTER_STATES
        if self.initial_cluster_state is not None and self.initial_cluster_state not in states:
            raise ValueError(
                f"initial_cluster_state must be new or existing, not {self.initial_cluster_state!r}"
            )
        seams = self.seams()
        if seams and not self.allow_unsafe:
            raise ValueError(
                f"test seams {', '.join(seams)} need allow_unsafe=True ({ALLOW_UNSAFE_FLAG})"
            )

    def seams(self) -> list[str]:
        """The test seams this spec turns on, as they are given (flags, NAME=value)."""
        rate = clock_rate_from(self.env)  # SeamError (a ValueError) for a rate the node refuses
        given = [
            seam.given
            for seam in seams_in_effect(
                self.unsafe,
                fsync=self.fsync,
                clock_rate=rate,
                failpoint=self.env.get(FAILPOINT_ENV) or None,
                insecure_peers=self.insecure_peers,
                # SeamError (a ValueError) for a lifetime the node refuses
                sessions=session_rules_from(self.env),
            )
        ]
        given += [a for a in self.extra_args if a.startswith("--unsafe-") and a not in given]
        return given

    def args(self) -> list[str]:
        """The node's arguments (without the program)."""
        argv = ["--id", str(self.node_id)]
        if self.cluster is not None:
            argv += ["--cluster", str(self.cluster)]
        else:
            argv += ["--peers", ",".join(self.peers)]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        if self.profile is not None:
            argv += ["--profile", self.profile]
        if self.read_mode is not None:
            argv += ["--read-mode", ReadMode(self.read_mode).value]
        if self.lease is not None:
            argv += ["--lease", str(self.lease)]
        if self.max_drift is not None:
            argv += ["--max-drift", str(self.max_drift)]
        if self.listen is not None:
            argv += ["--listen", self.listen]
        if self.peer_listen is not None:
            argv += ["--peer-listen", self.peer_listen]
        if self.tls is not None:
            argv += ["--tls-ca", str(self.tls.ca)]
            argv += ["--tls-cert", str(self.tls.cert)]
            argv += ["--tls-key", str(self.tls.key)]
        if self.client_cert_auth:
            argv.append("--client-cert-auth")
        if self.certs is not None:
            argv += ["--certs", str(self.certs)]
        if self.peer_tls is not None:
            argv += ["--peer-ca", str(self.peer_tls.ca)]
            argv += ["--peer-cert", str(self.peer_tls.cert)]
            argv += ["--peer-key", str(self.peer_tls.key)]
        if self.insecure_peers:
            argv.append(INSECURE_PEERS_FLAG)
        if self.cluster_id is not None:
            argv += ["--cluster-id", self.cluster_id]
        if self.initial_cluster_state is not None:
            argv += ["--initial-cluster-state", self.initial_cluster_state]
        if self.quiet:
            argv.append("--quiet")
        if self.chrony_conf is not None:
            argv += ["--chrony-conf", str(self.chrony_conf)]
        if self.snapshots is not None:
            argv += ["--snapshot-entries", str(self.snapshots.entries)]
            argv += ["--snapshot-bytes", str(self.snapshots.bytes)]
            argv += ["--trailing-entries", str(self.snapshots.trailing_entries)]
            if self.snapshots.idle is not None:
                argv += ["--snapshot-idle", str(self.snapshots.idle)]
        argv += [unsafe_flag(name) for name in self.unsafe.enabled()]
        if not self.fsync:
            argv.append(NO_FSYNC_FLAG)
        if self.allow_unsafe:
            argv.append(ALLOW_UNSAFE_FLAG)
        argv += self.extra_args
        return argv

    def command(self, program: Sequence[str] = PYTHON_MODULE) -> list[str]:
        """`program` (default: this interpreter with -m raftkv.server.main) and the arguments."""
        return [*program, *self.args()]
