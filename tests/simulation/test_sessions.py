"""Bounded client sessions under faults (issue 15, docs/design.md §11).

The "client_pause" fault makes clients go quiet for longer than a session lives (their sessions
expire, by the cluster time the leaders stamp into the log) and suspends clients between two
tries of a write for as long. Every write still takes effect at most once (the checker's
exactly-once invariant), and every history stays linearizable; with `resume` ignored, a retry
that outlived its session applies twice, and the checker says so.
"""

from __future__ import annotations

from tests.simulation.cluster import ALL_FAULTS, make_scenario, run_scenario
from tests.simulation.runner import run_seeds
from tests.simulation.test_day2 import day2_options, failures, first_caught

PAUSE_FAULTS = ALL_FAULTS | {"client_pause"}


def test_client_pauses_expire_sessions_and_say_so() -> None:
    text = "\n".join(
        "\n".join(run_scenario(make_scenario(seed, faults=PAUSE_FAULTS), trace=True).trace or [])
        for seed in range(8)
    )
    for line in ("goes quiet for", "suspended mid-write for", "starts session"):
        assert line in text, f"no {line!r} in the traces"


def test_expiring_sessions_apply_every_write_at_most_once() -> None:
    outcomes = run_seeds(range(7000, 7150), day2_options(PAUSE_FAULTS), jobs=2)
    assert not failures(outcomes), "\n".join(failures(outcomes))


def test_negative_control_ignoring_resume_applies_a_retry_twice() -> None:
    caught = first_caught(range(7000, 7100), day2_options(PAUSE_FAULTS, ignore_resume=True))
    assert caught is not None, "ignoring resume survived 100 seeds: the checks are blind"
    assert "exactly-once" in caught.failure, caught.failure
