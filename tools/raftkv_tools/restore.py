"""`raftkv restore-node`: give a node whose disk was lost a copy of the leader's log.

    raftkv restore-node --from cluster/data/logs_node_0 --into cluster/data --id 2
    raftkv --cluster cluster.json restore-node --from copy/logs_node_0 --into /var/lib/raftkv --id 2

Until membership changes exist this is how a node whose data directory was lost rejoins
(docs/design.md §5 and §8; README, "When a disk is lost"). With node N stopped (it was started
with --initial-cluster-state existing, so it neither voted nor acknowledged anything), it
writes DATA_ROOT/logs_node_N/:

  * snapshot.txt, when the source has one: the same state, written anew (the file is a pure
    function of the state and the cluster id, so it is the source's byte for byte).
  * logs.txt: the entries of the source's logs.txt after its snapshot, every line checked as the
    node itself checks it (checksum, index); a torn last line, which a running source may be in
    the middle of appending, is left out, and so are the lines the snapshot covers (all of them
    if the log disagrees with the snapshot at its index, as the node itself would drop them).
    Copy from the current leader: it holds every committed entry, some of which may have been
    acknowledged by no one but the lost node.
  * metadata.txt: term = the source's term + 1, no vote, commitLength 0, leaseBound = the
    larger of the source's and the configured lease (--lease, else the profile's of the cluster
    description), the source's driftBound, a new incarnation, the source's clusterId, and
    admitted. Term + 1: the lost incarnation may have voted in any term up to the one the
    cluster has reached, which the leader's term is; a node that starts above it can never
    cast a second vote in one of those terms. The lease bound makes the node honour the lease
    of the leader it last heard from, which its lost incarnation may have promised to wait for.

It refuses a target directory that holds an admitted node's data (a node that was never lost),
and a target node that is running (its directory is locked). The source's files are only read,
never locked or changed, so the leader may go on running while they are copied.

Exit status: 0 restored, 1 refused or failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raftkv.cluster import DEFAULT_DESCRIPTION, ClusterConfigError, ClusterDescription
from raftkv.core.config import MAX_LEASE_DURATION, ConfigError, profile
from raftkv.core.messages import LogEntry
from raftkv.core.state_machine import SnapshotImage
from raftkv.core.validation import MAX_TERM
from raftkv.server.storage import (
    SNAPSHOT_FILE_NAME,
    HardState,
    NodeFiles,
    NodeStorage,
    StorageError,
    node_data_dir,
    read_node_files,
)

CLUSTER_ENVIRONMENT_VARIABLE = "RAFTKV_CLUSTER"


class RestoreError(RuntimeError):
    """The restore was refused or failed; the message is for the operator."""


class UsageError(ValueError):
    """The command line does not say enough (exit status 2)."""


@dataclass(frozen=True)
class Restored:
    directory: Path
    # The log entries written (those after the snapshot).
    entries: int
    hard_state: HardState
    incarnation: int
    cluster_id: str | None
    dropped_torn_line: bool
    # The last index of the snapshot written (0: the source had none).
    snapshot_index: int = 0

    def describe(self, node_id: int, source: Path) -> str:
        hard = self.hard_state
        last_index = self.snapshot_index + self.entries
        last = "" if not self.entries else f", up to index {last_index}"
        snapshot = (
            f"the snapshot up to index {self.snapshot_index} and " if self.snapshot_index else ""
        )
        torn = "; the source's torn last line was left out" if self.dropped_torn_line else ""
        return (
            f"restored node {node_id} into {self.directory}: {snapshot}{self.entries} log "
            f"entries from {source}{last}{torn}; term {hard.term}, no vote, commitLength 0, "
            "lease bound "
            f"{hard.lease_bound} s, drift bound {hard.drift_bound}, new incarnation "
            f"{self.incarnation:016x}, cluster id {self.cluster_id!r}. Start node {node_id}: "
            "it follows the leader and catches up."
        )


def restore_node(
    source: Path,
    data_root: Path,
    node_id: int,
    *,
    lease: float,
    cluster_id: str | None = None,
) -> Restored:
    """Write node `node_id`'s directory under `data_root` from the node files in `source` (a
    logs_node_<id>/ directory); see the module docstring. `lease` is the longest lease a node
    of the cluster is configured with; `cluster_id` is used when the source's files name none.
    Raises RestoreError."""
    target = node_data_dir(data_root, node_id)
    if not (source / "logs.txt").is_file():
        raise RestoreError(f"{source} holds no logs.txt: give the leader's logs_node_<id> folder")
    if target.exists() and source.resolve() == target.resolve():
        raise RestoreError(f"{source} is the directory to restore, not a source")
    try:
        files = read_node_files(source)
    except StorageError as error:
        raise RestoreError(f"cannot use {source}: {error}") from None
    metadata = files.metadata
    if metadata is None:
        raise RestoreError(f"{source} holds no metadata.txt: it is no node's data directory")
    if not metadata.admitted:
        raise RestoreError(
            f"{source} is the directory of a node that is not admitted itself: copy from the "
            "current leader"
        )
    if not files.entries and files.snapshot is None:
        raise RestoreError(f"{source} holds no log entries: copy from the current leader")
    if metadata.hard_state.term >= MAX_TERM:
        raise RestoreError(f"the source's term {metadata.hard_state.term} has no successor")
    _check_target(target, node_id)
    cluster = metadata.cluster_id or cluster_id
    hard_state = HardState(
        term=metadata.hard_state.term + 1,
        voted_for=None,
        lease_bound=max(metadata.hard_state.lease_bound, lease),
        drift_bound=metadata.hard_state.drift_bound,
    )
    image = None if files.snapshot is None else files.snapshot.image()
    tail = _tail_after(files, image)
    try:
        incarnation = _write(target, node_id, cluster, image, tail, hard_state)
    except (StorageError, ValueError) as error:
        raise RestoreError(f"cannot restore into {target}: {error}") from None
    return Restored(
        target,
        len(tail),
        hard_state,
        incarnation,
        cluster,
        files.dropped_torn_line,
        0 if image is None else image.index,
    )


def _tail_after(files: NodeFiles, image: SnapshotImage | None) -> list[LogEntry]:
    """The source's entries after its snapshot: none when its log disagrees with the snapshot
    at the snapshot's index or does not reach it (the node drops such a log at start-up)."""
    if image is None:
        return files.entries
    offset, entries = files.log_offset, files.entries
    if image.index == offset:
        term_there: int | None = files.log_offset_term
    elif offset < image.index <= offset + len(entries):
        term_there = entries[image.index - offset - 1].term
    else:
        term_there = None
    if term_there != image.term:
        return []
    return entries[image.index - offset :]


def _check_target(target: Path, node_id: int) -> None:
    """RestoreError unless `target` is missing, empty, or a node that is not admitted."""
    if not target.exists():
        return
    try:
        files = read_node_files(target)
    except StorageError as error:
        raise RestoreError(
            f"{target} already holds data that cannot be read ({error}); move it away first"
        ) from None
    metadata = files.metadata
    if metadata is not None and metadata.node_id != node_id:
        raise RestoreError(f"{target} holds node {metadata.node_id}'s data, not node {node_id}'s")
    if metadata is not None and metadata.admitted:
        raise RestoreError(
            f"{target} already holds node {node_id}'s data (term {metadata.hard_state.term}, "
            f"{len(files.entries)} log entries): restore-node writes only into an empty "
            "directory or that of a node started with --initial-cluster-state existing that is "
            "not admitted. If this node's data is really lost, move the directory away first"
        )


def _write(
    target: Path,
    node_id: int,
    cluster_id: str | None,
    image: SnapshotImage | None,
    entries: Sequence[LogEntry],
    hard_state: HardState,
) -> int:
    """The snapshot and the log first, then the metadata that admits them: a crash in between
    leaves a node that is still not admitted, and a second run starts over."""
    try:
        storage = NodeStorage(target, node_id, cluster_id=cluster_id)
    except StorageError as error:
        if "in use" in str(error):
            raise RestoreError(f"node {node_id} is running ({error}): stop it first") from None
        raise
    with storage:
        loaded = storage.load(admit_if_new=False)
        if loaded.admitted:  # admitted between the check and the lock
            raise RestoreError(f"{target} holds an admitted node's data; nothing was changed")
        held = 0 if loaded.snapshot is None else loaded.snapshot.header.last_index
        if held > (0 if image is None else image.index):
            # Only a node that installed a snapshot has one, and only an admitted node does.
            raise RestoreError(
                f"{target} holds a {SNAPSHOT_FILE_NAME} up to index {held}, beyond the source's: "
                "move the directory away first"
            )
        if image is None:
            storage.append_entries(1, entries)
        else:
            # None when a previous run already wrote this snapshot: the same state.
            storage.save_snapshot(image)
            storage.reset_log(image.index, image.term)
            storage.append_entries(image.index + 1, entries)
        return storage.admit(hard_state, 0)


def _configured_lease(args: argparse.Namespace) -> tuple[float, str | None]:
    """(the lease to assume, the description's cluster id): --lease, else the profile of the
    cluster description (--cluster, $RAFTKV_CLUSTER, cluster/cluster.json)."""
    path = args.cluster or Path(os.environ.get(CLUSTER_ENVIRONMENT_VARIABLE) or DEFAULT_DESCRIPTION)
    description: ClusterDescription | None = None
    if args.cluster is not None or path.exists():
        description = ClusterDescription.load(path)
    if args.lease is not None:
        lease = args.lease
    elif description is not None:
        lease = profile(description.profile).lease_duration
    else:
        raise UsageError(
            "give --lease S (the longest lease any node is configured with) or --cluster FILE "
            "(its profile's lease is used)"
        )
    if not 0 < lease <= MAX_LEASE_DURATION:
        raise UsageError(
            f"--lease must be a number of seconds in (0, {MAX_LEASE_DURATION}], not {lease}"
        )
    return lease, None if description is None else description.cluster_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv restore-node",
        description="Restore a node whose data directory was lost from the leader's files.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="the leader's logs_node_<id> directory (or a copy of it)",
    )
    parser.add_argument(
        "--into",
        type=Path,
        required=True,
        help="the restored node's data directory (the parent of its logs_node_<id>/)",
    )
    parser.add_argument("--id", type=int, required=True, help="the node to restore")
    parser.add_argument("--cluster", type=Path, help="cluster description (for its lease)")
    parser.add_argument(
        "--lease", type=float, help="the longest lease any node is configured with (seconds)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.id < 0:
        print("raftkv restore-node: --id must be ≥ 0", file=sys.stderr)
        return 2
    try:
        lease, cluster_id = _configured_lease(args)
        restored = restore_node(args.source, args.into, args.id, lease=lease, cluster_id=cluster_id)
    except (ClusterConfigError, ConfigError, UsageError) as error:
        print(f"raftkv restore-node: {error}", file=sys.stderr)
        return 2
    except RestoreError as error:
        print(f"raftkv restore-node: {error}", file=sys.stderr)
        return 1
    print(restored.describe(args.id, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
