"""A client session really expiring on real nodes (docs/design.md §11, issue 15).

Every node runs with the test seam RAFTKV_TEST_SESSION_LIFETIME_MS (the same value on every node:
the session rules are replicated semantics), so a session lasts seconds instead of 15 minutes.
Cluster time moves only with log entries, so another client keeps writing while the first one
is idle; the first one's next write resumes a session that is gone, and is refused.
"""

from __future__ import annotations

import time

import pytest

from raftkv.client import SessionExpiredError, SyncClient
from raftkv.server.seams import SESSION_LIFETIME_ENV
from tests.support.processes import ClusterFactory

pytestmark = pytest.mark.timeout(120)

LIFETIME_MS = 1500
# Writes by another client for this long, so that the cluster time passes the lifetime (it runs
# a little slower than real time: (1 - max drift) on the leader's clock).
BUSY_SECONDS = 2 * LIFETIME_MS / 1000


def test_an_idle_clients_session_expires_and_its_next_write_is_refused(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3, env={SESSION_LIFETIME_ENV: str(LIFETIME_MS)}, allow_unsafe=True)
    cluster.start()
    cluster.leader()
    with (
        SyncClient(cluster.description, timeout=10, client_id="idle") as idle,
        SyncClient(cluster.description, timeout=10, client_id="busy") as busy,
    ):
        idle.set("k", "first")
        first_id = idle.client_id
        # Still well inside the lifetime: the session is there, the write resumes it.
        idle.set("k", "second")

        started = time.monotonic()
        writes = 0
        while time.monotonic() - started < BUSY_SECONDS:
            busy.set(f"busy-{writes % 10}", str(writes))
            writes += 1
            time.sleep(0.02)

        with pytest.raises(SessionExpiredError) as caught:
            idle.set("k", "lost")
        error = caught.value
        assert (error.client_id, error.seq, error.verb) == (first_id, 3, "SET")
        # Its first try was refused: certainly not applied.
        assert error.applied_unknown is False
        assert idle.get("k") == "second"

        # The client went on in a new session: its next write is applied.
        assert idle.client_id != first_id and idle.client_id.startswith("idle.")
        idle.set("k", "third")
        assert idle.get("k") == "third"
        # The busy client's session never expired: it wrote all along.
        busy.set("busy-0", "last")
    assert cluster.read("k") == "third"
    assert writes > 10
