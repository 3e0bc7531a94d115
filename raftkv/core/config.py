"""Timing configuration and the cross-field rules that keep leases safe (docs/design.md §3 rule 6).

All durations are seconds of a node's own monotonic clock. `max_clock_drift` (ρ) bounds every
clock's rate to [1 − ρ, 1 + ρ] of real time; leases are only as safe as that bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum

# The longest lease a node accepts from a peer, records or is configured with. A lease is a
# promise a follower keeps by waiting (rule 2); without a bound a peer announcing 1e300 s would
# stall every election.
MAX_LEASE_DURATION = 60.0


class ConfigError(ValueError):
    """A configuration that cannot be run safely. The message names the offending field."""


class ReadMode(Enum):
    LEASE = "lease"
    READ_INDEX = "read_index"


@dataclass(frozen=True, slots=True)
class TimingConfig:
    election_timeout_min: float
    election_timeout_max: float
    heartbeat_interval: float
    lease_duration: float
    max_clock_drift: float
    read_mode: ReadMode = ReadMode.LEASE
    # Most entries one AppendEntries carries; bounds message size and follower catch-up bursts.
    max_entries_per_message: int = 512
    # Soft cap on the characters of keys and values one AppendEntries carries (at least one
    # entry always goes), so that a burst of large values cannot exceed the transport's limits.
    max_message_chars: int = 1 << 20

    @property
    def leader_lease_span(self) -> float:
        """How long after a round's send time the leader may trust a majority's acknowledgement."""
        return lease_span(self.lease_duration, self.max_clock_drift)

    @property
    def drift_stretch(self) -> float:
        """Factor that turns a duration measured on one clock into a safe bound on another."""
        return drift_stretch(self.max_clock_drift)

    def validate(self) -> list[str]:
        """Raise ConfigError for unsafe timings; return warnings for safe but slow ones."""
        for f in fields(self):
            value = getattr(self, f.name)
            is_number = isinstance(value, float | int) and not isinstance(value, bool)
            if is_number and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        for name in (
            "election_timeout_min",
            "election_timeout_max",
            "heartbeat_interval",
            "lease_duration",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.lease_duration > MAX_LEASE_DURATION:
            raise ConfigError(
                f"lease_duration must be at most {MAX_LEASE_DURATION}s, got {self.lease_duration!r}"
            )
        if not 0 <= self.max_clock_drift < 0.5:
            raise ConfigError(f"max_clock_drift must be in [0, 0.5), got {self.max_clock_drift!r}")
        if self.election_timeout_max < self.election_timeout_min:
            raise ConfigError(
                f"election_timeout_max ({self.election_timeout_max}) must be at least "
                f"election_timeout_min ({self.election_timeout_min})"
            )
        if self.max_entries_per_message < 1:
            raise ConfigError("max_entries_per_message must be at least 1")
        if self.max_message_chars < 1:
            raise ConfigError("max_message_chars must be at least 1")
        if self.heartbeat_interval >= self.leader_lease_span:
            raise ConfigError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be shorter than "
                f"lease_duration·(1−ρ)/(1+ρ) ({self.leader_lease_span:.4f}): "
                "the lease would lapse between heartbeats"
            )
        warnings = []
        worst_wait = self.lease_duration * self.drift_stretch + self.heartbeat_interval
        if worst_wait >= self.election_timeout_min:
            warnings.append(
                f"lease_duration·(1+ρ)/(1−ρ) + heartbeat_interval ({worst_wait:.3f}) ≥ "
                f"election_timeout_min ({self.election_timeout_min}): safe, but every failover "
                "will wait for the old leader's lease"
            )
        return warnings

    def with_read_mode(self, mode: ReadMode) -> TimingConfig:
        return replace(self, read_mode=mode)


def lease_span(lease_duration: float, rho: float) -> float:
    """A leader's lease after a round's send time: L·(1−ρ)/(1+ρ) (rule 1)."""
    return lease_duration * (1 - rho) / (1 + rho)


def drift_stretch(rho: float) -> float:
    """(1+ρ)/(1−ρ): turns a duration measured on one clock into a safe bound on another."""
    return (1 + rho) / (1 - rho)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When a node snapshots its state machine and how much log it keeps after (node-local:
    nodes may differ, nothing replicated depends on it). In the spirit of etcd's
    --snapshot-count and hashicorp/raft's SnapshotThreshold/TrailingLogs, but smaller: replaying
    the log costs ~25 µs an entry here, and a restart must take about a second."""

    # Committed entries since the last snapshot that trigger the next one...
    entries: int = 10_000
    # ...or bytes of keys and values applied since (large values fill a disk before a count).
    bytes: int = 64 << 20
    # Entries kept before the snapshot's index for followers a little behind: they are caught
    # up from the log instead of by a whole snapshot.
    trailing_entries: int = 5_000
    # Seconds without a new commit after which a node snapshots what it has not yet, and drops
    # the log its followers no longer need (None: never). What brings a cluster at rest down to
    # the size of its data, however long the log before.
    idle: float | None = 2.0

    def validate(self) -> None:
        for name in ("entries", "bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"snapshot {name} must be a positive integer, got {value!r}")
        trailing = self.trailing_entries
        if isinstance(trailing, bool) or not isinstance(trailing, int) or trailing < 0:
            raise ConfigError(f"trailing_entries must be an integer ≥ 0, got {trailing!r}")
        idle = self.idle
        if idle is not None and not (isinstance(idle, float | int) and 0 < idle < math.inf):
            raise ConfigError(f"snapshot idle must be a positive number of seconds, got {idle!r}")


DEFAULT_SNAPSHOTS = SnapshotPolicy()


# The original assignment's timings: election 5–10 s, heartbeat 1 s, lease in 2–10 s.
SEED_PROFILE = TimingConfig(
    election_timeout_min=5.0,
    election_timeout_max=10.0,
    heartbeat_interval=1.0,
    lease_duration=3.5,
    max_clock_drift=0.01,
)

# Local clusters and tests: fail over in well under a second and a half.
FAST_PROFILE = TimingConfig(
    election_timeout_min=0.4,
    election_timeout_max=0.8,
    heartbeat_interval=0.05,
    lease_duration=0.3,
    max_clock_drift=0.01,
)

PROFILES: dict[str, TimingConfig] = {"seed": SEED_PROFILE, "fast": FAST_PROFILE}


def profile(name: str) -> TimingConfig:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown timing profile {name!r} (known: {known})") from None
