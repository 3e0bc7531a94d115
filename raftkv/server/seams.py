"""The node's test seams: what each one is, how it is read, and how its use is acknowledged.

A test seam makes a node break a safety rule on purpose (a negative control) or lets a test
reach inside it. The seams:

- the `--unsafe-*` flags (one per UnsafeSwitches field, raftkv/core/node.py) and
  `--unsafe-no-fsync`;
- ``RAFTKV_CLOCK_RATE``: the node's lease clock (replica.Clock: CLOCK_BOOTTIME, or
  time.monotonic() where there is none) runs at that multiple of real time; any value other
  than 1 is a seam, and a value that is not a finite number above 0 is refused;
- ``RAFTKV_FAILPOINT``: exit at a named point of a storage write (storage.py);
- ``RAFTKV_TEST_SESSION_LIFETIME_MS``: client sessions expire after that many ms of cluster
  time instead of 15 min, and eviction's idle floor (4 min) shrinks to at most the same, so a
  test sees a session expire (docs/design.md §11). The session rules are replicated semantics:
  every node of a cluster must be given the same value, or their tables would differ. A value
  that is not a whole number above 0 is refused;
- `--insecure-peers`: serve and dial peers without TLS, taking each message's claimed sender at
  its word (any process that reaches the peer port can then act as a node).

raftkv-node refuses to start with any of them unless its command line also has
`--allow-unsafe` (ALLOW_UNSAFE_FLAG); with it, the node's dump says which are on, in the line
after its start-up line: ``Node 1 UNSAFE test switches on: clock_rate=0.3, no_fsync.``
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raftkv.core.node import UnsafeSwitches
from raftkv.core.state_machine import DEFAULT_SESSION_RULES, SessionRules
from raftkv.server.storage import FAILPOINT_ENV

__all__ = [
    "ALLOW_UNSAFE_FLAG",
    "CLOCK_RATE_ENV",
    "FAILPOINT_ENV",
    "INSECURE_PEERS_FLAG",
    "NO_FSYNC_FLAG",
    "SESSION_LIFETIME_ENV",
    "Seam",
    "SeamError",
    "clock_rate_from",
    "refusal",
    "seams_in_effect",
    "session_rules_from",
    "unsafe_flag",
]

ALLOW_UNSAFE_FLAG = "--allow-unsafe"
NO_FSYNC_FLAG = "--unsafe-no-fsync"
INSECURE_PEERS_FLAG = "--insecure-peers"
CLOCK_RATE_ENV = "RAFTKV_CLOCK_RATE"
SESSION_LIFETIME_ENV = "RAFTKV_TEST_SESSION_LIFETIME_MS"


class SeamError(ValueError):
    """A seam's value the node cannot use (the message names the variable)."""


@dataclass(frozen=True)
class Seam:
    """One seam in effect: `name` as the dump's UNSAFE line shows it, `given` as it was set."""

    name: str
    given: str


def unsafe_flag(name: str) -> str:
    """The flag of one UnsafeSwitches field: read_before_noop → --unsafe-read-before-noop."""
    if name not in UnsafeSwitches.__slots__:
        raise ValueError(f"no unsafe switch {name!r}")
    return f"--unsafe-{name.replace('_', '-')}"


def clock_rate_from(environ: Mapping[str, str]) -> float:
    """RAFTKV_CLOCK_RATE (1.0 when unset): a finite number above 0, or SeamError."""
    text = environ.get(CLOCK_RATE_ENV)
    if text is None:
        return 1.0
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise SeamError(
            f"{CLOCK_RATE_ENV}={text!r} is not a usable clock rate: "
            "it must be a finite number above 0 (1 = real time)"
        )
    return rate


def session_rules_from(environ: Mapping[str, str]) -> SessionRules:
    """The session rules RAFTKV_TEST_SESSION_LIFETIME_MS sets (the product's when unset): that
    lifetime, and eviction's idle floor at most the same. SeamError for a value that is not a
    whole number of ms above 0."""
    text = environ.get(SESSION_LIFETIME_ENV)
    if text is None:
        return DEFAULT_SESSION_RULES
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdecimal() and int(stripped) > 0):
        raise SeamError(
            f"{SESSION_LIFETIME_ENV}={text!r} is not a usable session lifetime: "
            "it must be a whole number of milliseconds above 0"
        )
    lifetime = int(stripped)
    return SessionRules(
        lifetime_ms=lifetime,
        max_sessions=DEFAULT_SESSION_RULES.max_sessions,
        evict_idle_ms=min(lifetime, DEFAULT_SESSION_RULES.evict_idle_ms),
    )


def seams_in_effect(
    unsafe: UnsafeSwitches,
    *,
    fsync: bool,
    clock_rate: float,
    failpoint: str | None,
    insecure_peers: bool = False,
    sessions: SessionRules = DEFAULT_SESSION_RULES,
) -> list[Seam]:
    """Every seam that is on, in the order the UNSAFE line lists them."""
    seams = [Seam(name, unsafe_flag(name)) for name in unsafe.enabled()]
    if not fsync:
        seams.append(Seam("no_fsync", NO_FSYNC_FLAG))
    if clock_rate != 1:
        seams.append(Seam(f"clock_rate={clock_rate!r}", f"{CLOCK_RATE_ENV}={clock_rate!r}"))
    if failpoint:
        seams.append(Seam(f"failpoint={failpoint}", f"{FAILPOINT_ENV}={failpoint}"))
    if insecure_peers:
        seams.append(Seam("insecure_peers", INSECURE_PEERS_FLAG))
    if sessions != DEFAULT_SESSION_RULES:
        lifetime = sessions.lifetime_ms
        seams.append(Seam(f"session_lifetime_ms={lifetime}", f"{SESSION_LIFETIME_ENV}={lifetime}"))
    return seams


def refusal(seams: Sequence[Seam]) -> str:
    """The one line raftkv-node prints when it will not start with unacknowledged seams."""
    given = ", ".join(seam.given for seam in seams)
    return (
        f"refusing to start with test-only seams that break safety: {given}; "
        f"add {ALLOW_UNSAFE_FLAG} to acknowledge (tests and negative controls only)"
    )
