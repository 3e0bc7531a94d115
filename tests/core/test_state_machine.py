from __future__ import annotations

from raftkv.core.messages import NO_OP, SetCommand
from raftkv.core.state_machine import KeyValueStateMachine


def test_set_get_and_missing() -> None:
    machine = KeyValueStateMachine()
    assert machine.get("a") is None
    assert machine.apply(SetCommand("a", "1"))
    assert machine.apply(SetCommand("a", "two words"))
    assert machine.get("a") == "two words"
    assert machine.apply(NO_OP)
    assert len(machine) == 1


def test_retried_set_applies_once() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "first", "client-1", 1))
    assert machine.apply(SetCommand("k", "second", "client-2", 1))
    # client-1 retries seq 1 after client-2 wrote: the retry must not undo client-2's write.
    assert not machine.apply(SetCommand("k", "first", "client-1", 1))
    assert machine.get("k") == "second"
    assert machine.apply(SetCommand("k", "third", "client-1", 2))
    assert machine.get("k") == "third"


def test_commands_without_client_id_are_never_deduplicated() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "x"))
    assert machine.apply(SetCommand("k", "x"))


def test_replicas_applying_the_same_log_agree() -> None:
    log = [
        SetCommand("a", "1", "c", 1),
        SetCommand("a", "1", "c", 1),
        SetCommand("b", "2", "d", 5),
        SetCommand("a", "3", "c", 2),
        SetCommand("b", "old", "d", 4),
    ]
    replicas = [KeyValueStateMachine() for _ in range(3)]
    for replica in replicas:
        for command in log:
            replica.apply(command)
    assert all(r.snapshot_items() == {"a": "3", "b": "2"} for r in replicas)
