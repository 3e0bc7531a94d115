"""The raftkv client: `RaftKVClient` (asyncio), `SyncClient` (blocking) and the `raftkv` CLI."""

from .errors import (
    InvalidRequestError,
    NoLeaderError,
    RaftKVError,
    StaleSequenceError,
    UnknownOutcomeError,
)
from .library import RaftKVClient, SyncClient
from .status import NodeStatusRow

__all__ = [
    "InvalidRequestError",
    "NoLeaderError",
    "NodeStatusRow",
    "RaftKVClient",
    "RaftKVError",
    "StaleSequenceError",
    "SyncClient",
    "UnknownOutcomeError",
]
