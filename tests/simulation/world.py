"""The simulated world: real time, drifting node clocks, a faulty network, disks and clients.

Everything is decided by one `random.Random(seed)`, so a failing seed replays exactly. The
simulator plays the part of the asyncio shell for each core — persist the Ready, then send, then
advance — and can crash a node between those steps, losing what was not yet durable.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    LogEntry,
)
from raftkv.core.node import (
    HardState,
    PersistentState,
    RaftNode,
    Ready,
)
from raftkv.core.state_machine import SnapshotImage


class InvariantViolationError(AssertionError):
    """A safety property failed; the message says which and when."""


# ---------------------------------------------------------------------------------------------
# Clocks


class DriftingClock:
    """A monotonic clock whose rate stays within [1 − ρ, 1 + ρ] of real time, piecewise.

    It can also be stopped, as CLOCK_MONOTONIC is while its machine is suspended: it then reads
    the same value until started again, and continues from there, short of the suspended time.
    """

    def __init__(self, offset: float, rate: float) -> None:
        self._base_real = 0.0
        self._base_local = offset
        self.rate = rate
        self.stopped = False

    def local(self, real: float) -> float:
        if self.stopped:
            return self._base_local
        return self._base_local + (real - self._base_real) * self.rate

    def real_for(self, local: float, now_real: float) -> float:
        """When, at the current rate, this clock will read `local` (never before now_real); for
        a stopped clock, when it would if it started now."""
        return max(now_real, now_real + (local - self.local(now_real)) / self.rate)

    def set_rate(self, rate: float, now_real: float) -> None:
        self._base_local = self.local(now_real)
        self._base_real = now_real
        self.rate = rate

    def stop(self, now_real: float) -> None:
        self._base_local = self.local(now_real)
        self._base_real = now_real
        self.stopped = True

    def start(self, now_real: float) -> None:
        """Go on from the reading at which the clock stopped (the stopped time is lost)."""
        self._base_real = now_real
        self.stopped = False


# ---------------------------------------------------------------------------------------------
# Network


@dataclass
class NetworkProfile:
    loss: float
    duplicate: float
    min_delay: float
    max_delay: float
    spike_probability: float
    spike_max: float
    # Share of peer messages a faulty link turns malformed ("corrupt" fault).
    corrupt: float = 0.0


@dataclass(frozen=True, slots=True)
class ClientRequest:
    client: int
    op_id: int
    kind: str  # "get" | "set" | "delete"
    key: str
    value: str
    seq: int
    # The client's session number (its client id is c<client>.<session>) and whether the
    # write says that session exists (a write of it was acknowledged).
    session: int = 0
    resume: bool = False


@dataclass(frozen=True, slots=True)
class ClientResponse:
    op_id: int
    ok: bool
    value: str | None
    leader_hint: int | None
    definite_failure: bool
    session_expired: bool = False


# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass
class Durable:
    """What survives a crash: the fsynced snapshot, log and metadata (storage.py's files)."""

    hard_state: HardState = field(default_factory=lambda: HardState(0, None))
    # The log entries offset + 1, offset + 2, ... (logs.txt after compaction).
    entries: list[LogEntry] = field(default_factory=list)
    commit_hint: int = 0
    snapshot: SnapshotImage | None = None
    offset: int = 0
    offset_term: int = 0

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def write_log(self, ready: Ready, keep: int | None = None) -> None:
        if ready.log_reset is not None:
            self.entries, (self.offset, self.offset_term) = [], ready.log_reset
        if not ready.log_changed:
            return
        del self.entries[ready.first_index - self.offset - 1 :]
        new = ready.entries if keep is None else ready.entries[:keep]
        self.entries.extend(new)

    def compact(self, index: int) -> None:
        """Drop the entries before `index`, keeping it (storage.py's compaction)."""
        if index <= self.offset:
            return
        keep = index - self.offset
        if keep > len(self.entries):
            raise InvariantViolationError(
                f"simulator: compaction to {index} beyond the durable log ({self.last_index})"
            )
        self.offset_term = self.entries[keep - 1].term
        self.entries = self.entries[keep:]
        self.offset = index

    def holds(self, index: int, entry: LogEntry) -> bool:
        """The entry is on this disk: in the log, or covered by the snapshot (whose content
        the checker verifies against the committed entries when it is made)."""
        if self.snapshot is not None and index <= self.snapshot.index:
            return True
        return (
            self.offset < index <= self.last_index
            and self.entries[index - self.offset - 1] == entry
        )

    def persisted(self) -> PersistentState:
        return PersistentState(
            self.hard_state,
            tuple(self.entries),
            self.commit_hint,
            snapshot=self.snapshot,
            log_offset=self.offset,
            log_offset_term=self.offset_term,
        )

    def copy(self) -> Durable:
        return Durable(
            self.hard_state,
            list(self.entries),
            self.commit_hint,
            self.snapshot,
            self.offset,
            self.offset_term,
        )


@dataclass
class SimNode:
    node_id: int
    clock: DriftingClock
    # The timings this node's core is (re)started with: a rolling configuration change
    # ("lease_change") gives nodes different ones for a while.
    config: TimingConfig
    durable: Durable = field(default_factory=Durable)
    # False from a wipe until the node is restored from a peer's files: passed to a core that
    # knows about admission (RaftNode's `admitted`), so that it neither votes nor acknowledges.
    admitted: bool = True
    core: RaftNode | None = None
    paused: bool = False
    pending_ready: Ready | None = None
    inbox: deque[tuple[str, Any]] = field(default_factory=deque)
    timer_generation: int = 0
    # token -> (client, op_id) for answers that come later through a Ready.
    waiting: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Work that completed while the process was stopped, done when it resumes.
    resume_action: Callable[[], None] | None = None
    # Counts suspensions and crashes, so that the scheduled end of a suspension that a crash
    # already ended does not cut a later one short.
    suspensions: int = 0
    # Snapshots being received, (leader, index, term) -> chunks received in order so far (the
    # shell's snapshot.txt.recv): lost in a crash.
    receiving: dict[tuple[int, int, int], int] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.core is not None


# ---------------------------------------------------------------------------------------------
# The event loop


class World:
    def __init__(self, seed: int, rng: random.Random) -> None:
        self.seed = seed
        self.rng = rng
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self.trace: list[str] | None = None
        # A read-only observer called at fixed real-time steps between events. It is not an
        # event: it takes no place in the queue, so the events (and their order) are the same
        # with or without it.
        self._probe: Callable[[], None] | None = None
        self._probe_period = 0.0
        self._probe_step = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._counter), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def sample_every(self, period: float, probe: Callable[[], None]) -> None:
        """Call `probe` at every multiple of `period` of real time from now on, with `now` set
        to that instant; it must only look (state does not change between events)."""
        self._probe, self._probe_period = probe, period
        self._probe_step = int(self.now // period) + 1

    def stop_sampling(self) -> None:
        self._probe = None

    def run_until(self, deadline: float, stop: Callable[[], bool] | None = None) -> bool:
        while self._queue and self._queue[0][0] <= deadline:
            when, _, action = heapq.heappop(self._queue)
            self._sample_until(when)
            self.now = when
            action()
            if stop is not None and stop():
                return True
        self._sample_until(deadline)
        self.now = max(self.now, deadline)
        return False

    def _sample_until(self, until: float) -> None:
        probe = self._probe
        if probe is None:
            return
        # Steps are counted, not summed, so that long runs do not accumulate rounding.
        while self._probe is not None and (when := self._probe_step * self._probe_period) <= until:
            self.now = max(self.now, when)
            probe()
            self._probe_step += 1

    def log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:10.4f} {line}")
