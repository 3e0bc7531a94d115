"""Crash consistency on real processes: torn log tails, corrupt lines, failpoints, kill -9 loops.

What is acknowledged was fsynced on a majority, so damaging one node's files must never lose it;
damage that cannot be a crash artifact (a flipped bit in the middle) must stop the node loudly.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from raftkv.core.messages import SetCommand
from raftkv.server.storage import NodeStorage, StorageCorruption
from tests.process.conftest import ClusterFactory
from tests.server.test_storage import old_format_line
from tests.support.processes import LocalCluster

pytestmark = pytest.mark.timeout(180)


def acknowledged_writes(cluster: LocalCluster, count: int, prefix: str) -> dict[str, str]:
    written = {}
    for i in range(count):
        key, value = f"{prefix}{i}", f"value {i} of {prefix}"
        cluster.write(key, value)
        written[key] = value
    return written


def line_offsets(path: Path) -> list[int]:
    """Byte offset at which each line starts, plus the file's length."""
    data = path.read_bytes()
    offsets = [0]
    offsets += [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    return offsets


def set_entries(path: Path, node_id: int) -> list[SetCommand]:
    storage = NodeStorage(path.parent, node_id)
    try:
        loaded = storage.load()
    finally:
        storage.close()
    return [e.command for e in loaded.entries if isinstance(e.command, SetCommand)]


def cap_commit_length(metadata: Path, limit: int) -> None:
    lines = metadata.read_text().splitlines()
    for i, line in enumerate(lines):
        name, _, value = line.partition(" ")
        if name == "commitLength":
            lines[i] = f"commitLength {min(int(value), limit)}"
    metadata.write_text("".join(line + "\n" for line in lines))


def wait_until_log_holds(cluster: LocalCluster, node_id: int, written: dict[str, str]) -> None:
    # A running node holds the lock on its logs.txt: read a copy.
    def copy_holds_all() -> bool:
        copy = cluster.root / f"copy-{node_id}" / f"logs_node_{node_id}"
        shutil.rmtree(copy.parent, ignore_errors=True)
        copy.mkdir(parents=True)
        # metadata.txt first: its commitLength never exceeds the log copied after it.
        shutil.copy(cluster.logs_path(node_id).with_name("metadata.txt"), copy / "metadata.txt")
        shutil.copy(cluster.logs_path(node_id), copy / "logs.txt")
        present = {(c.key, c.value) for c in set_entries(copy / "logs.txt", node_id)}
        return all((k, v) in present for k, v in written.items())

    cluster.wait_for(copy_holds_all, 15, f"node {node_id}'s logs.txt to hold every acked SET")


def assert_all_readable(cluster: LocalCluster, written: dict[str, str]) -> None:
    for key, value in written.items():
        assert cluster.read(key) == value, key


def test_torn_tail_at_every_offset_of_the_last_lines_loads_the_good_prefix(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(3).start()
    acknowledged_writes(cluster, 6, "tail")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    cluster.stop_node(follower)
    original = cluster.logs_path(follower).read_bytes()
    offsets = line_offsets(cluster.logs_path(follower))
    whole_lines = len(offsets) - 1
    sweep_from = offsets[max(0, whole_lines - 3)]
    assert len(original) - sweep_from > 50
    work = tmp_path / "sweep" / f"logs_node_{follower}"
    for cut in range(sweep_from, len(original)):
        shutil.rmtree(work.parent, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "logs.txt").write_bytes(original[:cut])
        # Nothing committed: this is about where the torn line ends, not the commit point.
        (work / "metadata.txt").write_text(
            f"commitLength 0\nterm 1\nvotedFor None\nnodeId {follower}\n"
        )
        storage = NodeStorage(work, follower)
        try:
            loaded = storage.load()
        finally:
            storage.close()
        complete = sum(1 for start in offsets[1:] if start <= cut)
        assert len(loaded.entries) == complete, f"cut at byte {cut}"
        assert loaded.dropped_torn_line == (cut not in offsets), f"cut at byte {cut}"
        assert (work / "logs.txt").read_bytes() == original[: offsets[complete]]


@pytest.mark.slow
def test_a_follower_with_a_torn_tail_recovers_and_catches_up(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()
    written = acknowledged_writes(cluster, 5, "before")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    path = cluster.logs_path(follower)
    rng = random.Random(4)
    for round_number in range(4):
        cluster.kill_node(follower)
        offsets = line_offsets(path)
        last_start, end = offsets[-2], offsets[-1]
        cut = [last_start + 1, end - 1, rng.randrange(last_start, end), offsets[-3] + 3][
            round_number
        ]
        with path.open("r+b") as file:
            file.truncate(cut)
        # A real torn line was never fsynced, so the node's commitLength cannot count it (it is
        # written after the lines it counts are durable); cutting lines it counts would be lost
        # data, which stops the node (test_a_follower_that_lost_lines_...).
        cap_commit_length(path.with_name("metadata.txt"), sum(1 for o in offsets[1:] if o <= cut))
        written |= acknowledged_writes(cluster, 2, f"during{round_number}-")
        cluster.start_node(follower)
        cluster.wait_for(
            lambda: cluster.dump_has(follower, "dropped a torn last line"),
            10,
            f"node {follower} to report the torn line it dropped",
        )
        wait_until_log_holds(cluster, follower, written)
    assert_all_readable(cluster, written)


def test_a_flipped_bit_in_the_middle_stops_the_node_naming_file_and_line(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    written = acknowledged_writes(cluster, 4, "flip")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    cluster.stop_node(follower)
    path = cluster.logs_path(follower)
    offsets = line_offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[1] + 6] ^= 0x04  # a bit inside line 2
    path.write_bytes(bytes(data))
    cluster.start_node(follower)
    process = cluster.nodes[follower].process
    assert process is not None
    assert process.wait(20) == 1
    output = cluster.nodes[follower].out_path.read_text()
    assert "logs.txt" in output and "line 2" in output, output[-2000:]
    # The file is left untouched for the operator, and the rest of the cluster serves on.
    assert path.read_bytes() == bytes(data)
    assert_all_readable(cluster, written)
    with pytest.raises(StorageCorruption):
        NodeStorage(path.parent, follower).load()


def output_of_last_start(cluster: LocalCluster, node_id: int) -> list[str]:
    """The node's stderr since its last start (nodes run with --quiet: no dump lines), but for
    the warning about the host's time service (raftkv/server/timecheck.py), which depends on
    the machine the tests run on."""
    text = cluster.nodes[node_id].out_path.read_text()
    lines = text[text.rindex("--- start #") :].splitlines()[1:]
    return [line for line in lines if ": warning: clock rate " not in line]


def test_a_one_node_cluster_whose_log_was_deleted_refuses_to_serve(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(1).start()
    acknowledged_writes(cluster, 20, "solo")
    (node,) = cluster.ids
    cluster.stop_node(node)
    path = cluster.logs_path(node)
    metadata = path.with_name("metadata.txt")
    assert "commitLength 21\n" in metadata.read_text()
    path.unlink()
    cluster.start_node(node)
    process = cluster.nodes[node].process
    assert process is not None
    assert process.wait(20) == 1
    (line,) = output_of_last_start(cluster, node)
    assert line == (
        f"raftkv-node: node {node}: {path} holds 0 entries but {metadata} records "
        "commitLength 21: committed entries are missing. The node's data is damaged; restore "
        f"{path.parent} from a backup, or move it away, start the node with "
        "--initial-cluster-state existing and give it the leader's log with `raftkv "
        "restore-node` (an emptied node forgets its votes and the entries it acknowledged: it "
        "must not start as a new member)."
    )
    assert "commitLength 21\n" in metadata.read_text(), "left for the operator"


def test_a_follower_that_lost_lines_or_its_metadata_refuses_to_start(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    written = acknowledged_writes(cluster, 4, "lost")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    cluster.stop_node(follower)
    path = cluster.logs_path(follower)
    metadata = path.with_name("metadata.txt")
    original = path.read_bytes()
    offsets = line_offsets(path)
    # The last two lines cut: no checksum can see it, the commit point does.
    path.write_bytes(original[: offsets[-3]])
    cluster.start_node(follower)
    process = cluster.nodes[follower].process
    assert process is not None and process.wait(20) == 1
    (line,) = output_of_last_start(cluster, follower)
    assert f"{path} holds {len(offsets) - 3} entries but {metadata} records commitLength" in line
    assert "The node's data is damaged; restore" in line
    # metadata.txt deleted: starting as new it could vote twice in a term.
    path.write_bytes(original)
    metadata.unlink()
    cluster.start_node(follower)
    process = cluster.nodes[follower].process
    assert process is not None and process.wait(20) == 1
    (line,) = output_of_last_start(cluster, follower)
    assert f"{metadata} is missing but {path} holds {len(offsets) - 1} entries" in line
    assert "could vote twice in one term" in line
    assert not metadata.exists() and path.read_bytes() == original
    assert_all_readable(cluster, written)


def test_a_follower_with_an_old_format_log_upgrades_it_and_catches_up(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    written = acknowledged_writes(cluster, 4, "old")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    cluster.stop_node(follower)
    path = cluster.logs_path(follower)
    entries = NodeStorage(path.parent, follower)
    try:
        loaded = entries.load().entries
    finally:
        entries.close()
    old = "".join(old_format_line(entry) + "\n" for entry in loaded)
    path.write_text(old, encoding="utf-8")
    cluster.start_node(follower)
    cluster.wait_for(
        lambda: cluster.dump_has(
            follower, f"upgraded logs.txt to the indexed line format ({len(loaded)} entries)"
        ),
        10,
        f"node {follower} to report the upgrade",
    )
    written |= acknowledged_writes(cluster, 2, "new")
    wait_until_log_holds(cluster, follower, written)
    assert all(" index=" in line for line in cluster.log_lines(follower))
    assert_all_readable(cluster, written)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_stops_the_node_with_one_line_even_if_the_dump_fails(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3)
    survivors, victim = cluster.ids[:2], cluster.ids[2]
    cluster.start(survivors)
    written = acknowledged_writes(cluster, 3, "full")
    # /dev/full fails every write with ENOSPC: the victim's log and its dump are on a full disk.
    directory = cluster.logs_path(victim).parent
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs.txt").symlink_to("/dev/full")
    (directory / "dump.txt").symlink_to("/dev/full")
    try:
        cluster.start_node(victim)
        process = cluster.nodes[victim].process
        assert process is not None
        assert process.wait(20) == 1
    finally:
        # Reading /dev/full never ends: the failure report must not try.
        for name in ("logs.txt", "dump.txt"):
            (directory / name).unlink()
    output = output_of_last_start(cluster, victim)
    assert output[:2] == [
        f"raftkv-node: node {victim}: warning: cannot write {directory / 'dump.txt'} ([Errno 28] "
        "No space left on device); the node goes on without it and retries at each write",
        f"raftkv-node: node {victim}: appending to {directory / 'logs.txt'} failed: [Errno 28] "
        "No space left on device",
    ]
    # Nothing else about it: no traceback through the storage or dump code. (gRPC may still
    # print a CancelledError traceback for a peer stream the shutdown cancels; not checked.)
    assert sum("No space left" in line for line in output) == 2, output
    assert not any("storage.py" in line or "dump.py" in line for line in output), output
    assert_all_readable(cluster, written)


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        result = subprocess.run(
            ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && ! touch "$0/x"', probe],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_a_read_only_data_directory_stops_the_node_with_one_line(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs unshare -rm and a bind mount (user namespaces)")
    cluster = make_cluster(3).start()
    acknowledged_writes(cluster, 2, "ro")
    follower = next(i for i in cluster.ids if i != cluster.leader())
    cluster.stop_node(follower)
    directory = cluster.logs_path(follower).parent
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    # A real read-only file system (EROFS), mounted over the data directory in a namespace of
    # the node's own: root would ignore mere permissions.
    node = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount --bind -o ro "$0" "$0" && exec "$@"',
            directory,
            *cluster.launch(follower).command(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **cluster.env},
    )
    assert node.returncode == 1, node.stderr
    assert node.stderr.splitlines() == [
        f"raftkv-node: node {follower}: warning: cannot write {directory / 'dump.txt'} ([Errno "
        f"30] Read-only file system: '{directory / 'dump.txt'}'); the node goes on without it "
        "and retries at each write",
        f"raftkv-node: node {follower}: cannot open data directory {directory}: [Errno 30] "
        f"Read-only file system: '{directory / 'logs.txt'}'",
    ]
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


@pytest.mark.parametrize(
    "failpoint", ["after-log-write-before-fsync", "after-metadata-rename-before-dirsync"]
)
def test_a_node_killed_at_a_failpoint_restarts_consistent(
    make_cluster: ClusterFactory, failpoint: str
) -> None:
    cluster = make_cluster(3, allow_unsafe=True)
    survivors = cluster.ids[:2]
    victim = cluster.ids[2]
    cluster.start(survivors)
    written = acknowledged_writes(cluster, 3, "fp")
    cluster.env["RAFTKV_FAILPOINT"] = failpoint
    cluster.start_node(victim)
    del cluster.env["RAFTKV_FAILPOINT"]
    process = cluster.nodes[victim].process
    assert process is not None
    assert process.wait(20) == 137, f"{failpoint} did not fire"
    cluster.start_node(victim)
    written |= acknowledged_writes(cluster, 2, "after")
    wait_until_log_holds(cluster, victim, written)
    assert_all_readable(cluster, written)


@pytest.mark.slow
def test_kill_minus_nine_loop_under_load_loses_no_acknowledged_set(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    cluster.leader()
    acknowledged: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        seq = 0
        leader: int | None = None
        while not stop.is_set():
            seq += 1
            key, value = f"{name}-{seq}", f"v{seq}"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    if leader is None:
                        leader = cluster.leader_or_none()
                        if leader is None:
                            continue
                    cluster.set(leader, key, value, timeout=1.0, client_id=name, seq=seq)
                except grpc.RpcError:
                    leader = None
                    continue
                except Exception as error:  # surfaced below rather than lost in a thread
                    errors.append(error)
                    return
                with lock:
                    acknowledged[key] = value
                break

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    rng = random.Random(9)
    kills = 0
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            victim = rng.choice(cluster.ids)
            cluster.restart_node(victim)
            kills += 1
            before = len(acknowledged)
            cluster.wait_for(
                lambda before=before: len(acknowledged) > before + 3,  # type: ignore[misc]
                20,
                "writes to progress after a kill",
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    assert kills >= 5 and len(acknowledged) > 50, (kills, len(acknowledged))
    for node_id in cluster.ids:
        cluster.restart_node(node_id)
    assert_all_readable(cluster, acknowledged)
