"""The rolling-restart benchmark (raftkv_tools/bench/rolling.py): how it counts, on made-up
times, and one short run on three real nodes that checks the report's shape (the machine is
shared: no timing is asserted)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from raftkv.cluster import ClusterDescription
from raftkv_tools.bench.rolling import (
    COLUMNS,
    Observations,
    OpError,
    Step,
    gaps_ending_in,
    inspect_source,
    main,
    summarise,
)


def test_gaps_belong_to_the_window_they_end_in() -> None:
    assert gaps_ending_in([0.0, 1.0, 1.5, 4.0], 1.2, 4.0) == [0.5]
    assert gaps_ending_in([0.0, 1.0, 1.5, 4.0], 1.0, 5.0) == [1.0, 0.5, 2.5]


def test_the_summary_counts_gaps_errors_leaders_and_terms_per_restart() -> None:
    # Warm-up 0-10 s with a success every 0.1 s (normal gap 0.1 s, threshold 0.3 s); node 1
    # (follower) restarts at 10 s without a gap; node 0 (leader) at 20 s: nothing succeeds
    # from 20.0 to 21.0, one error at 20.5, a new leader (2) in a new term seen at 20.8.
    successes = [round(i * 0.1, 1) for i in range(300) if not 200 < i < 210]
    steps = [
        Step(1, 1, "follower", 10.0, 10.0, 10.5, 11.0),
        Step(1, 0, "leader", 20.0, 20.0, 20.3, 21.5, handover="election"),
    ]
    seen = Observations(leaders=[(0.0, 0), (20.8, 2)], terms=[(0.0, 3), (20.8, 4)])
    errors = [OpError(20.5, "SET", "no leader: ..."), OpError(5.0, "GET", "before the restart")]
    report = summarise(successes, errors, steps, seen, warmup_start=0.0, end=29.95, gap_factor=3.0)
    assert report["warmup"] == {"ops": 100, "normal_gap_ms": 100.0, "threshold_ms": 300.0}
    follower, leader = report["steps"]
    assert (follower["unavailable_s"], follower["terms"], follower["leaders"]) == (0.0, 0, [0])
    assert follower["ops"] == 100 and follower["errors"] == 0
    assert (follower["stop_s"], follower["rejoin_s"], follower["step_s"]) == (0.5, 0.5, 1.0)
    assert leader["longest_gap_s"] == pytest.approx(1.0)
    assert leader["unavailable_s"] == pytest.approx(1.0)
    assert (leader["terms"], leader["leaders"], leader["leader_changes"]) == (1, [0, 2], 1)
    assert (leader["errors"], leader["handover"]) == (1, "election")
    assert report["total"] == {
        "total_s": 11.5,
        "ops": 191,
        "longest_gap_s": pytest.approx(1.0),
        "unavailable_s": pytest.approx(1.0),
        "terms": 1,
        "leader_changes": 1,
        "errors": 1,
    }


def test_an_outage_that_lasts_to_the_end_is_a_gap() -> None:
    successes = [i * 0.1 for i in range(50)]  # the last success at 4.9 s
    steps = [Step(1, 0, "leader", 5.0, 5.0, 5.2, 6.0)]
    report = summarise(
        successes, [], steps, Observations(), warmup_start=0.0, end=8.0, gap_factor=3.0
    )
    assert report["steps"][0]["longest_gap_s"] == pytest.approx(3.1)
    assert report["total"]["unavailable_s"] == pytest.approx(3.1)


def test_bad_sources_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--nodes", "3", "--source", str(tmp_path)]) == 2
    assert "holds no raftkv package" in capsys.readouterr().err
    # A checkout without `raftkv transfer-leader` cannot hand leadership over first.
    (tmp_path / "raftkv" / "server").mkdir(parents=True)
    (tmp_path / "raftkv" / "server" / "main.py").write_text("")
    assert not inspect_source(tmp_path).transfer_cli
    assert main(["--source", str(tmp_path), "--transfer-first"]) == 2
    assert "--transfer-first needs `raftkv transfer-leader`" in capsys.readouterr().err


def test_one_round_on_three_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_file = tmp_path / "report.json"
    status = main([
        "--nodes", "3",
        "--rounds", "1",
        "--warmup", "1",
        "--pause", "0.3",
        "--workdir", str(tmp_path / "run"),
        "--keep",
        "--json", str(report_file),
        "--quiet",
    ])  # fmt: skip
    table = capsys.readouterr().out
    assert status == 0, table
    report = json.loads(report_file.read_text())
    steps = report["steps"]
    # Leader last: every node once, the followers first.
    assert sorted(step["node"] for step in steps) == [0, 1, 2]
    assert [step["role"] for step in steps] == ["follower", "follower", "leader"]
    assert [step["handover"] for step in steps[:2]] == ["-", "-"]
    assert steps[2]["handover"] in ("transfer", "election")
    for step in steps:
        assert {key for key, _ in COLUMNS} <= step.keys()
        assert step["ops"] >= 0 and step["stop_s"] >= 0 and step["rejoin_s"] > 0
        assert step["leaders"] and not step["killed"]
    assert report["total"].keys() == {
        "total_s", "ops", "longest_gap_s", "unavailable_s", "terms", "leader_changes", "errors"
    }  # fmt: skip
    assert report["total"]["ops"] > 0
    assert report["wrong_reads"] == 0
    assert report["source"]["path"] == str(Path(__file__).resolve().parents[2])
    # The table: a header, one row per restart, the total.
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ROUND"))
    assert lines[header].split()[:4] == ["ROUND", "NODE", "ROLE", "HANDOVER"]
    assert [line.split()[1] for line in lines[header + 1 : header + 4]] == [
        str(step["node"]) for step in steps
    ]
    assert lines[header + 4].startswith("total")
    # Every node it started is gone.
    description = ClusterDescription.load(tmp_path / "run" / "cluster" / "cluster.json")
    for node in description.nodes:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(node.address.rsplit(":", 1)[1]))) != 0
