"""`raftkv snapshot restore`: a node's data directory for a NEW cluster, from a backup.

    raftkv snapshot restore backup.snap --data-dir /var/lib/raftkv --node-id 2 --cluster new.json

A backup (`raftkv snapshot save`) is a snapshot.txt taken from a leader. Restoring it builds
DIR/logs_node_N/ (`node_data_dir`) so that the node starts, with ``--initial-cluster-state
new``, holding exactly the backup's data, in a new cluster: every node restored from the same
file with the same cluster id starts from the same state, and they elect a leader among
themselves. What it writes, through `NodeStorage` (the node's own writers and checks):

  * snapshot.txt: the backup's keys, lastIndex, lastTerm and clusterTime, under the new
    cluster id, and no sessions. The restored cluster is a new one: a client of the old cluster
    that resumes its session gets the session-expired refusal (its write is not applied, never
    half-deduplicated against a table the new cluster did not build), and starts a new session.
  * logs.txt: empty; the next entry is lastIndex + 1.
  * metadata.txt, last: term = lastTerm, no vote, commitLength = lastIndex (the snapshot is
    committed), a new incarnation, the new cluster id, leaseBound 0 and driftBound 0 (no leader
    of the new cluster has ever promised a lease), admitted. Until it is written the directory
    holds a metadata.txt saying ``admitted false`` (`NodeStorage.load` writes one first), so a
    restore interrupted by a crash leaves a node that neither votes nor acknowledges anything:
    remove the directory and run the restore again.

The new cluster id comes from the cluster description (`--cluster FILE`: its ``cluster_id``),
else ``--cluster-id``, else a new ``restored-<8 hex digits>`` that is printed, for the other
nodes' restores and their description. It must differ from the backup's: a node of the old
cluster still running somewhere then refuses the new cluster's messages, and theirs are
refused, instead of two histories mixing.

Refused, with nothing written: a backup that fails its check (format, counts, checksum), a
target directory that holds anything, a cluster id equal to the backup's. Plain blocking code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import immutables

from raftkv.core.state_machine import SessionRecord, SnapshotImage
from raftkv.core.validation import MAX_TERM
from raftkv.server.snapshot_file import SnapshotCorruption, read_snapshot_file
from raftkv.server.storage import HardState, NodeStorage, node_data_dir
from raftkv.server.storage_errors import StorageError

__all__ = ["RestoreError", "RestoredNode", "new_cluster_id", "restore_snapshot"]

_NO_SESSIONS: immutables.Map[str, SessionRecord] = immutables.Map()


class RestoreError(Exception):
    """The restore was refused or failed; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class RestoredNode:
    """What `restore_snapshot` wrote."""

    directory: Path
    node_id: int
    cluster_id: str
    # The backup's cluster id, and what it held.
    source_cluster_id: str
    index: int
    term: int
    keys: int
    dropped_sessions: int
    incarnation: int

    def describe(self, backup: Path) -> str:
        return (
            f"restored {backup} into {self.directory}: index {self.index} term {self.term}, "
            f"{self.keys} keys, {self.dropped_sessions} sessions of cluster "
            f"{self.source_cluster_id!r} dropped; node {self.node_id} of cluster "
            f"{self.cluster_id!r}, incarnation {self.incarnation:016x}. Start it with "
            "--initial-cluster-state new."
        )


def new_cluster_id() -> str:
    """A cluster id for a restore that was given none: ``restored-<8 hex digits>``."""
    return f"restored-{secrets.token_hex(4)}"


def restore_snapshot(backup: Path, data_root: Path, node_id: int, cluster_id: str) -> RestoredNode:
    """Build node `node_id`'s directory under `data_root` from the backup file `backup`, for
    the cluster `cluster_id` (see the module docstring). Raises RestoreError."""
    if node_id < 0:
        raise RestoreError(f"the node id must be ≥ 0, not {node_id}")
    if not cluster_id:
        raise RestoreError("the new cluster id must not be empty")
    try:
        loaded = read_snapshot_file(backup)
    except SnapshotCorruption as error:
        raise RestoreError(f"{backup} is not a valid snapshot: {error}") from None
    except StorageError as error:
        raise RestoreError(str(error)) from None
    if loaded is None:
        raise RestoreError(f"{backup} does not exist")
    header = loaded.header
    if cluster_id == header.cluster_id:
        raise RestoreError(
            f"the backup is of cluster {cluster_id!r}; a restored cluster is a new one and needs "
            "a new cluster id (set cluster_id in its description, or give --cluster-id)"
        )
    if header.last_term > MAX_TERM:
        raise RestoreError(f"the backup's term {header.last_term} is above {MAX_TERM}")
    target = node_data_dir(data_root, node_id)
    _check_empty(target)
    # Cluster time at least 1: a restored cluster holds no sessions, and only a running cluster
    # time makes a resumed write from an old client a clear session-expired refusal
    # (docs/design.md §11), even when the source cluster never stamped one.
    image = SnapshotImage(
        header.last_index, header.last_term, loaded.data, _NO_SESSIONS, max(1, header.cluster_time)
    )
    try:
        incarnation = _write(target, node_id, cluster_id, image)
    except (StorageError, ValueError) as error:
        raise RestoreError(f"cannot restore into {target}: {error}") from None
    return RestoredNode(
        target,
        node_id,
        cluster_id,
        header.cluster_id,
        header.last_index,
        header.last_term,
        len(loaded.data),
        len(loaded.sessions),
        incarnation,
    )


def _check_empty(target: Path) -> None:
    try:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RestoreError(
                f"{target} is not empty: a restore writes only into a new directory (move the "
                "old one away first)"
            )
    except OSError as error:
        raise RestoreError(f"cannot read {target}: {error}") from None


def _write(target: Path, node_id: int, cluster_id: str, image: SnapshotImage) -> int:
    """Snapshot, empty log, then the metadata that admits them; returns the incarnation."""
    with NodeStorage(target, node_id, cluster_id=cluster_id) as storage:
        loaded = storage.load(admit_if_new=False)
        if not loaded.created:  # filled between the check and the lock
            raise RestoreError(f"{target} is not empty: nothing was changed")
        storage.save_snapshot(image)
        storage.reset_log(image.index, image.term)
        return storage.admit(HardState(term=image.term, voted_for=None), image.index)
