"""Jepsen-style randomized runs (tests/faults/jepsen.py) as tests.

`make test` runs two short runs (every nemesis; kernel partitions, then delay proxies) with the
clients on shared KeyValue.Pipeline streams, and one negative control on unary calls, so both
client paths are judged; `make soak-faults` (RAFTKV_SOAK=1) runs long ones, alternating both.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.faults import jepsen

SHORT = 25.0


def first_seed_opening_with(shape: str, nemeses: tuple[str, ...], duration: float) -> int:
    """Schedules are a pure function of the seed: find one whose first fault is `shape`."""
    for seed in range(1, 1000):
        schedule = jepsen.make_schedule(random.Random(seed), duration, nemeses, 5, 0.01)
        if schedule and schedule[0].detail.get("shape") == shape:
            return seed
    raise AssertionError(f"no seed opens with {shape}")


@pytest.mark.parametrize(
    ("seed", "nemeses"),
    [
        (1, ("kill", "pause", "partition", "clock")),  # kernel partitions (nftables)
        (2, jepsen.NEMESES),  # every fault, links through the delay proxies (WAN delays)
    ],
)
def test_short_randomized_run_is_linearizable(seed: int, nemeses: tuple[str, ...]) -> None:
    options = jepsen.RunOptions(time=SHORT, nemeses=nemeses, nodes=5, clients=5, keys=8)
    result = jepsen.run_once(options, seed)
    print(result.line(), result.note)
    assert result.ok, f"{result.failure}\nsaved to {result.artifacts}"
    assert result.operations > 300
    assert result.counts["ok"] > 200
    assert sum(result.faults.values()) >= 3, result.faults


def test_a_randomized_run_catches_renew_lease_on_send(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The negative control through the Jepsen path: an isolated leader that renews its lease
    on every unanswered heartbeat keeps answering its pinned reader after the majority's new
    leader has written; the checker rejects the history, and the run's files are saved.
    CheckQuorum is off too (no_pre_vote), or it would step that leader down first
    (tests/faults/test_negative_controls.py says why)."""
    nemeses = ("partition",)
    seed = first_seed_opening_with("isolate-leader", nemeses, 20.0)
    out = tmp_path_factory.mktemp("jepsen-failures")
    options = jepsen.RunOptions(
        time=20.0,
        nemeses=nemeses,
        keys=2,
        unsafe=("renew_lease_on_send", "no_pre_vote"),
        out=out,
        quiet=True,
        transport="unary",
    )
    result = jepsen.run_once(options, seed)
    print(result.line())
    assert not result.ok
    assert "not linearizable" in result.failure
    assert result.artifacts is not None
    history = json.loads((result.artifacts / "history.json").read_text())
    assert len(history) == result.operations
    assert "isolate leader" in (result.artifacts / "nemesis.txt").read_text()
    for node in range(5):
        for name in ("logs.txt", "metadata.txt", "dump.txt"):
            assert (result.artifacts / "nodes" / f"node{node}" / name).is_file()


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(100, 106))
def test_soak_randomized_runs(seed: int) -> None:
    transport = "pipeline" if seed % 2 == 0 else "unary"
    options = jepsen.RunOptions(
        time=120.0, nemeses=jepsen.NEMESES, nodes=5, clients=5, keys=8, transport=transport
    )
    result = jepsen.run_once(options, seed)
    print(result.line(), result.note)
    assert result.ok, f"{result.failure}\nsaved to {result.artifacts}"
