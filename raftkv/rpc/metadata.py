"""Names of the gRPC metadata raftkv sends beside its messages (part of the wire protocol).

A refusal on the unary KeyValue API names the node to ask instead in its trailing metadata.
A SET refused for a stale sequence number is FAILED_PRECONDITION like "not the leader", but
carries no leader hint and says why in `refusal: stale-sequence`. The Pipeline stream has no
per-request metadata: there the details text, STALE_SEQUENCE_DETAILS, is the marker.
"""

from __future__ import annotations

LEADER_ID_METADATA = "leader-id"
LEADER_ADDRESS_METADATA = "leader-address"
REFUSAL_METADATA = "refusal"
STALE_SEQUENCE_REFUSAL = "stale-sequence"
# A write that resumed a session that no longer exists (docs/design.md §11): not applied, and
# not a redirect. FAILED_PRECONDITION, no leader hint, `refusal: session-expired`; on the
# Pipeline stream the details text, SESSION_EXPIRED_DETAILS, is the marker.
SESSION_EXPIRED_REFUSAL = "session-expired"
SESSION_EXPIRED_DETAILS = (
    "session expired: this client id's session no longer exists (no write within the session "
    "lifetime, or a cluster restored from a backup), so this write was not applied"
)
# KeyValue.TransferLeader refused by the leader itself (not a redirect: no leader hint).
TRANSFER_REFUSAL = "transfer"
STALE_SEQUENCE_DETAILS = (
    "stale sequence number: a higher sequence number of this client id was already applied, "
    "so this SET was not applied"
)
# gRPC's own details when a server refuses a call beyond its maximum_concurrent_rpcs, before
# any handler runs (raftkv/server/resources.py caps a node's client RPCs): nothing was started.
RPC_LIMIT_DETAILS = "Concurrent RPC limit exceeded!"
