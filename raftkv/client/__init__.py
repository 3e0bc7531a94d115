"""The raftkv client: `RaftKVClient` (asyncio), `SyncClient` (blocking) and the `raftkv` CLI."""

from .errors import (
    InvalidRequestError,
    NoLeaderError,
    RaftKVError,
    SessionExpiredError,
    StaleSequenceError,
    TransferError,
    UnknownOutcomeError,
)
from .library import RaftKVClient, SyncClient, TransferResult
from .status import NodeStatusRow

__all__ = [
    "InvalidRequestError",
    "NoLeaderError",
    "NodeStatusRow",
    "RaftKVClient",
    "RaftKVError",
    "SessionExpiredError",
    "StaleSequenceError",
    "SyncClient",
    "TransferError",
    "TransferResult",
    "UnknownOutcomeError",
]
