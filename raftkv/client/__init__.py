"""The raftkv client: `RaftKVClient` (asyncio), `SyncClient` (blocking) and the `raftkv` CLI."""

from .errors import InvalidRequestError, NoLeaderError, RaftKVError, UnknownOutcomeError
from .library import NodeStatusRow, RaftKVClient, SyncClient

__all__ = [
    "InvalidRequestError",
    "NoLeaderError",
    "NodeStatusRow",
    "RaftKVClient",
    "RaftKVError",
    "SyncClient",
    "UnknownOutcomeError",
]
