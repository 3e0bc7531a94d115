"""The replicated key-value state machine, including the exactly-once table for client SETs.

The dedup table is part of the replicated state (Raft thesis §6.3): every replica applies the
same entries in the same order, so every replica skips the same duplicates and keeps the same
table. Only the answer to the proposer depends on it (node.py): a SET that carries a client id
is applied when its seq is above the client's last applied seq; a retry of that last applied
SET (same seq) is skipped and answered with the index where it was applied; a SET below it is
skipped and refused as stale, never acknowledged.
"""

from __future__ import annotations

from .messages import Command, NoOpCommand, SetCommand


class KeyValueStateMachine:
    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        # client id → (highest seq applied for it, the log index where that SET was applied).
        # Plain tuples so that a snapshot can serialise the table as it is.
        self._last_applied: dict[str, tuple[int, int]] = {}

    def apply(self, command: Command, index: int) -> int | None:
        """Apply the committed command at log `index`.

        Returns the index the command's effect is at: `index` when it was applied (a no-op, a
        SET without client id, or a SET with a new highest seq for its client); the index of the
        original entry when it repeats the client's last applied seq (skipped); None when a higher
        seq of its client was already applied (skipped, and must not be acknowledged).
        """
        if isinstance(command, NoOpCommand):
            return index
        assert isinstance(command, SetCommand)
        if command.client_id:
            last_seq, last_index = self._last_applied.get(command.client_id, (0, 0))
            if command.seq == last_seq:
                return last_index
            if command.seq < last_seq:
                return None
            self._last_applied[command.client_id] = (command.seq, index)
        self._data[command.key] = command.value
        return index

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def last_applied(self, client_id: str) -> tuple[int, int] | None:
        """(highest seq applied, its log index) for `client_id`, or None if none was applied."""
        return self._last_applied.get(client_id)

    def __len__(self) -> int:
        return len(self._data)

    def snapshot_items(self) -> dict[str, str]:
        return dict(self._data)
