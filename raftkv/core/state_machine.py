"""The replicated key-value state machine, including the exactly-once table for client SETs.

The dedup table is part of the replicated state (Raft thesis §6.3): every replica applies the
same entries in the same order, so every replica skips the same duplicates.
"""

from __future__ import annotations

from .messages import Command, NoOpCommand, SetCommand


class KeyValueStateMachine:
    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        # client id → highest sequence number applied for it.
        self._last_seq: dict[str, int] = {}

    def apply(self, command: Command) -> bool:
        """Apply one committed command. Returns False when it was a duplicate and was skipped."""
        if isinstance(command, NoOpCommand):
            return True
        assert isinstance(command, SetCommand)
        if command.client_id:
            if command.seq <= self._last_seq.get(command.client_id, 0):
                return False
            self._last_seq[command.client_id] = command.seq
        self._data[command.key] = command.value
        return True

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def snapshot_items(self) -> dict[str, str]:
        return dict(self._data)
