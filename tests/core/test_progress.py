"""A leader's view of one follower: each transition keeps 0 ≤ match < next."""

from __future__ import annotations

import random

import pytest

from raftkv.core.progress import Progress, ProgressState


def check(p: Progress) -> None:
    assert 0 <= p.match < p.next, p


def test_success_moves_match_forward_only_and_starts_streaming() -> None:
    p = Progress(next=5)
    assert p.on_success(3) is True
    assert (p.match, p.next, p.state) == (3, 5, ProgressState.REPLICATE)
    assert p.on_success(2) is False  # a late, older acknowledgement
    assert (p.match, p.next) == (3, 5)
    assert p.on_success(7) is True
    assert (p.match, p.next) == (7, 8)


def test_rejection_probes_from_the_conflict_without_going_below_match() -> None:
    p = Progress(next=10, match=4, state=ProgressState.REPLICATE, match_round=3)
    p.on_rejection(6, round=4)
    assert (p.state, p.match, p.next) == (ProgressState.PROBE, 4, 6)
    p.on_rejection(2, round=5)  # the follower lost acknowledged entries: believe it as it is
    assert (p.match, p.next) == (1, 2)


def test_a_late_or_duplicate_rejection_never_lowers_match() -> None:
    # Issue 14: a rejection sent before the success that set `match` (a duplicate delivered
    # late, or one overtaken by the success) used to pull match back to 0 and make the leader
    # resend the whole log.
    p = Progress(next=1)
    p.on_rejection(1, round=2)  # the probe of round 2: the follower's log is empty
    assert p.on_success(40, round=3)
    p.on_rejection(1, round=2)  # the same rejection again, late
    p.on_rejection(1, round=3)  # or from the success's own round
    assert (p.state, p.match, p.next) == (ProgressState.REPLICATE, 40, 41)


def test_probe_resends_from_next_and_does_not_advance_on_send() -> None:
    p = Progress(next=4)
    assert p.next_send(log_length=10, window=8) == (3, True)
    p.sent(3, 5)
    assert p.next == 4


def test_replicate_streams_within_the_window_then_anchors_at_match() -> None:
    p = Progress(next=4, match=3, state=ProgressState.REPLICATE)
    assert p.next_send(log_length=10, window=4) == (3, True)
    p.sent(3, 4)
    assert p.next == 8 and p.in_flight == 4
    # Window full: anchor at the confirmed match, which the follower cannot reject.
    assert p.next_send(log_length=10, window=4) == (3, False)
    p.on_success(7)
    assert p.next_send(log_length=10, window=4) == (7, True)
    p.sent(7, 3)
    # Entries 8–10 are in flight: anchor at match until they are acknowledged.
    assert p.next_send(log_length=10, window=4) == (7, False)
    p.on_success(10)
    assert p.next_send(log_length=10, window=4) == (10, False)  # nothing new


def test_a_stream_without_progress_for_a_heartbeat_falls_back_to_probing() -> None:
    p = Progress(next=4, match=3, state=ProgressState.REPLICATE)
    p.on_heartbeat()  # nothing in flight: stays
    assert p.state is ProgressState.REPLICATE
    p.sent(3, 2)
    p.on_success(4)  # progress since the last heartbeat: stays
    p.on_heartbeat()
    assert p.state is ProgressState.REPLICATE
    p.on_heartbeat()  # a whole heartbeat without progress, entry 5 still out: assume lost
    assert (p.state, p.next) == (ProgressState.PROBE, 5)


@pytest.mark.parametrize("seed", range(20))
def test_random_transitions_keep_the_invariant(seed: int) -> None:
    rng = random.Random(seed)
    log_length = rng.randint(0, 30)
    p = Progress(next=log_length + 1)
    for _ in range(500):
        action = rng.randrange(5)
        if action == 0:
            p.on_success(rng.randint(0, log_length))
        elif action == 1:
            p.on_rejection(rng.randint(1, log_length + 1))
        elif action == 2:
            p.on_heartbeat()
        elif action == 3:
            prev, with_entries = p.next_send(log_length, window=rng.randint(1, 8))
            count = min(rng.randint(0, 5), log_length - prev) if with_entries else 0
            p.sent(prev, count)
        else:
            log_length += rng.randint(0, 3)
        check(p)
