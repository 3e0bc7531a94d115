"""The node's lease clock (raftkv/server/replica.py `Clock`): CLOCK_BOOTTIME where the system
has it, time.monotonic() where it does not, the RAFTKV_CLOCK_RATE seam on top of either, and the
start-up lines that name it. Clock readings are faked: no test waits for time to pass."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.cluster import ClusterDescription
from raftkv.core.config import profile
from raftkv.server.dump import DumpLog
from raftkv.server.replica import BOOTTIME, MONOTONIC, Clock, Replica, ReplicaOptions
from raftkv.server.seams import CLOCK_RATE_ENV
from raftkv.server.storage import node_data_dir
from raftkv.server.timecheck import Outcome, TimeServiceCheck

needs_boottime = pytest.mark.skipif(
    not hasattr(time, "CLOCK_BOOTTIME"), reason="no CLOCK_BOOTTIME on this system"
)


class FakeClocks:
    """Stands in for time.clock_gettime and time.monotonic; `boottime` and `monotonic` are what
    they return. A suspend moves boottime only."""

    def __init__(self) -> None:
        self.boottime = 1000.0
        self.monotonic = 500.0
        self.ids: list[int] = []

    def clock_gettime(self, clock_id: int) -> float:
        self.ids.append(clock_id)
        return self.boottime

    def read_monotonic(self) -> float:
        return self.monotonic

    def advance(self, seconds: float, *, suspended: float = 0.0) -> None:
        self.monotonic += seconds
        self.boottime += seconds + suspended


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> FakeClocks:
    fake = FakeClocks()
    monkeypatch.setattr(time, "clock_gettime", fake.clock_gettime)
    monkeypatch.setattr(time, "monotonic", fake.read_monotonic)
    return fake


@needs_boottime
def test_the_lease_clock_is_boottime_and_counts_suspended_time(clocks: FakeClocks) -> None:
    clock = Clock()
    assert clock.name == BOOTTIME == "CLOCK_BOOTTIME"
    assert clock.now() == 0.0
    clocks.advance(0.25)
    assert clock.now() == 0.25
    # The machine sleeps for a minute: CLOCK_MONOTONIC stops, the lease clock does not, so a
    # lease that was running when it went to sleep has lapsed when it wakes.
    clocks.advance(0.0, suspended=60.0)
    assert clock.now() == 60.25
    assert set(clocks.ids) == {time.CLOCK_BOOTTIME}


@needs_boottime
def test_the_rate_seam_works_on_top_of_boottime(
    clocks: FakeClocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOCK_RATE_ENV, "0.5")
    clock = Clock.from_environment()
    assert (clock.name, clock.rate) == (BOOTTIME, 0.5)
    clocks.advance(2.0, suspended=8.0)
    assert clock.now() == 5.0


def test_without_boottime_the_clock_is_monotonic(
    clocks: FakeClocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(time, "CLOCK_BOOTTIME", raising=False)
    clock = Clock(rate=2.0)
    assert clock.name == MONOTONIC == "monotonic"
    clocks.advance(1.5, suspended=60.0)
    assert clock.now() == 3.0
    assert clocks.ids == []


@needs_boottime
def test_a_kernel_that_refuses_boottime_falls_back_to_monotonic(
    clocks: FakeClocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(clock_id: int) -> float:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(time, "clock_gettime", refuse)
    clock = Clock()
    assert clock.name == MONOTONIC
    clocks.advance(1.0)
    assert clock.now() == 1.0


@needs_boottime
def test_the_real_boottime_clock_is_read() -> None:
    # No fakes: the system's CLOCK_BOOTTIME is readable and never behind CLOCK_MONOTONIC.
    assert Clock().name == BOOTTIME
    monotonic = time.monotonic()
    assert time.clock_gettime(time.CLOCK_BOOTTIME) >= monotonic


# --- the start-up lines ----------------------------------------------------------------------


MakeReplica = Callable[[Clock, TimeServiceCheck | None], Replica]


@pytest.fixture
def make_replica(tmp_path: Path) -> Iterator[MakeReplica]:
    """Replica(...) for a one-node cluster in tmp_path (no peers, nothing started)."""
    made: list[Replica] = []

    def make(clock: Clock, time_service: TimeServiceCheck | None) -> Replica:
        options = ReplicaOptions(0, ClusterDescription.local(1), profile("fast"), tmp_path)
        dump = DumpLog(node_data_dir(tmp_path, 0), 0, to_stdout=False)
        replica = Replica(options, dump, clock, time_service)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.storage.close()
        replica.dump.close()


BOUNDED = TimeServiceCheck(Outcome.BOUNDED, "chronyd slews at most 500 ppm (…), within ….")


@needs_boottime
def test_the_start_up_line_names_the_clock_and_the_check_follows(
    make_replica: MakeReplica,
) -> None:
    lines = make_replica(Clock(), BOUNDED).startup_lines()
    assert lines[0].startswith("Node 0 starting at 127.0.0.1:")
    assert lines[0].endswith(", max drift 0.01, clock CLOCK_BOOTTIME.")
    # --insecure-peers (no peer TLS here) is a seam: its UNSAFE line stays right after.
    assert lines[1] == "Node 0 UNSAFE test switches on: insecure_peers."
    assert lines[2].startswith("Node 0 serves peers at ")
    assert lines[3:] == [f"Node 0 clock rate bounded: {BOUNDED.detail}"]


def test_the_start_up_line_names_the_fallback_clock(
    make_replica: MakeReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(time, "CLOCK_BOOTTIME", raising=False)
    lines = make_replica(Clock(), None).startup_lines()
    assert lines[0].endswith(", clock monotonic.")
    assert not [line for line in lines if "clock rate" in line]
