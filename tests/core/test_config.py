from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from raftkv.core.config import (
    FAST_PROFILE,
    PROFILES,
    SEED_PROFILE,
    ConfigError,
    TimingConfig,
    profile,
)


def test_profiles_are_valid_and_quiet() -> None:
    for name, config in PROFILES.items():
        assert config.validate() == [], name


def test_seed_profile_matches_the_assignment() -> None:
    assert (SEED_PROFILE.election_timeout_min, SEED_PROFILE.election_timeout_max) == (5.0, 10.0)
    assert SEED_PROFILE.heartbeat_interval == 1.0
    assert 2.0 <= SEED_PROFILE.lease_duration <= 10.0


def test_fast_profile_fails_over_quickly() -> None:
    worst_failover = FAST_PROFILE.election_timeout_max + FAST_PROFILE.heartbeat_interval
    assert worst_failover < 1.5


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"heartbeat_interval": 0.0}, "heartbeat_interval"),
        ({"lease_duration": -1.0}, "lease_duration"),
        ({"election_timeout_min": 0.0}, "election_timeout_min"),
        ({"max_clock_drift": 0.5}, "max_clock_drift"),
        ({"max_clock_drift": -0.01}, "max_clock_drift"),
        ({"election_timeout_max": 0.1}, "election_timeout_max"),
        ({"lease_duration": float("nan")}, "lease_duration"),
        ({"max_entries_per_message": 0}, "max_entries_per_message"),
    ],
)
def test_invalid_values_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        replace(FAST_PROFILE, **change).validate()


def test_heartbeat_must_fit_inside_the_drift_shortened_lease() -> None:
    # L·(1−ρ)/(1+ρ) = 0.1·0.8/1.2 ≈ 0.0667: a 0.07 s heartbeat lets the lease lapse.
    config = TimingConfig(1.0, 2.0, 0.07, 0.1, 0.2)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        config.validate()
    assert replace(config, heartbeat_interval=0.06).validate() == []


def test_lease_longer_than_election_timeout_is_safe_but_warned() -> None:
    config = TimingConfig(0.15, 0.3, 0.03, 0.6, 0.05)
    warnings = config.validate()
    assert len(warnings) == 1
    assert "election_timeout_min" in warnings[0]


def test_derived_spans() -> None:
    config = TimingConfig(1.0, 2.0, 0.1, 1.0, 0.25)
    assert config.leader_lease_span == pytest.approx(0.75 / 1.25)
    assert config.drift_stretch == pytest.approx(1.25 / 0.75)


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="unknown timing profile 'slow'"):
        profile("slow")
    assert profile("seed") is SEED_PROFILE
