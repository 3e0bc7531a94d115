"""Names of the gRPC metadata raftkv sends beside its messages (part of the wire protocol).

A refusal on the unary KeyValue API names the node to ask instead in its trailing metadata.
"""

from __future__ import annotations

LEADER_ID_METADATA = "leader-id"
LEADER_ADDRESS_METADATA = "leader-address"
