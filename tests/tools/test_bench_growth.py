"""`raftkv bench growth` (issue 15): a tiny run against a real local cluster, and its pieces.

No timing or size targets are asserted ("speed and memory targets are checked by benchmarks,
never by timed tests"): the run checks that the report holds every figure, measured, and that
the printed table shows them.
"""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from raftkv.client.cli import main as raftkv_main
from raftkv_tools.bench.growth import (
    DumpLine,
    DumpTail,
    StatusSample,
    Window,
    by_snapshot,
    control_windows,
    per_second,
    rate_inside,
    snapshot_windows,
    union,
)
from raftkv_tools.bench.growth import main as growth_main

SETS = 300
CATCHUP = 200
KEYS = 100


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("growth")
    json_file = root / "growth.json"
    out = root / "table.txt"
    with out.open("w") as table:
        status = growth_main(
            [
                "--sets", str(SETS), "--catchup-sets", str(CATCHUP), "--keys", str(KEYS),
                "--snapshot-entries", "50", "--trailing-entries", "20", "--clients", "8",
                "--bucket", "0.02", "--settle", "5",
                "--workdir", str(root / "clusters"), "--json", str(json_file), "--quiet",
            ],
            out=table,
        )  # fmt: skip
    text = out.read_text()
    assert status == 0, text
    return text, json.loads(json_file.read_text()), root


def test_growth_report_has_every_figure(tiny_run: tuple[str, dict[str, Any], Path]) -> None:
    text, report, _ = tiny_run
    [ours] = report["systems"]
    assert ours["kind"] == "raftkv"
    assert ours["sets_start"] == KEYS
    assert ours["sets_end"] == KEYS + SETS
    for phase in ("footprint_start", "footprint_end"):
        assert sorted(ours[phase]) == ["node0", "node1", "node2"]
        for row in ours[phase].values():
            for key in ("rss_bytes", "du_bytes", "apparent_bytes", "state_du_bytes"):
                assert _number(row[key]) and row[key] > 0, (phase, row)
            assert row["state_du_bytes"] <= row["du_bytes"]
            assert "logs.txt" in row["largest_files"]
    for row in ours["ratios"].values():
        assert all(_number(v) and v > 0 for v in row.values()), row
    assert ours["idle_end"]["idle"] is True
    assert all(n["applied"] == n["commit"] for n in ours["idle_end"]["nodes"].values())

    load = ours["load"]
    assert load["ops"] == SETS and load["errors"] == 0
    assert all(_number(load["latency_ms"][k]) for k in ("p50", "p99", "p99.9", "max"))
    assert sum(load["ops_per_second_series"]) == SETS
    assert all(_number(v) and v > 0 for v in load["peak_rss_bytes"].values())

    snapshots = ours["snapshots"]
    # 100 + 300 entries, a snapshot every 50: every node wrote several during the load.
    assert all(count >= 3 for count in snapshots["per_node"].values()), snapshots
    any_node = snapshots["any_node"]
    assert any_node["snapshots"] == sum(snapshots["per_node"].values())
    assert any_node["window_s"]["total"] > 0
    assert any_node["buckets_with"] + any_node["buckets_without"] >= 1
    assert _number(any_node["exact_ops_per_s_inside"]) and _number(any_node["exact_ratio"])
    assert _number(any_node["latency_ms_during"]["p99.9"])
    assert any_node["sets_during"] > 0
    assert snapshots["compactions"] > 0

    restart = report["restart"]
    for key in ("snapshot_loaded_s", "first_status_s", "serving_s", "interpreter_and_imports_s"):
        assert _number(restart[key]) and restart[key] > 0, restart
    assert restart["snapshot_loaded_s"] <= restart["serving_s"]
    assert restart["snapshot_loaded_index"] == restart["snapshot_index_before_kill"]
    assert restart["applied_before_kill"] == restart["leader_commit_at_kill"]

    catchup = report["catchup"]
    assert catchup["node"] != restart["node"]
    assert catchup["sets_while_down"] == CATCHUP
    sent = catchup["snapshot_sent"]
    assert sent is not None, catchup
    assert sent["bytes"] > 0 and sent["chunks"] >= 1 and _number(sent["mb_per_s"])
    assert _number(catchup["installed_s"]) and _number(catchup["caught_up_s"])
    check = catchup["state_check"]
    assert check["equal"] is True and check["keys"] == KEYS
    assert check["crc32_leader"] == check["crc32_caught_up"]

    # The table shows the same numbers.
    assert f"serving {restart['serving_s']:.3f} s" in text
    assert f"{sent['bytes']:,} bytes in {sent['chunks']} chunks" in text
    assert f"caught up {catchup['caught_up_s']:.3f} s" in text
    assert "state check: EQUAL" in text
    assert f"{ours['sets_end']:,}" in text
    assert "Targets" in text and "restart of a follower to serving ≤ 1 s" in text
    assert [t["ok"] for t in report["targets"] if "serving" in t["text"]] != []


def test_growth_leaves_no_process(tiny_run: tuple[str, dict[str, Any], Path]) -> None:
    _, _, root = tiny_run
    description = json.loads((root / "clusters" / "raftkv" / "cluster.json").read_text())
    for node in description["nodes"]:
        port = int(node["address"].rsplit(":", 1)[1])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_growth_is_a_bench_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert raftkv_main(["bench", "growth", "--help"]) == 0
    assert "--catchup-sets" in capsys.readouterr().out
    assert raftkv_main(["bench", "growth", "--sets", "0"]) == 2


def test_dump_tail_follows_rotation(tmp_path: Path) -> None:
    dump = tmp_path / "dump.txt"
    dump.write_text(
        "2026-01-01T00:00:00.000000+00:00 Node 0 saved a snapshot at index 5 (term 1).\n"
    )
    tail = DumpTail(dump, offset=0.0)  # from the end: the line above is not seen
    with dump.open("a") as out:
        out.write("2026-01-01T00:00:01.000000+00:00 Node 0 received a SET k v request.\n")
        out.write("2026-01-01T00:00:01.500000+00:00 Node 0 saved a snapshot at index 10")
    assert tail.read() == []  # half a line waits for its end
    with dump.open("a") as out:
        out.write(" (term 1).\n")
    dump.rename(tmp_path / "dump.txt.1")  # dump.py's rotation, and a new file
    (tmp_path / "dump.txt").write_text(
        "2026-01-01T00:00:02.000000+00:00 Node 0 compacted its log: it now starts after index 8 "
        "(term 1).\n"
    )
    lines = tail.read()
    assert [line.text for line in lines] == [
        "Node 0 saved a snapshot at index 10 (term 1).",
        "Node 0 compacted its log: it now starts after index 8 (term 1).",
    ]
    assert lines[1].at - lines[0].at == pytest.approx(0.5)
    tail.close()


def _sample(at: float, node: int, commit: int) -> StatusSample:
    return StatusSample(at, node, "follower", 1, commit, commit, 0, 1)


def test_snapshot_windows_start_when_the_commit_index_reaches_the_snapshot() -> None:
    samples = [_sample(10.0, 1, 80), _sample(10.1, 1, 120), _sample(10.2, 1, 160)]
    lines = {1: [DumpLine(10.15, "Node 1 saved a snapshot at index 100 (term 1).")]}
    [window] = snapshot_windows(lines, samples)
    assert (window.node, window.index) == (1, 100)
    assert window.start == pytest.approx(10.05)  # halfway from 80 to 120
    assert window.end == 10.15
    # Reached before the first sample: the window starts there.
    [early] = snapshot_windows(
        {1: [DumpLine(10.15, "Node 1 saved a snapshot at index 50")]}, samples
    )
    assert early.start == 10.0


def test_snapshot_windows_start_at_the_began_writing_line_when_there_is_one() -> None:
    samples = [_sample(10.0, 1, 80), _sample(10.1, 1, 120)]
    lines = {
        1: [
            DumpLine(10.07, "Node 1 began writing a snapshot at index 100."),
            DumpLine(10.08, "Node 1 began writing a snapshot at index 200."),
            DumpLine(10.15, "Node 1 saved a snapshot at index 100 (term 1)."),
        ]
    }
    [window] = snapshot_windows(lines, samples)
    assert (window.index, window.start, window.end) == (100, 10.07, 10.15)


def test_by_snapshot_splits_seconds_and_latencies() -> None:
    windows = [Window(0, 10, 2.2, 2.3), Window(1, 10, 2.25, 2.4), Window(0, 20, 4.5, 4.6)]
    assert union(windows) == [(2.2, 2.4), (4.5, 4.6)]
    # 100 operations a second for 6 s, each 5 ms long; fewer in the seconds with a snapshot.
    finished: list[float] = []
    for second in range(6):
        rate = 50 if second in (2, 4) else 100
        finished += [second + (i + 0.5) / rate for i in range(rate)]
    latency = [0.005] * len(finished)
    result = by_snapshot(finished, latency, windows, start=0.0, bucket=1.0)
    # Buckets 1..4 count (0 is the ramp-up, 5 the last, partial one).
    assert (result["buckets_with"], result["buckets_without"]) == (2, 2)
    assert result["ops_per_s_with"] == 50.0 and result["ops_per_s_without"] == 100.0
    assert result["ratio"] == 0.5
    assert result["snapshots"] == 3
    assert result["sets_during"] == sum(
        1 for f in finished if 2.2 <= f <= 2.405 or 4.5 <= f <= 4.605
    )
    assert per_second(finished, 0.0, 1.0)[:6] == [100, 100, 50, 100, 50, 100]


def test_control_windows_have_the_same_lengths_and_avoid_the_windows_and_what_follows() -> None:
    windows = [Window(0, 10 * i, 1.0 + i, 1.0 + i + 0.05 * (i % 3 + 1)) for i in range(8)]
    pairs = control_windows(windows, 0.0, 10.0, settle=0.2)
    assert len(pairs) == len(windows)
    assert pairs == control_windows(windows, 0.0, 10.0, settle=0.2)  # fixed seed
    for window, control in pairs:
        assert control.end - control.start == pytest.approx(window.end - window.start)
        assert control.start >= 0.0 and control.end <= 10.0
        for other in windows:
            assert control.end < other.start or control.start > other.end + 0.2
    controls = sorted((c for _, c in pairs), key=lambda c: c.start)
    assert all(a.end < b.start for a, b in itertools.pairwise(controls))


def test_the_control_ratio_sees_a_dip_inside_the_windows_and_only_there() -> None:
    windows = [Window(0, i, 1.0 + i, 1.1 + i) for i in range(8)]
    steady = [k / 1000 for k in range(10_000)]  # 1,000 a second, evenly
    assert rate_inside(steady, windows) == pytest.approx(1000, rel=0.02)
    result = by_snapshot(steady, [0.001] * len(steady), windows, start=0.0, bucket=1.0)
    assert result["control_windows"] == 8
    assert result["control_ratio"] == pytest.approx(1.0, abs=0.03)
    # Half the rate inside the windows, the delayed half completed just after each one.
    dipped = [
        k / 1000
        for k in range(10_000)
        if k % 2 or not any(w.start <= k / 1000 <= w.end for w in windows)
    ]
    dipped += [w.end + 0.001 + k / 10_000 for w in windows for k in range(50)]
    dipped.sort()
    result = by_snapshot(dipped, [0.001] * len(dipped), windows, start=0.0, bucket=1.0)
    assert result["control_ratio"] == pytest.approx(0.5, abs=0.05)
    assert result["exact_ratio"] < result["control_ratio"] + 0.1
    assert rate_inside(dipped, []) is None
