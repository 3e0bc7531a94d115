"""Crash consistency on real processes: torn log tails, corrupt lines, failpoints, kill -9 loops.

What is acknowledged was fsynced on a majority, so damaging one node's files must never lose it;
damage that cannot be a crash artifact (a flipped bit in the middle) must stop the node loudly.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest

from raftkv.core.messages import SetCommand
from raftkv.server.storage import NodeStorage, StorageCorruption
from tests.process.conftest import ClusterFactory
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


def wait_until_log_holds(cluster: LocalCluster, node_id: int, written: dict[str, str]) -> None:
    # A running node holds the lock on its logs.txt: read a copy.
    def copy_holds_all() -> bool:
        copy = cluster.root / f"copy-{node_id}" / f"logs_node_{node_id}"
        shutil.rmtree(copy.parent, ignore_errors=True)
        copy.mkdir(parents=True)
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
