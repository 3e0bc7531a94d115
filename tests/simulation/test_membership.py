"""Membership changes (issue 16) in the simulator: learners added, promoted and removed, the
leader too, while partitions, crashes, pauses, drift, lost messages and snapshots go on; every
invariant (election safety, log matching, leader completeness, state machine safety, the
snapshot content, durability on a majority of the committed configuration's voters, lease
safety and linearizability) is checked throughout."""

from __future__ import annotations

import collections

from tests.simulation.cluster import Simulation, make_scenario
from tests.simulation.runner import Options, SeedOutcome, run_seeds
from tests.simulation.test_day2 import day2_options, failures

MEMBERSHIP_FAULTS = frozenset(
    {"membership", "crash", "partition", "loss", "delay", "drift", "pause", "snapshot"}
)


def test_membership_changes_keep_every_invariant() -> None:
    outcomes = run_seeds(range(60), day2_options(MEMBERSHIP_FAULTS), jobs=2)
    assert not failures(outcomes), "\n".join(failures(outcomes))


def test_the_runs_do_change_the_membership() -> None:
    """Not vacuous: a run adds, promotes and removes members (the leader among them), retires
    removed nodes, re-admits a retired id with an empty disk, and refuses a second change
    while one is in flight."""
    seen: collections.Counter[str] = collections.Counter()
    for seed in range(6):
        simulation = Simulation(make_scenario(seed, faults=MEMBERSHIP_FAULTS), trace=True)
        result = simulation.run()
        assert result.ok, result.failure
        assert simulation.world.trace is not None
        for line in map(str, simulation.world.trace):
            for what in ("add learner", "promote", "remove"):
                if f": {what} " in line and "-> Accepted" in line:
                    seen[what] += 1
            if "one change at a time" in line:
                seen["refused while one is in flight"] += 1
            if "no longer a voter" in line:
                seen["leader removed"] += 1
            if "retires node" in line:
                seen["retired"] += 1
    assert all(
        seen[what] > 0
        for what in (
            "add learner",
            "promote",
            "remove",
            "refused while one is in flight",
            "leader removed",
            "retired",
        )
    ), seen


def test_negative_control_two_changes_at_once_is_caught() -> None:
    """Two changes in flight: two configurations two steps apart both elect (first caught on
    seed 140 of this fault set; seeds 0–139 fail on liveness at most, never on safety)."""
    options = day2_options(MEMBERSHIP_FAULTS, concurrent_config_changes=True)
    caught = first_caught_on_safety(range(130, 200), options)
    assert caught is not None, "two changes in flight survived 70 seeds: the checks are blind"
    safe = run_seeds(range(130, caught.seed + 1), day2_options(MEMBERSHIP_FAULTS), jobs=2)
    assert not failures(safe), "\n".join(failures(safe))


def test_negative_control_a_change_before_the_term_commits_is_caught() -> None:
    """A leader that changes the configuration before committing an entry of its own term can
    lose a committed entry (first caught on seed 186)."""
    options = day2_options(MEMBERSHIP_FAULTS, change_before_term_commit=True)
    caught = first_caught_on_safety(range(170, 240), options)
    assert caught is not None, "early changes survived 70 seeds: the checks are blind"
    safe = run_seeds(range(170, caught.seed + 1), day2_options(MEMBERSHIP_FAULTS), jobs=2)
    assert not failures(safe), "\n".join(failures(safe))


def first_caught_on_safety(seeds: range, options: Options) -> SeedOutcome | None:
    """The first seed that breaks a safety invariant (a control may also cost liveness first)."""
    for seed in seeds:
        (outcome,) = run_seeds(range(seed, seed + 1), options, jobs=1)
        if not outcome.ok and "liveness" not in outcome.failure:
            return outcome
    return None
