"""Timing changes an operator rolls out node by node (the "lease_change" fault, issue 14).

Each change moves one field of the running configuration: the lease duration (shorter or
longer), the configured clock drift bound ρ, or the read mode. Every change validates
(rule 6: the heartbeat stays shorter than `L·(1−ρ)/(1+ρ)`).

The configured ρ only ever moves between the scenario's ρ and a few times more. The machines'
real clocks keep drifting within the scenario's ρ whatever a node is configured with: a node
told that its clock drifts less than it really does is outside the design's trust model
(docs/design.md §8, "Clocks") — a clock fault, not a configuration change.
"""

from __future__ import annotations

import random
from dataclasses import replace

from raftkv.core.config import ConfigError, ReadMode, TimingConfig

LEASE_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
DRIFT_FACTORS = (1.0, 2.0, 4.0)
# Keeps `L·(1−ρ)/(1+ρ)` comfortably positive; the core refuses ρ ≥ 0.5.
MAX_CONFIGURED_DRIFT = 0.45


def possible_changes(original: TimingConfig, current: TimingConfig) -> list[TimingConfig]:
    """Every valid configuration one field away from `current`, in a fixed order."""
    candidates = [
        replace(current, lease_duration=original.lease_duration * factor)
        for factor in LEASE_FACTORS
    ]
    candidates += [
        replace(current, max_clock_drift=original.max_clock_drift * factor)
        for factor in DRIFT_FACTORS
        if original.max_clock_drift * factor < MAX_CONFIGURED_DRIFT
    ]
    other_mode = ReadMode.LEASE if current.read_mode is ReadMode.READ_INDEX else ReadMode.READ_INDEX
    candidates.append(current.with_read_mode(other_mode))
    changes = []
    for candidate in candidates:
        if candidate == current:
            continue
        try:
            candidate.validate()
        except ConfigError:
            continue
        changes.append(candidate)
    return changes


def draw_change(rng: random.Random, original: TimingConfig, current: TimingConfig) -> TimingConfig:
    """A change of one kind (lease, drift or read mode, equally likely), then of one value."""
    changes = possible_changes(original, current)
    kinds = sorted({_changed_field(current, change) for change in changes})
    kind = rng.choice(kinds)
    return rng.choice([c for c in changes if _changed_field(current, c) == kind])


def describe_change(old: TimingConfig, new: TimingConfig) -> str:
    parts = []
    if old.lease_duration != new.lease_duration:
        parts.append(f"lease_duration {old.lease_duration:g} -> {new.lease_duration:g}")
    if old.max_clock_drift != new.max_clock_drift:
        parts.append(f"max_clock_drift {old.max_clock_drift:g} -> {new.max_clock_drift:g}")
    if old.read_mode is not new.read_mode:
        parts.append(f"read_mode {old.read_mode.value} -> {new.read_mode.value}")
    return ", ".join(parts) or "no change"


def _changed_field(current: TimingConfig, change: TimingConfig) -> str:
    if change.lease_duration != current.lease_duration:
        return "lease_duration"
    if change.max_clock_drift != current.max_clock_drift:
        return "max_clock_drift"
    return "read_mode"
