from __future__ import annotations

import pytest

from raftkv.core.messages import NO_OP, DeleteCommand, RangeQuery, ReadRange, SetCommand
from raftkv.core.state_machine import KeyValueStateMachine


def test_set_get_and_missing() -> None:
    machine = KeyValueStateMachine()
    assert machine.get("a") is None
    assert machine.apply(SetCommand("a", "1"), 1) == 1
    assert machine.apply(SetCommand("a", "two words"), 2) == 2
    assert machine.get("a") == "two words"
    assert machine.apply(NO_OP, 3) == 3
    assert len(machine) == 1


def test_retried_set_applies_once_and_answers_the_original_index() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "first", "client-1", 1), 1) == 1
    assert machine.apply(SetCommand("k", "second", "client-2", 1), 2) == 2
    # client-1 retries seq 1 after client-2 wrote: the retry must not undo client-2's write,
    # and its answer is where seq 1 was applied.
    assert machine.apply(SetCommand("k", "first", "client-1", 1), 3) == 1
    assert machine.get("k") == "second"
    assert machine.apply(SetCommand("k", "third", "client-1", 2), 4) == 4
    assert machine.get("k") == "third"
    assert machine.last_applied("client-1") == (2, 4)


def test_set_below_the_last_applied_seq_is_stale() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "five", "c", 5), 1) == 1
    assert machine.apply(SetCommand("k", "three", "c", 3), 2) is None
    assert machine.get("k") == "five"
    # The stale SET leaves the table as it was: seq 5 still answers its own index.
    assert machine.last_applied("c") == (5, 1)
    assert machine.apply(SetCommand("k", "five", "c", 5), 3) == 1


def test_commands_without_client_id_are_never_deduplicated() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "x"), 1) == 1
    assert machine.apply(SetCommand("k", "x"), 2) == 2
    assert machine.last_applied("") is None


def test_delete_removes_the_key_and_is_idempotent() -> None:
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("a", "1"), 1)
    machine.apply(SetCommand("b", "2"), 2)
    assert machine.apply(DeleteCommand("a"), 3) == 3
    assert machine.get("a") is None
    # Without a client id a DELETE is never deduplicated; deleting again changes nothing.
    assert machine.apply(DeleteCommand("a"), 4) == 4
    assert machine.snapshot_items() == {"b": "2"}
    assert len(machine) == 1


def test_a_delete_of_an_absent_key_changes_no_data_but_records_the_session() -> None:
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("b", "2"), 1)
    image = machine.image(1, 1)
    assert machine.apply(DeleteCommand("never-set", "c", 1), 2) == 2
    assert machine.snapshot_items() == {"b": "2"}
    assert machine.image(2, 1).data is image.data  # the data map was not even rebuilt
    assert machine.last_applied("c") == (1, 2)
    assert machine.apply(DeleteCommand("never-set", "c", 1), 3) == 2  # its retry


def test_sets_and_deletes_of_one_client_share_its_sequence() -> None:
    machine = KeyValueStateMachine()
    assert machine.apply(SetCommand("k", "v", "c", 1), 1) == 1
    assert machine.apply(DeleteCommand("k", "c", 2), 2) == 2
    # A retry of the DELETE answers its index and does not delete a value written since.
    assert machine.apply(SetCommand("k", "w", "other", 1), 3) == 3
    assert machine.apply(DeleteCommand("k", "c", 2), 4) == 2
    assert machine.get("k") == "w"
    # Seq 1 (the SET) is below the DELETE's: stale, not applied.
    assert machine.apply(SetCommand("k", "old", "c", 1), 5) is None
    # ... and a DELETE below a SET's seq is stale too.
    assert machine.apply(SetCommand("k", "x", "c", 3), 6) == 6
    assert machine.apply(DeleteCommand("k", "c", 2), 7) is None
    assert machine.get("k") == "x"
    assert machine.last_applied("c") == (3, 6)


def test_replicas_applying_the_same_log_agree() -> None:
    log = [
        SetCommand("a", "1", "c", 1),
        SetCommand("a", "1", "c", 1),
        SetCommand("b", "2", "d", 5),
        SetCommand("a", "3", "c", 2),
        SetCommand("b", "old", "d", 4),
    ]
    replicas = [KeyValueStateMachine() for _ in range(3)]
    answers = [
        [replica.apply(command, index) for index, command in enumerate(log, start=1)]
        for replica in replicas
    ]
    assert all(r.snapshot_items() == {"a": "3", "b": "2"} for r in replicas)
    assert all(answer == [1, 1, 3, 4, None] for answer in answers)
    assert all(r.last_applied("c") == (2, 4) and r.last_applied("d") == (5, 3) for r in replicas)


def test_an_image_is_a_point_in_time_copy_that_later_applies_do_not_change() -> None:
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("a", "1", "c", 1), 1)
    image = machine.image(1, 1)
    machine.apply(SetCommand("a", "2", "c", 2), 2)
    machine.apply(SetCommand("b", "3"), 3)
    assert (image.index, image.term) == (1, 1)
    assert dict(image.data.items()) == {"a": "1"}
    assert dict(image.sessions.items()) == {"c": (1, 1, 0)}
    assert machine.snapshot_items() == {"a": "2", "b": "3"}


def test_a_machine_started_from_an_image_continues_where_the_image_ends() -> None:
    original = KeyValueStateMachine()
    original.apply(SetCommand("a", "1", "c", 4), 7)
    restored = KeyValueStateMachine(original.image(7, 2))
    assert restored.get("a") == "1" and restored.last_applied("c") == (4, 7)
    assert restored.apply(SetCommand("a", "x", "c", 4), 9) == 7  # a retry still deduplicates
    assert restored.apply(SetCommand("a", "y", "c", 5), 9) == 9
    assert restored.get("a") == "y" and original.get("a") == "1"


# ---------------------------------------------------------------------------------------------
# LIST: pages of keys in order, from the derived sorted index.


def machine_with(*keys: str, value: str = "v") -> KeyValueStateMachine:
    machine = KeyValueStateMachine()
    for index, key in enumerate(keys, start=1):
        machine.apply(SetCommand(key, value), index)
    return machine


def keys_of(page: ReadRange) -> list[str]:
    return [key for key, _ in page.items]


MIXED = ("b", "a", "app", "apple", "apply", "apt", "b/1", "b/2", "c", "ap")


def test_an_empty_prefix_lists_every_key_in_order() -> None:
    page = machine_with(*MIXED).range(RangeQuery("", "", 100))
    assert keys_of(page) == sorted(MIXED) and not page.more
    assert page.items[0] == ("a", "v")
    assert KeyValueStateMachine().range(RangeQuery("", "", 100)) == ReadRange((), more=False)


@pytest.mark.parametrize(
    ("prefix", "start_after", "limit", "keys", "more"),
    [
        ("ap", "", 100, ["ap", "app", "apple", "apply", "apt"], False),
        ("app", "", 100, ["app", "apple", "apply"], False),
        ("zz", "", 100, [], False),  # a prefix no key has
        ("ap", "apple", 100, ["apply", "apt"], False),  # start_after is excluded
        ("ap", "apq", 100, ["apt"], False),  # start_after need not be a key
        ("ap", "apt", 100, [], False),  # nothing after the last key of the prefix
        ("ap", "zzz", 100, [], False),  # start_after beyond every key
        ("b/", "a", 100, ["b/1", "b/2"], False),  # start_after before the prefix: from it
        ("b", "", 100, ["b", "b/1", "b/2"], False),
        ("b", "b", 100, ["b/1", "b/2"], False),  # start_after equal to the prefix
        ("ap", "", 5, ["ap", "app", "apple", "apply", "apt"], False),  # exactly the limit
        ("ap", "", 4, ["ap", "app", "apple", "apply"], True),  # one more exists
        ("", "", 1, ["a"], True),
        ("", "b/2", 1, ["c"], False),
    ],
)
def test_pages_of_a_prefix(
    prefix: str, start_after: str, limit: int, keys: list[str], more: bool
) -> None:
    page = machine_with(*MIXED).range(RangeQuery(prefix, start_after, limit))
    assert (keys_of(page), page.more) == (keys, more)


def test_paging_with_the_last_key_visits_every_key_once() -> None:
    machine = machine_with(*(f"k{i:03}" for i in range(250)), "l0")
    seen: list[str] = []
    start_after, pages = "", 0
    while True:
        page = machine.range(RangeQuery("k", start_after, 100))
        seen += keys_of(page)
        pages += 1
        if not page.more:
            break
        start_after = page.items[-1][0]
    assert seen == [f"k{i:03}" for i in range(250)] and pages == 3


def test_a_page_holds_at_most_the_byte_cap_but_always_one_item() -> None:
    mib = "x" * (1024 * 1024)
    machine = machine_with(*(f"big{i}" for i in range(6)), value=mib)
    first = machine.range(RangeQuery("big", "", 100))
    # Keys count too: four 1 MiB values and their keys are over 4 MiB, so three fit.
    assert keys_of(first) == ["big0", "big1", "big2"] and first.more
    second = machine.range(RangeQuery("big", "big2", 100))
    assert keys_of(second) == ["big3", "big4", "big5"] and not second.more
    # A single item larger than the cap still comes back, alone.
    alone = machine.range(RangeQuery("big", "", 100), max_bytes=10)
    assert keys_of(alone) == ["big0"] and alone.more
    # UTF-8 bytes, not characters: "é" is 2 bytes.
    accents = machine_with("a", "b", value="é" * 4)
    assert keys_of(accents.range(RangeQuery("", "", 100), max_bytes=18)) == ["a", "b"]
    assert keys_of(accents.range(RangeQuery("", "", 100), max_bytes=17)) == ["a"]


def test_the_key_index_follows_new_keys_and_deletes_but_not_overwrites() -> None:
    machine = machine_with("b", "a")
    machine.apply(SetCommand("a", "new"), 3)  # an overwrite: the index is unchanged
    machine.apply(DeleteCommand("b"), 4)
    machine.apply(DeleteCommand("never"), 5)
    machine.apply(SetCommand("c", "3"), 6)
    assert machine.range(RangeQuery("", "", 10)).items == (("a", "new"), ("c", "3"))
    assert list(machine._keys) == ["a", "c"]


def test_a_machine_from_an_image_rebuilds_its_key_index() -> None:
    original = machine_with("m", "k", "l")
    image = original.image(3, 1)
    original.apply(DeleteCommand("k"), 4)  # later applies change neither the image nor its copy
    restored = KeyValueStateMachine(image)
    assert keys_of(restored.range(RangeQuery("", "", 10))) == ["k", "l", "m"]
    assert keys_of(original.range(RangeQuery("", "", 10))) == ["l", "m"]
