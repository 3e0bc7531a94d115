"""Fixtures for the real-process tests: clusters that are SIGKILLed however the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ClusterFactory, LocalCluster

__all__ = ["ClusterFactory", "make_cluster"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # Lets the fixture below know, at teardown, whether the test body failed.
    item.stash.setdefault(_FAILED, False)
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterFactory]:
    """`make_cluster(size, **options)` builds a LocalCluster (not yet started) under tmp_path.

    Every cluster it made is SIGKILLed at teardown; when the test failed, each cluster's state
    (statuses, dump tails) is printed, so it shows in pytest's report.
    """
    clusters: list[LocalCluster] = []

    def make(size: int, *args: Any, **kwargs: Any) -> LocalCluster:
        folder = tmp_path / f"c{len(clusters)}" if clusters else tmp_path
        cluster = LocalCluster(folder, size, *args, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        if request.node.stash.get(_FAILED, False):
            for cluster in clusters:
                print(f"\n=== state of the cluster at failure ===\n{cluster.describe()}")
        for cluster in clusters:
            cluster.close()
