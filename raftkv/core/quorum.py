"""Majorities. One function decides what a majority agrees on, for commit and lease alike.

Both questions have the same shape: each voter reports a number that only grows (the index up
to which its log matches the leader's; the last broadcast round it answered), and the cluster
agrees on the largest number that at least a majority of voters have reached.
"""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    """How many of `voters` make a majority (a cluster of one is its own majority)."""
    return voters // 2 + 1


def quorum_value(values: Iterable[int], quorum: int) -> int:
    """The largest v such that at least `quorum` of `values` are ≥ v.

    `values` holds one number per voter, the caller's own included. With fewer than `quorum`
    values no majority exists and the answer is 0 (nothing is agreed).
    """
    ranked = sorted(values, reverse=True)
    if quorum < 1 or len(ranked) < quorum:
        return 0
    return ranked[quorum - 1]
