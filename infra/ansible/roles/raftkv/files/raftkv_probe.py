"""Readiness checks the raftkv role runs on a node, with the node's own virtualenv python.

    raftkv-probe --cluster /etc/raftkv/cluster.json --id 2 --until answers  [--timeout 60]
    raftkv-probe ... --until joined          # knows the leader and has applied its commits
    raftkv-probe ... --until safe-to-stop    # the others have a leader and a majority without it
    raftkv-probe ... --until leader          # some node leads a majority (`leader` in the JSON)
    raftkv-probe ... --until handed-over     # another node leads, serves, and has a majority
                                             # without this one (after a leadership transfer)

Asks every node's Status on its client port through the installed client library every half
second until the condition holds (exit 0) or the timeout passes (exit 1, with the last answers
and what was missing). Prints one line of JSON either way; its `leader` is the node a majority
follows in its term (null when there is none), which the rolling restart uses to restart the
leader last and to hand leadership over before stopping it. TLS when the description's `tls`
names a CA, presenting the certificate and key it names where the nodes demand one
(--client-cert-auth; the role names the node's own).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from raftkv.client import SyncClient
from raftkv.client.library import NodeStatusRow
from raftkv.cluster import ClusterDescription
from raftkv.tls import client_tls


def answers(rows: list[NodeStatusRow], node_id: int) -> str | None:
    row = next(r for r in rows if r.node_id == node_id)
    return None if row.reachable else f"node {node_id} does not answer: {row.error}"


def leader_row(rows: list[NodeStatusRow]) -> NodeStatusRow | None:
    leaders = [r for r in rows if r.reachable and r.role == "leader"]
    return max(leaders, key=lambda r: r.term or 0) if leaders else None


def joined(rows: list[NodeStatusRow], node_id: int, target: list[int]) -> str | None:
    problem = answers(rows, node_id)
    if problem:
        return problem
    row = next(r for r in rows if r.node_id == node_id)
    leader = leader_row(rows)
    if leader is None or row.leader_id != leader.node_id or row.term != leader.term:
        return f"node {node_id} does not follow a live leader yet (role {row.role})"
    if not target:
        target.append(leader.commit_length or 0)  # catch up to where the leader was first seen
    if (row.applied_length or 0) < target[0]:
        return f"node {node_id} has applied {row.applied_length} of {target[0]} entries"
    return None


def majority_leader(rows: list[NodeStatusRow]) -> int | None:
    """The leader that a majority of the nodes (itself included) follow in its term."""
    leader = leader_row(rows)
    if leader is None:
        return None
    following = [
        r for r in rows if r.reachable and r.term == leader.term and r.leader_id == leader.node_id
    ]
    return leader.node_id if len(following) >= len(rows) // 2 + 1 else None


def has_leader(rows: list[NodeStatusRow]) -> str | None:
    return None if majority_leader(rows) is not None else "no leader that a majority follows"


def handed_over(rows: list[NodeStatusRow], node_id: int) -> str | None:
    problem = safe_to_stop(rows, node_id)
    if problem:
        return problem
    leader = leader_row(rows)
    assert leader is not None  # safe_to_stop found one
    if leader.node_id == node_id:
        return f"node {node_id} still leads"
    if (leader.waiting_for_old_lease or 0.0) > 0:
        return f"leader {leader.node_id} still waits out an old lease"
    return None


def safe_to_stop(rows: list[NodeStatusRow], node_id: int) -> str | None:
    quorum = len(rows) // 2 + 1
    leader = leader_row(rows)
    if leader is None:
        return "no node is leader"
    agreeing = [
        r.node_id
        for r in rows
        if r.node_id != node_id
        and r.reachable
        and r.term == leader.term
        and r.leader_id == leader.node_id
    ]
    if len(agreeing) < quorum:
        return f"without node {node_id} only nodes {agreeing} agree on leader {leader.node_id}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftkv-probe", description=__doc__)
    parser.add_argument("--cluster", type=Path, required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument(
        "--until",
        choices=["answers", "joined", "safe-to-stop", "leader", "handed-over"],
        required=True,
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    cluster = ClusterDescription.load(args.cluster)
    cluster.node(args.id)
    root_cert, client_cert = client_tls(cluster.tls)
    target: list[int] = []
    deadline = time.monotonic() + args.timeout
    problem: str | None = "not asked yet"
    rows: list[NodeStatusRow] = []
    with SyncClient(
        cluster,
        timeout=2.0,
        per_try_timeout=1.0,
        tls_root_cert=root_cert,
        tls_client_cert=client_cert,
    ) as client:
        while True:
            rows = client.status()
            if args.until == "answers":
                problem = answers(rows, args.id)
            elif args.until == "joined":
                problem = joined(rows, args.id, target)
            elif args.until == "leader":
                problem = has_leader(rows)
            elif args.until == "handed-over":
                problem = handed_over(rows, args.id)
            else:
                problem = safe_to_stop(rows, args.id)
            if problem is None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    report = {
        "ok": problem is None,
        "until": args.until,
        "problem": problem,
        "leader": majority_leader(rows),
        "nodes": [
            {
                "id": r.node_id,
                "reachable": r.reachable,
                "role": r.role,
                "term": r.term,
                "leader": r.leader_id,
                "commit": r.commit_length,
                "applied": r.applied_length,
                "error": r.error,
            }
            for r in rows
        ],
    }
    print(json.dumps(report))
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
