"""Tests for the register linearizability checker in tests/support/linearizability.py."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence

import pytest

from tests.support.linearizability import (
    CheckerBudgetExceeded,
    CheckResult,
    Operation,
    Outcome,
    check_history,
    check_key,
)

KEY = "k"


def ok_set(
    process: str, value: str | None, invoke: float, complete: float, key: str = KEY
) -> Operation:
    return Operation(process, "set", key, value, invoke, complete, Outcome.OK)


def ok_get(
    process: str, value: str | None, invoke: float, complete: float, key: str = KEY
) -> Operation:
    return Operation(process, "get", key, value, invoke, complete, Outcome.OK)


def info_set(process: str, value: str, invoke: float, key: str = KEY) -> Operation:
    return Operation(process, "set", key, value, invoke, None, Outcome.INFO)


def ok_delete(process: str, invoke: float, complete: float, key: str = KEY) -> Operation:
    return Operation(process, "delete", key, None, invoke, complete, Outcome.OK)


def info_get(process: str, invoke: float, key: str = KEY) -> Operation:
    return Operation(process, "get", key, None, invoke, None, Outcome.INFO)


def fail_set(process: str, value: str, invoke: float, complete: float, key: str = KEY) -> Operation:
    return Operation(process, "set", key, value, invoke, complete, Outcome.FAIL)


def assert_linearizable(ops: Sequence[Operation], initial: str | None = None) -> CheckResult:
    result = check_history(ops, initial=initial)
    assert result.ok, result.explanation
    assert result.key is None
    return result


def assert_not_linearizable(
    ops: Sequence[Operation], initial: str | None = None, key: str = KEY
) -> CheckResult:
    result = check_history(ops, initial=initial)
    assert not result.ok, f"expected a violation on {key!r}; history: {list(ops)}"
    assert result.key == key
    return result


# --- hand-written histories ------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = assert_linearizable([])
    assert result.operations_checked == 0


def test_sequential_history_is_linearizable() -> None:
    assert_linearizable(
        [
            ok_get("a", None, 0, 1),
            ok_set("a", "x", 2, 3),
            ok_get("b", "x", 4, 5),
            ok_set("b", "y", 6, 7),
            ok_get("a", "y", 8, 9),
            ok_get("a", "y", 10, 11),
        ]
    )


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    result = assert_not_linearizable(
        [
            ok_set("a", "x", 0, 1),
            ok_set("a", "y", 2, 3),
            ok_get("b", "x", 4, 5),
        ]
    )
    assert "get('k') -> 'x'" in result.explanation


@pytest.mark.parametrize("observed", [None, "x"])
def test_read_concurrent_with_write_may_see_either_value(observed: str | None) -> None:
    assert_linearizable([ok_set("a", "x", 0, 10), ok_get("b", observed, 2, 3)])


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    result = assert_not_linearizable([ok_set("a", "x", 0, 1), ok_get("b", "ghost", 0, 5)])
    assert "'ghost'" in result.explanation
    assert "no operation" in result.explanation


def test_new_then_old_reads_overlapping_a_write_are_not_linearizable() -> None:
    # Once a read has seen the new value, a read that starts after it finishes cannot go
    # back to the old one, even though both overlap the write.
    assert_not_linearizable(
        [
            ok_set("a", "old", 0, 1),
            ok_set("a", "new", 2, 20),
            ok_get("b", "new", 3, 4),
            ok_get("c", "old", 5, 6),
        ]
    )


def test_old_then_new_reads_overlapping_a_write_are_linearizable() -> None:
    assert_linearizable(
        [
            ok_set("a", "old", 0, 1),
            ok_set("a", "new", 2, 20),
            ok_get("b", "old", 3, 4),
            ok_get("c", "new", 5, 6),
        ]
    )


def test_overlapping_reads_may_see_new_then_old() -> None:
    # The reads overlap each other, so the "old" read may be ordered first.
    assert_linearizable(
        [
            ok_set("a", "old", 0, 1),
            ok_set("a", "new", 2, 20),
            ok_get("b", "new", 3, 6),
            ok_get("c", "old", 5, 8),
        ]
    )


def test_touching_intervals_are_concurrent() -> None:
    # complete == invoke is not "before": the read may be ordered ahead of the write.
    assert_linearizable([ok_set("a", "x", 0, 5), ok_get("b", None, 5, 6)])
    assert_not_linearizable([ok_set("a", "x", 0, 5), ok_get("b", None, 5.001, 6)])


def test_info_set_may_take_effect_late() -> None:
    assert_linearizable(
        [
            ok_set("a", "old", 0, 1),
            info_set("a", "late", 2),
            ok_get("b", "old", 3, 4),
            ok_get("b", "old", 50, 51),
            ok_get("c", "late", 100, 101),
            ok_get("b", "late", 102, 103),
        ]
    )


def test_info_set_may_never_take_effect() -> None:
    assert_linearizable(
        [ok_set("a", "old", 0, 1), info_set("a", "lost", 2), ok_get("b", "old", 100, 101)]
    )


def test_info_set_cannot_take_effect_twice() -> None:
    assert_not_linearizable(
        [
            ok_set("a", "x", 0, 1),
            info_set("a", "late", 2),
            ok_get("b", "late", 3, 4),
            ok_set("c", "y", 5, 6),
            ok_get("b", "late", 7, 8),
        ]
    )


def test_info_set_read_before_its_invoke_is_not_linearizable() -> None:
    assert_not_linearizable([ok_get("b", "early", 0, 1), info_set("a", "early", 5)])


def test_fail_set_whose_value_is_read_is_not_linearizable() -> None:
    assert_not_linearizable([fail_set("a", "x", 0, 1), ok_get("b", "x", 2, 3)])


def test_fail_and_info_gets_are_ignored() -> None:
    ops = [
        ok_set("a", "x", 0, 1),
        info_get("b", 2),
        Operation("c", "get", KEY, "nonsense", 3, 4, Outcome.FAIL),
        ok_get("a", "x", 5, 6),
    ]
    result = assert_linearizable(ops)
    assert result.operations_checked == 4


def test_only_the_broken_key_is_reported() -> None:
    ops = [
        ok_set("a", "1", 0, 1, key="alpha"),
        ok_get("b", "1", 2, 3, key="alpha"),
        ok_set("a", "1", 0, 1, key="beta"),
        ok_set("a", "2", 2, 3, key="beta"),
        ok_get("b", "1", 4, 5, key="beta"),
        ok_set("c", "z", 0, 1, key="gamma"),
        ok_get("c", None, 2, 3, key="gamma"),
    ]
    result = check_history(ops)
    # Both beta and gamma are broken; keys are checked in sorted order.
    assert not result.ok
    assert result.key == "beta"
    assert "'beta'" in result.explanation
    assert result.operations_checked == 5

    only_gamma_broken = [op for op in ops if op.key != "beta"]
    assert check_history(only_gamma_broken).key == "gamma"
    assert check_history([op for op in only_gamma_broken if op.key != "gamma"]).ok


def test_keys_are_independent_registers() -> None:
    # Per key this is fine; a single shared register could not explain it.
    assert_linearizable(
        [
            ok_set("a", "1", 0, 1, key="x"),
            ok_set("a", "2", 2, 3, key="y"),
            ok_get("b", "1", 4, 5, key="x"),
            ok_get("b", "2", 4, 5, key="y"),
        ]
    )


def test_initial_value() -> None:
    ops = [ok_get("a", "seed", 0, 1), ok_set("a", "x", 2, 3), ok_get("b", "x", 4, 5)]
    assert_linearizable(ops, initial="seed")
    assert_not_linearizable(ops)
    # With an initial value, reading "absent" is a read of a value never written.
    assert_not_linearizable([ok_get("a", None, 0, 1)], initial="seed")
    assert check_key(KEY, [ok_get("a", "seed", 0, 1)], initial="seed").ok


def test_writes_of_equal_values_are_interchangeable() -> None:
    assert_linearizable(
        [
            ok_set("a", "x", 0, 1),
            ok_set("b", "y", 2, 10),
            ok_set("c", "x", 2, 10),
            ok_get("a", "y", 3, 4),
            ok_get("a", "x", 5, 6),
        ]
    )


def test_failure_explanation_names_the_dead_end() -> None:
    result = assert_not_linearizable(
        [
            ok_set("writer", "x", 0, 1),
            ok_set("writer", "y", 2, 3),
            ok_get("reader", "x", 4, 5),
        ]
    )
    text = result.explanation
    assert "Longest linearizable prefix found: 1 operation(s)" in text
    assert "1. writer: set('k', 'x') [0, 1] ok" in text
    assert "Register value after that prefix: 'x'" in text
    assert (
        "writer: set('k', 'y') [2, 3] ok  <- would overwrite 'x', which remaining reads still need"
        in text
    )
    assert "yet these remaining reads return it:\n  reader: get('k') -> 'x' [4, 5] ok" in text


def test_failure_explanation_lists_the_prefix_and_mismatched_read() -> None:
    result = assert_not_linearizable(
        [
            ok_set("writer", "x", 0, 1),
            ok_get("reader", "x", 2, 3),
            ok_set("writer", "y", 4, 5),
            ok_get("reader", "z", 6, 7),
            ok_set("late", "z", 8, 9),
        ]
    )
    text = result.explanation
    assert "Longest linearizable prefix found: 3 operation(s)" in text
    assert "3. writer: set('k', 'y') [4, 5] ok" in text
    assert "reader: get('k') -> 'z' [6, 7] ok  <- reads 'z' but the register holds 'y'" in text
    assert "Nothing invoked after 7 may be ordered before reader: get('k') -> 'z'" in text


def test_long_prefixes_are_abbreviated_in_the_explanation() -> None:
    ops = [ok_set("a", str(i), 2 * i, 2 * i + 1) for i in range(100)]
    ops.append(ok_get("b", "ghost", 500, 501))
    text = assert_not_linearizable(ops).explanation
    assert "100 operation(s), showing the last 20:" in text
    assert "  81. a: set('k', '80')" in text
    assert "  80. " not in text


def test_a_value_written_again_may_be_overwritten_while_still_read() -> None:
    assert_linearizable(
        [
            ok_set("a", "x", 0, 1),
            ok_set("a", "y", 2, 3),
            ok_get("b", "y", 4, 5),
            ok_set("a", "x", 6, 7),
            ok_get("b", "x", 8, 9),
        ]
    )


def test_undoing_a_rewrite_makes_its_value_writable_again() -> None:
    # The search first tries the concurrent rewrite of 'a', dead-ends, and backs out; 'a'
    # then has to count as producible again, or 'c' could never be written over it.
    assert_linearizable(
        [
            ok_set("p0", "a", 0, 1),
            ok_get("p1", "c", 4, 8),
            ok_set("p2", "a", 4, 6),
            ok_set("p3", "c", 5, 5),
            ok_get("p4", "a", 8, 12),
        ]
    )


def test_unread_write_may_not_be_forced_ahead_of_a_matching_read() -> None:
    # 'z' is never read, so it is safe to take early, but not before the read of the
    # current value that is also allowed to go next.
    assert_linearizable(
        [
            ok_set("p0", "a", 0, 1),
            ok_set("p1", "z", 2, 6),
            ok_get("p2", "a", 2, 3),
            ok_set("p3", "b", 4, 5),
            ok_get("p2", "b", 7, 8),
        ]
    )


def test_check_key_counts_all_operations_including_ignored_ones() -> None:
    ops = [ok_set("a", "x", 0, 1), fail_set("b", "y", 0, 1), info_get("c", 0)]
    result = check_key(KEY, ops)
    assert result.ok
    assert result.operations_checked == 3


def test_results_and_operations_are_immutable() -> None:
    op = ok_set("a", "x", 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.value = "y"  # type: ignore[misc]
    result = check_history([op])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.ok = False  # type: ignore[misc]


# --- input validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_op", "message"),
    [
        (Operation("a", "cas", KEY, "x", 0, 1, Outcome.OK), "kind"),
        (Operation("a", "set", KEY, "x", 0, None, Outcome.OK), "complete time"),
        (Operation("a", "get", KEY, "x", 5, 4, Outcome.OK), "before it was invoked"),
        (Operation("a", "get", KEY, "x", math.nan, 4, Outcome.OK), "finite"),
        (Operation("a", "get", KEY, "x", 0, math.inf, Outcome.OK), "finite"),
        (Operation("a", "get", KEY, "x", 0, 1, "ok"), "Outcome"),  # type: ignore[arg-type]
    ],
)
def test_invalid_operations_are_rejected(bad_op: Operation, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_history([ok_set("a", "x", 0, 1), bad_op])
    with pytest.raises(ValueError, match=message):
        check_key(KEY, [bad_op])


def test_check_history_validates_every_key_before_reporting() -> None:
    broken_first_key = [ok_set("a", "x", 0, 1, key="a"), ok_get("b", "zzz", 2, 3, key="a")]
    malformed = Operation("a", "cas", "b", None, 0, 1, Outcome.OK)
    with pytest.raises(ValueError, match="kind"):
        check_history([*broken_first_key, malformed])


def test_check_key_rejects_operations_on_other_keys() -> None:
    with pytest.raises(ValueError, match="another key"):
        check_key(KEY, [ok_set("a", "x", 0, 1, key="other")])


# --- search budget and scale -----------------------------------------------------------


def interchangeable_writes_then_impossible_reads(writers: int) -> list[Operation]:
    """Concurrent writes of two values followed by reads of both: no linearization exists,
    and repeated values defeat the pruning, so ruling out every order takes ~2**writers
    configurations."""
    ops = [ok_set(f"w{i}", "ab"[i % 2], 0, 100) for i in range(writers)]
    ops.append(ok_get("reader", "a", 200, 201))
    ops.append(ok_get("reader", "b", 202, 203))
    return ops


def test_budget_exceeded_raises_instead_of_guessing() -> None:
    ops = interchangeable_writes_then_impossible_reads(writers=10)
    with pytest.raises(CheckerBudgetExceeded, match="after exploring 50 configurations") as info:
        check_history(ops, max_states=50)
    assert info.value.key == KEY
    assert info.value.max_states == 50
    assert not check_history(ops).ok


def test_budget_counts_configurations_not_operations() -> None:
    ops = [ok_set("a", str(i), 2 * i, 2 * i + 1) for i in range(100)]
    assert check_history(ops, max_states=100).ok
    with pytest.raises(CheckerBudgetExceeded):
        check_history(ops, max_states=99)


def test_long_sequential_history_does_not_recurse() -> None:
    ops: list[Operation] = []
    for i in range(5_000):
        ops.append(ok_set("a", str(i), 4 * i, 4 * i + 1))
        ops.append(ok_get("b", str(i), 4 * i + 2, 4 * i + 3))
    assert_linearizable(ops)
    ops[-1] = ok_get("b", "0", 4 * 4_999 + 2, 4 * 4_999 + 3)
    assert_not_linearizable(ops)


# --- randomized: histories that are linearizable by construction -----------------------


@dataclasses.dataclass
class GeneratedHistory:
    ops: list[Operation]
    linearization_points: dict[int, float]
    """Index in ops -> time the operation took effect (only for operations that did)."""


def generate_linearizable_history(
    rng: random.Random,
    *,
    processes: int,
    ops_per_process: int,
    key: str = KEY,
    unknown_outcomes: bool = True,
) -> GeneratedHistory:
    """Simulate clients against an atomic register that takes effect at a random point
    inside each operation's interval, so the recorded history is linearizable."""
    planned: list[tuple[float, int]] = []  # (linearization point, plan index)
    plans: list[tuple[str, str, str | None, float, float, Outcome]] = []
    write_serial = itertools.count()
    for process_number in range(processes):
        process = f"p{process_number}"
        clock = rng.uniform(0, 5)
        for _ in range(ops_per_process):
            invoke = clock + rng.uniform(0, 2)
            complete = invoke + rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 8)])
            clock = complete
            kind = rng.choice(["get", "set"])
            value = f"{process}-{next(write_serial)}" if kind == "set" else None
            roll = rng.random() if unknown_outcomes else 1.0
            outcome = Outcome.INFO if roll < 0.08 else Outcome.FAIL if roll < 0.12 else Outcome.OK
            plans.append((process, kind, value, invoke, complete, outcome))
            if outcome is Outcome.OK:
                planned.append((rng.uniform(invoke, complete), len(plans) - 1))
            elif outcome is Outcome.INFO and rng.random() < 0.7:
                # A timed-out request may still be applied much later.
                planned.append((invoke + rng.uniform(0, 30), len(plans) - 1))

    register: str | None = None
    observed: dict[int, str | None] = {}
    for _, plan_index in sorted(planned):
        _, kind, value, *_ = plans[plan_index]
        if kind == "set":
            register = value
        else:
            observed[plan_index] = register

    ops: list[Operation] = []
    for plan_index, (process, kind, value, invoke, complete, outcome) in enumerate(plans):
        if kind == "get" and outcome is Outcome.OK:
            value = observed[plan_index]
        ops.append(
            Operation(
                process,
                kind,
                key,
                value,
                invoke,
                None if outcome is Outcome.INFO else complete,
                outcome,
            )
        )
    points = {plan_index: point for point, plan_index in planned}
    return GeneratedHistory(ops, points)


SEEDS = range(300)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_histories_are_linearizable(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_linearizable_history(
        rng, processes=rng.randint(1, 6), ops_per_process=rng.randint(1, 25)
    )
    rng.shuffle(history.ops)  # input order must not matter
    assert_linearizable(history.ops)


def ok_reads(ops: Sequence[Operation]) -> list[int]:
    return [i for i, op in enumerate(ops) if op.kind == "get" and op.outcome is Outcome.OK]


@pytest.mark.parametrize("seed", SEEDS)
def test_read_of_a_never_written_value_is_caught(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_linearizable_history(rng, processes=rng.randint(1, 6), ops_per_process=15)
    reads = ok_reads(history.ops)
    if not reads:
        pytest.skip("no completed read to corrupt")
    victim = rng.choice(reads)
    history.ops[victim] = dataclasses.replace(history.ops[victim], value="never-written")
    assert_not_linearizable(history.ops)


def provably_stale_values(ops: Sequence[Operation], read: Operation) -> list[str | None]:
    """Values ``read`` cannot return: overwritten by a write that finished before it began.

    Generated writes carry unique values, so if write ``older`` finished before write
    ``newer`` began, and ``newer`` finished before ``read`` began, every linearization
    orders older < newer < read and nothing can write ``older``'s value back.
    """
    assert read.complete is not None
    writes = [op for op in ops if op.kind == "set" and op.outcome is Outcome.OK]
    newer_writes = [w for w in writes if w.complete is not None and w.complete < read.invoke]
    if not newer_writes:
        return []
    stale: list[str | None] = [None]  # the initial "absent" value is never written again
    for older in writes:
        assert older.complete is not None
        if any(older.complete < newer.invoke for newer in newer_writes):
            stale.append(older.value)
    return stale


@pytest.mark.parametrize("seed", SEEDS)
def test_provably_stale_read_is_caught(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_linearizable_history(rng, processes=rng.randint(2, 6), ops_per_process=15)
    victims = [
        (i, stale)
        for i in ok_reads(history.ops)
        for stale in provably_stale_values(history.ops, history.ops[i])
    ]
    if not victims:
        pytest.skip("no read has a provably stale value")
    victim, stale_value = rng.choice(victims)
    history.ops[victim] = dataclasses.replace(history.ops[victim], value=stale_value)
    assert_not_linearizable(history.ops)


def test_mutation_tests_are_not_mostly_skipped() -> None:
    usable = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        history = generate_linearizable_history(
            rng, processes=rng.randint(2, 6), ops_per_process=15
        )
        if any(provably_stale_values(history.ops, history.ops[i]) for i in ok_reads(history.ops)):
            usable += 1
    assert usable > len(SEEDS) * 0.8


@pytest.mark.parametrize("seed", range(40))
def test_generated_multi_key_history_with_one_corrupted_key(seed: int) -> None:
    rng = random.Random(seed)
    keys = [f"key{i}" for i in range(5)]
    ops: list[Operation] = []
    for key in keys:
        ops += generate_linearizable_history(rng, processes=3, ops_per_process=10, key=key).ops
    assert_linearizable(ops)
    broken_key = rng.choice(keys)
    victims = [i for i in ok_reads(ops) if ops[i].key == broken_key]
    victim = rng.choice(victims)
    ops[victim] = dataclasses.replace(ops[victim], value="corrupted")
    assert_not_linearizable(ops, key=broken_key)


# --- randomized: cross-check against brute force ---------------------------------------


def brute_force_linearizable(ops: Sequence[Operation], initial: str | None = None) -> bool:
    """Try every order of every admissible subset of operations (tiny histories only)."""
    required = [op for op in ops if op.outcome is Outcome.OK]
    optional = [op for op in ops if op.outcome is Outcome.INFO and op.kind != "get"]

    def finish(op: Operation) -> float:
        return math.inf if op.complete is None else op.complete

    def legal(order: Sequence[Operation]) -> bool:
        for earlier_position, earlier in enumerate(order):
            for later in order[earlier_position + 1 :]:
                if finish(later) < earlier.invoke:
                    return False
        register = initial
        for op in order:
            if op.kind != "get":
                register = op.value  # a delete's is None: the key is absent
            elif op.value != register:
                return False
        return True

    for size in range(len(optional) + 1):
        for included in itertools.combinations(optional, size):
            if any(legal(order) for order in itertools.permutations([*required, *included])):
                return True
    return False


def random_small_history(rng: random.Random, *, deletes: bool = False) -> list[Operation]:
    ops: list[Operation] = []
    for _ in range(rng.randint(1, 7)):
        invoke = rng.randint(0, 8)
        complete = invoke + rng.randint(0, 4)
        kind = rng.choice(["get", "set", "delete"] if deletes else ["get", "set"])
        value = rng.choice(["a", "b", "c", None] if kind == "get" else ["a", "b", "c"])
        if kind == "delete":
            value = None
        outcome = rng.choices([Outcome.OK, Outcome.INFO, Outcome.FAIL], weights=[8, 2, 1])[0]
        process = f"p{len(ops)}"
        ops.append(
            Operation(
                process,
                kind,
                KEY,
                value,
                invoke,
                None if outcome is Outcome.INFO else complete,
                outcome,
            )
        )
    return ops


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    verdicts = {True: 0, False: 0}
    for seed in range(3_000):
        rng = random.Random(seed)
        ops = random_small_history(rng)
        initial = rng.choice([None, None, "a"])
        expected = brute_force_linearizable(ops, initial)
        result = check_key(KEY, ops, initial=initial)
        assert result.ok == expected, f"seed {seed}: {ops}\n{result.explanation}"
        verdicts[expected] += 1
    # Make sure both verdicts are well exercised.
    assert min(verdicts.values()) > 500, verdicts


def test_agrees_with_brute_force_on_small_random_histories_with_deletes() -> None:
    verdicts = {True: 0, False: 0}
    for seed in range(2_000):
        rng = random.Random(seed)
        ops = random_small_history(rng, deletes=True)
        initial = rng.choice([None, None, "a"])
        expected = brute_force_linearizable(ops, initial)
        result = check_key(KEY, ops, initial=initial)
        assert result.ok == expected, f"seed {seed}: {ops}\n{result.explanation}"
        verdicts[expected] += 1
    assert min(verdicts.values()) > 300, verdicts


def test_a_delete_makes_the_key_absent() -> None:
    assert_linearizable([ok_set("a", "x", 0, 1), ok_delete("a", 2, 3), ok_get("b", None, 4, 5)])
    # A read after the delete completed must not see the old value...
    assert_not_linearizable([ok_set("a", "x", 0, 1), ok_delete("a", 2, 3), ok_get("b", "x", 4, 5)])
    # ... but one concurrent with it may see either.
    for seen in ("x", None):
        assert_linearizable([ok_set("a", "x", 0, 1), ok_delete("a", 2, 5), ok_get("b", seen, 3, 4)])
    # Deleting an absent key is a write of "absent": a read of None before any set is fine.
    assert_linearizable([ok_delete("a", 0, 1), ok_get("b", None, 2, 3), ok_set("a", "y", 4, 5)])
    # An unknown-outcome delete may have taken effect at any time after its invoke.
    unknown = Operation("a", "delete", KEY, None, 2, None, Outcome.INFO)
    assert_linearizable([ok_set("c", "x", 0, 1), unknown, ok_get("b", None, 6, 7)])
    assert_not_linearizable([ok_set("c", "x", 0, 1), unknown, ok_get("b", None, 1.2, 1.8)])


def test_a_delete_carrying_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="a delete writes None"):
        check_history([Operation("a", "delete", KEY, "x", 0, 1, Outcome.OK)])
    assert "delete('k')" in Operation("a", "delete", KEY, None, 0, 1, Outcome.OK).describe()


def test_brute_force_oracle_sanity() -> None:
    assert brute_force_linearizable([ok_set("a", "x", 0, 1), ok_get("b", "x", 2, 3)])
    assert not brute_force_linearizable([ok_set("a", "x", 2, 3), ok_get("b", "x", 0, 1)])
    assert brute_force_linearizable([info_set("a", "x", 0), ok_get("b", None, 2, 3)])


def exhaustive_order_search(ops: Sequence[Operation], initial: str | None = None) -> bool:
    """Try every order, abandoning a prefix as soon as it is illegal; no memo, no pruning
    rules, so it stays an independent oracle while handling ~10 operations."""

    def finish(op: Operation) -> float:
        return math.inf if op.complete is None else op.complete

    def extends(remaining: list[Operation], register: str | None) -> bool:
        if all(op.outcome is not Outcome.OK for op in remaining):
            return True
        for op in remaining:
            rest = [other for other in remaining if other is not op]
            if any(finish(other) < op.invoke for other in rest):
                continue
            if op.kind == "get" and op.value != register:
                continue
            if extends(rest, op.value if op.kind == "set" else register):
                return True
        return False

    relevant = [
        op
        for op in ops
        if op.outcome is Outcome.OK or (op.outcome is Outcome.INFO and op.kind == "set")
    ]
    return extends(relevant, initial)


def random_plausible_history(rng: random.Random) -> tuple[list[Operation], str | None]:
    """Up to 10 operations, written values repeat, linearizable by construction unless one
    read is then corrupted (half the time)."""
    initial = rng.choice([None, "a"])
    planned: list[tuple[float, int]] = []
    kinds: list[str] = []
    values: list[str | None] = []
    for index in range(rng.randint(2, 10)):
        kinds.append(rng.choice(["get", "set"]))
        values.append(rng.choice(["a", "b", "c"]) if kinds[-1] == "set" else None)
        planned.append((rng.uniform(0, 10), index))
    register = initial
    for _, index in sorted(planned):
        if kinds[index] == "set":
            register = values[index]
        else:
            values[index] = register

    ops = []
    for point, index in planned:
        invoke = point - rng.choice([0, rng.uniform(0, 3)])
        complete = point + rng.choice([0, rng.uniform(0, 3)])
        roll = rng.random()
        if kinds[index] == "set" and roll < 0.15:
            # Unknown outcome; it really did take effect, maybe long before anyone heard.
            ops.append(
                Operation(f"p{index}", "set", KEY, values[index], invoke, None, Outcome.INFO)
            )
        else:
            ops.append(
                Operation(
                    f"p{index}", kinds[index], KEY, values[index], invoke, complete, Outcome.OK
                )
            )
    reads = [i for i, op in enumerate(ops) if op.kind == "get"]
    if reads and rng.random() < 0.5:
        victim = rng.choice(reads)
        ops[victim] = dataclasses.replace(ops[victim], value=rng.choice(["a", "b", "c", None]))
    return ops, initial


def test_agrees_with_exhaustive_search_on_medium_random_histories() -> None:
    verdicts = {True: 0, False: 0}
    for seed in range(3_000):
        rng = random.Random(seed)
        ops, initial = random_plausible_history(rng)
        expected = exhaustive_order_search(ops, initial)
        result = check_key(KEY, ops, initial=initial)
        assert result.ok == expected, f"seed {seed}: {ops}\n{result.explanation}"
        verdicts[expected] += 1
    assert min(verdicts.values()) > 500, verdicts


def test_oracles_agree_with_each_other() -> None:
    for seed in range(500):
        ops = random_small_history(random.Random(seed))
        assert exhaustive_order_search(ops) == brute_force_linearizable(ops), ops


# --- scale -----------------------------------------------------------------------------


def large_history(seed: int, processes: int = 5) -> list[Operation]:
    rng = random.Random(seed)
    return generate_linearizable_history(
        rng, processes=processes, ops_per_process=2_000 // processes
    ).ops


@pytest.mark.parametrize("processes", [5, 20])
def test_two_thousand_operations_on_one_key(processes: int) -> None:
    ops = large_history(seed=2_000, processes=processes)
    assert len(ops) == 2_000
    result = assert_linearizable(ops)
    assert result.operations_checked == 2_000


def test_two_thousand_operations_with_a_late_stale_read() -> None:
    ops = large_history(seed=2_001)
    last_read = max(ok_reads(ops), key=lambda i: ops[i].invoke)
    stale = [v for v in provably_stale_values(ops, ops[last_read]) if v is not None]
    ops[last_read] = dataclasses.replace(ops[last_read], value=stale[0])
    assert_not_linearizable(ops)
