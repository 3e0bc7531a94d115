"""`raftkv logs review` on synthetic dumps: a healthy history, and one violation per invariant."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from raftkv.core.messages import NO_OP, DeleteCommand, LogEntry, SetCommand
from raftkv.server.storage import encode_entry
from raftkv_tools import logreview
from tests.core.test_events import EXAMPLES

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LEASE = 0.3
DRIFT = 0.01
HEARTBEAT = 0.05


def start_line(node: int, unsafe: str = "") -> list[str]:
    lines = [
        f"Node {node} starting at 10.0.0.{node}:50050: term 0, 0 log entries, read mode lease, "
        f"election 0.4-0.8s, heartbeat {HEARTBEAT}s, lease {LEASE}s, max drift {DRIFT}, "
        "clock CLOCK_BOOTTIME."
    ]
    if unsafe:
        lines.append(f"Node {node} UNSAFE test switches on: {unsafe}.")
    return lines


class History:
    """Builds node-<id>/dump.txt, logs.txt and metadata.txt for a synthetic cluster."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self.events: dict[int, list[tuple[float, str]]] = {n: [] for n in range(size)}
        self.logs: dict[int, list[LogEntry]] = {n: [] for n in range(size)}
        self.commit: dict[int, int] = dict.fromkeys(range(size), 0)

    def at(self, seconds: float, node: int, *texts: str) -> History:
        for text in texts:
            self.events[node].append((seconds, text))
        return self

    def start_all(self, seconds: float = 0.0, unsafe: dict[int, str] | None = None) -> History:
        for node in range(self.size):
            self.at(seconds, node, *start_line(node, (unsafe or {}).get(node, "")))
        return self

    def elect(self, seconds: float, leader: int, term: int, voters: list[int]) -> History:
        self.at(
            seconds - 0.02, leader, f"Node {leader} election timer timed out, Starting election."
        )
        for voter in voters:
            self.at(seconds - 0.01, voter, f"Vote granted for Node {leader} in term {term}.")
        return self.at(seconds, leader, f"Node {leader} became the leader for term {term}.")

    def lead(self, start: float, end: float, leader: int, followers: list[int]) -> History:
        """Heartbeats every 50 ms from `start` to `end`, each answered by `followers`."""
        moment = start
        while moment <= end + 1e-9:
            self.at(moment, leader, f"Leader {leader} sending heartbeat & Renewing Lease")
            for follower in followers:
                self.at(
                    moment + 0.002,
                    follower,
                    f"Node {follower} accepted AppendEntries RPC from {leader}.",
                )
            moment = round(moment + HEARTBEAT, 6)
        return self

    def write(self) -> Path:
        for node in range(self.size):
            directory = self.root / f"node-{node}"
            directory.mkdir(parents=True, exist_ok=True)
            lines = sorted(self.events[node], key=lambda item: item[0])
            (directory / "dump.txt").write_text(
                "".join(
                    f"{(T0 + timedelta(seconds=s)).isoformat(timespec='microseconds')} {t}\n"
                    for s, t in lines
                )
            )
            (directory / "logs.txt").write_text(
                "".join(encode_entry(e, i) + "\n" for i, e in enumerate(self.logs[node], start=1))
            )
            (directory / "metadata.txt").write_text(
                f"commitLength {self.commit[node]}\nterm 1\nvotedFor None\nnodeId {node}\n"
            )
        return self.root


def entries(*values: str, term: int = 1) -> list[LogEntry]:
    return [LogEntry(term, NO_OP)] + [
        LogEntry(term, SetCommand(f"k{i}", v)) for i, v in enumerate(values)
    ]


def healthy(root: Path) -> History:
    """Node 0 leads term 1, stops cleanly; node 1 wins term 2 after the old lease is over."""
    history = History(root).start_all()
    history.elect(1.0, leader=0, term=1, voters=[1, 2]).lead(1.0, 3.0, 0, [1, 2])
    history.at(1.5, 0, "Node 0 (leader) received a SET k0 a request.")
    for node in range(3):
        role = "leader" if node == 0 else "follower"
        history.at(
            1.6, node, f"Node {node} ({role}) committed the entry SET k0 a to the state machine."
        )
        history.logs[node] = entries("a")
        history.commit[node] = 2
    history.at(3.01, 0, "Leader 0 Stepping down (term 1).", "Node 0 shutting down.")
    history.elect(3.6, leader=1, term=2, voters=[2]).lead(3.6, 4.0, 1, [2])
    return history


def run(root: Path, uncertainty: float = 0.010) -> logreview.Review:
    return logreview.review(logreview.load_collection(root), uncertainty)


def rules(result: logreview.Review) -> list[str]:
    return [violation.rule for violation in result.violations]


def test_a_healthy_history_has_no_violation_and_a_summary(tmp_path: Path) -> None:
    result = run(healthy(tmp_path).write())
    assert rules(result) == []
    assert [(ls.node, ls.term) for ls in result.leaderships] == [(0, 1), (1, 2)]
    first, second = result.leaderships
    assert first.end_reason == "saw term 1"  # its own step-down line closes it
    # The old lease ends by the step-down line; the new one starts no earlier than L after
    # node 1 last heard node 0 (3.002 + 0.3), which the election at 3.6 is already past.
    assert first.lease_end == pytest.approx(T0.timestamp() + 3.01, abs=1e-6)
    assert second.lease_start == pytest.approx(T0.timestamp() + 3.6, abs=1e-6)
    assert result.commit_points == {0: 2, 1: 2, 2: 2}
    report = logreview.format_report(result, timeline=True)
    assert "Invariants hold" in report
    assert "term   1: node 0" in report and "term   2: node 1" in report
    assert "Elections started: n0 1, n1 1, n2 0" in report


def test_two_leaders_in_one_term_are_reported_with_both_lines(tmp_path: Path) -> None:
    history = healthy(tmp_path)
    history.at(2.0, 2, "Node 2 became the leader for term 1.")
    result = run(history.write())
    assert "one leader per term" in rules(result)
    violation = next(v for v in result.violations if v.rule == "one leader per term")
    assert "term 1 has 2 leaders: nodes 0, 2" in violation.message
    assert sorted(line.node or 0 for line in violation.lines) == [0, 2]


def partitioned(root: Path, unsafe: str) -> History:
    """Node 0 leads; at t=3 it is cut off from 1 and 2, which elect node 1 at t=3.05."""
    history = History(root).start_all(unsafe={1: unsafe} if unsafe else None)
    history.elect(1.0, leader=0, term=1, voters=[1, 2]).lead(1.0, 2.95, 0, [1, 2])
    history.lead(3.0, 3.4, 0, [])  # heartbeats nobody answers
    history.at(
        3.45, 0, "Leader 0 lease renewal failed. Stepping Down.", "Leader 0 Stepping down (term 1)."
    )
    history.elect(3.05, leader=1, term=2, voters=[2])
    if not unsafe:
        history.at(3.05, 1, "New Leader waiting for Old Leader Lease to timeout.")
    return history.lead(3.35, 3.6, 1, [2])


def test_a_new_leader_that_skips_the_lease_wait_overlaps_the_old_lease(tmp_path: Path) -> None:
    result = run(partitioned(tmp_path, "skip_lease_wait").write())
    assert rules(result) == ["no two leases at once"]
    violation = result.violations[0]
    # Old lease: last answers at 2.952 + L/(1+rho); new one from its election at 3.05.
    assert "leader 0 (term 1)" in violation.message and "leader 1 (term 2)" in violation.message
    assert "ms of overlap" in violation.message
    assert any("accepted AppendEntries RPC from 0" in line.text for line in violation.lines)
    assert any("became the leader for term 2" in line.text for line in violation.lines)


def test_the_unsafe_line_is_read_with_every_seam_the_node_names(tmp_path: Path) -> None:
    """raftkv-node names all its test seams in one line (raftkv/server/seams.py), clock rates
    and failpoints with their values: the review still finds skip_lease_wait among them."""
    names = "clock_rate=0.3, skip_lease_wait, no_fsync, failpoint=after-log-write-before-fsync"
    result = run(partitioned(tmp_path, names).write())
    assert rules(result) == ["no two leases at once"]


def test_the_same_partition_with_the_lease_wait_is_clean(tmp_path: Path) -> None:
    result = run(partitioned(tmp_path, "").write())
    assert rules(result) == []
    old, new = result.leaderships
    assert new.waited is not None
    assert new.lease_start >= old.lease_end


def test_clock_uncertainty_decides_a_small_overlap(tmp_path: Path) -> None:
    history = partitioned(tmp_path, "skip_lease_wait")
    root = history.write()
    assert rules(run(root, uncertainty=0.010)) == ["no two leases at once"]
    assert rules(run(root, uncertainty=1.0)) == []


def test_a_committed_entry_missing_from_a_majority_is_reported(tmp_path: Path) -> None:
    history = healthy(tmp_path)
    history.logs[0] = entries("a", "b")
    history.commit[0] = 3  # node 0 says entry 3 is committed; only node 0 holds it
    result = run(history.write())
    assert rules(result) == ["committed entries on a majority"]
    assert "entry 3 (SET k1 b, term 1)" in result.violations[0].message
    assert "only nodes [0]" in result.violations[0].message


def test_diverging_committed_prefixes_are_reported(tmp_path: Path) -> None:
    history = healthy(tmp_path)
    history.logs[2] = entries("other")
    result = run(history.write())
    messages = [v.message for v in result.violations if v.rule == "one committed prefix"]
    assert any("entry 2 is committed on nodes 0 and 2 but differs" in m for m in messages)
    assert any("node 2's dump says it committed SET k0 a but entry 2" in m for m in messages)


def test_a_dump_commit_beyond_the_log_is_reported(tmp_path: Path) -> None:
    history = healthy(tmp_path)
    history.at(1.7, 1, "Node 1 (follower) committed the entry SET k1 b to the state machine.")
    result = run(history.write())
    assert any(
        "node 1's dump says it committed SET k1 b but its logs.txt has only 2 entries" in v.message
        for v in result.violations
    )


def test_committed_deletes_are_matched_to_the_del_lines_of_logs_txt(tmp_path: Path) -> None:
    history = healthy(tmp_path)
    for node in range(3):
        role = "leader" if node == 0 else "follower"
        history.at(
            1.7, node, f"Node {node} ({role}) committed the entry DELETE k0 to the state machine."
        )
        history.logs[node] = [*entries("a"), LogEntry(1, DeleteCommand("k0", "c", 2))]
    assert rules(run(history.write())) == []
    # A DELETE the dump announces where the log holds something else is a diverging prefix.
    history.logs[2][-1] = LogEntry(1, DeleteCommand("k9", "c", 2))
    messages = [v.message for v in run(history.write()).violations]
    assert any("node 2's dump says it committed DELETE k0 but entry 3" in m for m in messages)


def test_a_start_without_a_shutdown_line_is_a_crash(tmp_path: Path) -> None:
    history = History(tmp_path).start_all()
    history.elect(1.0, leader=0, term=1, voters=[1, 2]).lead(1.0, 1.5, 0, [1, 2])
    history.at(4.0, 0, *start_line(0))  # killed after 1.5, restarted at 4.0
    history.elect(2.3, leader=1, term=2, voters=[2]).lead(2.3, 3.95, 1, [2])
    history.lead(4.05, 4.5, 1, [2, 0])
    result = run(history.write())
    assert rules(result) == []
    assert result.leaderships[0].end_reason.startswith("crashed")
    crashes = [mark for mark in result.marks if mark[2] == "crash"]
    assert [(node, round(moment - T0.timestamp(), 3)) for node, moment, _ in crashes] == [(0, 1.5)]
    assert "Crashes (a start with no shutdown line before it): 1" in logreview.format_report(result)


def test_rotated_dumps_are_read_oldest_first_and_faults_are_spans(tmp_path: Path) -> None:
    root = healthy(tmp_path).write()
    dump = root / "node-2" / "dump.txt"
    lines = dump.read_text().splitlines(keepends=True)
    half = len(lines) // 2
    (root / "node-2" / "dump.txt.1").write_text("".join(lines[:half]))
    dump.write_text("".join(lines[half:]))
    stamp = (T0 + timedelta(seconds=2)).isoformat()
    later = (T0 + timedelta(seconds=2.5)).isoformat()
    (root / "faults.log").write_text(
        f"{stamp} fab pause-node 2 (SIGSTOP)\n{later} fab resume-node 2 (SIGCONT)\n"
    )
    result = run(root)
    node_2 = [line for line in result.timeline if line.node == 2]
    assert [line.time for line in node_2] == sorted(line.time for line in node_2)
    assert any(s.kind == "paused" and s.node == 2 for s in result.spans)
    assert "Faults injected (faults.log):" in logreview.format_report(result)


def test_the_command_line_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert logreview.main(["review", str(tmp_path)]) == 2
    assert "no dump files" in capsys.readouterr().err
    clean = healthy(tmp_path / "clean").write()
    assert logreview.main(["review", str(clean)]) == 0
    broken = partitioned(tmp_path / "broken", "skip_lease_wait").write()
    assert logreview.main(["review", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "VIOLATIONS: 1" in out and "[no two leases at once]" in out


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="install the deploy extra (make infra-deps)")
    root = partitioned(tmp_path / "p", "skip_lease_wait").write()
    picture = tmp_path / "timeline.png"
    assert logreview.main(["review", str(root), "--plot", str(picture)]) == 1
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_start_up_line_is_read_with_or_without_the_clock_it_names() -> None:
    (line,) = start_line(2)
    kind, fields = logreview.classify(line)
    assert kind is logreview.Kind.START
    assert dict(fields)["drift"] == str(DRIFT) and dict(fields)["clock"] == "CLOCK_BOOTTIME"
    older = line.replace(", clock CLOCK_BOOTTIME.", ".")
    kind, fields = logreview.classify(older)
    assert kind is logreview.Kind.START
    assert dict(fields)["drift"] == str(DRIFT) and dict(fields)["clock"] == ""


def test_core_sentences_are_classified_by_the_cores_own_event_classes() -> None:
    for event in EXAMPLES:
        kind, fields = logreview.classify(str(event))
        assert kind is logreview.CORE_KINDS.get(type(event), logreview.Kind.OTHER), event
        assert dict(fields) == {k: str(v) for k, v in dataclasses.asdict(event).items()}
    # A sentence the core does not write is no core event, even if it looks like one.
    assert logreview.classify("Node 1 became the leader for term one.") == (
        logreview.Kind.OTHER,
        (),
    )
