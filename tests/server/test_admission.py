"""What a node says and decides at start (issue 14): admission (--initial-cluster-state and the
description's initial_cluster_state, a replica that starts on an empty directory under an
existing cluster), a data directory of another cluster, and the configuration notice when its
persisted lease or drift bound exceeds its own flags."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from raftkv.cluster import ClusterConfigError, ClusterDescription, NodeAddress
from raftkv.core.config import TimingConfig, profile
from raftkv.server import main as node_main
from raftkv.server.dump import DumpLog
from raftkv.server.replica import Replica, ReplicaOptions
from raftkv.server.storage import FAILPOINT_ENV, METADATA_FILE_NAME, node_data_dir

FAST = profile("fast")
NODES = (
    NodeAddress(0, "127.0.0.1:1"),
    NodeAddress(1, "127.0.0.1:2"),
    NodeAddress(2, "127.0.0.1:3"),
)


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)


def test_the_description_carries_the_initial_cluster_state(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    ClusterDescription(NODES, name="c").save(path)
    assert "initial_cluster_state" not in json.loads(path.read_text())
    assert ClusterDescription.load(path).initial_cluster_state == "new"
    ClusterDescription(NODES, name="c", initial_cluster_state="existing").save(path)
    assert json.loads(path.read_text())["initial_cluster_state"] == "existing"
    assert ClusterDescription.load(path).initial_cluster_state == "existing"
    with pytest.raises(ClusterConfigError, match="new or existing"):
        ClusterDescription(NODES, initial_cluster_state="joining")


def test_the_flag_overrides_the_description_and_new_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    ClusterDescription(NODES, name="c", initial_cluster_state="existing").save(path)
    parser = node_main.build_parser()

    def state(*argv: str) -> str:
        options, _ = node_main.resolve(parser.parse_args([*argv, "--insecure-peers"]))
        return options.cluster.initial_cluster_state

    assert state("--id", "1", "--cluster", str(path)) == "existing"
    assert state("--id", "1", "--cluster", str(path), "--initial-cluster-state", "new") == "new"
    assert state("1", "3") == "new"  # the assignment's `raftkv-node 1 3` still bootstraps
    assert state("1", "3", "--initial-cluster-state", "existing") == "existing"


def start_replica(
    data_root: Path, state: str, config: TimingConfig = FAST
) -> tuple[bool, list[str]]:
    """A replica started and stopped: (admitted, its dump lines)."""
    options = ReplicaOptions(
        1,
        ClusterDescription(NODES, name="c", cluster_id="c-7", initial_cluster_state=state),
        config,
        data_root,
    )

    async def run() -> bool:
        dump = DumpLog(node_data_dir(data_root, 1), 1, to_stdout=False)
        replica = Replica(options, dump)
        dump_file = node_data_dir(data_root, 1) / "dump.txt"

        def starts() -> int:
            return dump_file.read_text(errors="replace").count("serves peers at")

        before = starts()
        runner = asyncio.create_task(replica.run())
        async with asyncio.timeout(10):  # until run() has written this start's lines
            while starts() == before:
                await asyncio.sleep(0.01)
        admitted = replica.core.admitted
        await replica.stop()
        runner.cancel()
        dump.close()
        return admitted

    admitted = asyncio.run(run())
    dump = node_data_dir(data_root, 1) / "dump.txt"
    return admitted, dump.read_text().splitlines()


def test_an_empty_directory_under_an_existing_cluster_is_not_admitted_until_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admitted, lines = start_replica(tmp_path, "existing")
    assert not admitted
    notice = [line for line in lines if "will not vote or acknowledge entries" in line]
    assert len(notice) == 1
    assert (
        "Node 1 has an empty data directory but cluster 'c-7' already exists "
        "(--initial-cluster-state existing)" in notice[0]
    )
    assert "raftkv restore-node --from <the leader's logs_node_<id> directory>" in notice[0]
    assert f"--into {tmp_path} --id 1" in notice[0]
    assert "will not vote or acknowledge entries" in capsys.readouterr().err
    metadata = (node_data_dir(tmp_path, 1) / METADATA_FILE_NAME).read_text()
    assert "admitted false\n" in metadata and "clusterId c-7\n" in metadata
    # A second start does not turn it into a new member, whatever its flag says now.
    admitted, lines = start_replica(tmp_path, "new")
    assert not admitted
    assert sum("says admitted false" in line for line in lines) == 1


def test_an_empty_directory_of_a_new_cluster_is_admitted(tmp_path: Path) -> None:
    admitted, lines = start_replica(tmp_path, "new")
    assert admitted
    assert not any("will not vote" in line for line in lines)
    assert "admitted true\n" in (node_data_dir(tmp_path, 1) / METADATA_FILE_NAME).read_text()


def test_a_data_directory_of_another_cluster_stops_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start_replica(tmp_path, "new")  # records cluster id c-7
    status = node_main.main(
        [
            "--id",
            "1",
            "--peers",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "--data-dir",
            str(tmp_path),
            "--cluster-id",
            "other",
            "--insecure-peers",
            "--allow-unsafe",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    metadata = node_data_dir(tmp_path, 1) / METADATA_FILE_NAME
    assert len(err) == 1, err
    assert err[0].startswith(f"raftkv-node: node 1: {metadata} records clusterId 'c-7' but ")
    assert "configured for cluster 'other'" in err[0]


def test_a_longer_recorded_lease_or_drift_is_announced_at_start(tmp_path: Path) -> None:
    start_replica(tmp_path, "new")
    _, lines = start_replica(tmp_path, "new")
    assert not any("configuration notice" in line for line in lines)
    metadata = node_data_dir(tmp_path, 1) / METADATA_FILE_NAME
    text = metadata.read_text()
    text = text.replace("leaseBound 0.0\n", "leaseBound 3.5\n")
    text = text.replace(f"driftBound {FAST.max_clock_drift!r}\n", "driftBound 0.05\n")
    metadata.write_text(text)
    _, lines = start_replica(tmp_path, "new")
    notices = [line.split(" ", 1)[1] for line in lines if "configuration notice" in line]
    assert notices == [
        "Node 1 configuration notice: its lease is 0.3 s but it recorded a 3.5 s lease before; "
        "it waits 3.5 s after this start and honours each leader's lease; its max clock drift "
        "is 0.01 but a node announced 0.05 before; it uses 0.05."
    ]
