"""The deterministic simulator: correct code passes many seeds, each broken rule is caught."""

from __future__ import annotations

import pytest

from raftkv.core import events
from raftkv.core.node import UnsafeSwitches
from tests.simulation.cluster import ALL_FAULTS, make_scenario, run_scenario
from tests.simulation.runner import Options, run_seeds

MAKE_TEST_SEEDS = 500


def options(**unsafe: bool) -> Options:
    return Options(None, None, ALL_FAULTS, None, UnsafeSwitches(**unsafe))


def test_correct_code_passes_every_seed() -> None:
    outcomes = run_seeds(range(MAKE_TEST_SEEDS), options(), jobs=2)
    failures = [f"seed {o.seed} ({o.description}): {o.failure}" for o in outcomes if not o.ok]
    assert not failures, "\n".join(failures)
    # The runs must do real work: every seed checks a real history.
    assert sum(o.operations for o in outcomes) > 100 * MAKE_TEST_SEEDS


def test_a_seed_replays_exactly() -> None:
    scenario = make_scenario(7)
    first = run_scenario(scenario, trace=True)
    second = run_scenario(scenario, trace=True)
    assert first.trace and first.trace == second.trace
    assert first.history == second.history


def core_event_kinds(trace: list[str]) -> set[type[events.Event]]:
    """The classes of the core events in a trace (lines `<time> [<node>] <event>`)."""
    kinds = set()
    for line in trace:
        _, bracket, text = line.partition("] ")
        event = events.parse(text) if bracket else None
        if event is not None:
            kinds.add(type(event))
    return kinds


def test_every_fault_kind_happens_somewhere() -> None:
    runs = [run_scenario(make_scenario(s), trace=True).trace or [] for s in range(6)]
    traces = "\n".join("\n".join(trace) for trace in runs)
    for needle in ("nemesis partition", "crashed", "nemesis pause"):
        assert needle in traces, needle
    seen = set().union(*(core_event_kinds(trace) for trace in runs))
    for kind in (events.WaitingForOldLease, events.LeaseRenewalFailed, events.BecameLeader):
        assert kind in seen, kind.__name__


# Each negative control breaks one lease rule; the simulator must catch it within the budget.
# The expected kind of failure shows *which* check caught it.
NEGATIVE_CONTROLS = {
    "read_without_lease": ("lease safety", "linearizability"),
    "skip_lease_wait": ("lease safety", "linearizability"),
    "lease_from_ack_time": ("lease safety", "linearizability"),
    "read_before_noop": ("linearizability",),
    "renew_lease_on_send": ("lease safety", "linearizability"),
    "forget_lease_on_restart": ("lease safety", "linearizability"),
}
SEED_BUDGET = 120
# Where a control is caught only by some profile within the budget. lease_from_ack_time needs a
# new leader elected while the old one's (wrongly late) lease still runs; since PreVote and
# leader stickiness (issue 14) elections are rarer, and in 600 mixed seeds only 8 caught it,
# 7 of them in 120 high-drift seeds.
PROFILE_FOR = {"lease_from_ack_time": "high-drift"}


@pytest.mark.parametrize("switch", sorted(NEGATIVE_CONTROLS))
def test_negative_control_is_caught(switch: str) -> None:
    caught = None
    for seed in range(SEED_BUDGET):
        unsafe = UnsafeSwitches(**{switch: True})
        scenario = make_scenario(seed, profile=PROFILE_FOR.get(switch), unsafe=unsafe)
        result = run_scenario(scenario)
        if not result.ok:
            caught = result
            break
    assert caught is not None, f"{switch} survived {SEED_BUDGET} seeds: the checks are blind"
    assert any(kind in caught.failure for kind in NEGATIVE_CONTROLS[switch]), caught.failure


# Peer messages turned malformed or impossible in flight (a buggy or hostile peer): the core's
# checks (raftkv/core/validation.py, RaftNode's stateful ones) refuse every one, so the run
# stays safe and live.
CORRUPT_SEEDS = 100
WITH_CORRUPTION = ALL_FAULTS | {"corrupt"}


def test_malformed_peer_messages_are_dropped_on_every_seed() -> None:
    corrupting = Options(None, None, WITH_CORRUPTION, None, UnsafeSwitches())
    outcomes = run_seeds(range(1000, 1000 + CORRUPT_SEEDS), corrupting, jobs=2)
    failures = [f"seed {o.seed} ({o.description}): {o.failure}" for o in outcomes if not o.ok]
    assert not failures, "\n".join(failures)
    traced = run_scenario(make_scenario(1000, faults=WITH_CORRUPTION), trace=True).trace or []
    assert any("nemesis corrupt" in line for line in traced), "the fault never fired"
    kinds = core_event_kinds(traced)
    assert events.ProtocolViolation in kinds
    # A lease beyond the longest allowed is malformed; a conflict with a committed entry is
    # refused by the stateful check.
    assert any("exceeds the longest lease" in line for line in traced)
    assert any("nemesis forged" in line for line in traced)
    assert any("conflicts with a committed entry" in line for line in traced)


def test_negative_control_accepting_malformed_messages_is_caught() -> None:
    caught = None
    for seed in range(1000, 1000 + SEED_BUDGET):
        unsafe = UnsafeSwitches(accept_malformed=True)
        result = run_scenario(make_scenario(seed, faults=WITH_CORRUPTION, unsafe=unsafe))
        if not result.ok:
            caught = result
            break
    assert caught is not None, "accept_malformed survived: the corrupt fault is blind"
    kinds = ("log matching", "state machine safety", "crash", "liveness", "linearizability")
    assert any(kind in caught.failure for kind in kinds), caught.failure
