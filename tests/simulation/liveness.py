"""How much of the time the cluster could serve while it had what it needs to (issue 14).

A fault that leaves a majority of nodes running and connected should not leave the cluster
without a node able to serve: a one-way cut of one node, say, must not keep the others from
electing and keeping a leader. The meter measures that, as a fraction of simulated real time.
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import combinations

Link = tuple[int, int]


class ServingMeter:
    """Samples, at fixed real-time steps, whether some node could serve a read, counting only
    the samples at which a majority of nodes is running and fully connected among themselves
    (with less, no Raft can be expected to serve). Counting starts when a node first serves: the
    cluster's first election is start-up, not an outage."""

    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        self.started = False
        self.eligible_samples = 0
        self.serving_samples = 0
        # The answer depends only on who runs and which links are cut, which changes rarely.
        self._healthy: dict[tuple[frozenset[int], frozenset[Link]], bool] = {}

    def sample(self, running: frozenset[int], cut: frozenset[Link], serving: bool) -> None:
        if not self.started:
            if not serving:
                return
            self.started = True
        if not self.majority_connected(running, cut):
            return
        self.eligible_samples += 1
        if serving:
            self.serving_samples += 1

    @property
    def fraction(self) -> float | None:
        """Serving samples over eligible ones; None when no sample was eligible."""
        if not self.eligible_samples:
            return None
        return self.serving_samples / self.eligible_samples

    def majority_connected(self, running: frozenset[int], cut: frozenset[Link]) -> bool:
        key = (running, cut)
        known = self._healthy.get(key)
        if known is None:
            known = any(
                _fully_connected(group, cut) for group in combinations(sorted(running), self.quorum)
            )
            self._healthy[key] = known
        return known


def _fully_connected(group: Collection[int], cut: frozenset[Link]) -> bool:
    return not any((a, b) in cut or (b, a) in cut for a, b in combinations(group, 2))
