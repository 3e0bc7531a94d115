"""The one quorum function (commit and lease both use it), checked against a naive definition."""

from __future__ import annotations

import itertools

import pytest

from raftkv.core.quorum import majority, quorum_value


def naive_quorum_value(values: list[int], quorum: int) -> int:
    """Straight from the definition: the largest v that at least `quorum` values reach."""
    candidates = [v for v in set(values) | {0} if sum(1 for x in values if x >= v) >= quorum]
    return max(candidates)


@pytest.mark.parametrize(("voters", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(voters: int, expected: int) -> None:
    assert majority(voters) == expected


@pytest.mark.parametrize("voters", [1, 2, 3, 4, 5])
def test_quorum_value_agrees_with_the_definition_on_every_small_input(voters: int) -> None:
    quorum = majority(voters)
    for values in itertools.product(range(4), repeat=voters):
        assert quorum_value(values, quorum) == naive_quorum_value(list(values), quorum), values


def test_quorum_value_of_too_few_voters_is_nothing() -> None:
    assert quorum_value([5], 2) == 0
    assert quorum_value([], 1) == 0


def test_commit_and_lease_questions_have_the_same_answer_shape() -> None:
    # Match indexes (leader 7, followers 5 and 3): a majority holds up to 5.
    assert quorum_value([7, 5, 3], majority(3)) == 5
    # Acked rounds (own round 12, followers answered 12 and 9): a majority answered round 12.
    assert quorum_value([12, 12, 9], majority(3)) == 12
