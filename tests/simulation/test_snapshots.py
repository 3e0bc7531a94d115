"""Snapshots, compaction and InstallSnapshot under faults (issue 15).

Every scenario snapshots every 8–60 entries and compacts to within 0–10 entries of it, so each
seed takes, saves, loses (in a crash) and fails (a disk error) snapshots many times, and its
followers fall behind the compaction point; the "snapshot" fault adds followers cut off for
seconds while the others write, whose catch-up streams a snapshot in chunks through the faulty
network, racing partitions, crashes and AppendEntries. Every invariant holds throughout, plus
one of its own: each snapshot taken or installed equals the committed entries replayed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftkv.core.messages import LogEntry, Membership, SetCommand
from raftkv.core.state_machine import KeyValueStateMachine
from tests.simulation.cluster import (
    ALL_FAULTS,
    DAY2_FAULTS,
    SuspendClock,
    make_scenario,
    run_scenario,
)
from tests.simulation.invariants import SafetyChecker
from tests.simulation.runner import run_seeds
from tests.simulation.test_day2 import day2_options, failures, first_caught
from tests.simulation.world import InvariantViolationError

SNAPSHOT_TRACE_LINES = (
    "saved a snapshot",
    "compacted its log",
    "started from its snapshot",
    "nemesis lag",
    "sending its snapshot",
    "installed the leader's snapshot",
    "could not save a snapshot",
)


def test_snapshots_compaction_and_installs_all_happen() -> None:
    text = "\n".join(
        "\n".join(run_scenario(make_scenario(seed), trace=True).trace or []) for seed in range(4)
    )
    for line in SNAPSHOT_TRACE_LINES:
        assert line in text, f"no {line!r} in the traces"


def test_snapshots_keep_every_invariant() -> None:
    outcomes = run_seeds(range(5000, 5150), day2_options(ALL_FAULTS), jobs=2)
    assert not failures(outcomes), "\n".join(failures(outcomes))


def test_snapshots_among_the_day2_faults_keep_every_invariant() -> None:
    faults = ALL_FAULTS | DAY2_FAULTS | {"corrupt"}
    options = day2_options(faults, suspend_clock=SuspendClock.BOOTTIME)
    outcomes = run_seeds(range(6000, 6080), options, jobs=2)
    assert not failures(outcomes), "\n".join(failures(outcomes))


def test_negative_control_compacting_before_the_snapshot_is_durable_is_caught() -> None:
    """A crash between the compaction and the end of the snapshot write loses entries."""
    options = day2_options(ALL_FAULTS, compact_before_snapshot_durable=True)
    caught = first_caught(range(5000, 5040), options)
    assert caught is not None, "compacting early survived 40 seeds: the checks are blind"
    assert "durability" in caught.failure, caught.failure
    safe = run_seeds(range(5000, caught.seed + 1), day2_options(ALL_FAULTS), jobs=2)
    assert not failures(safe), "\n".join(failures(safe))


def test_a_snapshot_that_differs_from_the_committed_entries_is_caught() -> None:
    three = Membership.of_voters([1, 2, 3])
    checker = SafetyChecker(three)
    entries = [LogEntry(1, SetCommand("k", str(i))) for i in range(1, 4)]
    checker.committed.update(enumerate(entries, start=1))
    right, wrong = KeyValueStateMachine(), KeyValueStateMachine()
    for index, entry in enumerate(entries, start=1):
        right.apply(entry.command, index)
        wrong.apply(entry.command if index != 2 else SetCommand("k", "x"), index)
    wrong.apply(SetCommand("other", "y"), 3)
    checker.check_snapshot(1, right.image(3, 1), "took")
    with pytest.raises(InvariantViolationError, match="snapshot content"):
        checker.check_snapshot(2, wrong.image(3, 1), "took")
    with pytest.raises(InvariantViolationError, match="not known to be committed"):
        checker.check_snapshot(3, right.image(5, 1), "installed")
    # The configuration is part of a snapshot's content too.
    other = replace(right.image(3, 1), membership=Membership.of_voters([1, 2]))
    with pytest.raises(InvariantViolationError, match="snapshot content"):
        checker.check_snapshot(1, other, "took")
