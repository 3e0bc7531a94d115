"""Fixtures for fault tests on real processes.

Every cluster a test makes is closed (processes killed, proxies stopped, namespaces, bridge and
nft table removed) when the test ends, pass or fail. Long randomized runs are marked `soak` and
only run with RAFTKV_SOAK=1 (`make soak-faults`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftkv.core.events import AppendAccepted, AppendRejected, SendingHeartbeat
from raftkv.core.events import parse as parse_event
from tests.faults import netns
from tests.faults.controller import Cluster

ClusterFactory = Callable[..., Cluster]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault tests on real node processes")
    config.addinivalue_line(
        "markers", "soak: long randomized fault runs; run with RAFTKV_SOAK=1 (make soak-faults)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    soak = os.environ.get("RAFTKV_SOAK") == "1"
    for item in items:
        if "tests/faults/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.faults)
        if item.get_closest_marker("soak") and not soak:
            item.add_marker(
                pytest.mark.skip(reason="soak run: set RAFTKV_SOAK=1 (make soak-faults)")
            )


def require_netns() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")


def require_strace() -> None:
    if netns.find_binary("strace") is None:
        pytest.skip("no strace (Debian package strace; make test-deps)")
    if os.geteuid() != 0:
        pytest.skip("strace -p needs root (ptrace of the node)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()
FAILURES = Path(tempfile.gettempdir()) / "raftkv-fault-tests"


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """Start clusters for a test; all are closed after it. If the test failed, every node's
    files are copied to $TMPDIR/raftkv-fault-tests/<test>-<time>/ (pytest rotates tmp_path
    away) and each node's last events are printed."""
    clusters: list[Cluster] = []

    def make(size: int = 3, **options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", size, **options)
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()
        if request.node.stash.get(_FAILED, True) and clusters:
            name = request.node.name.replace("/", "_")[:80]
            folder = FAILURES / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            for n, cluster in enumerate(clusters):
                cluster.collect(folder / f"cluster{n}")
                for i in cluster.ids:
                    events = [
                        line
                        for line in cluster.dump_lines(i)
                        if not isinstance(
                            parse_event(line.partition(" ")[2]),
                            SendingHeartbeat | AppendAccepted | AppendRejected,
                        )
                    ]
                    print(f"--- cluster {n} node {i}, last events:\n" + "\n".join(events[-12:]))
            print(f"files of the failed test's clusters: {folder}")
